"""The Trainer of a co-training: :class:`MultiTaskTrainer` trains K tasks' RED edits in one
:class:`red.bank_train.TrainableBank`, each task with its own loss, optimizer groups, learning-rate schedule
(:class:`TaskSchedules`), gradient clipping, evaluation and guards (the contract is :mod:`tasks.training.cotrain`).
"""
from __future__ import annotations

import bisect
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from transformers import get_scheduler
from transformers.trainer_utils import SchedulerType

from .errors import TrainingDiverged, TrainingError
from .guards import divergence_message, nan_message
from .mixing import MixedBatchSampler
from .trainer import EditTrainer

log = logging.getLogger(__name__)

#: The file a co-training checkpoint records its stopped tasks in (a resumed run does not restart them).
STATE_FILE = "cotrain_state.json"


@dataclass
class TaskSpec:
    """What :class:`MultiTaskTrainer` needs per task: its loss, optimizer settings, evaluation sets and guards."""

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


class TaskRows(Dataset):
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


class TaskCollator:
    """A transformers collator (padding) that keeps each row's ``task_ids``."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        ids = [int(f.pop("task_ids")) for f in features]
        batch = self.inner(features)
        batch["task_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch


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


class MultiTaskTrainer(EditTrainer):
    """EditTrainer over a TrainableBank: mixed batches, per-task losses, groups, clipping, evaluation, guards."""

    def __init__(self, *args, tasks: list[TaskSpec], mixing, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = tasks
        self.mixing = mixing
        self.stopped: dict[int, TrainingError] = {}
        self._stopped_on: tuple[Any, torch.Tensor | None] = (None, None)  # (stopped ids, device), their tensor
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
            keep = ~torch.isin(ids, self._stopped_ids(ids.device))
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
        losses: list[tuple[int, torch.Tensor]] = []
        for k in ids.unique().tolist():
            rows = (ids == k).nonzero(as_tuple=True)[0]
            task = self.tasks[k]
            summed = _loss_sum(task.task_type, logits[rows], labels[rows], task.label_smoothing,
                               bank.output_widths[k])
            count = self._step_counts.get(k) if training else None
            if count is None:
                count = torch.clamp(_label_count(task.task_type, labels[rows]), min=1)
            losses.append((k, summed / count.to(summed.device)))
        # training: every task's loss read back in one device sync per micro-batch, for the NaN check and the sums
        values = torch.stack([loss.detach().float() for _, loss in losses]).tolist() if training and losses else []
        for i, (k, loss_k) in enumerate(losses):
            if training:
                value = values[i]
                if not math.isfinite(value):
                    task = self.tasks[k]
                    self.stop_task(k, TrainingError(f"task {task.name}: " + nan_message(
                        value, self.state.global_step + 1, task.learning_rate)))
                    continue
                self._loss_sums[k] += value
            total = total + loss_k
        return (total, outputs) if return_outputs else total

    def _stopped_ids(self, device) -> torch.Tensor:
        """The stopped tasks' ids on ``device``: copied there when the stopped set changes, not every micro-batch
        (a resumed run fills ``stopped`` directly, so the set itself is the key)."""
        key = (tuple(sorted(self.stopped)), device)
        if self._stopped_on[0] != key:
            self._stopped_on = (key, torch.tensor(key[0], device=device))
        return self._stopped_on[1]

    def stop_task(self, k: int, error: TrainingError) -> None:
        """Stop task k with ``error`` (its rows leave the batches, its parameters stop moving); the others go on."""
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
        """One schedule of the shared type per task, over the steps that hold its rows (:class:`TaskSchedules`).

        ``reduce_lr_on_plateau`` and ``greedy`` follow evaluations, not steps: those keep the Trainer's one
        scheduler."""
        if self.lr_scheduler is None and SchedulerType(self.args.lr_scheduler_type) not in (
                SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY):
            args = self.args

            def make(stand_in: torch.optim.Optimizer, total: int):
                return get_scheduler(args.lr_scheduler_type, optimizer=stand_in,
                                     num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total,
                                     scheduler_specific_kwargs=args.lr_scheduler_kwargs)

            self.lr_scheduler = TaskSchedules(optimizer or self.optimizer, [t.groups for t in self.tasks],
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
                self.stop_task(k, TrainingDiverged(f"task {task.name}: {message}"))

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


class TaskSchedules:
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
