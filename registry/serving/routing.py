"""The rows of a multi-task request: each routed to its task and checked; the answers in the request's order.

A request is a DataFrame (MLflow's ``dataframe_records``, ``dataframe_split`` or CSV) with a ``task``
column and the text column(s) each task reads (``sentence``; ``sentence1`` + ``sentence2`` for a pair
task; ``prompt`` for generation). Rows of different tasks may have different columns (missing cells are
null). A row's ``task`` is a registered model name (``red-sentiment``) or a task name (``sentiment``);
a task name that two served models share is ambiguous and must be given as the model name.

**A bad row fails the whole request.** Every row is checked before any model runs; if any row names
no task, an unknown or ambiguous task, or lacks (or has empty) text for its task, the request is
refused with ``RequestError`` (HTTP 400, MLflow's ``INVALID_PARAMETER_VALUE``) listing every bad row
(the first ten), what its task needs, and the tasks served. No row is answered half-way and none is
dropped silently; a client that wants the good rows answered resends them. (MLflow's own scoring
protocol has no per-row status, and its schema checks fail whole requests the same way.)

Answer rows, in request order: ``task`` (as requested), ``model`` and ``version`` (the registered
model and version that served the row), then per kind of task: ``label``, ``score`` and
``probabilities`` (``{label: p}``) for classification (``score`` = the predicted label's probability,
as the single-task pyfunc's ``score``); ``score`` (the predicted value) for regression; ``generation``
for generation tasks. A column that does not apply to a row is null; columns of a kind that no row of
the request has are left out.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .answers import RequestError
from .served_tasks import ServedTask

TASK_COLUMN = "task"
MAX_LISTED = 10


@dataclass(frozen=True)
class RoutedRows:
    """Per row of a request: the task that answers it and its text(s), in the task's column order."""

    requested: list[str]
    tasks: list[ServedTask]
    texts: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.tasks)


def served_list(tasks: Iterable[ServedTask]) -> str:
    """``sentiment = red-sentiment v2 (sentence); ...`` for error messages."""
    return "; ".join(f"{t.task} = {t.model} v{t.version} ({', '.join(t.text_columns)})"
                     for t in sorted(tasks, key=lambda t: t.model)) or "nothing yet"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _rows(numbers: list[int]) -> str:
    shown = ", ".join(str(i) for i in numbers[:MAX_LISTED])
    return f"row{'s' if len(numbers) > 1 else ''} {shown}" + (f" (+{len(numbers) - MAX_LISTED} more)"
                                                              if len(numbers) > MAX_LISTED else "")


def as_frame(model_input: Any) -> pd.DataFrame:
    """The request as a DataFrame (MLflow hands one over; a dict of columns or a list of records also works)."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    try:
        return pd.DataFrame(model_input)
    except (ValueError, TypeError) as exc:
        raise RequestError(f"the input must be a table with a {TASK_COLUMN!r} column and text columns "
                           f"(dataframe_records, dataframe_split or CSV); got {type(model_input).__name__}: {exc}") from exc


def route(model_input: Any, lookup: Mapping[str, ServedTask], served: Iterable[ServedTask],
          ambiguous: Mapping[str, list[str]] | None = None) -> RoutedRows:
    """Route and check every row; ``RequestError`` listing all bad rows (see the module docstring).

    ``lookup`` maps a model name or an unambiguous task name to its task; ``ambiguous`` maps a task
    name shared by several served models to those models' names.
    """
    frame = as_frame(model_input)
    repeated = sorted(n for n, k in Counter(str(c) for c in frame.columns).items() if k > 1)  # linear in columns
    if repeated:  # frame[name] would be a table, not a column
        raise RequestError(f"the input names the column(s) {repeated} more than once: give each column once (one "
                           f"{TASK_COLUMN!r} and one text per text column a task reads).")
    if len(frame) == 0:
        return RoutedRows(requested=[], tasks=[], texts=[])
    served = list(served)
    ambiguous = ambiguous or {}
    tail = f" This server serves: {served_list(served)}."
    if TASK_COLUMN not in frame.columns:
        raise RequestError(f"the input has no {TASK_COLUMN!r} column (columns: {list(map(str, frame.columns))}): "
                           f"add one naming, per row, the task or registered model that should answer it.{tail}")
    problems: list[str] = []
    unnamed, unknown, ambiguous_rows = [], {}, {}
    tasks: list[ServedTask | None] = []
    requested: list[str] = []
    for i, value in enumerate(frame[TASK_COLUMN].tolist()):
        name = "" if _missing(value) else str(value).strip()
        requested.append(name)
        task = lookup.get(name) if name else None
        if not name:
            unnamed.append(i)
        elif name in ambiguous:
            ambiguous_rows.setdefault(name, []).append(i)
        elif task is None:
            unknown.setdefault(name, []).append(i)
        tasks.append(task)
    if unnamed:
        problems.append(f"{_rows(unnamed)}: no task")
    for name, rows in unknown.items():
        problems.append(f"{_rows(rows)}: unknown task {name!r}")
    for name, rows in ambiguous_rows.items():
        problems.append(f"{_rows(rows)}: task {name!r} is served by {', '.join(ambiguous[name])}; name the model")
    texts: list[tuple[str, ...]] = [()] * len(frame)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        if task is not None:
            by_task.setdefault(task.model, []).append(i)
    for model, rows in by_task.items():
        task = tasks[rows[0]]
        absent = [c for c in task.text_columns if c not in frame.columns]
        if absent:
            problems.append(f"{_rows(rows)} (task {task.task!r}): column{'s' if len(absent) > 1 else ''} "
                            f"{', '.join(repr(c) for c in absent)} missing; task {task.task!r} reads "
                            f"{', '.join(task.text_columns)}")
            continue
        columns = [frame[c].tolist() for c in task.text_columns]
        empty: dict[str, list[int]] = {}
        for i in rows:
            cells = tuple("" if _missing(col[i]) else str(col[i]) for col in columns)
            for column, cell in zip(task.text_columns, cells):
                if not cell.strip():
                    empty.setdefault(column, []).append(i)
            texts[i] = cells
        for column, bad in empty.items():
            problems.append(f"{_rows(bad)} (task {task.task!r}): empty or missing {column!r}")
    if problems:
        shown = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"]
                                         if len(problems) > MAX_LISTED else [])
        raise RequestError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the request, nothing was "
                           f"predicted: {'; '.join(shown)}.{tail}")
    return RoutedRows(requested=requested, tasks=[t for t in tasks if t is not None], texts=texts)


def answer_frame(rows: RoutedRows, outputs: list[dict[str, Any]]) -> pd.DataFrame:
    """The answer (see the module docstring): one row per request row, in order; null where a column does
    not apply (object columns, so JSON gets ``null``, never ``NaN``)."""
    kinds = {("generation" if t.generative else "scores") for t in rows.tasks}
    columns = ["task", "model", "version"]
    if "scores" in kinds:
        columns += ["label", "score", "probabilities"]
    if "generation" in kinds:
        columns += ["generation"]
    data: dict[str, list[Any]] = {c: [] for c in columns}
    for requested, task, out in zip(rows.requested, rows.tasks, outputs):
        row = {"task": requested, "model": task.model, "version": task.version, **out}
        for c in columns:
            data[c].append(row.get(c))
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
