"""Checks that run on freshly read rows, before any split or training.

A wrong label or a missing column found after two hours of training on a
scheduled worker is expensive; found here it costs a second and the message
says which file, which rows and which values, and what to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from .sources import DataError, row_numbers


@dataclass(frozen=True)
class Origin:
    """Where rows came from, so that messages can point at them: "dev.tsv line 17"."""

    name: str          # a path, or "hub nyu-mll/glue[sst2] split validation"
    unit: str = "row"  # "line" (TSV: one row per line), "row" (CSV), "record" (JSON)
    first: int = 1     # number of the first data row in that unit (2 after a header line)

    def at(self, positions: Sequence[int]) -> str:
        """``"lines 3, 17"`` for 0-based row positions."""
        numbers = [int(p) + self.first for p in positions]
        return f"{self.unit}{'s' if len(numbers) > 1 else ''} {row_numbers(numbers)}"


def require_columns(frame: pd.DataFrame, columns: Sequence[str], origin: Origin, fix: str = "") -> None:
    """Fail naming the missing columns *and* the ones that are there (the usual cause is a typo)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        raise DataError(f"{origin.name}: missing column(s) {missing}; found columns {found}. "
                        + (fix or "Fix: set `text_columns` / `label_column` (or `columns` to rename) "
                                  "in the data spec to the file's column names."))


def rename_columns(frame: pd.DataFrame, mapping: dict[str, str], origin: Origin) -> pd.DataFrame:
    """The spec's ``columns:`` renames; a rename onto a column the file already has is refused (two columns of one
    name would make every later check read a table where it expects a column)."""
    renamed = frame.rename(columns=mapping)
    names = [str(c) for c in renamed.columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        sources = {new: [old for old, to in mapping.items() if to == new and old in frame.columns] for new in clashes}
        listed = "; ".join(f"{new!r} (renamed from {sources[new]}, and already a column)" for new in clashes)
        raise DataError(f"{origin.name}: after renaming by `columns`, the file has two columns named {listed}. "
                        "Fix: rename onto a name the file does not use, or drop the rename if the column is already "
                        "there.")
    return renamed


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_text(frame: pd.DataFrame, columns: Sequence[str], origin: Origin) -> pd.DataFrame:
    """Text columns as ``str``; a missing (null) cell is an error, an empty string is allowed."""
    frame = frame.copy()
    for column in columns:
        missing = [i for i, v in enumerate(frame[column].tolist()) if _is_missing(v)]
        if missing:
            raise DataError(f"{origin.name}: column {column!r} is empty at {origin.at(missing)}. "
                            f"Fix: fill in or drop those rows.")
        frame[column] = frame[column].map(str)
    return frame


def infer_label_list(values: pd.Series) -> list[str]:
    """Label names from the training labels: sorted, numerically when all are integers."""
    present = [v for v in values.tolist() if not _is_missing(v)]
    names = {_label_name(v) for v in present}
    if names and all(_as_int(n) is not None for n in names):
        return sorted(names, key=lambda n: int(_as_int(n)))  # type: ignore[arg-type]
    return sorted(names)


def labels_to_ids(values: pd.Series, label_list: Sequence[str], origin: Origin, fix: str = "") -> list[int]:
    """Map raw labels to indices of ``label_list``.

    A label matches by name first (``"entailment"``, or ``"1"`` when the names are digits),
    then as an integer index (GLUE's ``0``/``1``, hub class ids). Anything else fails, naming
    every bad value and where it occurs.
    """
    names = [str(n) for n in label_list]
    index = {n: i for i, n in enumerate(names)}
    ids: list[int] = []
    bad: dict[str, list[int]] = {}
    for position, value in enumerate(values.tolist()):
        label = None
        if not _is_missing(value):
            name = _label_name(value)
            if name in index:
                label = index[name]
            else:
                as_int = _as_int(name)
                if as_int is not None and 0 <= as_int < len(names):
                    label = as_int
        if label is None:
            bad.setdefault(repr(None if _is_missing(value) else value), []).append(position)
            continue
        ids.append(label)
    if bad:
        count = sum(len(p) for p in bad.values())
        listed = "; ".join(f"{value} at {origin.at(positions)}" for value, positions in list(bad.items())[:8])
        raise DataError(f"{origin.name}: {count} row(s) have labels outside the label set {names}: {listed}. "
                        + (fix or "Fix: correct those rows, or set `label_list` in the data spec if these "
                                  "are real classes."))
    return ids


def labels_to_float(values: pd.Series, origin: Origin, label_range: tuple[float, float] | None = None,
                    fix: str = "") -> list[float]:
    """Regression targets as floats; non-numbers, NaN, infinities (``inf``, ``1e400``, an integer past 1.8e308: no
    loss can be computed against them) and values outside ``label_range`` fail."""
    out: list[float] = []
    bad: dict[str, list[int]] = {}
    for position, value in enumerate(values.tolist()):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past 1.8e308 (JSON's 10**309)
            number = math.nan
        ok = math.isfinite(number) and (label_range is None or label_range[0] <= number <= label_range[1])
        if not ok:
            bad.setdefault(repr(value), []).append(position)
        out.append(number)
    if bad:
        count = sum(len(p) for p in bad.values())
        listed = "; ".join(f"{_clip(value)} at {origin.at(positions)}" for value, positions in list(bad.items())[:8])
        allowed = f"numbers in [{label_range[0]}, {label_range[1]}]" if label_range else "finite numbers"
        raise DataError(f"{origin.name}: {count} row(s) have regression labels (column {values.name!r}) that are not "
                        f"{allowed}: {listed}. "
                        + (fix or "Fix: correct those rows."))
    return out


def _clip(text: str, limit: int = 40) -> str:
    """A value as an error message shows it: a 310-digit label is shown by its first digits and its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _label_name(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_int(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None
