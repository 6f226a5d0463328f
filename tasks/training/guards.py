"""What stops a training that is going wrong, or that was asked to stop.

- a non-finite loss: :func:`nan_message` (the Trainers raise it at once);
- a finite loss that runs away: :func:`divergence_message` on the logged losses (:class:`DivergenceGuard`), and
  :func:`ended_diverged` on the final validation loss, both against :func:`initial_loss`, the loss before step 1;
- a stop request (Ctrl-C, SIGTERM): :class:`StopOnRequest` (``tasks.training.control``).
"""
from __future__ import annotations

import logging
import math

import torch
from transformers import TrainerCallback

from .control import stop_requested
from .errors import TrainingDiverged, TrainingInterrupted

log = logging.getLogger(__name__)


class StopOnRequest(TrainerCallback):
    """Stops training at the next optimizer step (or micro-batch of one) once
    :func:`~tasks.training.control.request_stop` was called,
    with :class:`~tasks.training.errors.TrainingInterrupted` (the last checkpoint is kept: the attempt resumes)."""

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested():
            message = (f"stopped on request at step {state.global_step} of {state.max_steps}; the last checkpoint "
                       "is kept and the next run of the same inputs resumes from it")
            log.warning("training %s", message)  # Prefect's crash message of the task run replaces the exception's
            raise TrainingInterrupted(message)

    on_substep_end = on_step_end  # between the micro-batches of one optimizer step too (grad_accum > 1)


class DivergenceGuard(TrainerCallback):
    """Stops training when the loss runs away while staying finite (lr far too high): raises
    :class:`~tasks.training.errors.TrainingDiverged` with :func:`divergence_message`'s verdict.

    ``factor``: how many times the start loss counts as diverged; ``start``: the loss before the first step
    (:func:`initial_loss`), or None to compare with the first logged loss.
    """

    def __init__(self, factor: float, start: float | None = None):
        self.factor = factor
        self.start = start

    def on_log(self, args, state, control, logs=None, **kwargs):
        losses = [h["loss"] for h in state.log_history if "loss" in h and "step" in h]
        message = divergence_message(losses, self.factor, state.global_step, args.learning_rate, self.start)
        if message:
            raise TrainingDiverged(message)


def nan_message(loss: float, step: int, learning_rate: float) -> str:
    """What a non-finite training loss means and what to change (the NaN guard's error)."""
    return (f"the training loss became {loss} at step {step}. Lower the learning rate (now {learning_rate}), use "
            "fp32/bf16 instead of fp16, or check the data for empty or extreme rows, then rerun (a changed config "
            "trains afresh).")


def divergence_message(losses: list[float], factor: float, step: int, learning_rate: float,
                       start: float | None = None) -> str | None:
    """The divergence guard's verdict on the logged losses so far: None, or why the training diverged.

    Diverged: the mean of the last (up to 5) logged losses exceeds ``factor`` times where training
    started: ``start``, the loss measured before the first step, or else the first logged loss (a
    finite loss that ran away, e.g. a learning rate far too high). With ``start`` the very first log
    is checked too: a logged loss averages ``logging_steps`` steps, which may all have run away.
    """
    if start is not None and math.isfinite(start):
        if not losses:
            return None
        first, recent = start, losses[-min(len(losses), 5):]
    elif len(losses) < 2:
        return None
    else:
        first, recent = losses[0], losses[-min(len(losses) - 1, 5):]
    current = sum(recent) / len(recent)
    if math.isfinite(current) and current > factor * max(first, 1e-3):
        return (f"the training loss rose from {first:.4g} to {current:.4g} by step {step} (more than {factor:g}x "
                f"where it started): the training diverged and is not registered. Lower the learning rate (now "
                f"{learning_rate:g}) or raise divergence_factor if this is expected.")
    return None


def ended_diverged(validation_loss: float | None, start: float | None, factor: float | None,
                   learning_rate: float) -> str | None:
    """Why a training that ended is diverged, or None: its (best epoch's) validation loss is more than
    ``factor`` times the loss before the first step. Catches runs too short for the training-loss guard
    (one or two steps whose last update ran away). The caller asks only when the metric did not leave its
    floor (or for LMs, whose metric is the loss): an overfit classifier may have a high loss and a good score."""
    if not factor or start is None or validation_loss is None or not math.isfinite(start):
        return None
    if not math.isfinite(validation_loss) or validation_loss > factor * max(start, 1e-3):
        return (f"the validation loss ended at {validation_loss:.4g}, more than {factor:g}x the loss before training "
                f"({start:.4g}): the training diverged and is not registered. Lower the learning rate (now "
                f"{learning_rate:g}) or raise divergence_factor if this is expected.")
    return None


def _model_loss(model, batch):
    return getattr(model(**{k: v for k, v in batch.items() if hasattr(v, "to")}), "loss", None)


@torch.no_grad()
def initial_loss(model, collator, rows, batch_size: int, loss_of=_model_loss) -> float | None:
    """The model's mean loss on the first rows of ``rows`` before training (the divergence guard's baseline).

    ``loss_of(model, batch)`` computes it (default: the model's own ``loss`` output; co-training passes its
    trainer's per-task loss). Deterministic (evaluation mode, the dataset's first rows, no sampler): it draws
    nothing from any random generator, so training runs exactly as without it.
    """
    n = min(len(rows), max(1, batch_size))
    if n == 0:
        return None
    was_training = model.training
    model.eval()
    try:
        batch = collator([rows[i] for i in range(n)])
        device = next(p for p in model.parameters()).device
        loss = loss_of(model, {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()})
        return float(loss) if loss is not None and math.isfinite(float(loss)) else None
    except Exception:  # noqa: BLE001 - a baseline only: the guard falls back to the first logged loss
        return None
    finally:
        model.train(was_training)
