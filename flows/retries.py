"""Which failed Prefect task runs are retried: only errors that may pass (I/O, a busy database).

Shared by the retrain's tasks (flows/retrain.py) and the tuning trials (flows/tuning.py). Bad data, a bad
config or a NaN loss would fail the same way again, so they are never retried.
"""
from __future__ import annotations

from typing import Any


def is_transient(state: Any) -> bool:
    """Whether the failed Prefect ``state`` holds an error that may pass: an ``OSError`` (but not a missing file),
    a timeout or a lost connection. Any other error, or a state that did not fail, is False."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError) as exc:
        return not isinstance(exc, FileNotFoundError)
    except Exception:
        return False
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn`` (called with the task, its run and the failed state): retry transient
    errors only (:func:`is_transient`)."""
    return is_transient(state)
