"""Train one task with RED (or a baseline) on a frozen base model, with transformers' Trainer: :func:`train`.

The same function trains every method the paper compares, so its Table 1 can be
rerun: ``red`` (with position/kind variants), ``loreft``/``direft``/``nodireft`` (ReFT),
``lora`` (PEFT), ``bitfit`` and ``full``, plus ``head`` (the frozen base with only the task
head trained: the floor a method must beat to have learned anything of its own). The Trainer does the loop, mixed
precision, gradient accumulation and multi-GPU (launch with ``torchrun`` or
``accelerate launch``); we add four things it lacks for edits:

- checkpoints hold only the trainable tensors (kilobytes for RED), so saving every
  epoch is free and a crashed run resumes from the last epoch;
- a NaN/inf loss stops training at once with a clear error instead of burning GPU hours;
- the paper's protocol: the best epoch is chosen on validation and reported on test;
- the result is a ``TrainResult`` that the registry logs to MLflow (:mod:`tasks.training.finish`).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, set_seed

from red import pretrained
from tasks.data import encode
from tasks.lifecycle.identity import Identity

from .config import EDIT_METHODS, TrainConfig, training_identity
from .control import trainer_slot
from .finish import finish, result_params
from .guards import DivergenceGuard, StopOnRequest, initial_loss
from .models import (center_regression_head, load_base_model, load_init_state, load_tokenizer, precision_dtype,
                     prepare_model)
from .result import TrainResult
from .trainer import EditTrainer, checkpoint_step, compute_metrics_for, quiet_console_logging, training_arguments

log = logging.getLogger(__name__)


def train(data, config: TrainConfig, out_dir: str | Path, *, tokenizer=None, model=None,
          callbacks: list | None = None, resume_from: str | Path | None = None,
          init_state: dict[str, torch.Tensor] | None = None, init_note: str = "fresh",
          identity: Identity | None = None) -> TrainResult:
    """Train ``config.method`` on prepared ``data`` (tasks.data.TaskData); write artifacts under ``out_dir``.

    ``model``/``tokenizer`` may be passed in (already loaded); otherwise they are loaded from ``config.model``.
    ``callbacks`` are transformers ``TrainerCallback``s (progress reporting, early stopping...).
    ``resume_from``: a complete checkpoint of a crashed training of the same inputs (the caller decides;
    see :mod:`tasks.lifecycle.attempts`). Without it training starts from step 0, whatever ``out_dir`` holds.
    ``init_state``: edit-file tensors (``edit.*``/``head.*``) to start from instead of the identity
    (``init: production``); ``init_note`` says where they came from. ``identity``: the inputs'
    :class:`~tasks.lifecycle.identity.Identity` if the caller computed it already.

    Raises :class:`TrainingError` (NaN loss, bad model or data) and :class:`TrainingDiverged`.
    """
    if config.tune is not None:
        raise ValueError("this config has a tune block: run its search (tasks.tuning.study; the retrain flow and "
                         "`redflow bench glue --tune` do), or train one config without tune")
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = config.resolved(data.task or data.name)  # presets are per GLUE task of the data, whatever its name
    with trainer_slot():  # the seed and the process's accelerate state are this training's until it ends
        set_seed(config.seed)
        tokenizer = tokenizer or load_tokenizer(config.model, config.revision, data.task_type)
        encoded = encode(data, tokenizer, max_length=hp["max_length"])
        fresh: list[str] = []
        if model is None:
            model, fresh = load_base_model(config.model, data.task_type, revision=config.revision,
                                           num_labels=data.num_labels or 2, label_list=data.label_list,
                                           dtype=precision_dtype(config.precision), tokenizer=tokenizer)
        pretrained.set_pad_token(tokenizer, model)
        model, edit_parameters = prepare_model(model, config.method, hp, config.edit, data.task_type, fresh)
        if init_state is not None:
            load_init_state(model, init_state, init_note, data.label_list)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        classification = data.task_type in ("classification", "regression")
        metric = data.metric if classification else "loss"
        greater = metric != "loss"
        args = training_arguments(config, hp, out_dir, metric_for_best_model=f"eval_{metric}",
                                  greater_is_better=greater,
                                  save_total_limit=None if config.method in EDIT_METHODS else 2,
                                  # at least one logged loss an epoch: the divergence guard reads logged losses
                                  logging_steps=max(1, min(config.logging_steps, math.ceil(
                                      len(encoded.train) / (hp["batch_size"] * hp["grad_accum"])))))
        if classification:
            collator = DataCollatorWithPadding(tokenizer)
        else:
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
        if data.task_type == "regression" and fresh and init_state is None:  # a new head, not a trained one
            center_regression_head(model, collator, encoded.train, hp["eval_batch_size"])
        start = initial_loss(model, collator, encoded.train, hp["batch_size"]) if config.divergence_factor else None
        guards = [StopOnRequest()] + ([DivergenceGuard(config.divergence_factor, start)]
                                      if config.divergence_factor else [])
        trainer = EditTrainer(
            model=model, args=args, train_dataset=encoded.train, eval_dataset=encoded.validation,
            data_collator=collator, compute_metrics=compute_metrics_for(data) if classification else None,
            callbacks=guards + list(callbacks or []),
        )
        quiet_console_logging(trainer)
        resume = str(resume_from) if resume_from else None
        start_step = checkpoint_step(resume)
        if resume:
            log.info("resuming %s from %s (step %d)", data.name, resume, start_step)
        trainer.train(resume_from_checkpoint=resume)

        model.eval()
        splits = {"eval": encoded.validation, "test": encoded.test}
        return finish(
            data, config, out_dir, model=model, tokenizer=tokenizer, history=trainer.state.log_history,
            metric=metric, evaluate=lambda split: trainer.evaluate(splits[split], metric_key_prefix=split),
            start_loss=start, learning_rate=hp["learning_rate"],
            params=result_params(config, hp, model, data.text_columns), trainable_parameters=trainable,
            edit_parameters=edit_parameters, truncated=encoded.truncated,
            global_step=int(trainer.state.global_step),
            steps_trained=int(trainer.state.global_step) - start_step, started=started, resumed_from=resume,
            init=init_note, identity=identity or training_identity(data, config))
