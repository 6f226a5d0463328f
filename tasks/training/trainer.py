"""The Trainer every training runs: :class:`EditTrainer` (edit-sized checkpoints, a NaN guard, per-row evaluation
losses), its ``TrainingArguments`` and the console output it keeps."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
# Resolved once, when this module is imported: transformers' lazy module is not thread-safe on first access,
# and trials/tasks in threads that import a name at the same moment got "cannot import name 'TrainerCallback'".
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import find_batch_size

from tasks.evaluate.metrics import make_compute_metrics, metric_set

from .config import TrainConfig
from .errors import TrainingError
from .guards import nan_message
from .progress import quiet_unless_terminal


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors by parameter name (fp32, CPU): what a checkpoint holds."""
    return {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


class EditTrainer(Trainer):
    """Trainer whose checkpoints hold only trainable tensors, and that stops on a non-finite loss."""

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_file(trainable_state(self.model), os.path.join(output_dir, "trainable.safetensors"))
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


class QuietProgress(ProgressCallback):
    """The tqdm bar without the raw log dicts it prints on every log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_console_logging(trainer) -> None:
    """Training metrics go to the result (and MLflow), not as raw dicts on stdout: keep the tqdm bar
    (on a terminal, or with ``REDFLOW_PROGRESS=1``: tasks/training/progress.py) but drop the callbacks that print log dicts."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress)


def _precision(choice: str) -> dict[str, bool]:
    """The TrainingArguments flags of a precision choice (auto: bf16 where the GPU supports it)."""
    if choice == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"bf16": use_bf16, "fp16": False}
    cpu_bf16 = choice == "bf16" and not torch.cuda.is_available()  # CPU autocast runs bf16; Trainer wants it said
    return {"bf16": choice == "bf16", "fp16": choice == "fp16", **({"use_cpu": True} if cpu_bf16 else {})}


def training_arguments(config: TrainConfig, hp: dict[str, Any], out_dir: Path, **overrides):
    """The ``TrainingArguments`` of a training in ``out_dir`` (checkpoints under ``out_dir/checkpoints``):
    evaluation and a checkpoint every epoch (once, at the end, with ``max_steps``), best epoch loaded at the
    end; ``overrides`` replace any field."""
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
        disable_tqdm=quiet_unless_terminal(),  # a bar on a terminal only (tasks/training/progress.py)
        **_precision(config.precision),
    )
    values.update(overrides)
    return TrainingArguments(**values)


def compute_metrics_for(data):
    """The Trainer's ``compute_metrics`` for a classification or regression task's metrics (tasks.evaluate)."""
    return make_compute_metrics(data.metric, regression=data.task_type == "regression",
                                metrics=metric_set(data.task, data.metric))


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The optimizer step a checkpoint folder was saved at (0 without one): where a resumed training starts."""
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))
