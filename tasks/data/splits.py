"""Seeded splitting and subsampling.

GLUE's test labels are hidden, so the RED paper (following LoReFT) splits each
official dev set, seeded, into a validation set for model selection and a test
set for reporting: 1,000 validation rows where the dev set is large (MNLI,
QNLI, QQP: over 2,000 rows), otherwise half and half with the odd row going to
validation (SST-2 872 -> 436/436, RTE 277 -> 139/138, CoLA 1,043 -> 522/521).
That protocol is for GLUE's official dev files, which never change.

Every other source is split by *content*: a row goes to train, validation or
test by a seeded hash of its input text (:func:`hash_split`), so that when a
scheduled retrain sees the same file with rows appended, no existing row ever
moves between splits: last night's test rows stay test rows and never become
training rows. Rows with the same input text (duplicates, or the same text
relabelled) always share a split, so they cannot leak across it either.

All functions keep the input's row order inside each part, so a split reads
in the same order as its file, and use numpy's PCG64 generator, whose stream
is stable across platforms and numpy versions.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

LARGE_DEV = 2000             # dev sets above this size give a fixed number of rows to validation
LARGE_DEV_VALIDATION = 1000


def dev_split_sizes(n: int) -> tuple[int, int]:
    """(validation, test) sizes of a dev set of ``n`` rows under the paper's protocol."""
    if n > LARGE_DEV:
        return LARGE_DEV_VALIDATION, n - LARGE_DEV_VALIDATION
    return n - n // 2, n // 2


def split_dev(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an official dev set, seeded, into (validation, test) with :func:`dev_split_sizes`."""
    n_val, _ = dev_split_sizes(len(frame))
    return _take(frame, np.random.default_rng(seed).permutation(len(frame)), n_val)


def carve_size(size: float, n: int) -> int:
    """Rows to carve from ``n``: ``size`` < 1 is a fraction (rounded, at least 1), else a count."""
    if size < 1:
        return max(1, int(round(size * n)))
    return int(size)


def carve(frame: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded (rest, carved): ``carved`` holds :func:`carve_size` rows, ``rest`` the others."""
    k = carve_size(size, len(frame))
    carved, rest = _take(frame, np.random.default_rng(seed).permutation(len(frame)), k)
    return rest, carved


def subsample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, chosen seeded without replacement (all rows if ``n`` is None or larger)."""
    if n is None or len(frame) <= n:
        return frame
    picked, _ = _take(frame, np.random.default_rng(seed).permutation(len(frame)), n)
    return picked


def _take(frame: pd.DataFrame, order: np.ndarray, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    first, second = np.sort(order[:k]), np.sort(order[k:])
    return frame.iloc[first].reset_index(drop=True), frame.iloc[second].reset_index(drop=True)


def row_unit(frame: pd.DataFrame, columns: Sequence[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per row from sha256(seed, the row's values in ``columns``): stable, uniform.

    The value depends on the row's own content only (never on its position or on other
    rows), which is what makes content-hash splits stable as a file grows.
    """
    out = np.empty(len(frame), dtype=np.float64)
    values = frame[list(columns)].astype(str).to_numpy()
    prefix = f"redflow-split\0{seed}\0".encode()
    for i, row in enumerate(values):
        digest = hashlib.sha256(prefix + "\x1f".join(row).encode("utf-8")).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def check_fraction(name: str, size: float) -> float:
    """Content-hash splits take fractions: a row count would move rows between splits as the data grows."""
    if not 0 < size < 1:
        raise ValueError(
            f"{name}={size!r}: carved splits are assigned by a hash of each row's text so that appending rows "
            f"never moves a row between train, validation and test; give a fraction in (0, 1) (e.g. 0.1), or "
            f"provide a {name.removesuffix('_size')} file")
    return float(size)


def hash_split(frame: pd.DataFrame, columns: Sequence[str], fractions: dict[str, float], seed: int,
               rest: str = "train") -> dict[str, pd.DataFrame]:
    """Split ``frame`` by content: row r goes to the first part p whose cumulative fraction exceeds u(r).

    ``fractions`` maps part names to fractions of all rows (in order, summing to < 1 unless ``rest`` is
    empty); the remaining rows go to ``rest``. Example: ``{"test": 0.1, "validation": 0.1}`` puts rows with
    u < 0.1 in test, 0.1 <= u < 0.2 in validation, the rest in train. Rows keep their file order.
    """
    u = row_unit(frame, columns, seed)
    parts: dict[str, pd.DataFrame] = {}
    taken = np.zeros(len(frame), dtype=bool)
    low = 0.0
    for name, fraction in fractions.items():
        high = low + fraction
        mask = (u >= low) & (u < high)
        parts[name] = frame[mask].reset_index(drop=True)
        taken |= mask
        low = high
    if rest:
        parts[rest] = frame[~taken].reset_index(drop=True)
    return parts


def stable_subsample(frame: pd.DataFrame, n: int | None, columns: Sequence[str], seed: int) -> pd.DataFrame:
    """At most ``n`` rows: those with the smallest content hash, so the choice barely moves as rows are added."""
    if n is None or len(frame) <= n:
        return frame
    order = np.argsort(row_unit(frame, columns, seed), kind="stable")
    return frame.iloc[np.sort(order[:n])].reset_index(drop=True)
