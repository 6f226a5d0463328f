"""Train one task with RED (or a baseline) on a frozen base model, with transformers' Trainer.

The same function trains every method the paper compares, so its Table 1 can be
rerun: ``red`` (with position/kind variants), ``loreft``/``direft`` (ReFT),
``lora`` (PEFT), ``bitfit`` and ``full``. The Trainer does the loop, mixed
precision, gradient accumulation and multi-GPU (launch with ``torchrun`` or
``accelerate launch``); we add four things it lacks for edits:

- checkpoints hold only the trainable tensors (kilobytes for RED), so saving every
  epoch is free and a crashed run resumes from the last epoch;
- a NaN/inf loss stops training at once with a clear error instead of burning GPU hours;
- the paper's protocol: the best epoch is chosen on validation and reported on test;
- the result is a ``TrainResult`` that the registry logs to MLflow.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from .presets import preset_values
from .result import TrainResult

log = logging.getLogger(__name__)

Method = Literal["red", "loreft", "direft", "lora", "bitfit", "full"]
EDIT_METHODS = ("red", "loreft", "direft")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, unusable data or model); the message says what to change."""


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
    resume: bool = True
    logging_steps: int = 10

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


# ---- model construction ---------------------------------------------------------------------
def load_base_model(model: str, task_type: str, *, revision: str | None = None, num_labels: int = 2,
                    label_list: list[str] | None = None, dtype: torch.dtype | None = None):
    """The frozen base model for a task type, from the hub or a local folder (offline-friendly errors)."""
    from red.pretrained import model_class_for

    cls, kwargs = model_class_for(task_type, label_list=label_list, num_labels=num_labels)
    if revision:
        kwargs["revision"] = revision
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return cls.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise TrainingError(
            f"cannot load base model {model!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Pass a local "
            "checkpoint folder, or a hub name with network access (HF_HUB_OFFLINE must be unset)."
        ) from exc


def load_tokenizer(model: str, revision: str | None = None, task_type: str = "classification"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, **({"revision": revision} if revision else {}))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if task_type == "causal_lm":
        tok.padding_side = "right"  # training; generation switches to left padding itself
    return tok


def prepare_model(model, method: str, hp: dict[str, Any], edit: dict[str, Any], task_type: str):
    """Freeze the base model and make the method's parameters trainable. Returns (model, edit_parameter_count)."""
    from red import EditConfig, attach

    if method in EDIT_METHODS:
        edited = attach(model, EditConfig(method=method, **edit))
        return edited, edited.num_edit_parameters
    from red.targets import HEAD_NAMES

    head = [n for n, _ in model.named_modules() if n.split(".")[-1] in HEAD_NAMES and "." not in n]
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        from red.params import LORA_QV

        targets = hp.get("lora_targets") or list(LORA_QV.get(model.config.model_type, ("q_proj", "v_proj")))
        task = {"classification": TaskType.SEQ_CLS, "regression": TaskType.SEQ_CLS,
                "seq2seq": TaskType.SEQ_2_SEQ_LM}.get(task_type, TaskType.CAUSAL_LM)
        peft_model = get_peft_model(model, LoraConfig(
            r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
            target_modules=targets, task_type=task, modules_to_save=head or None))
        lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        return peft_model, lora
    head_prefixes = tuple(f"{h}." for h in head)
    for name, p in model.named_parameters():
        if method == "full":
            p.requires_grad_(True)
        else:  # bitfit: biases only, plus the task head
            p.requires_grad_(name.endswith(".bias") or name.startswith(head_prefixes))
    count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head_prefixes))
    return model, count


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
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model or self.model
            state = load_file(os.path.join(resume_from_checkpoint, "trainable.safetensors"))
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in state.items():
                    params[name].copy_(tensor.to(params[name].dtype))

        def _load_best_model(self):
            self._load_from_checkpoint(self.state.best_model_checkpoint)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                raise TrainingError(
                    f"the training loss became {loss.item()} at step {self.state.global_step + 1}. Lower the learning "
                    f"rate (now {self.args.learning_rate}), use fp32/bf16 instead of fp16, or check the data for empty "
                    "or extreme rows. The last good epoch checkpoint is kept; rerun to resume from it."
                )
            return loss

    return EditTrainer


def _precision(choice: str) -> dict[str, bool]:
    if choice == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"bf16": use_bf16, "fp16": False}
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def _compute_metrics_fn(data):
    from tasks.evaluate.metrics import make_compute_metrics

    return make_compute_metrics(data.metric, regression=data.task_type == "regression")


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return last if last and (Path(last) / "trainable.safetensors").is_file() else None


def train(data, config: TrainConfig, out_dir: str | Path, *, tokenizer=None, model=None,
          callbacks: list | None = None) -> TrainResult:
    """Train ``config.method`` on prepared ``data`` (tasks.data.TaskData); write artifacts under ``out_dir``.

    ``model``/``tokenizer`` may be passed in (already loaded); otherwise they are loaded from ``config.model``.
    ``callbacks`` are transformers ``TrainerCallback``s (progress reporting, early stopping...).
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, TrainingArguments, set_seed

    from tasks.data import encode

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = config.resolved(data.name)
    set_seed(config.seed)
    tokenizer = tokenizer or load_tokenizer(config.model, config.revision, data.task_type)
    encoded = encode(data, tokenizer, max_length=hp["max_length"])
    if model is None:
        model = load_base_model(config.model, data.task_type, revision=config.revision,
                                num_labels=data.num_labels or 2, label_list=data.label_list)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model, edit_parameters = prepare_model(model, config.method, hp, config.edit, data.task_type)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    classification = data.task_type in ("classification", "regression")
    metric = data.metric if classification else "loss"
    greater = metric != "loss"
    precision = _precision(config.precision)
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
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
        metric_for_best_model=f"eval_{metric}",
        greater_is_better=greater,
        save_total_limit=None if config.method in EDIT_METHODS else 2,
        logging_steps=config.logging_steps,
        seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not bool(os.environ.get("REDFLOW_PROGRESS", "1") == "1"),
        **precision,
    )
    if classification:
        collator = DataCollatorWithPadding(tokenizer)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=encoded.train, eval_dataset=encoded.validation,
        data_collator=collator, compute_metrics=_compute_metrics_fn(data) if classification else None,
        callbacks=callbacks,
    )
    resume = _last_checkpoint(out_dir / "checkpoints") if config.resume else None
    if resume:
        log.info("resuming %s from %s", data.name, resume)
    trainer.train(resume_from_checkpoint=resume)

    history = trainer.state.log_history
    epochs = _epoch_table(history, metric)
    validation = _metrics(trainer.evaluate(encoded.validation), "eval_")
    test = _metrics(trainer.evaluate(encoded.test, metric_key_prefix="test"), "test_")
    best_epoch = _best_epoch(epochs, metric, greater)
    model.eval()
    edit_path = _save_final(model, config, data, out_dir, tokenizer, validation, test)
    from red import EditedModel

    result = TrainResult(
        task=data.name, method=config.method, base_model=config.model, primary_metric=metric,
        edit_path=str(edit_path), output_dir=str(out_dir), best_epoch=best_epoch, epochs=epochs,
        steps=[{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate", 0.0)}
               for h in history if "loss" in h and "step" in h],
        validation=validation, test=test, trainable_parameters=trainable, edit_parameters=edit_parameters,
        params={"method": config.method, "model": config.model, "revision": config.revision, "preset": config.preset,
                "seed": config.seed, "precision": config.precision, "text_columns": list(data.text_columns),
                **{f"edit.{k}": v for k, v in config.edit.items()},
                **hp},
        data_hash=data.data_hash, base_revision=config.revision,
        base_fingerprint=model.base_fingerprint if isinstance(model, EditedModel) else None,
        task_type=data.task_type, label_list=data.label_list, truncated=dict(encoded.truncated),
        seconds=round(time.time() - started, 2),
    )
    result.save(out_dir / "result.json")
    return result


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


def _save_final(model, config: TrainConfig, data, out_dir: Path, tokenizer, validation, test) -> Path:
    """The artifact of the best epoch: an edit file for edit methods, else a PEFT adapter or a checkpoint."""
    from red import EditedModel

    extra = {"task": data.name, "task_type": data.task_type, "label_list": data.label_list,
             "text_columns": list(data.text_columns), "metric": data.metric, "data_hash": data.data_hash,
             "validation": validation, "test": test}
    if isinstance(model, EditedModel):
        return model.save(out_dir / f"{data.name}.safetensors", base_model=config.model, revision=config.revision,
                          extra=extra)
    target = out_dir / ("adapter" if config.method == "lora" else "model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
