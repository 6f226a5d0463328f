"""From a finished Trainer to a :class:`~tasks.training.result.TrainResult`, the same for a task trained alone
and for each task of a co-training: the epoch table and the best epoch (the paper's protocol: chosen on
validation, reported on test), the majority-class floor and whether the training left it, the divergence
verdict, the saved artifact and ``result.json``."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from red.io import base_dtype
from red.model import EditTensors
from tasks.evaluate.metrics import metric_set
from tasks.lifecycle.identity import Identity

from .config import TrainConfig
from .errors import TrainingDiverged
from .floors import learned, majority_scores
from .guards import ended_diverged
from .result import TrainResult


def _is_quality(key: str, value: Any, prefix: str) -> bool:
    """A quality metric (Trainer adds runtime, throughput and the epoch to every evaluation)."""
    return (key.startswith(prefix) and isinstance(value, (int, float))
            and not any(s in key for s in ("runtime", "per_second", "epoch")))


def quality_metrics(raw: dict[str, Any], prefix: str) -> dict[str, float]:
    """The quality metrics of a Trainer evaluation (``raw``), their ``prefix`` (``eval_``, ``test_``) dropped."""
    return {k[len(prefix):]: float(v) for k, v in raw.items() if _is_quality(k, v, prefix)}


def epoch_of(entry: dict) -> int:
    """The epoch (1-based) a log ``entry`` belongs to: the Trainer logs fractional epochs, ``1.0`` ending the first."""
    return math.ceil(entry.get("epoch", 0) - 1e-9) or 1


def epoch_table(history: list[dict], metric: str) -> list[dict[str, float]]:
    """One row per epoch of a log ``history``: ``epoch``, ``validation_<m>`` for every quality metric, and the
    epoch's mean ``train_loss``; only epochs that were evaluated on ``metric``."""
    epochs: dict[int, dict[str, float]] = {}
    losses: dict[int, list[float]] = {}
    for h in history:
        ep = epoch_of(h)
        if "loss" in h:
            losses.setdefault(ep, []).append(h["loss"])
        if f"eval_{metric}" in h:
            row = epochs.setdefault(ep, {"epoch": ep})
            for k, v in h.items():
                if _is_quality(k, v, "eval_"):
                    row["validation_" + k[len("eval_"):]] = float(v)
    for ep, row in epochs.items():
        if losses.get(ep):
            row["train_loss"] = sum(losses[ep]) / len(losses[ep])
    return [epochs[e] for e in sorted(epochs)]


def best_epoch(epochs: list[dict], metric: str, greater: bool) -> int:
    """The epoch with the best ``validation_<metric>`` (NaN scores skipped; the last epoch when none is scored)."""
    key = f"validation_{metric}"
    scored = [e for e in epochs if key in e and not math.isnan(e[key])]
    if not scored:
        return int(epochs[-1]["epoch"]) if epochs else 0
    return int((max if greater else min)(scored, key=lambda e: e[key])["epoch"])


def validation_floor(data) -> dict[str, float] | None:
    """The majority-class / chance scores of the validation split for the task's metrics (tasks.training.floors);
    None for language-model tasks."""
    if data.task_type not in ("classification", "regression") or len(data.validation) == 0:
        return None
    return majority_scores(list(data.validation[data.label_column]), metric_set(data.task, data.metric),
                           task_type=data.task_type)


def edit_extra(data, validation: dict[str, float], test: dict[str, float]) -> dict[str, Any]:
    """The ``extra`` an edit file records about its task: what serving and registration read back."""
    return {"task": data.name, "task_type": data.task_type, "label_list": data.label_list,
            "text_columns": list(data.text_columns), "metric": data.metric, "data_hash": data.data_hash,
            "validation": validation, "test": test}


def result_params(config: TrainConfig, hp: dict[str, Any], model, text_columns=()) -> dict[str, Any]:
    """The flat hyperparameters a ``TrainResult`` records (logged as the MLflow run's params)."""
    return {"method": config.method, "model": config.model, "revision": config.revision, "preset": config.preset,
            "seed": config.seed, "precision": config.precision, "base_dtype": base_dtype(model),
            "text_columns": list(text_columns), **{f"edit.{k}": v for k, v in config.edit.items()}, **hp}


def save_final(model, config: TrainConfig, data, out_dir: Path, tokenizer, validation, test) -> Path:
    """The artifact of the best epoch: an edit file for edit methods (an ``EditedModel``, or one task of a
    co-training's bank), else a PEFT adapter or a checkpoint (with the tokenizer)."""
    extra = edit_extra(data, validation, test)
    if isinstance(model, EditTensors):
        return model.save(out_dir / f"{data.name}.safetensors", base_model=config.model, revision=config.revision,
                          extra=extra)
    target = out_dir / ("adapter" if config.method == "lora" else "model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def finish(data, config: TrainConfig, out_dir: Path, *, model, history: list[dict], metric: str,
           evaluate: Callable[[str], dict[str, Any]], restore_best: Callable[[int], None] | None = None,
           tokenizer=None, start_loss: float | None, learning_rate: float, params: dict[str, Any],
           trainable_parameters: int, edit_parameters: int, truncated: dict[str, int], global_step: int,
           steps_trained: int, started: float, resumed_from: str | None, init: str, identity: Identity,
           co_trained_with: list[str] | None = None) -> TrainResult:
    """The :class:`TrainResult` of one task's finished training, saved with its artifact under ``out_dir``.

    ``model``: what is saved (:func:`save_final`); ``history``: the task's log history, named as a training alone
    names it (``loss``, ``eval_<m>``, ``epoch``, ``step``); ``metric``: the primary metric (``loss`` for
    language models, where lower is better); ``evaluate(split)``: the trainer's raw metrics of the task on
    ``"eval"`` (validation) or ``"test"``, keys prefixed ``<split>_``; ``restore_best(epoch)``: loads the best
    epoch's tensors first where the Trainer did not (co-training). ``start_loss``/``learning_rate``: the loss
    before the first step and the task's rate (the divergence verdict); the other arguments are recorded as given.

    Raises :class:`TrainingDiverged` (nothing written) when the training did not leave the majority-class floor
    (or has none) and its validation loss ended more than ``config.divergence_factor`` times ``start_loss``.
    """
    greater = metric != "loss"
    epochs = epoch_table(history, metric)
    best = best_epoch(epochs, metric, greater)
    if restore_best is not None:
        restore_best(best)
    validation = quality_metrics(evaluate("eval"), "eval_")
    floor = validation_floor(data)
    did_learn = learned([e.get(f"validation_{metric}") for e in epochs] + [validation.get(metric)],
                        (floor or {}).get(metric), higher_is_better=greater)
    if did_learn is not True:  # no better than the floor (or an LM): a validation loss that ran away is divergence
        ended = ended_diverged(validation.get("loss"), start_loss, config.divergence_factor, learning_rate)
        if ended:
            raise TrainingDiverged(ended)
    test = quality_metrics(evaluate("test"), "test_")  # after the verdict: a diverged training is not tested
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    edit_path = save_final(model, config, data, out_dir, tokenizer, validation, test)
    result = TrainResult(
        task=data.name, method=config.method, base_model=config.model, primary_metric=metric,
        edit_path=str(edit_path), output_dir=str(out_dir), best_epoch=best, epochs=epochs,
        steps=[{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate", 0.0)}
               for h in history if "loss" in h and "step" in h],
        validation=validation, test=test, trainable_parameters=trainable_parameters,
        edit_parameters=edit_parameters, params=params, data_hash=data.data_hash, base_revision=config.revision,
        base_fingerprint=model.base_fingerprint if isinstance(model, EditTensors) else None,
        task_type=data.task_type, label_list=data.label_list, truncated=dict(truncated),
        seconds=round(time.time() - started, 2), started_at=started, global_step=global_step,
        steps_trained=steps_trained,
        resumed_from=resumed_from, init=init, identity=identity.to_dict(),
        recipe=json.loads(json.dumps(config.recipe(data.task or data.name), default=str)),
        co_trained_with=list(co_trained_with or []), floor=floor or {}, learned=did_learn,
    )
    result.save(out_dir / "result.json")
    return result
