"""Train one task with RED (or a baseline) on a frozen base model, with transformers' Trainer.

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
- the result is a ``TrainResult`` that the registry logs to MLflow.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

import torch
# Resolved once, when this module is imported: transformers' lazy module is not thread-safe on first access,
# and trials/tasks in threads that import a name at the same moment got "cannot import name 'TrainerCallback'".
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: F401
from transformers.trainer_pt_utils import find_batch_size
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import load_file, save_file

from .presets import preset_values
from .lifecycle.identity import Identity, base_id, code_version, config_hash, dependency_versions
from .result import TrainResult
from .floors import learned, majority_scores
from .tune import TuneConfig

log = logging.getLogger(__name__)

Method = Literal["red", "loreft", "direft", "nodireft", "lora", "bitfit", "full", "head"]
EDIT_METHODS = ("red", "loreft", "direft", "nodireft")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, unusable data or model); the message says what to change."""


class TrainingDiverged(TrainingError):
    """The loss stayed finite but ran far above where it started: the edit is not worth registering."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or SIGTERM: the CLI, a Prefect worker's cancellation): the attempt is
    left as a crash, resumable."""


_STOP = threading.Event()
_ONE_TRAINER = threading.RLock()


@contextlib.contextmanager
def trainer_slot():
    """Hold the process's one training slot while a ``Trainer`` is built, trains and evaluates.

    accelerate keeps one ``AcceleratorState`` per process, and every ``TrainingArguments`` resets it: a second
    training built in another thread (the threads task runner, tuning trials) would wipe the first one's state
    mid-training (``AttributeError: 'AcceleratorState' object has no attribute ...``) or mix their precisions.
    So trainings in one process take turns; data preparation, evaluation and registration still overlap, and
    trainings run side by side in separate processes (the Dask and Ray task runners, ``bench glue --parallel``).
    """
    if not _ONE_TRAINER.acquire(blocking=False):
        log.info("another training is running in this process; this one waits for it (accelerate's state is "
                 "one per process: use the dask or ray task runner for trainings side by side)")
        _ONE_TRAINER.acquire()
    try:
        yield
    finally:
        _ONE_TRAINER.release()


def request_stop() -> None:
    """Ask every training in this process to stop at its next optimizer step (a signal handler may call it:
    training runs in worker threads, which a KeyboardInterrupt in the main thread does not reach)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


@contextlib.contextmanager
def stop_training_when_interrupted():
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


def _stop_on_request():
    from transformers import TrainerCallback

    class StopOnRequest(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _STOP.is_set():
                raise TrainingInterrupted(f"stopped on request at step {state.global_step}; the last checkpoint "
                                          "is kept and the next run of the same inputs resumes from it")

    return StopOnRequest()


class TrainConfig(BaseModel):
    """Everything that decides a training run. Fields left unset come from ``preset``, then defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name (e.g. roberta-base) or local checkpoint folder.")
    revision: str | None = None
    method: Method = "red"
    edit: dict[str, Any] = Field(default_factory=dict, description="red.EditConfig fields: position, kind, layers, rank...")
    preset: str | None = None
    learning_rate: float | None = None
    epochs: float | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    grad_accum: int | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    warmup_steps: int | None = None
    lr_scheduler: str | None = None
    max_length: int | None = None
    label_smoothing: float | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: list[str] | None = None
    max_steps: int | None = Field(default=None, description="Stop after this many optimizer steps (quick runs).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 42
    resume: bool = Field(default=True, description="Resume a crashed training of exactly the same inputs (see "
                         "tasks.lifecycle.attempts); a finished training is never resumed.")
    init: Literal["fresh", "production"] = Field(
        default="fresh", description="Start from the identity (fresh) or from the task's current production edit "
        "(vectors and head): a cheap incremental update. Edit methods only.")
    divergence_factor: float | None = Field(
        default=5.0, gt=1, description="Stop and report 'diverged' when an epoch's mean training loss exceeds this "
        "many times the first logged loss (a finite loss that ran away); null disables the check.")
    logging_steps: int = 10
    tune: TuneConfig | None = Field(default=None, description="Search the learning rate (and optionally warmup, "
                                    "weight decay, LoRA rank) with Optuna instead of training once (tasks.tune).")

    @model_validator(mode="after")
    def _init_needs_an_edit(self) -> "TrainConfig":
        if self.init == "production" and self.method not in EDIT_METHODS:
            raise ValueError(f"init: production continues from the production edit's vectors and head, which only "
                             f"edit methods ({', '.join(EDIT_METHODS)}) have; method {self.method!r} must start fresh")
        return self

    @field_validator("tune")
    @classmethod
    def _rank_needs_lora(cls, tune: TuneConfig | None, info):
        method = info.data.get("method")
        if tune is not None and tune.lora_r is not None and method != "lora":
            raise ValueError(f"lora_r searches LoRA's rank, but the method is {method!r}; remove lora_r or set "
                             "method: lora")
        return tune

    def resolved(self, task: str) -> dict[str, Any]:
        """Hyperparameters after the preset and defaults are applied; explicit fields win."""
        defaults = dict(learning_rate=1e-3, epochs=3, batch_size=32, grad_accum=1, weight_decay=0.0,
                        warmup_ratio=0.06, warmup_steps=0, lr_scheduler="linear", max_length=256,
                        label_smoothing=0.0, lora_r=8, lora_alpha=8, lora_dropout=0.0, lora_targets=None)
        values = dict(defaults)
        if self.preset:
            values.update(preset_values(self.preset, self.method, task))
        values.update({k: v for k, v in self.model_dump().items() if v is not None and k in defaults})
        values["eval_batch_size"] = self.eval_batch_size or max(values["batch_size"], 32)
        return values

    def recipe(self, task: str) -> dict[str, Any]:
        """Everything besides data and base weights that decides what training produces.

        Hashed into the training identity (:mod:`tasks.lifecycle.identity`): preset and defaults are applied
        first, so ``{}`` and the preset's explicit values hash alike; fields that cannot change the
        result (logging, evaluation batch size, resuming) and other methods' settings are left out.
        """
        hp = self.resolved(task)
        hp.pop("eval_batch_size", None)
        if self.method != "lora":
            for key in [k for k in hp if k.startswith("lora_")]:
                hp.pop(key)
        edit: dict[str, Any] | None = None
        if self.method in EDIT_METHODS:
            from red import EditConfig

            edit = EditConfig(method=self.method, **self.edit).model_dump(mode="json")
        recipe = {"method": self.method, "edit": edit, **hp, "seed": self.seed, "precision": self.precision,
                  "max_steps": self.max_steps, "init": self.init, "divergence_factor": self.divergence_factor}
        if self.tune is not None:  # a searched training: the search decides the edit (untuned recipes hash as before)
            recipe["tune"] = self.tune.recipe()
        return recipe


# ---- model construction ---------------------------------------------------------------------
def load_base_model(model: str, task_type: str, *, revision: str | None = None, num_labels: int = 2,
                    label_list: list[str] | None = None, dtype: torch.dtype | None = None, tokenizer=None):
    """``(model, fresh)``: the base model for a task type (red.pretrained's loader, which serving uses too)
    and the modules transformers initialised fresh for the task; offline-friendly errors."""
    from red.pretrained import load_base_model as load

    try:
        return load(model, task_type, revision=revision, dtype=dtype, label_list=label_list, num_labels=num_labels,
                    tokenizer=tokenizer)
    except OSError as exc:
        raise TrainingError(
            f"cannot load base model {model!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Pass a local "
            "checkpoint folder, or a hub name with network access (HF_HUB_OFFLINE must be unset)."
        ) from exc


def load_tokenizer(model: str, revision: str | None = None, task_type: str = "classification"):
    from red.pretrained import load_tokenizer as load

    tok = load(model, revision=revision)
    if task_type == "causal_lm":
        tok.padding_side = "right"  # training; generation switches to left padding itself
    return tok


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the frozen base is loaded in for a training precision (its weights are never updated)."""
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def task_head(model, edit: dict[str, Any], fresh: list[str]) -> list[str]:
    """The modules trained and saved with the task: the task modules around the backbone and anything
    transformers initialised fresh; an explicit ``edit.head`` must cover the fresh ones."""
    from red.targets import task_head_modules

    explicit = edit.get("head")
    if isinstance(explicit, list):
        missing = [m for m in fresh if not any(m == h or m.startswith(h + ".") for h in explicit)]
        if missing:
            raise TrainingError(f"loading the base initialises {missing} fresh for this task, but edit.head={explicit} "
                                "does not train them, so the saved model could not reproduce the trained one. Add them "
                                "to edit.head (or leave head unset).")
        return list(explicit)
    if explicit == "none":
        if fresh:
            raise TrainingError(f"edit.head='none' but loading the base initialises {fresh} fresh for this task; "
                                "they must be trained and saved: leave head unset")
        return []
    head = task_head_modules(model)
    return head + [m for m in fresh if not any(m == h or m.startswith(h + ".") for h in head)]


def head_for(model, edit: dict[str, Any], task_type: str, fresh: list[str]) -> list[str]:
    """The modules trained and saved with a task of ``task_type`` (see :func:`task_head`); none for language
    models, which must load complete (TrainingError when loading left modules freshly initialised)."""
    if task_type in ("classification", "regression"):
        return task_head(model, edit, fresh)
    if fresh:
        raise TrainingError(f"loading the base as a {task_type} model initialises {fresh} fresh (the checkpoint lacks "
                            "them); an edit trains on a complete language model: use a checkpoint that has them")
    return []


def prepare_model(model, method: str, hp: dict[str, Any], edit: dict[str, Any], task_type: str,
                  fresh: list[str] | None = None):
    """Freeze the base model and make the method's parameters trainable. Returns (model, edit_parameter_count).

    Trainable parameters are kept in fp32 whatever the base dtype (mixed precision computes in
    the base dtype; the optimizer updates fp32 values).
    """
    from red import attach

    head = head_for(model, edit, task_type, fresh or [])
    if method in EDIT_METHODS:
        edited = attach(model, edit_config(method, edit, head))
        _trainable_fp32(edited)
        return edited, edited.num_edit_parameters
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        from red.params import lora_targets

        targets = hp.get("lora_targets") or list(lora_targets(model))
        task = {"classification": TaskType.SEQ_CLS, "regression": TaskType.SEQ_CLS,
                "seq2seq": TaskType.SEQ_2_SEQ_LM}.get(task_type, TaskType.CAUSAL_LM)
        peft_model = get_peft_model(model, LoraConfig(
            r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
            target_modules=targets, task_type=task, modules_to_save=head or None))
        _trainable_fp32(peft_model)
        lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        return peft_model, lora
    head_prefixes = tuple(f"{h}." for h in head)
    if method == "head" and not head:
        raise TrainingError(f"method 'head' trains only the task head, and a {task_type} model has none")
    for name, p in model.named_parameters():
        if method == "full":
            p.requires_grad_(True)
        elif method == "head":
            p.requires_grad_(name.startswith(head_prefixes))
        else:  # bitfit: biases only, plus the task head
            p.requires_grad_(name.endswith(".bias") or name.startswith(head_prefixes))
    _trainable_fp32(model)
    count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head_prefixes))
    return model, count


@torch.no_grad()
def center_regression_head(model, collator, rows, batch_size: int) -> float | None:
    """Start a freshly initialised regression head at the training labels' mean; returns the shift applied.

    Why: a fresh head predicts ~0 while the labels sit far from 0 (STS-B: 0-5, mean 2.7). The MSE gradient is then
    dominated by that offset: every row says "higher", so the head and the method's own parameters (LoRA, BitFit,
    full, ReFT) spend their steps moving all predictions up together, along a direction that carries no signal
    (Pearson stays ~0, or turns negative), and a short training at a rate set for adapters (LoRA 4e-4, full 1e-5)
    ends before the offset is gone. Starting at the mean leaves the residual ``y - mean``, whose gradient is the
    signal itself, for every method alike. Pearson and Spearman do not depend on the offset, so nothing is lost.

    The output layer is the last trainable ``nn.Linear`` with one output the forward pass calls (a head of any
    architecture, the trained copy under PEFT's ``modules_to_save``). It gets ``bias += shift``; a layer without a
    bias (GPT-2's or Llama's ``score``) has its weight moved along its mean input, by as much as moves the mean
    prediction by ``shift``. The target is the mean of every training label; the prediction is measured in
    evaluation mode on the first rows (at most 256: a fresh head predicts about the same for every row), as
    :func:`initial_loss`:
    no random generator is drawn from, so training runs exactly as it would after it.
    """
    n = min(len(rows), 256)
    if n == 0:
        return None
    step = max(1, batch_size)
    batches = [collator([rows[i] for i in range(start, min(n, start + step))]) for start in range(0, n, step)]
    # the mean of every training label (no forward pass needed), not of the first rows: a file sorted by score
    # would otherwise start the head far from the mean, which is what this is for
    labels = rows["labels"] if hasattr(rows, "column_names") else [row["labels"] for row in rows]
    target = float(torch.tensor(labels, dtype=torch.float64).reshape(-1).mean())
    was_training = model.training
    model.eval()
    try:
        predicted, layer, inputs = _mean_prediction(model, batches)
        if layer is None:
            log.warning("regression head not centred: the model has no trainable one-output linear layer")
            return None
        shift = target - predicted
        if layer.bias is not None:
            layer.bias.add_(shift)
            return shift
        # no bias: move the weight along the layer's mean input (over every position it sees: a decoder's score
        # layer runs on all tokens before the last one is picked), by as much as moves the mean prediction by shift
        direction = (inputs / inputs.dot(inputs)).to(layer.weight).unsqueeze(0) if inputs.norm() > 0 else None
        if direction is None:
            return None
        layer.weight.add_(direction)
        gain = _mean_prediction(model, batches)[0] - predicted
        if abs(gain) < 1e-6:
            layer.weight.sub_(direction)
            return None
        layer.weight.add_((shift / gain - 1.0) * direction)
        return shift
    finally:
        model.train(was_training)


def _mean_prediction(model, batches) -> tuple[float, torch.nn.Linear | None, torch.Tensor]:
    """Mean model output over ``batches`` (labels left out), the last trainable one-output ``nn.Linear`` the forward
    pass called and that layer's mean input row (float64, CPU)."""
    calls: list[tuple[torch.nn.Linear, torch.Tensor, int]] = []

    def record(module, inputs, output):
        flat = inputs[0].detach().reshape(-1, module.in_features).double()
        calls.append((module, flat.sum(0).cpu(), flat.shape[0]))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == 1 and m.weight.requires_grad]
    device = next(p for p in model.parameters()).device
    layer, summed, count, predicted, rows = None, 0.0, 0, 0.0, 0
    try:
        for batch in batches:
            calls.clear()
            logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels" and hasattr(v, "to")}).logits
            predicted += float(logits.double().sum())
            rows += logits.shape[0]
            if calls:
                layer, row_sum, n = calls[-1]
                summed, count = summed + row_sum, count + n
    finally:
        for hook in hooks:
            hook.remove()
    mean_input = summed / count if count else torch.zeros(1, dtype=torch.float64)
    return predicted / max(rows, 1), layer, mean_input


def edit_config(method: str, edit: dict[str, Any], head: list[str]):
    """The ``red.EditConfig`` an edit method trains: the config's ``edit`` fields, with the task head made explicit."""
    from red import EditConfig

    config = {**edit, "head": head} if head and edit.get("head", "auto") == "auto" else edit
    return EditConfig(method=method, **config)


def _trainable_fp32(model) -> None:
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


# ---- the Trainer with edit-sized checkpoints and a NaN guard ---------------------------------------
def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _make_trainer_class():
    from transformers import Trainer

    class EditTrainer(Trainer):
        """Trainer whose checkpoints hold only trainable tensors, and that stops on a non-finite loss."""

        def _save(self, output_dir: str | None = None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            save_file(_trainable_state(self.model), os.path.join(output_dir, "trainable.safetensors"))
            with open(os.path.join(output_dir, "training_args.json"), "w") as handle:  # JSON, not a pickle
                handle.write(self.args.to_json_string())

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model or self.model
            state = load_file(os.path.join(resume_from_checkpoint, "trainable.safetensors"))
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in state.items():
                    params[name].copy_(tensor.to(params[name].dtype))

        def _load_best_model(self):
            self._load_from_checkpoint(self.state.best_model_checkpoint)

        def evaluation_loop(self, *args, **kwargs):
            if self.args.world_size <= 1:
                # One process: nothing to gather. accelerate's gather_for_metrics would also trim the batch to
                # the "remainder" of whichever dataloader of this *process* ended last (its GradientState is a
                # process-wide singleton), so two trainings in threads (the threads runner, parallel trials)
                # would score each other's row counts. Each loop resets gather_function afterwards.
                self.gather_function = self._this_batch
            return super().evaluation_loop(*args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            self._batch_rows = find_batch_size(inputs)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def _this_batch(self, tensors, *args, **kwargs):
            """The evaluation loop's "gather" in one process: the batch's own rows. The loop repeats a batch's mean
            loss ``eval_batch_size`` times, so without this cut a short last batch (48 rows in batches of 32)
            weighs as a full one and the reported loss is not the mean over the rows (4.688 for 4.428)."""
            rows = getattr(self, "_batch_rows", None)
            if rows is None or not isinstance(tensors, torch.Tensor) or tensors.dim() == 0:
                return tensors
            return tensors[:rows]

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                raise TrainingError(nan_message(loss.item(), self.state.global_step + 1, self.args.learning_rate))
            return loss

    return EditTrainer


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


def _divergence_guard(factor: float, start: float | None = None):
    """A callback that stops training when the loss runs away while staying finite (lr far too high)."""
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            losses = [h["loss"] for h in state.log_history if "loss" in h and "step" in h]
            message = divergence_message(losses, factor, state.global_step, args.learning_rate, start)
            if message:
                raise TrainingDiverged(message)

    return DivergenceGuard()


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


def _quiet_console_logging(trainer) -> None:
    """Training metrics go to the result (and MLflow), not as raw dicts on stdout: keep the tqdm bar
    (``REDFLOW_PROGRESS=1``, the default for library use) but drop the callbacks that print log dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress)


def _precision(choice: str) -> dict[str, bool]:
    if choice == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"bf16": use_bf16, "fp16": False}
    cpu_bf16 = choice == "bf16" and not torch.cuda.is_available()  # CPU autocast runs bf16; Trainer wants it said
    return {"bf16": choice == "bf16", "fp16": choice == "fp16", **({"use_cpu": True} if cpu_bf16 else {})}


def training_arguments(config: TrainConfig, hp: dict[str, Any], out_dir: Path, **overrides):
    """The ``TrainingArguments`` of a training in ``out_dir`` (checkpoints under ``out_dir/checkpoints``):
    evaluation and a checkpoint every epoch (once, at the end, with ``max_steps``), best epoch loaded at the
    end; ``overrides`` replace any field."""
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(Path(out_dir) / "checkpoints"),
        num_train_epochs=hp["epochs"],
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["eval_batch_size"],
        gradient_accumulation_steps=hp["grad_accum"],
        learning_rate=hp["learning_rate"],
        weight_decay=hp["weight_decay"],
        warmup_steps=hp["warmup_steps"] or hp["warmup_ratio"],  # transformers 5: a float < 1 is a ratio
        lr_scheduler_type=hp["lr_scheduler"],
        label_smoothing_factor=hp["label_smoothing"],
        eval_strategy="epoch" if not config.max_steps else "steps",
        save_strategy="epoch" if not config.max_steps else "steps",
        eval_steps=config.max_steps or None,
        save_steps=config.max_steps or None,
        load_best_model_at_end=True,
        logging_steps=config.logging_steps,
        seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not bool(os.environ.get("REDFLOW_PROGRESS", "1") == "1"),
        **_precision(config.precision),
    )
    values.update(overrides)
    return TrainingArguments(**values)


def _compute_metrics_fn(data):
    from tasks.evaluate.metrics import make_compute_metrics, metric_set

    return make_compute_metrics(data.metric, regression=data.task_type == "regression",
                                metrics=metric_set(data.task, data.metric))


def _checkpoint_step(checkpoint: str | Path | None) -> int:
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))


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
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, set_seed

    from tasks.data import encode

    if config.tune is not None:
        raise ValueError("this config has a tune block: run its search (tasks.study; the retrain flow and "
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
        from red.pretrained import set_pad_token

        set_pad_token(tokenizer, model)
        model, edit_parameters = prepare_model(model, config.method, hp, config.edit, data.task_type, fresh)
        if init_state is not None:
            _load_init_state(model, init_state, init_note, data.label_list)
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
        guards = [_stop_on_request()] + ([_divergence_guard(config.divergence_factor, start)]
                                         if config.divergence_factor else [])
        trainer = _make_trainer_class()(
            model=model, args=args, train_dataset=encoded.train, eval_dataset=encoded.validation,
            data_collator=collator, compute_metrics=_compute_metrics_fn(data) if classification else None,
            callbacks=guards + list(callbacks or []),
        )
        _quiet_console_logging(trainer)
        resume = str(resume_from) if resume_from else None
        start_step = _checkpoint_step(resume)
        if resume:
            log.info("resuming %s from %s (step %d)", data.name, resume, start_step)
        trainer.train(resume_from_checkpoint=resume)

        history = trainer.state.log_history
        epochs = _epoch_table(history, metric)
        validation = _metrics(trainer.evaluate(encoded.validation), "eval_")
        test = _metrics(trainer.evaluate(encoded.test, metric_key_prefix="test"), "test_")
    best_epoch = _best_epoch(epochs, metric, greater)
    floor = validation_floor(data)
    did_learn = learned([e.get(f"validation_{metric}") for e in epochs] + [validation.get(metric)],
                        (floor or {}).get(metric), higher_is_better=greater)
    if did_learn is not True:  # no better than the floor (or an LM): a validation loss that ran away is divergence
        ended = ended_diverged(validation.get("loss"), start, config.divergence_factor, hp["learning_rate"])
        if ended:
            raise TrainingDiverged(ended)
    model.eval()
    edit_path = _save_final(model, config, data, out_dir, tokenizer, validation, test)
    from red import EditedModel

    result = TrainResult(
        task=data.name, method=config.method, base_model=config.model, primary_metric=metric,
        edit_path=str(edit_path), output_dir=str(out_dir), best_epoch=best_epoch, epochs=epochs,
        steps=[{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate", 0.0)}
               for h in history if "loss" in h and "step" in h],
        validation=validation, test=test, trainable_parameters=trainable, edit_parameters=edit_parameters,
        params=result_params(config, hp, model, data.text_columns),
        data_hash=data.data_hash, base_revision=config.revision,
        base_fingerprint=model.base_fingerprint if isinstance(model, EditedModel) else None,
        task_type=data.task_type, label_list=data.label_list, truncated=dict(encoded.truncated),
        seconds=round(time.time() - started, 2),
        global_step=int(trainer.state.global_step), steps_trained=int(trainer.state.global_step) - start_step,
        resumed_from=resume, init=init_note,
        identity=(identity or training_identity(data, config)).to_dict(),
        recipe=json.loads(json.dumps(config.recipe(data.task or data.name), default=str)),
        floor=floor or {}, learned=did_learn,
    )
    result.save(out_dir / "result.json")
    return result


def validation_floor(data) -> dict[str, float] | None:
    """The majority-class / chance scores of the validation split for the task's metrics (tasks.floors);
    None for language-model tasks."""
    if data.task_type not in ("classification", "regression") or len(data.validation) == 0:
        return None
    from tasks.evaluate.metrics import metric_set

    return majority_scores(list(data.validation[data.label_column]), metric_set(data.task, data.metric),
                           task_type=data.task_type)


def _is_quality(key: str, value: Any, prefix: str) -> bool:
    """A quality metric (Trainer adds runtime, throughput and the epoch to every evaluation)."""
    return (key.startswith(prefix) and isinstance(value, (int, float))
            and not any(s in key for s in ("runtime", "per_second", "epoch")))


def _metrics(raw: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in raw.items() if _is_quality(k, v, prefix)}


def _epoch_table(history: list[dict], metric: str) -> list[dict[str, float]]:
    epochs: dict[int, dict[str, float]] = {}
    losses: dict[int, list[float]] = {}
    for h in history:
        ep = math.ceil(h.get("epoch", 0) - 1e-9) or 1
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


def _best_epoch(epochs: list[dict], metric: str, greater: bool) -> int:
    key = f"validation_{metric}"
    scored = [e for e in epochs if key in e and not math.isnan(e[key])]
    if not scored:
        return int(epochs[-1]["epoch"]) if epochs else 0
    return int((max if greater else min)(scored, key=lambda e: e[key])["epoch"])


def edit_extra(data, validation: dict[str, float], test: dict[str, float]) -> dict[str, Any]:
    """The ``extra`` an edit file records about its task: what serving and registration read back."""
    return {"task": data.name, "task_type": data.task_type, "label_list": data.label_list,
            "text_columns": list(data.text_columns), "metric": data.metric, "data_hash": data.data_hash,
            "validation": validation, "test": test}


def result_params(config: TrainConfig, hp: dict[str, Any], model, text_columns=()) -> dict[str, Any]:
    """The flat hyperparameters a ``TrainResult`` records (logged as the MLflow run's params)."""
    from red.io import base_dtype

    return {"method": config.method, "model": config.model, "revision": config.revision, "preset": config.preset,
            "seed": config.seed, "precision": config.precision, "base_dtype": base_dtype(model),
            "text_columns": list(text_columns), **{f"edit.{k}": v for k, v in config.edit.items()}, **hp}


def _save_final(model, config: TrainConfig, data, out_dir: Path, tokenizer, validation, test) -> Path:
    """The artifact of the best epoch: an edit file for edit methods, else a PEFT adapter or a checkpoint."""
    from red import EditedModel

    extra = edit_extra(data, validation, test)
    if isinstance(model, EditedModel):
        return model.save(out_dir / f"{data.name}.safetensors", base_model=config.model, revision=config.revision,
                          extra=extra)
    target = out_dir / ("adapter" if config.method == "lora" else "model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def training_identity(data, config: TrainConfig, *, cache_dir: str | Path | None = None,
                      co_train: dict[str, Any] | None = None) -> Identity:
    """The :class:`~tasks.lifecycle.identity.Identity` of training ``config`` on ``data``: equal means the same edit.

    ``co_train``: the co-training settings when the task is co-trained (``tasks.cotrain.CoTrainConfig.recipe``);
    they are part of the recipe, so switching co-training on or off, or changing them, retrains the task. The
    other tasks of the group are not: a task whose inputs did not change is not retrained because another did.
    """
    recipe = config.recipe(data.task or data.name)
    if co_train is not None:
        recipe["co_train"] = co_train
    return Identity(data_hash=data.data_hash, config_hash=config_hash(recipe),
                    base_id=base_id(config.model, config.revision, cache_dir), code_version=code_version(),
                    dependencies=dependency_versions())


def _load_init_state(model, state: dict[str, torch.Tensor], note: str,
                     label_list: list[str] | None = None) -> None:
    """Start from an earlier edit's tensors (``init: production``); refuse a layout that does not fit.

    A head trained on other labels is matched by name (``tasks.lifecycle.gate.align_head``): a reordered
    ``label_list`` gets the old rows in tonight's order, never classes swapped; other names are refused.
    """
    from red import EditedModel
    from red.errors import EditMismatchError
    from tasks.lifecycle.gate import align_head

    if not isinstance(model, EditedModel):
        raise TrainingError(f"init from {note} needs an edit method (red, loreft, direft)")
    try:
        state = align_head(state, label_list, note)
    except ValueError as exc:
        raise TrainingError(f"cannot warm-start: {exc}") from exc
    try:
        model.load_edit_state(state)
    except EditMismatchError as exc:
        raise TrainingError(
            f"cannot start from {note}: its edit does not fit this training's edit layout ({exc}). Train with the "
            "same edit settings (position, kind, layers, rank) and labels, or set init: fresh.") from exc
