"""What a retrain's Prefect log says: each task's line names its task, and the run a deployment started holds
every task's decision.

* ``TaskRunNaming``: a log formatter that begins a task run's line with the task run's name (``train-sentiment:
  Finished in state Completed()``) unless the line already begins with its task's name (redflow's own lines,
  ``sentiment: trained 57 optimizer steps``). Prefect's own lines (``Finished in state Completed()``, retries)
  carry the run's name only as a field that ``prefect flow-run logs`` does not print.
  ``name_task_runs_in_api_logs()`` gives it to Prefect's API log handler of this process (what the Prefect UI
  and ``prefect flow-run logs`` show); the CLI's log file uses it too (flows/console.py).
* ``decision_line(row)``: one task's outcome from its summary row (task, version, decision, reason), which the
  retrain flow logs from its own run: the tasks run in its ``retrain-tasks`` subflow (the subflow owns the
  config's task runner), whose logs ``prefect flow-run logs <the deployment's run>`` does not show.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from prefect.logging.handlers import APILogHandler

TASK_RUN_LOGGER = "prefect.task_runs"


def names_its_task(message: str, task_run_name: str) -> bool:
    """Whether ``message`` begins with the task of ``task_run_name`` (``sentiment`` of ``train-sentiment``), or
    with the run's own name."""
    first = re.split(r"[\s:]", message.lstrip(), maxsplit=1)[0]
    return bool(first) and (first == task_run_name or task_run_name.endswith("-" + first))


class TaskRunNaming(logging.Formatter):
    """Prefixes a task run's log line with the run's name (see the module's docstring); other lines as they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        name = getattr(record, "task_run_name", None)
        if not name or names_its_task(record.getMessage(), name):
            return text
        message = record.getMessage()
        return text.replace(message, f"{name}: {message}", 1) if message in text else f"{name}: {text}"


def name_task_runs_in_api_logs() -> int:
    """Give Prefect's API log handlers of the task-run logger :class:`TaskRunNaming` (they send the bare message
    otherwise); how many handlers now have it. Idempotent; a handler with a formatter of its own (a user's logging
    config) is left alone."""
    count = 0
    for handler in logging.getLogger(TASK_RUN_LOGGER).handlers:
        if isinstance(handler, APILogHandler) and (handler.formatter is None
                                                   or isinstance(handler.formatter, TaskRunNaming)):
            if handler.formatter is None:
                handler.setFormatter(TaskRunNaming())
            count += 1
    return count


def decision_line(row: dict[str, Any]) -> str:
    """One task's outcome, from its retrain summary row: ``sentiment v2: promoted (reason)``,
    ``topic: unchanged, v1 (reason)``, ``paraphrase: failed at train (error)``."""
    task, status = row["task"], row["status"]
    if status in ("failed", "diverged"):
        return f"{task}: {status} at {row.get('step', '?')} ({row.get('error', '')})"
    if status in ("unchanged", "busy"):
        version = f", v{row['version']}" if row.get("version") else ""
        return f"{task}: {status}{version} ({row.get('reason', '')})"
    return f"{task} v{row['version']}: {row['decision']} ({row.get('reason', '')})"
