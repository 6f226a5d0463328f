"""What a person sees while a retrain runs: one line per task, its current step, a bar while it trains.

The CLI installs a reporter for the duration of a command (``reporting(...)``); flow tasks and the
Trainer callback report to whichever is installed (``report``/``progress``; by default nothing, so
library use, tests and Dask/Ray workers are silent). On a terminal the lines are a live rich
display; anywhere else (a log file, CI) each step change is one plain line, never cursor escapes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import TrainerCallback

from .run_logs import TaskRunNaming


class Reporter:
    """Receives step changes and training progress; the base class ignores them."""

    def step(self, task: str, step: str, detail: str = "") -> None:  # noqa: D401 - a sink
        pass

    def progress(self, task: str, done: int, total: int, detail: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class PlainReporter(Reporter):
    """One line per step change (and per epoch while training): for logs and non-terminals."""

    def __init__(self, console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}

    def step(self, task: str, step: str, detail: str = "") -> None:
        self._line(task, f"{step}{': ' + detail if detail else ''}")

    def progress(self, task: str, done: int, total: int, detail: str = "") -> None:
        if detail:  # epochs and evaluations, not every optimizer step
            self._line(task, f"train {done}/{total} steps: {detail}")

    def _line(self, task: str, text: str) -> None:
        with self._lock:
            if self._last.get(task) == text:
                return
            self._last[task] = text
            self.console.print(f"{time.strftime('%H:%M:%S')} {task}: {text}", markup=False, highlight=False,
                               soft_wrap=True)


class RichReporter(Reporter):
    """A live display on a terminal: per task its step, and a progress bar labelled with it while training."""

    def __init__(self, console) -> None:
        self._progress = Progress(TextColumn("{task.fields[name]:<12.12}", markup=False),
                                  TextColumn("{task.fields[step]:<9.9}", markup=False), BarColumn(bar_width=20),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.fields[detail]}", markup=False),
                                  console=console, transient=False, refresh_per_second=4)
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._progress.start()

    def _id(self, task: str):
        if task not in self._ids:
            self._ids[task] = self._progress.add_task("", total=None, name=task, step="", detail="")
        return self._ids[task]

    def step(self, task: str, step: str, detail: str = "") -> None:
        with self._lock:
            self._progress.update(self._id(task), step=step, detail=detail[:40])

    def progress(self, task: str, done: int, total: int, detail: str = "") -> None:
        with self._lock:
            fields = {"detail": detail[:40]} if detail else {}
            self._progress.update(self._id(task), completed=done, total=total, **fields)

    def close(self) -> None:
        self._progress.stop()


_current: Reporter = Reporter()


def report(task: str, step: str, detail: str = "") -> None:
    """Tell whoever watches that ``task`` is now at ``step`` (prepare, plan, train, evaluate, ...)."""
    _current.step(task, step, detail)


def progress(task: str, done: int, total: int, detail: str = "") -> None:
    _current.progress(task, done, total, detail)


@contextlib.contextmanager
def reporting(console, *, live: bool | None = None) -> Iterator[Reporter]:
    """Install a reporter for ``console`` (live on a terminal, plain lines elsewhere) until the block ends."""
    global _current
    live = console.is_terminal if live is None else live
    reporter: Reporter = RichReporter(console) if live else PlainReporter(console)
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous
        reporter.close()


class ReportTraining(TrainerCallback):
    """Reports one task's optimizer steps, and each epoch's validation scores, to the installed reporter."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.done = False

    def on_train_begin(self, args, state, control, **kwargs):
        progress(self.task, state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        self.done = True  # evaluations after this score the best epoch again: not a new epoch

    def on_step_end(self, args, state, control, **kwargs):
        progress(self.task, state.global_step, state.max_steps)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        shown = {k[len("eval_"):]: v for k, v in (metrics or {}).items()
                 if k.startswith("eval_") and isinstance(v, float) and not k.endswith(("runtime", "per_second"))}
        if shown and not self.done:
            text = ", ".join(f"{k} {v:.3f}" for k, v in list(shown.items())[:2])
            progress(self.task, state.global_step, state.max_steps, f"epoch {state.epoch:.0f}: {text}")


def training_callback(task: str) -> ReportTraining:
    """A transformers ``TrainerCallback`` that reports the task's optimizer steps, epochs and validation."""
    return ReportTraining(task)


@contextlib.contextmanager
def logging_to(path) -> Iterator[None]:
    """Within the block, send every log record (Prefect's flow and task runs, redflow's steps, MLflow, Python
    warnings) to the file ``path`` and keep them off the console, where the reporter shows one line per task.
    Everything is restored afterwards.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(TaskRunNaming("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))  # lines name tasks
    root = logging.getLogger()
    saved_levels: list[tuple[Any, int]] = [(root, root.level)]
    env = {k: os.environ.get(k) for k in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "REDFLOW_PROGRESS")}
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"  # if Prefect configures logging later
    os.environ["REDFLOW_PROGRESS"] = "0"  # no tqdm bar from the Trainer: the reporter shows progress
    for h in root.handlers:  # if Prefect configured logging already; left quiet: its temporary server logs
        if type(h).__name__ == "PrefectConsoleHandler":  # its shutdown at exit, after this block
            h.setLevel(logging.CRITICAL)
    for name in ("mlflow", "alembic"):  # libraries with console handlers of their own
        for h in logging.getLogger(name).handlers:
            if type(h) is logging.StreamHandler:
                saved_levels.append((h, h.level))
                h.setLevel(logging.CRITICAL)
    targets = [root] + [logging.getLogger(n) for n in ("mlflow", "alembic")]
    for logger in targets:
        logger.addHandler(handler)
    levels = {"flows": logging.INFO, "tasks": logging.INFO, "registry": logging.INFO, "red": logging.INFO,
              "prefect.flow_runs": logging.INFO, "prefect.task_runs": logging.INFO,  # whatever PREFECT_LOGGING_LEVEL
              "httpx": logging.WARNING}  # one line per API call otherwise
    for name, level in levels.items():
        logger = logging.getLogger(name)
        saved_levels.append((logger, logger.level))
        logger.setLevel(level)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger in targets:
            logger.removeHandler(handler)
        handler.close()
        for obj, level in saved_levels:
            obj.setLevel(level)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
