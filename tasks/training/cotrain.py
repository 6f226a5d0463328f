"""Co-train K tasks' RED edits in one pass over one copy of the base model, with transformers' Trainer.

Training K tasks alone needs K copies of the base (or K trainings one after another). RED's edits are
per-row vectors, so one forward/backward over a batch whose rows belong to different tasks can train all
of them: each row uses, and trains, only its task's vectors and head (:class:`red.bank_train.TrainableBank`).
What this adds on top of the single-task training of :mod:`tasks.training.loop` (whose Trainer subclass,
checkpoints, guards and finish into a result it reuses; the co-training's Trainer is
:class:`tasks.training.multitask.MultiTaskTrainer`):

- **mixed batches** (:mod:`tasks.training.mixing`): rows per step proportional to task size or with a temperature,
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
  schedule (warmup, decay) runs over the steps that hold its rows only
  (:class:`~tasks.training.multitask.TaskSchedules`), so a small task
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

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, set_seed

from red import EditMismatchError, TrainableBank, pretrained
from red.bank import head_copy
from tasks.data import encode
from tasks.lifecycle.gate import align_head
from tasks.lifecycle.identity import Identity

from .config import TrainConfig, training_identity
from .control import trainer_slot
from .cotrain_settings import CoTrainConfig, family, shared_settings
from .errors import TrainingDiverged, TrainingError
from .finish import epoch_of, finish, result_params
from .guards import StopOnRequest, initial_loss
from .mixing import Mixing
from .models import center_regression_head, edit_config, head_for, load_base_model, load_tokenizer, precision_dtype
from .multitask import MultiTaskTrainer, TaskCollator, TaskRows, TaskSpec
from .result import TrainResult
from .trainer import checkpoint_step, compute_metrics_for, quiet_console_logging, training_arguments

log = logging.getLogger(__name__)


def group_identity(identities: dict[str, Identity], settings: CoTrainConfig) -> Identity:
    """The identity of a co-training: its tasks' identities (by name) and the settings; equal means the same
    trainings, so a crashed co-training is resumed only by one of exactly the same inputs."""
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
    pretrained.set_pad_token(tokenizer, base)
    return base, heads


def _check_group(tasks: list[CoTask]) -> tuple[dict[str, Any], str]:
    """What the tasks must share (:func:`.cotrain_settings.shared_settings`) and the one model family they load;
    ``ValueError`` for no tasks, repeated names or shared settings that differ, :class:`TrainingError` for tasks
    of different model families."""
    if not tasks:
        raise ValueError("co_train needs at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"co-trained task names must be unique; got {names}")
    shared = shared_settings({t.name: t.config for t in tasks}, {t.name: t.data.task or t.name for t in tasks})
    families = {t.name: family(t.data.task_type) for t in tasks}
    if len(set(families.values())) > 1:
        raise TrainingError(f"co-trained tasks must load one model class, but their task types need different ones "
                            f"({families}); group them by task type")
    return shared, families[names[0]]


def _encode_tasks(tasks: list[CoTask], tokenizer, hps: dict[str, dict[str, Any]],
                  failed: dict[str, Exception]) -> dict[str, Any]:
    """Each task's encoded data ``{name: EncodedData}``; a task whose data does not encode, or has no training
    rows, fails alone: its error goes in ``failed``."""
    encoded = {}
    for task in tasks:
        try:
            encoded[task.name] = encode(task.data, tokenizer, max_length=hps[task.name]["max_length"])
            if len(encoded[task.name].train) == 0:
                raise TrainingError(f"task {task.name} has no training rows")
        except (ValueError, TrainingError) as exc:
            failed[task.name] = exc
    return encoded


def _warm_start(bank: TrainableBank, live: list[CoTask]) -> dict[int, TrainingError]:
    """Load each task's start edit (``init_state``) into the bank; ``{k: error}`` for the tasks whose start edit
    does not fit (other labels, another edit layout): they stop before training, alone."""
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
    return cannot_start


def _task_specs(live: list[CoTask], encoded: dict[str, Any], hps: dict[str, dict[str, Any]]) -> list[TaskSpec]:
    """Per task (in bank order k): its metric, optimizer settings, guards and evaluation sets (rows tagged k)."""
    specs = []
    for k, task in enumerate(live):
        enc, hp = encoded[task.name], hps[task.name]
        classification = family(task.data.task_type) == "sequence"
        metric = task.data.metric if classification else "loss"
        specs.append(TaskSpec(
            name=task.name, task_type=task.data.task_type, metric=metric, greater=metric != "loss",
            learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"],
            label_smoothing=hp["label_smoothing"], divergence_factor=task.config.divergence_factor,
            validation=enc.validation.add_column("task_ids", [k] * len(enc.validation)),
            test=enc.test.add_column("task_ids", [k] * len(enc.test)),
            compute_metrics=compute_metrics_for(task.data) if classification else None))
    return specs


def _mixing(live: list[CoTask], trains: list, live_hps: list[dict[str, Any]], settings: CoTrainConfig,
            seed: int) -> Mixing:
    """How the tasks' rows make up each optimizer step (:mod:`tasks.training.mixing`)."""
    return Mixing(sizes=[len(t) for t in trains],
                  rows_per_step=settings.rows_per_step or sum(hp["batch_size"] * hp["grad_accum"] for hp in live_hps),
                  micro_batch=settings.batch_size or max(hp["batch_size"] for hp in live_hps),
                  seeds=[t.config.seed for t in live], temperature=settings.temperature,
                  mode=settings.mixing, seed=seed, order=settings.micro_batches,
                  lengths=[[len(x) for x in t["input_ids"]] for t in trains])


def _make_trainer(first: TrainConfig, bank: TrainableBank, live: list[CoTask], live_hps: list[dict[str, Any]],
                  specs: list[TaskSpec], trains: list, mixing: Mixing, collator: TaskCollator, epochs: int,
                  out_dir: Path, callbacks: list | None) -> MultiTaskTrainer:
    """The co-training's Trainer: the first task's (``first``) arguments with the shared epochs, the mixing's
    micro-batches and no Trainer-wide weight decay or label smoothing (both are per task); each task evaluated on
    its own validation set."""
    args = training_arguments(
        first, {**live_hps[0], "epochs": epochs, "batch_size": mixing.micro_batch,
                "eval_batch_size": max(hp["eval_batch_size"] for hp in live_hps),
                "grad_accum": mixing.micro_batches_per_step, "weight_decay": 0.0, "label_smoothing": 0.0},
        out_dir, load_best_model_at_end=False, metric_for_best_model=None, save_total_limit=None,
        logging_steps=max(1, min(mixing.steps_per_epoch, *(t.config.logging_steps for t in live))))
    trainer = MultiTaskTrainer(
        model=bank, args=args, train_dataset=TaskRows(trains),
        eval_dataset={f"t{k}": s.validation for k, s in enumerate(specs)}, data_collator=collator,
        callbacks=[StopOnRequest()] + list(callbacks or []), tasks=specs, mixing=mixing)
    quiet_console_logging(trainer)
    return trainer


def _start_tasks(trainer: MultiTaskTrainer, bank: TrainableBank, live: list[CoTask], specs: list[TaskSpec],
                 trains: list, hps: dict[str, dict[str, Any]], collator: TaskCollator, micro: int,
                 fresh_heads: set[str]) -> None:
    """Before the first step, as each task alone starts: a new regression head at its labels' mean (issue 22), and
    each task's loss on its first rows, the baseline of its divergence guard (``guards.initial_loss``)."""
    for k, task in enumerate(live):
        if task.data.task_type == "regression" and task.init_state is None and task.name in fresh_heads:
            rows = [{**trains[k][i], "task_ids": k} for i in range(min(len(trains[k]), 256))]
            center_regression_head(bank, collator, rows, hps[task.name]["eval_batch_size"])
    for k, spec in enumerate(specs):
        rows = [{**trains[k][i], "task_ids": k} for i in range(min(len(trains[k]), micro))]
        spec.start_loss = initial_loss(bank, collator, rows, micro, loss_of=trainer.compute_loss)


def co_train(tasks: list[CoTask], settings: CoTrainConfig | None, out_dir: str | Path, *,
             resume_from: str | Path | None = None,
             callbacks: list | None = None) -> dict[str, TrainResult | Exception]:
    """Train ``tasks`` together (RED, one base, one Trainer); checkpoints under ``out_dir/checkpoints``.

    Returns, per task name (in the given order), its :class:`TrainResult` (edit file, result.json under the task's
    ``out_dir``; ``seconds`` is the co-training's) or the error that stopped that task alone: its data does not
    encode, its head cannot be trained, its start edit does not fit, its loss became NaN
    (:class:`TrainingError`) or ran away (:class:`TrainingDiverged`). Raises ``ValueError`` /
    :class:`TrainingError` for what stops them all: settings the tasks must share that differ
    (:data:`.cotrain_settings.SHARED`), tasks of different model families, a method other than RED, a base that
    cannot load.
    ``resume_from``: a complete checkpoint of a crashed co-training of the same inputs (see tasks.lifecycle.attempts).
    """
    shared, model_family = _check_group(tasks)
    names = [t.name for t in tasks]
    settings = settings or CoTrainConfig()
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hps = {t.name: t.config.resolved(t.data.task or t.name) for t in tasks}
    first = tasks[0].config
    # the seed and the process's accelerate state are this co-training's until it ends, as in loop.train: the
    # heads are initialised under each task's seed, which another thread's training would otherwise draw from
    with trainer_slot():
        set_seed(first.seed)
        tokenizer = load_tokenizer(first.model, first.revision, tasks[0].data.task_type)
        outcomes: dict[str, TrainResult | Exception] = {}  # failures first, then results
        encoded = _encode_tasks(tasks, tokenizer, hps, outcomes)
        fresh_heads: set[str] = set()
        base, heads = _load_base_and_heads([t for t in tasks if t.name not in outcomes], tokenizer,
                                           precision_dtype(first.precision), outcomes, fresh_heads=fresh_heads)
        live = [t for t in tasks if t.name not in outcomes]
        if not live:
            return {name: outcomes[name] for name in names}
        live_names = [t.name for t in live]
        bank = TrainableBank(base, [edit_config("red", t.config.edit, list(heads[t.name])) for t in live], live_names,
                             heads=[heads[t.name] for t in live], task_types=[t.data.task_type for t in live])
        cannot_start = _warm_start(bank, live)
        specs = _task_specs(live, encoded, hps)
        live_hps = [hps[n] for n in live_names]
        trains = [encoded[n].train for n in live_names]
        mixing = _mixing(live, trains, live_hps, settings, first.seed)
        collator = TaskCollator(DataCollatorWithPadding(tokenizer) if model_family == "sequence"
                                else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
        trainer = _make_trainer(first, bank, live, live_hps, specs, trains, mixing, collator, shared["epochs"],
                                out_dir, callbacks)
        for k, error in cannot_start.items():
            trainer.stop_task(k, error)
        _start_tasks(trainer, bank, live, specs, trains, hps, collator, mixing.micro_batch, fresh_heads)
        resume = str(resume_from) if resume_from else None
        start_step = checkpoint_step(resume)
        if resume:
            log.info("resuming the co-training of %s from %s (step %d)", ", ".join(live_names), resume, start_step)
        if len(trainer.stopped) < len(live):
            trainer.train(resume_from_checkpoint=resume)
        bank.eval()
        for k, (task, spec) in enumerate(zip(live, specs)):
            if k in trainer.stopped:
                outcomes[task.name] = trainer.stopped[k]
                continue
            try:
                outcomes[task.name] = _task_result(trainer, bank, k, task, hps[task.name], encoded[task.name], spec,
                                                   settings, mixing, live_names, started, resume, start_step)
            except TrainingDiverged as exc:  # as a training alone: nothing of this task is written
                outcomes[task.name] = TrainingDiverged(f"task {task.name}: {exc}")
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
    steps = [h["step"] for h in view if f"eval_{metric}" in h and epoch_of(h) == best_epoch]
    folder = Path(trainer.args.output_dir) / f"checkpoint-{steps[-1]}" if steps else None
    if folder is None or not (folder / "trainable.safetensors").is_file():
        log.warning("task %s: no checkpoint of its best epoch %d; keeping its last state", bank.names[k], best_epoch)
        return
    state = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, p in bank.task_parameters(k).items():
            p.copy_(state[name].to(p.device, p.dtype))


def _task_result(trainer: MultiTaskTrainer, bank: TrainableBank, k: int, task: CoTask, hp: dict[str, Any], enc,
                 spec: TaskSpec, settings: CoTrainConfig, mixing: Mixing, names: list[str], started: float,
                 resume: str | None, start_step: int) -> TrainResult:
    """Task k's result (:func:`tasks.training.finish.finish`): its best epoch restored from its checkpoint, its
    edit saved under the task's ``out_dir``; raises TrainingDiverged as a training alone does."""
    view = _task_view(trainer.state.log_history, k)
    edit = bank.task_edit(k)
    params = result_params(task.config, hp, bank.base_model, task.data.text_columns)
    params.update({"co_train.tasks": ",".join(names), "co_train.temperature": settings.temperature,
                   "co_train.mixing": settings.mixing, "co_train.micro_batches": settings.micro_batches,
                   "co_train.batch_size": mixing.micro_batch,
                   "co_train.rows_per_step": mixing.rows_per_step, "co_train.steps_per_epoch": mixing.steps_per_epoch,
                   "co_train.share": round(mixing.weights[k], 6)})
    splits = {"eval": spec.validation, "test": spec.test}
    return finish(
        task.data, task.config, Path(task.out_dir), model=edit, history=view, metric=spec.metric,
        evaluate=lambda split: trainer.evaluate_task(k, splits[split], split),
        restore_best=lambda best: _restore_best(trainer, bank, k, view, spec.metric, best),
        start_loss=spec.start_loss, learning_rate=spec.learning_rate, params=params,
        trainable_parameters=sum(p.numel() for p in bank.task_parameters(k).values()),
        edit_parameters=edit.num_edit_parameters, truncated=enc.truncated,
        global_step=int(trainer.state.global_step),  # steps_trained: the steps that held this task's rows
        steps_trained=(mixing.steps_with_rows(int(trainer.state.global_step))[k]
                       - mixing.steps_with_rows(start_step)[k]),
        started=started, resumed_from=resume, init=task.init_note,
        identity=task.identity or training_identity(task.data, task.config, co_train=settings.recipe()),
        co_trained_with=[n for n in names if n != task.name])
