"""The process's trainings: one at a time (accelerate's state is per process), and stopped on request.

A training checks :func:`stop_requested` after every optimizer step (``tasks.training.guards.StopOnRequest``);
the CLI's signal handlers and the flows' :func:`stop_training_when_interrupted` ask for the stop.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_STOP = threading.Event()
_STOPPED_TRAINING = threading.Event()  # a stop request found a training in its slot
_ONE_TRAINER = threading.RLock()
_in_slot = 0  # trainings holding the slot (one thread at a time; re-entered by the same thread)


@contextlib.contextmanager
def trainer_slot() -> Iterator[None]:
    """Hold the process's one training slot while a ``Trainer`` is built, trains and evaluates.

    accelerate keeps one ``AcceleratorState`` per process, and every ``TrainingArguments`` resets it: a second
    training built in another thread (the threads task runner, tuning trials) would wipe the first one's state
    mid-training (``AttributeError: 'AcceleratorState' object has no attribute ...``) or mix their precisions.
    So trainings in one process take turns; data preparation, evaluation and registration still overlap, and
    trainings run side by side in separate processes (the Dask and Ray task runners, ``bench glue --parallel``).
    """
    global _in_slot
    if not _ONE_TRAINER.acquire(blocking=False):
        log.info("another training is running in this process; this one waits for it (accelerate's state is "
                 "one per process: use the dask or ray task runner for trainings side by side)")
        _ONE_TRAINER.acquire()
    _in_slot += 1
    try:
        yield
    finally:
        _in_slot -= 1
        _ONE_TRAINER.release()


def request_stop() -> None:
    """Ask every training in this process to stop at its next optimizer step (a signal handler may call it:
    training runs in worker threads, which a KeyboardInterrupt in the main thread does not reach). Whether a
    training was running then is kept for :func:`stopped_a_training`."""
    if _in_slot:
        _STOPPED_TRAINING.set()
    _STOP.set()


def clear_stop() -> None:
    """Forget a stop request, and whether it stopped a training (a new run in the same process trains again)."""
    _STOP.clear()
    _STOPPED_TRAINING.clear()


def stopped_a_training() -> bool:
    """Whether a stop request since the last :func:`clear_stop` found a training of this process running (it then
    stops at its next optimizer step, its attempt resumable), rather than none started yet or all finished.
    Trainings in other processes (the Dask and Ray task runners' workers) are not seen here."""
    return _STOPPED_TRAINING.is_set()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared since): trainings stop at their next step."""
    return _STOP.is_set()


@contextlib.contextmanager
def stop_training_when_interrupted() -> Iterator[None]:
    """Around a flow body that submits trainings to a task runner: when the body is left by an interruption rather
    than an error (an exception that is not an ``Exception``: Prefect's ``TerminationSignal`` for SIGTERM, a
    ``KeyboardInterrupt`` for Ctrl-C, ``SystemExit``), first ask every training in this process to stop at its next
    optimizer step (:func:`request_stop`), then let the interruption go on.

    Why: Prefect's flow engine turns SIGTERM (a worker or ``serve()`` runner cancelling the flow run, systemd,
    Kubernetes, ``kill``) into a ``TerminationSignal`` in the main thread, and the flow's task runner then waits
    for its worker threads; without the stop request that wait lasts until the trainings end (past a worker's
    30 s grace before SIGKILL). The body sees the exception before its task runner shuts down, so every flow
    that owns a task runner (the retrain-tasks subflow, a tune subflow) wraps its body in this. No signal handler
    is replaced: Prefect's own must stay installed for its runner to acknowledge a cancellation, which then ends
    the flow run Cancelled rather than Crashed.
    """
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, Exception):
            request_stop()
        raise
