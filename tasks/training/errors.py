"""Why a training stopped: the errors single-task training and co-training raise (or report per task)."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, unusable data or model); the message says what to change."""


class TrainingDiverged(TrainingError):
    """The loss stayed finite but ran far above where it started: the edit is not worth registering."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or SIGTERM: the CLI, a Prefect worker's cancellation): the attempt is
    left as a crash, resumable."""
