"""Co-train K tasks' RED edits in one pass over one copy of the base model, with transformers' Trainer.

Training K tasks alone needs K copies of the base (or K trainings one after another). RED's edits are
per-row vectors, so one forward/backward over a batch whose rows belong to different tasks can train all
of them: each row uses, and trains, only its task's vectors and head (:class:`red.bank_train.TrainableBank`).
What this module adds on top of the single-task training of :mod:`tasks.train` (whose Trainer subclass,
checkpoints, guards, epoch tables and result it reuses):

- **mixed batches** (:mod:`tasks.mixing`): rows per step proportional to task size or with a temperature,
  stratified (deterministic) or random, cut into micro-batches of one task's batch size;
- **per-task losses averaged per task**: ``loss = sum_k mean_{rows of k} loss_i`` over the whole optimizer step
  (gradient accumulation included), classification, regression, causal LM and seq2seq, label smoothing per
  task, so a big task does not drown a small one. Because the tasks' parameters are disjoint, each task's
  gradient is exactly the gradient of its own mean loss;
- **per-task optimizer settings**: one parameter group per task (learning rate, weight decay, with the
  Trainer's no-decay rule for biases and norms) under the shared schedule type, and **per-task gradient clipping**
  at ``max_grad_norm`` (a global clip would couple the tasks);
- **a task without rows in a step is not stepped**: its gradients are set to None, which AdamW skips (no moment
  update, no ``state["step"]`` increment, so no change to bias correction, no weight decay), and its learning-rate
  schedule (warmup, decay) runs over the steps that hold its rows only (:class:`_TaskSchedules`), so a small task
  trains as it would alone on the same batches however many steps it sits out;
- **per-task evaluation each epoch** on each task's own validation set; each task keeps **its own best
  epoch**, restored from the checkpoint of that epoch before its edit is saved and tested;
- **per-task NaN and divergence guards**: a task whose loss becomes NaN/inf, or runs away, is stopped and
  reported (its rows leave the batches, its parameters stop moving); the others go on;
- checkpoints (trainable tensors only) every epoch and resume, as for single tasks.

For K tasks with the same number of rows, batch size b, ``rows_per_step = K * b``, ``batch_size = b``,
``micro_batches="task"``, no dropout and the same hyperparameters, each task's saved edit equals the one training
it alone gives (same rows in the same order, same initial head, same per-step gradient), up to floating-point
rounding.

Each task's edit is an ordinary edit file (``red.load_edit``, registration) and its ``TrainResult`` reads
as if trained alone, plus ``co_trained_with`` and the ``co_train.*`` params.
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .floors import learned
from .lifecycle.identity import Identity
from .result import TrainResult
from .train import (EDIT_METHODS, TrainConfig, TrainingDiverged, TrainingError, _best_epoch, _checkpoint_step,
                    _compute_metrics_fn, _epoch_table, _make_trainer_class, _metrics, _quiet_console_logging,
                    _stop_on_request, divergence_message, edit_config, edit_extra, ended_diverged, head_for,
                    center_regression_head, initial_loss, load_base_model, load_tokenizer, nan_message, precision_dtype, result_params,
                    trainer_slot, training_arguments, training_identity, validation_floor)

log = logging.getLogger(__name__)

#: Settings every task of a co-training shares: one base, one method, one schedule.
SHARED = ("model", "revision", "method", "precision", "epochs", "max_steps", "warmup_ratio", "warmup_steps",
          "lr_scheduler")
STATE_FILE = "cotrain_state.json"


class CoTrainConfig(BaseModel):
    """How the tasks' rows are mixed (see :mod:`tasks.mixing`)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=1.0, gt=0, description="Task k's share of the rows is proportional to "
                               "n_k^(1/temperature): 1 = proportional to size, larger flattens toward uniform "
                               "(.inf = uniform).")
    mixing: Literal["stratified", "random"] = Field(
        default="stratified", description="stratified: every step holds each task's share (deterministic); "
        "random: each row's task is drawn from the shares.")
    batch_size: int | None = Field(default=None, ge=1, description="Rows per forward pass (default: the largest "
                                   "batch_size of the tasks): the activation memory of one task's batch.")
    rows_per_step: int | None = Field(default=None, ge=1, description="Rows per optimizer step (default: the sum "
                                      "of the tasks' batch_size x grad_accum), cut into forward passes.")
    micro_batches: Literal["length", "task"] = Field(
        default="length", description="How a step's rows are cut into forward passes: sorted by length (least "
        "padding), or each task's rows together (with equal shares, every pass is one task's batch in the order "
        "training it alone takes). The step's gradient is the same either way.")

    def recipe(self) -> dict[str, Any]:
        """What part of a co-trained task's training identity (``tasks.train.training_identity``)."""
        return self.model_dump(mode="json")


def family(task_type: str) -> str:
    """Tasks of one family load the same model class and can share a base: ``sequence`` (classification and
    regression), ``causal_lm``, ``seq2seq``."""
    return "sequence" if task_type in ("classification", "regression") else task_type


def shared_settings(configs: dict[str, TrainConfig], presets: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings of :data:`SHARED`, which the co-trained tasks must agree on; ValueError naming what differs.

    ``configs``: task name -> its training config; ``presets``: task name -> the GLUE task its preset is looked up
    by (default the name). Methods other than RED are refused: ReFT's interventions sit at per-row prompt positions
    and LoRA, BitFit and full fine-tuning change weights the tasks would share.
    """
    values: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        if config.method != "red":
            how = ("its interventions sit at per-row prompt positions through a per-task low-rank projection, which "
                   "the co-training bank does not route" if config.method in EDIT_METHODS else
                   "it trains weights of the base model (or adapters on them) that the co-trained tasks share")
            raise ValueError(f"co-training trains RED edits; task {name!r} uses method {config.method!r}: {how}. "
                             f"Train it alone (co_train: false on the task) or use method: red.")
        hp = config.resolved((presets or {}).get(name, name))
        values[name] = {"model": config.model, "revision": config.revision, "method": config.method,
                        "precision": config.precision, "max_steps": config.max_steps,
                        **{k: hp[k] for k in ("epochs", "warmup_ratio", "warmup_steps", "lr_scheduler")}}
    first = next(iter(values.values()))
    for key in SHARED:
        seen = {name: v[key] for name, v in values.items()}
        if len({json.dumps(v, default=str) for v in seen.values()}) > 1:
            raise ValueError(f"co-trained tasks share one base model and one schedule, but they differ in {key} "
                             f"({', '.join(f'{n}: {v!r}' for n, v in seen.items())}). Set the same {key} for "
                             "them (e.g. in defaults), or train some alone (co_train: false) or in another group.")
    return dict(first)


def group_identity(identities: dict[str, Identity], settings: CoTrainConfig) -> Identity:
    """The identity of a co-training: its tasks' identities (by name) and the settings; equal means the same
    trainings, so a crashed co-training is resumed only by one of exactly the same inputs."""
    import hashlib

    def digest(values) -> str:
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]

    named = sorted(identities.items())
    bases = sorted({i.base_id for _, i in named})
    codes = sorted({i.code_version for _, i in named})
    return Identity(data_hash=digest([[n, i.data_hash] for n, i in named]),
                    config_hash=digest({"tasks": [[n, i.config_hash] for n, i in named],
                                        "co_train": settings.recipe()}),
                    base_id=bases[0] if len(bases) == 1 else digest(bases),
                    code_version=codes[0] if len(codes) == 1 else digest(codes))


@dataclass
class CoTask:
    """One task of a co-training: its prepared data and config, where its edit goes, and how it starts."""

    data: Any                                   # tasks.data.TaskData
    config: TrainConfig
    out_dir: Path                               # the task's edit file, result.json, eval/ go here
    init_state: dict[str, torch.Tensor] | None = None   # edit-file tensors to start from (init: production)
    init_note: str = "fresh"
    identity: Identity | None = None

    @property
    def name(self) -> str:
        return self.data.name


@dataclass
class _Task:
    """What the trainer needs per task."""

    name: str
    task_type: str
    metric: str
    greater: bool
    learning_rate: float
    weight_decay: float
    label_smoothing: float
    divergence_factor: float | None
    validation: Any
    test: Any
    compute_metrics: Any = None
    groups: list[int] = field(default_factory=list)   # its optimizer parameter groups
    start_loss: float | None = None   # its loss before the first step (the divergence guard's baseline)


# ---- data -----------------------------------------------------------------------------------------
class _Rows(torch.utils.data.Dataset):
    """The K tasks' encoded training rows end to end; each row carries ``task_ids``."""

    def __init__(self, parts: list):
        self.parts = parts
        self.starts = [0]
        for part in parts[:-1]:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.starts, index) - 1
        row = dict(self.parts[k][index - self.starts[k]])
        row["task_ids"] = k
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of rows, read task by task (one Arrow read per task instead of one per row)."""
        by_task: dict[int, list[tuple[int, int]]] = {}
        for position, index in enumerate(indices):
            k = bisect.bisect_right(self.starts, index) - 1
            by_task.setdefault(k, []).append((position, index - self.starts[k]))
        rows: list[dict[str, Any]] = [{} for _ in indices]
        for k, wanted in by_task.items():
            columns = self.parts[k][[i for _, i in wanted]]
            for j, (position, _) in enumerate(wanted):
                rows[position] = {name: values[j] for name, values in columns.items()}
                rows[position]["task_ids"] = k
        return rows


class _Collate:
    """A transformers collator (padding) that keeps each row's ``task_ids``."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        ids = [int(f.pop("task_ids")) for f in features]
        batch = self.inner(features)
        batch["task_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch


def _token_level(task_type: str) -> bool:
    return task_type in ("causal_lm", "seq2seq")


def _label_count(task_type: str, labels: torch.Tensor) -> torch.Tensor:
    """How many items a task's loss averages over: rows, or target tokens (causal LMs: shifted)."""
    if task_type == "causal_lm":
        return (labels[:, 1:] != -100).sum()
    if task_type == "seq2seq":
        return (labels != -100).sum()
    return torch.tensor(labels.shape[0], device=labels.device)


def _loss_sum(task_type: str, logits: torch.Tensor, labels: torch.Tensor, smoothing: float,
              width: int | None) -> torch.Tensor:
    """The sum of one task's per-item losses over its rows (computed in fp32, like transformers' losses)."""
    if task_type == "classification":
        x = logits if width is None else logits[:, :width]
        return F.cross_entropy(x.float(), labels.long(), reduction="sum", label_smoothing=smoothing)
    if task_type == "regression":
        return ((logits[:, 0].float() - labels.float()) ** 2).sum()
    if task_type == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
                           ignore_index=-100, reduction="sum", label_smoothing=smoothing)


# ---- the trainer --------------------------------------------------------------------------------
def _make_multitask_trainer_class():
    from torch.utils.data import DataLoader

    from .mixing import MixedBatchSampler

    EditTrainer = _make_trainer_class()

    class MultiTaskTrainer(EditTrainer):
        """EditTrainer over a TrainableBank: mixed batches, per-task losses, groups, clipping, evaluation, guards."""

        def __init__(self, *args, tasks: list[_Task], mixing, **kwargs):
            super().__init__(*args, **kwargs)
            self.tasks = tasks
            self.mixing = mixing
            self.stopped: dict[int, TrainingError] = {}
            self.loss_is_scaled_for_ga = True   # compute_loss normalises over the whole optimizer step
            self._step_counts: dict[int, torch.Tensor] = {}
            self._loss_sums = [0.0] * len(tasks)
            self._loss_steps = [0] * len(tasks)
            self._grad_norms: dict[int, float] = {}
            self._step_lrs: dict[int, float] = {}   # each task's learning rate in its last step (logged)

        # -- data --
        def get_train_dataloader(self):
            loader = DataLoader(self.train_dataset, batch_sampler=MixedBatchSampler(self.mixing),
                                collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                                pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
            counts: dict[int, torch.Tensor] = {}
            for batch in batches:
                ids = batch["task_ids"]
                for k in ids.unique().tolist():
                    rows = ids == k
                    n = _label_count(self.tasks[k].task_type, batch["labels"][rows])
                    counts[k] = counts.get(k, 0) + n
            self._step_counts = {k: torch.clamp(torch.as_tensor(n), min=1) for k, n in counts.items()}
            for k in counts:
                if k not in self.stopped:
                    self._loss_steps[k] += 1
            return batches, count

        # -- loss --
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            ids = inputs["task_ids"]
            training = model.training
            if training and self.stopped:
                keep = ~torch.isin(ids, torch.tensor(sorted(self.stopped), device=ids.device))
                if not bool(keep.any()):
                    zero = torch.zeros((), device=labels.device, requires_grad=True)
                    return (zero, None) if return_outputs else zero
                if not bool(keep.all()):
                    inputs = {k: v[keep] if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape else v
                              for k, v in inputs.items()}
                    labels, ids = labels[keep], inputs["task_ids"]
            bank = self.accelerator.unwrap_model(model)
            if any(t.task_type == "seq2seq" for t in self.tasks) and "decoder_input_ids" not in inputs:
                inputs["decoder_input_ids"] = bank.base_model.prepare_decoder_input_ids_from_labels(labels=labels)
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            total = torch.zeros((), device=logits.device, requires_grad=True)
            for k in ids.unique().tolist():
                rows = (ids == k).nonzero(as_tuple=True)[0]
                task = self.tasks[k]
                summed = _loss_sum(task.task_type, logits[rows], labels[rows], task.label_smoothing,
                                   bank.output_widths[k])
                count = self._step_counts.get(k) if training else None
                if count is None:
                    count = torch.clamp(_label_count(task.task_type, labels[rows]), min=1)
                loss_k = summed / count.to(summed.device)
                if training:
                    if not bool(torch.isfinite(loss_k)):
                        self._stop(k, TrainingError(f"task {task.name}: " + nan_message(
                            loss_k.item(), self.state.global_step + 1, task.learning_rate)))
                        continue
                    self._loss_sums[k] += float(loss_k.detach())
                total = total + loss_k
            return (total, outputs) if return_outputs else total

        def _stop(self, k: int, error: TrainingError) -> None:
            if k in self.stopped:
                return
            self.stopped[k] = error
            log.warning("co-training: stopping task %s, the others go on: %s", self.tasks[k].name, error)
            if len(self.stopped) == len(self.tasks):
                self.control.should_training_stop = True

        # -- optimizer: one group pair per task (decay / no decay), exact per-task lr and weight decay --
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                bank = self.accelerator.unwrap_model(model if model is not None else self.model)
                decay = set(self.get_decay_parameter_names(bank))
                groups = []
                for k, task in enumerate(self.tasks):
                    own = bank.task_parameters(k)
                    for wd, params in ((task.weight_decay, [p for n, p in own.items() if n in decay]),
                                       (0.0, [p for n, p in own.items() if n not in decay])):
                        if params:
                            task.groups.append(len(groups))
                            groups.append({"params": params, "weight_decay": wd, "lr": task.learning_rate})
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, bank)
                self.optimizer = cls(groups, **kwargs)
            return self.optimizer

        # -- per-task schedules: each task's learning rate advances by its own steps, as trained alone --
        def create_scheduler(self, num_training_steps: int, optimizer=None):
            """One schedule of the shared type per task, over the steps that hold its rows (:class:`_TaskSchedules`).

            ``reduce_lr_on_plateau`` and ``greedy`` follow evaluations, not steps: those keep the Trainer's one
            scheduler."""
            from transformers import get_scheduler
            from transformers.trainer_utils import SchedulerType

            if self.lr_scheduler is None and SchedulerType(self.args.lr_scheduler_type) not in (
                    SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY):
                args = self.args

                def make(stand_in: torch.optim.Optimizer, total: int):
                    return get_scheduler(args.lr_scheduler_type, optimizer=stand_in,
                                         num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total,
                                         scheduler_specific_kwargs=args.lr_scheduler_kwargs)

                self.lr_scheduler = _TaskSchedules(optimizer or self.optimizer, [t.groups for t in self.tasks],
                                                   self.mixing.steps_with_rows(num_training_steps), make,
                                                   self._stepped_tasks)
                self._created_lr_scheduler = True
            return super().create_scheduler(num_training_steps, optimizer)

        def _task_groups(self, k: int) -> list[torch.nn.Parameter]:
            return [p for g in self.tasks[k].groups for p in self.optimizer.param_groups[g]["params"]]

        def _stepped_tasks(self) -> set[int]:
            """The tasks the current optimizer step updates: those with rows in it that are not stopped."""
            return {k for k in self._step_counts if k not in self.stopped}

        def _sit_out(self) -> None:
            """Drop the gradients of the tasks this step does not update (no rows in it, or stopped).

            Their gradients are zero tensors, not None (each row gathers its task's vectors from stacks of all
            tasks' vectors, whose backward fills every task's slot), and torch's AdamW updates every parameter
            whose ``grad`` is not None: ``exp_avg`` decays by beta1, ``exp_avg_sq`` by beta2, ``state["step"]``
            advances (changing bias correction) and weight decay shrinks the parameter, which moves it although
            it had no rows. AdamW skips a parameter whose ``grad`` is None entirely."""
            stepped = self._stepped_tasks()
            for k in range(len(self.tasks)):
                if k not in stepped:
                    for p in self._task_groups(k):
                        p.grad = None

        # -- per-task clipping; stopped tasks and tasks without rows in the step do not move --
        def _clip_grad_norm(self, model):
            self._sit_out()
            self.accelerator.unscale_gradients()
            squares = 0.0
            for k in range(len(self.tasks)):
                params = [p for p in self._task_groups(k) if p.grad is not None]
                if k in self.stopped or not params:
                    continue
                norm = float(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm))
                self._grad_norms[k] = norm
                squares += norm ** 2
            return math.sqrt(squares)

        def _get_grad_norm(self, model, grad_norm=None):
            self._sit_out()  # also without clipping (max_grad_norm 0): this runs right before optimizer.step()
            for k in self._stepped_tasks():
                self._step_lrs[k] = self.optimizer.param_groups[self.tasks[k].groups[0]]["lr"]
            return super()._get_grad_norm(model, grad_norm)

        # -- logging: each task's loss curve, learning rate, gradient norm; divergence guard --
        def log(self, logs, start_time=None):
            if "loss" in logs and self.optimizer is not None:
                for k, task in enumerate(self.tasks):  # only tasks with rows since the last log: their own steps
                    if self._loss_steps[k] and k not in self.stopped:
                        logs[f"loss_t{k}"] = self._loss_sums[k] / self._loss_steps[k]
                        if k in self._step_lrs:  # the rate of its last step, as a training alone logs it
                            logs[f"learning_rate_t{k}"] = self._step_lrs[k]
                        if k in self._grad_norms:
                            logs[f"grad_norm_t{k}"] = self._grad_norms[k]
                self._loss_sums = [0.0] * len(self.tasks)
                self._loss_steps = [0] * len(self.tasks)
            super().log(logs, start_time)
            if "loss" in logs:
                self._divergence_check()

        def _divergence_check(self) -> None:
            for k, task in enumerate(self.tasks):
                if k in self.stopped or not task.divergence_factor:
                    continue
                losses = [h[f"loss_t{k}"] for h in self.state.log_history if f"loss_t{k}" in h]
                message = divergence_message(losses, task.divergence_factor, self.state.global_step,
                                             task.learning_rate, start=task.start_loss)
                if message:
                    self._stop(k, TrainingDiverged(f"task {task.name}: {message}"))

        # -- evaluation: every task on its own validation set; metrics eval_t<k>_<metric> --
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if eval_dataset is not None and not isinstance(eval_dataset, dict):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            metrics: dict[str, float] = {}
            for k, task in enumerate(self.tasks):
                if k not in self.stopped:
                    metrics.update(self.evaluate_task(k, task.validation, f"{metric_key_prefix}_t{k}", ignore_keys))
            return metrics

        def evaluate_task(self, k: int, dataset, prefix: str, ignore_keys=None) -> dict[str, float]:
            self.compute_metrics = self.tasks[k].compute_metrics
            try:
                return super().evaluate(dataset, ignore_keys, prefix)
            finally:
                self.compute_metrics = None

        # -- checkpoints also record the stopped tasks, so a resumed run does not restart them --
        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            state = {self.tasks[k].name: {"type": type(e).__name__, "message": str(e)} for k, e in self.stopped.items()}
            Path(output_dir or self.args.output_dir, STATE_FILE).write_text(json.dumps({"stopped": state}, indent=1))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint, STATE_FILE)
            if path.is_file():
                names = [t.name for t in self.tasks]
                for name, error in json.loads(path.read_text()).get("stopped", {}).items():
                    cls = TrainingDiverged if error.get("type") == "TrainingDiverged" else TrainingError
                    if name in names:
                        self.stopped[names.index(name)] = cls(error.get("message", ""))

    return MultiTaskTrainer


class _TaskSchedules:
    """The co-training's ``lr_scheduler``: each task's learning-rate schedule, advanced by its own steps only.

    Trained alone, a task's schedule (warmup, then decay over its ``total`` steps) takes one step per optimizer
    step of that task. Co-trained, a task with a small share has no rows in some optimizer steps and is not
    updated in them (``MultiTaskTrainer._sit_out``), so its schedule runs over the steps that hold its rows
    (``Mixing.steps_with_rows``) and advances only after those: step j of the task gets the learning rate of
    step j of training it alone, whichever global step that is. Each task's schedule is transformers'
    ``get_scheduler`` of the shared type on a stand-in optimizer with one group per group of the task (its own
    learning rates); its rates are copied onto the task's real groups. The Trainer calls :meth:`step` after every
    optimizer step, :meth:`get_last_lr` for the logged rate and ``state_dict`` / ``load_state_dict`` with its
    checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, groups: list[list[int]], totals: list[int],
                 make: Any, stepped: Any):
        """``groups``: each task's optimizer group indices; ``totals``: the steps each task takes; ``make(stand_in,
        total)``: its scheduler; ``stepped()``: the tasks updated by the optimizer step just taken."""
        self.optimizer = optimizer
        self.groups = groups
        self.stepped = stepped
        self.steps = [0] * len(groups)
        self.schedules = []
        for own, total in zip(groups, totals):
            stand_in = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": optimizer.param_groups[g]["lr"]}
                                        for g in own] or [{"params": [torch.zeros(1)]}], lr=0.0)
            self.schedules.append(make(stand_in, max(1, total)))
        self._apply()

    def _apply(self) -> None:
        for own, schedule in zip(self.groups, self.schedules):
            for g, lr in zip(own, schedule.get_last_lr()):
                self.optimizer.param_groups[g]["lr"] = lr

    def step(self) -> None:
        for k in sorted(self.stepped()):
            self.schedules[k].optimizer.step()  # a no-op (its tensor has no gradient): the order torch expects
            self.schedules[k].step()
            self.steps[k] += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "schedules": [s.state_dict() for s in self.schedules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = list(state["steps"])
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)
        self._apply()


# ---- the entry point ---------------------------------------------------------------------------------
def _load_base_and_heads(tasks: list[CoTask], tokenizer, dtype, failed: dict[str, Exception],
                         fresh_heads: set[str] | None = None):
    """The base model (loaded as the first task's) and, per task, its head modules ``{name: module}``.

    A task's head starts as training it alone starts it: loaded by the same loader with the task's own labels
    after seeding with the task's seed (so freshly initialised heads get the same random values). A task whose
    labels, seed and head settings equal an earlier task's starts from copies of the same modules; others load the
    checkpoint once more, keep only the head, and free the rest. A task whose head cannot be trained
    (TrainingError) is put in ``failed``; one whose head was freshly initialised, in ``fresh_heads``.
    """
    fresh_heads = set() if fresh_heads is None else fresh_heads
    from transformers import set_seed

    from red.bank import head_copy
    from red.pretrained import set_pad_token

    base = None
    loaded: dict[str, dict[str, torch.nn.Module] | TrainingError] = {}  # by labels, seed and head settings
    new: dict[str, bool] = {}  # by the same key: the head was freshly initialised (not in the checkpoint)
    heads: dict[str, dict[str, torch.nn.Module]] = {}
    for task in tasks:
        data, config = task.data, task.config
        key = json.dumps([data.task_type, data.num_labels or 2, config.seed, config.edit.get("head", "auto")])
        if key not in loaded:
            set_seed(config.seed)
            model, fresh = load_base_model(config.model, data.task_type, revision=config.revision,
                                           num_labels=data.num_labels or 2, label_list=data.label_list, dtype=dtype,
                                           tokenizer=tokenizer)
            new[key] = bool(fresh)
            try:
                loaded[key] = {h: head_copy(model.get_submodule(h))
                               for h in head_for(model, config.edit, data.task_type, fresh)}
            except TrainingError as exc:
                loaded[key] = exc
            if base is None:
                base = model
            else:
                del model
        if isinstance(loaded[key], TrainingError):
            failed[task.name] = TrainingError(f"task {task.name}: {loaded[key]}")
        else:
            heads[task.name] = {name: head_copy(module) for name, module in loaded[key].items()}
            if new[key]:
                fresh_heads.add(task.name)
    set_pad_token(tokenizer, base)
    return base, heads


def co_train(tasks: list[CoTask], settings: CoTrainConfig | None, out_dir: str | Path, *,
             resume_from: str | Path | None = None, callbacks: list | None = None) -> dict[str, TrainResult | Exception]:
    """Train ``tasks`` together (RED, one base, one Trainer); checkpoints under ``out_dir/checkpoints``.

    Returns, per task name (in the given order), its :class:`TrainResult` (edit file, result.json under the task's
    ``out_dir``; ``seconds`` is the co-training's) or the error that stopped that task alone: its data does not
    encode, its head cannot be trained, its start edit does not fit, its loss became NaN
    (:class:`TrainingError`) or ran away (:class:`TrainingDiverged`). Raises ``ValueError`` /
    :class:`TrainingError` for what stops them all: settings the tasks must share that differ (:data:`SHARED`),
    tasks of different model families, a method other than RED, a base that cannot load.
    ``resume_from``: a complete checkpoint of a crashed co-training of the same inputs (see tasks.lifecycle.attempts).
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, set_seed

    from red.bank_train import TrainableBank
    from red.errors import EditMismatchError

    from .data import encode
    from .lifecycle.gate import align_head
    from .mixing import Mixing

    if not tasks:
        raise ValueError("co_train needs at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"co-trained task names must be unique; got {names}")
    settings = settings or CoTrainConfig()
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = shared_settings({t.name: t.config for t in tasks}, {t.name: t.data.task or t.name for t in tasks})
    families = {t.name: family(t.data.task_type) for t in tasks}
    if len(set(families.values())) > 1:
        raise TrainingError(f"co-trained tasks must load one model class, but their task types need different ones "
                            f"({families}); group them by task type")
    hps = {t.name: t.config.resolved(t.data.task or t.name) for t in tasks}
    first = tasks[0].config
    set_seed(first.seed)
    tokenizer = load_tokenizer(first.model, first.revision, tasks[0].data.task_type)
    outcomes: dict[str, TrainResult | Exception] = {}  # failures first, then results
    encoded = {}
    for task in tasks:  # a task whose data does not encode fails alone
        try:
            encoded[task.name] = encode(task.data, tokenizer, max_length=hps[task.name]["max_length"])
            if len(encoded[task.name].train) == 0:
                raise TrainingError(f"task {task.name} has no training rows")
        except (ValueError, TrainingError) as exc:
            outcomes[task.name] = exc
    fresh_heads: set[str] = set()
    base, heads = _load_base_and_heads([t for t in tasks if t.name not in outcomes], tokenizer,
                                       precision_dtype(first.precision), outcomes, fresh_heads=fresh_heads)
    live = [t for t in tasks if t.name not in outcomes]
    if not live:
        return {name: outcomes[name] for name in names}
    live_names = [t.name for t in live]
    configs = [edit_config("red", t.config.edit, list(heads[t.name])) for t in live]
    bank = TrainableBank(base, configs, live_names, heads=[heads[t.name] for t in live],
                         task_types=[t.data.task_type for t in live])
    cannot_start: dict[int, TrainingError] = {}
    for k, task in enumerate(live):
        if task.init_state is not None:
            try:  # the head's rows in this task's label order, by name (tasks.lifecycle.gate)
                bank.task_edit(k).load_edit_state(align_head(task.init_state, task.data.label_list, task.init_note))
            except ValueError as exc:  # other labels: refused, naming both lists and the fix
                cannot_start[k] = TrainingError(f"task {task.name}: cannot warm-start: {exc}")
            except EditMismatchError as exc:
                cannot_start[k] = TrainingError(
                    f"task {task.name}: cannot start from {task.init_note}: its edit does not fit this training's edit "
                    f"layout ({exc}). Train with the same edit settings (position, kind, layers) and labels, or set "
                    "init: fresh.")

    specs = []
    for k, task in enumerate(live):
        enc, hp = encoded[task.name], hps[task.name]
        classification = family(task.data.task_type) == "sequence"
        metric = task.data.metric if classification else "loss"
        specs.append(_Task(
            name=task.name, task_type=task.data.task_type, metric=metric, greater=metric != "loss",
            learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"],
            label_smoothing=hp["label_smoothing"], divergence_factor=task.config.divergence_factor,
            validation=enc.validation.add_column("task_ids", [k] * len(enc.validation)),
            test=enc.test.add_column("task_ids", [k] * len(enc.test)),
            compute_metrics=_compute_metrics_fn(task.data) if classification else None))
    live_hps = [hps[n] for n in live_names]
    trains = [encoded[n].train for n in live_names]
    micro = settings.batch_size or max(hp["batch_size"] for hp in live_hps)
    mixing = Mixing(sizes=[len(t) for t in trains],
                    rows_per_step=settings.rows_per_step or sum(hp["batch_size"] * hp["grad_accum"] for hp in live_hps),
                    micro_batch=micro, seeds=[t.config.seed for t in live], temperature=settings.temperature,
                    mode=settings.mixing, seed=first.seed, order=settings.micro_batches,
                    lengths=[[len(x) for x in t["input_ids"]] for t in trains])
    with trainer_slot():
        args = training_arguments(
            first, {**live_hps[0], "epochs": shared["epochs"], "batch_size": micro,
                    "eval_batch_size": max(hp["eval_batch_size"] for hp in live_hps),
                    "grad_accum": mixing.micro_batches_per_step, "weight_decay": 0.0, "label_smoothing": 0.0},
            out_dir, load_best_model_at_end=False, metric_for_best_model=None, save_total_limit=None,
            logging_steps=max(1, min(mixing.steps_per_epoch, *(t.config.logging_steps for t in live))))
        inner = (DataCollatorWithPadding(tokenizer) if families[names[0]] == "sequence"
                 else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
        trainer = _make_multitask_trainer_class()(
            model=bank, args=args, train_dataset=_Rows(trains),
            eval_dataset={f"t{k}": s.validation for k, s in enumerate(specs)}, data_collator=_Collate(inner),
            callbacks=[_stop_on_request()] + list(callbacks or []), tasks=specs, mixing=mixing)
        _quiet_console_logging(trainer)
        for k, error in cannot_start.items():
            trainer._stop(k, error)
        for k, task in enumerate(live):  # a new regression head starts at its labels' mean, as alone (issue 22)
            if task.data.task_type == "regression" and task.init_state is None and task.name in fresh_heads:
                rows = [{**trains[k][i], "task_ids": k} for i in range(min(len(trains[k]), 256))]
                center_regression_head(bank, _Collate(inner), rows, hps[task.name]["eval_batch_size"])
        for k, spec in enumerate(specs):  # the same baseline a training alone measures (tasks.train.initial_loss)
            rows = [{**trains[k][i], "task_ids": k} for i in range(min(len(trains[k]), micro))]
            spec.start_loss = initial_loss(bank, _Collate(inner), rows, micro, loss_of=trainer.compute_loss)
        resume = str(resume_from) if resume_from else None
        start_step = _checkpoint_step(resume)
        if resume:
            log.info("resuming the co-training of %s from %s (step %d)", ", ".join(live_names), resume, start_step)
        if len(trainer.stopped) < len(live):
            trainer.train(resume_from_checkpoint=resume)
        bank.eval()

        for k, (task, spec) in enumerate(zip(live, specs)):
            if k in trainer.stopped:
                outcomes[task.name] = trainer.stopped[k]
            else:
                outcomes[task.name] = _task_result(trainer, bank, k, task, hps[task.name], encoded[task.name], spec,
                                                 settings, mixing, live_names, started, resume, start_step)
    return {name: outcomes[name] for name in names}


def _task_view(history: list[dict], k: int) -> list[dict]:
    """Task k's entries of a co-training's log history, named as a single-task training names them."""
    view = []
    for h in history:
        if f"loss_t{k}" in h:
            view.append({"epoch": h.get("epoch", 0), "step": h.get("step"), "loss": h[f"loss_t{k}"],
                         "learning_rate": h.get(f"learning_rate_t{k}", 0.0)})
        evals = {"eval_" + key[len(f"eval_t{k}_"):]: v for key, v in h.items() if key.startswith(f"eval_t{k}_")}
        if evals:
            view.append({"epoch": h.get("epoch", 0), "step": h.get("step"), **evals})
    return view


def _restore_best(trainer, bank, k: int, view: list[dict], metric: str, best_epoch: int) -> None:
    """Load task k's tensors from the checkpoint written at the end of its best epoch."""
    from safetensors.torch import load_file

    steps = [h["step"] for h in view if f"eval_{metric}" in h and (math.ceil(h["epoch"] - 1e-9) or 1) == best_epoch]
    folder = Path(trainer.args.output_dir) / f"checkpoint-{steps[-1]}" if steps else None
    if folder is None or not (folder / "trainable.safetensors").is_file():
        log.warning("task %s: no checkpoint of its best epoch %d; keeping its last state", bank.names[k], best_epoch)
        return
    state = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, p in bank.task_parameters(k).items():
            p.copy_(state[name].to(p.device, p.dtype))


def _task_result(trainer, bank, k, task: CoTask, hp, enc, spec: _Task, settings: CoTrainConfig, mixing, names,
                 started: float, resume, start_step: int) -> TrainResult | TrainingDiverged:
    view = _task_view(trainer.state.log_history, k)
    epochs = _epoch_table(view, spec.metric)
    best_epoch = _best_epoch(epochs, spec.metric, spec.greater)
    _restore_best(trainer, bank, k, view, spec.metric, best_epoch)
    validation = _metrics(trainer.evaluate_task(k, spec.validation, "eval"), "eval_")
    test = _metrics(trainer.evaluate_task(k, spec.test, "test"), "test_")
    floor = validation_floor(task.data)
    did_learn = learned([e.get(f"validation_{spec.metric}") for e in epochs] + [validation.get(spec.metric)],
                        (floor or {}).get(spec.metric), higher_is_better=spec.greater)
    ended = None if did_learn is True else ended_diverged(validation.get("loss"), spec.start_loss,
                                                          spec.divergence_factor, spec.learning_rate)
    if ended:  # as a training alone (tasks.train): nothing of this task is written
        return TrainingDiverged(f"task {task.name}: {ended}")
    out_dir = Path(task.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    edit = bank.task_edit(k)
    path = edit.save(out_dir / f"{task.data.name}.safetensors", base_model=task.config.model,
                     revision=task.config.revision, extra=edit_extra(task.data, validation, test))
    others = [n for n in names if n != task.name]
    params = result_params(task.config, hp, bank.base_model)
    params.update({"co_train.tasks": ",".join(names), "co_train.temperature": settings.temperature,
                   "co_train.mixing": settings.mixing, "co_train.micro_batches": settings.micro_batches,
                   "co_train.batch_size": mixing.micro_batch,
                   "co_train.rows_per_step": mixing.rows_per_step, "co_train.steps_per_epoch": mixing.steps_per_epoch,
                   "co_train.share": round(mixing.weights[k], 6)})
    result = TrainResult(
        task=task.data.name, method=task.config.method, base_model=task.config.model, primary_metric=spec.metric,
        edit_path=str(path), output_dir=str(out_dir), best_epoch=best_epoch, epochs=epochs,
        steps=[{"step": h["step"], "loss": h["loss"], "learning_rate": h["learning_rate"]} for h in view
               if "loss" in h],
        validation=validation, test=test,
        trainable_parameters=sum(p.numel() for p in bank.task_parameters(k).values()),
        edit_parameters=edit.num_edit_parameters, params=params, data_hash=task.data.data_hash,
        base_revision=task.config.revision, base_fingerprint=edit.base_fingerprint, task_type=task.data.task_type,
        label_list=task.data.label_list, truncated=dict(enc.truncated), seconds=round(time.time() - started, 2),
        global_step=int(trainer.state.global_step),  # steps_trained: the steps that held this task's rows
        steps_trained=(mixing.steps_with_rows(int(trainer.state.global_step))[k]
                       - mixing.steps_with_rows(start_step)[k]),
        resumed_from=resume, init=task.init_note,
        identity=(task.identity or training_identity(task.data, task.config, co_train=settings.recipe())).to_dict(),
        co_trained_with=others,
    )
    result.floor, result.learned = floor or {}, did_learn
    result.save(out_dir / "result.json")
    return result

