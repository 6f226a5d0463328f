"""The steps of a retrain as plain functions: prepare, plan, train, evaluate, register, gate.

Prefect tasks in flows/retrain.py are thin wrappers over these, so tests (and people in a
notebook) can call each step directly without Prefect. What makes a *nightly* retrain right:

- ``plan_step`` compares tonight's inputs (data hash, resolved config, base checkpoint, code)
  with those of the task's latest registered version: equal means ``unchanged`` (nothing is
  trained or registered) unless ``force``;
- ``train_step`` trains in this run's own folder and resumes only a crashed training of the
  same inputs (``tasks.lifecycle.attempts``); ``init: production`` starts from the production edit;
- ``cotrain_step`` trains a co-training group's tasks in one pass over one copy of the base
  (``tasks.training.cotrain``), in the group's own attempt folder; each task's result then goes through the same
  evaluate/register/promote steps as a task trained alone;
- ``evaluate_step`` scores the saved artifact row by row on the test split;
- ``promote_step`` scores the current production on the same rows and gates on the paired
  difference (``registry.aliases.gate_and_promote``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from red import read_edit
from registry import gate_and_promote, log_training, register_edit, setup_tracking
from registry.aliases import CANDIDATE, alias_version, move_alias, production_version
from registry.champion import load_trained, score_version, trained_max_length
from registry.edit_diff import log_production_diff
from registry.models import download_edit, registered_from
from registry.plan_lookup import ModelVersions, experiment_id, model_versions, plan_records
from registry.tracking import log_gate_comparison
from tasks.data import prepare_data
from tasks.evaluate.paired import rows_report, score_split
from tasks.evaluate.suite_specs import check_gate_metric, find_suite, suite_name
from tasks.evaluate.suites import run_suite, suite_scores
from tasks.lifecycle.attempts import (attempt_folder, finished_unregistered, mark_registered, open_attempt, prune,
                                      registered_as, registration_lock, reuse_note)
from tasks.lifecycle.gate import LabelledState
from tasks.lifecycle.plan import GATE, TRAIN, UNCHANGED, Plan, decide  # noqa: F401 - re-exported
from tasks.training import CoTask, TrainResult, co_train, family, group_identity, train, training_identity

from . import console
from .config import ConfigError, RetrainConfig, TaskSpec

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """The candidate's evaluation reports and its per-row scores (what the gate compares)."""

    reports: list = field(default_factory=list)
    rows: dict[str, Any] = field(default_factory=dict)   # gate metric -> tasks.evaluate.paired.RowScores


def task_dir(cfg: RetrainConfig, task: TaskSpec) -> Path:
    return Path(cfg.runs_dir) / cfg.name / task.name


def setup_store(cfg: RetrainConfig) -> str:
    """Point MLflow at the config's store (``cfg.tracking_uri``, else ``sqlite:///<runs_dir>/mlflow.db``) and return
    its URI. Every step that talks to MLflow calls it first: steps may run in Dask/Ray worker processes, where
    nothing pointed MLflow anywhere yet."""
    return setup_tracking(cfg.tracking_uri, cfg.runs_dir)


def prepare_step(cfg: RetrainConfig, task: TaskSpec):
    """Load, validate and split the task's data (cached by content hash under runs_dir/cache)."""
    spec = task.data if task.data.name else task.data.model_copy(update={"name": task.name})
    return prepare_data(spec, seed=spec.split_seed, cache_dir=Path(cfg.runs_dir) / "cache" / "data")


def registered_versions(cfg: RetrainConfig, tasks: list[TaskSpec] | None = None) -> dict[str, ModelVersions]:
    """What the plans of ``tasks`` (default: all the config's) read from the registry, by model name: one search
    over the versions of all their models and one over their latest versions' training runs
    (``registry.plan_lookup``), so that an unchanged night makes no registry call per task."""
    setup_store(cfg)
    client = MlflowClient()
    experiment = experiment_id(cfg.experiment, client)
    return model_versions([cfg.model_name(t) for t in (cfg.tasks if tasks is None else tasks)], client,
                          experiment_ids=[experiment] if experiment else [], config=cfg.name)


def plan_step(cfg: RetrainConfig, task: TaskSpec, data, *, force: bool = False,
              registered: ModelVersions | None = None) -> Plan:
    """Tonight's action for ``task`` (``tasks.lifecycle.plan.decide``): train, ``unchanged`` when the inputs equal
    those of the latest registered version and the gate decided on it, ``gate`` when it never did.

    ``registered``: the task's entry of :func:`registered_versions` read once for the whole night (the flow does);
    without it this task's own lookup, the same calls for one task."""
    setup_store(cfg)
    config = cfg.train_config(task)
    metric = cfg.promotion_for(task).metric
    if metric:  # the config could not tell the task type (a CSV's labels decide it): check now, before training
        try:
            check_gate_metric(metric, task.evaluate, data.task_type)
        except ValueError as exc:
            raise ConfigError(f"promotion.metric of task {task.name!r} ({data.task_type} data): {exc}. Fix: gate "
                              "on a metric this task produces") from None
    co_train = cfg.co_train_settings().recipe() if cfg.co_train_group(task) is not None else None
    identity = training_identity(data, config, cache_dir=Path(cfg.runs_dir) / "cache" / "base", co_train=co_train)
    name = cfg.model_name(task)
    recipe = json.loads(json.dumps(config.recipe(data.task or data.name), default=str))
    if registered is None:
        registered = registered_versions(cfg, [task])[name]
    # the latest version, and an earlier one only where its identity digest could be tonight's
    versions = plan_records(registered, identity, config=cfg.name)
    return decide(identity, versions[0] if versions else None, earlier=versions[1:], force=force,
                  dependencies=cfg.retrain_on_dependency_change, recipe=recipe,
                  init_production=config.init == "production",
                  production=production_version(name) if config.init == "production" else None)


@contextlib.contextmanager
def failures_recorded(attempt) -> Iterator[None]:
    """Record in the attempt how the training inside failed (then re-raise): deterministic (bad data or config,
    NaN, divergence: never resumed), transient (I/O, a lost worker: a rerun may resume from the last
    checkpoint), or interrupted (left as a crash, resumable by the next run of the same inputs)."""
    try:
        yield
    except (OSError, ConnectionError, TimeoutError, MemoryError) as exc:  # I/O, a lost worker: may pass
        attempt.fail(exc, transient=True)
        raise
    except Exception as exc:  # NaN, divergence, bad data or config, a torch error: would fail again
        if attempt.resume_from:  # a resume that fails never blocks the next run: that checkpoint is skipped
            attempt.mark_bad_checkpoint(attempt.resume_from, exc)
            attempt.fail(exc, transient=True)
        else:
            attempt.fail(exc, transient=False)
        raise
    except BaseException:
        attempt.close()
        raise


def train_step(cfg: RetrainConfig, task: TaskSpec, data, plan: Plan, run_key: str,
               callbacks: list | None = None) -> TrainResult | None:
    """Train in this run's own folder (resuming only a crashed twin); None when the plan says unchanged."""
    if plan.action != TRAIN:
        return None
    config = cfg.train_config(task)
    done = finished_training(cfg, task, plan.identity)
    if done is not None:  # trained, then crashed before registering: register that training, do not redo it
        return _reuse_finished(done, plan)
    init_state, init_note = None, "fresh"
    if plan.init_version is not None:
        init_state, init_note = _production_state(cfg, task, plan.init_version)
    attempt = open_attempt(task_dir(cfg, task), plan.identity, run_key, resume=config.resume)
    for note in attempt.notes:  # resumes and skipped checkpoints: said when training starts, not only after
        log.info("%s: %s", task.name, note)
        console.report(task.name, "train", note)
    with failures_recorded(attempt):
        result = train(data, config, attempt.folder, resume_from=attempt.resume_from, init_state=init_state,
                       init_note=init_note, identity=plan.identity, callbacks=callbacks)
    result.notes = plan.reasons + attempt.notes
    record_devices(result)
    result.save(attempt.folder / "result.json")
    attempt.finish()
    prune(task_dir(cfg, task), keep=cfg.keep_attempts)
    return result


def record_devices(result: TrainResult) -> None:
    """Which GPUs the training saw, as the engine set them (Ray for ``num_gpus``, redflow's local Dask workers):
    the ``cuda_visible_devices`` param of its run ("none": hidden from every GPU). Nothing when no engine set
    ``CUDA_VISIBLE_DEVICES`` (the threads runner: every device of the machine)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        result.params["cuda_visible_devices"] = devices or "none"


def finished_training(cfg: RetrainConfig, task: TaskSpec, identity) -> Path | None:
    """The folder of a finished, never registered training of ``task`` with ``identity``: trained alone (its own
    attempts) or in a co-training (a group of this config; a group's last task to register trains alone)."""
    done = finished_unregistered(task_dir(cfg, task), identity)
    groups = sorted((Path(cfg.runs_dir) / cfg.name / "@cotrain").glob("*"))
    for folder in groups if done is None else ():
        done = finished_unregistered(folder, identity, task=task.name)
        if done is not None:
            break
    return done


def _reuse_finished(done: Path, plan: Plan) -> TrainResult:
    """The result a finished, never registered training left in ``done``, to register instead of retraining."""
    result = TrainResult.load(done / "result.json")
    result.output_dir = str(done)  # where it is now (a run may have moved runs_dir)
    name = (attempt_folder(done) or done).name
    result.notes = plan.reasons + [reuse_note(name)]
    result.steps_trained = 0
    return result


def co_train_key(cfg: RetrainConfig, task: TaskSpec, data) -> str | None:
    """The co-training group a task to train joins (``<group>.<model family>``), or None when it trains alone.

    The config's validation already made a group's tasks share base model, method and schedule; the data
    decides the model class (sequence classification/regression, causal LM, seq2seq).
    """
    group = cfg.co_train_group(task)
    return None if group is None else f"{group}.{family(data.task_type)}"


def cotrain_step(cfg: RetrainConfig, group: str, tasks: list[TaskSpec], datas: list, plans: list[Plan],
                 run_key: str, callbacks: list | None = None) -> dict[str, TrainResult | Exception]:
    """Train the tasks of one co-training group together; per task, its TrainResult or the error that stopped it.

    The group trains in its own attempt folder (``runs/<config>/@cotrain/<group>/attempts/...``), under an
    identity combining its tasks' identities and the co-training settings, so only a crashed co-training of
    exactly the same inputs is resumed. Each task's edit and result go to ``<attempt>/tasks/<task>/``. A task
    that cannot start (its production edit does not load) or that stops (NaN, divergence) fails alone; what
    stops them all (bad shared settings, the base does not load, an I/O error) is raised.
    """
    settings = cfg.co_train_settings()
    outcomes: dict[str, TrainResult | Exception] = {}
    members = []
    folder = Path(cfg.runs_dir) / cfg.name / "@cotrain" / group
    for task, data, plan in zip(tasks, datas, plans):
        done = finished_training(cfg, task, plan.identity)
        if done is not None:  # trained (by this group), then the run died before registering it: register that
            outcomes[task.name] = _reuse_finished(done, plan)
            continue
        init_state, init_note = None, "fresh"
        try:
            if plan.init_version is not None:
                init_state, init_note = _production_state(cfg, task, plan.init_version)
        except Exception as exc:  # noqa: BLE001 - this task cannot start; the others still train
            outcomes[task.name] = exc
            continue
        members.append((task, data, plan, init_state, init_note))
    if not members:
        return outcomes
    identity = group_identity({t.name: p.identity for t, _, p, _, _ in members}, settings)
    configs = {t.name: cfg.train_config(t) for t, *_ in members}
    attempt = open_attempt(folder, identity, run_key, resume=all(c.resume for c in configs.values()),
                           members={t.name: p.identity for t, _, p, _, _ in members})
    for note in attempt.notes:
        log.info("co-train %s: %s", group, note)
    co_tasks = [CoTask(data=d, config=configs[t.name], out_dir=attempt.folder / "tasks" / t.name,
                       init_state=state, init_note=note, identity=p.identity) for t, d, p, state, note in members]
    with failures_recorded(attempt):
        results = co_train(co_tasks, settings, attempt.folder, resume_from=attempt.resume_from, callbacks=callbacks)
    for task, _, plan, _, _ in members:
        result = results[task.name]
        if isinstance(result, TrainResult):
            result.notes = plan.reasons + attempt.notes + [
                f"co-trained with {', '.join(result.co_trained_with)} in one pass (group {group})"]
            record_devices(result)
            result.save(Path(result.output_dir) / "result.json")
        outcomes[task.name] = result
    attempt.finish()
    prune(folder, keep=cfg.keep_attempts)
    return outcomes


def _production_state(cfg: RetrainConfig, task: TaskSpec, version: int):
    """The production edit's tensors for ``init: production``, with the label list its head was trained on.

    The labels travel with the tensors (``LabelledState``) so that training puts the head's rows in
    tonight's label order by name, or refuses a head of other labels (``tasks.lifecycle.gate.align_head``).
    """
    setup_store(cfg)
    name = cfg.model_name(task)
    path = download_edit(name, version, Path(cfg.runs_dir) / "cache" / "versions" / name / str(version))
    tensors, meta = read_edit(path)
    return LabelledState(tensors, (meta.get("extra") or {}).get("label_list")), f"production v{version}"


def gate_metric(cfg: RetrainConfig, task: TaskSpec, result: TrainResult | str) -> str:
    """The metric the gate compares: the configured one, else the task's primary metric (``result``'s, or the name
    a version recorded), without a ``test_`` prefix."""
    primary = result if isinstance(result, str) else result.primary_metric
    metric = cfg.promotion_for(task).metric or primary
    return metric[len("test_"):] if metric.startswith("test_") else metric


def evaluate_step(cfg: RetrainConfig, task: TaskSpec, result: TrainResult | None, data=None) -> Evaluation | None:
    """Score the saved artifact on the test rows (row by row) and run the task's other suites."""
    if result is None:
        return None
    metric = gate_metric(cfg, task, result)
    max_length = int(result.params.get("max_length", 256))
    out = Path(result.output_dir) / "eval"
    loaded = load_trained(result)  # the saved artifact, loaded the way its version will serve
    model, tokenizer, _ = loaded
    rows = score_split(model, tokenizer, data, metric=metric if "/" not in metric else result.primary_metric,
                       max_length=max_length)
    evaluation = Evaluation(rows={rows.metric: rows})
    gate_suite = find_suite(task.evaluate, metric)
    for suite in task.evaluate:
        if suite_name(suite) == "test":
            report = rows_report(rows, data, name=f"{task.name}/test", model=str(result.edit_path))
        else:
            report = run_suite(suite, result.edit_path, data=data, out_dir=out, max_length=max_length, loaded=loaded)
            if suite is gate_suite:
                evaluation.rows[metric] = suite_scores(report, metric)
        report.to_json(out / f"{report.name.replace('/', '_')}.json")
        evaluation.reports.append(report)
    return evaluation


def register_step(cfg: RetrainConfig, task: TaskSpec, result: TrainResult | None,
                  evaluation: Evaluation | None) -> dict[str, Any] | None:
    """Log the run to MLflow (once, whatever the retries) and register the edit as a new ``candidate``."""
    if result is None:
        return None
    setup_store(cfg)
    client, name = MlflowClient(), cfg.model_name(task)
    with registration_lock(result.output_dir):  # a twin that found the same finished training waits, then reuses
        done = registered_as(result.output_dir, task.name)
        if done is not None and done[0] == name:
            mv = client.get_model_version(name, str(done[1]))
            return {"run_id": mv.run_id, "model_name": name, "version": done[1],
                    "experiment_id": client.get_run(mv.run_id).info.experiment_id}
        tuning = result.tuning or {}
        tags = ({"mlflow.parentRunId": tuning["parent_run_id"], "redflow.tune.study": tuning.get("study", ""),
                 "redflow.tune.best_trial": str(tuning.get("best_trial"))} if tuning.get("parent_run_id") else None)
        run_id = log_training(result, experiment=cfg.experiment,
                              eval_reports=evaluation.reports if evaluation else [],
                              config={"retrain": cfg.name, "task": task.name}, tags=tags)
        version = registered_from(name, run_id, client) or register_edit(
            result, run_id, model_name=name, tags={"retrain_config": cfg.name})
        mark_registered(result.output_dir, name, version, task=task.name)
    return {"run_id": run_id, "model_name": name, "version": int(version),
            "experiment_id": client.get_run(run_id).info.experiment_id}


def promote_step(cfg: RetrainConfig, task: TaskSpec, registered: dict[str, Any] | None, result: TrainResult | None,
                 evaluation: Evaluation | None = None, data=None, plan: Plan | None = None):
    """Champion vs challenger on the same rows: move ``production`` if the candidate wins by the margin.

    With a ``gate`` plan (a version registered from tonight's inputs by a run that died before its gate),
    that version is the candidate: see :func:`gate_registered_step`.
    """
    if registered is None and plan is not None and plan.action == GATE:
        return gate_registered_step(cfg, task, plan, data)
    if registered is None or result is None:
        return None
    setup_store(cfg)
    policy = cfg.promotion_for(task).policy()
    metric = gate_metric(cfg, task, result)
    challenger = (evaluation.rows.get(metric) if evaluation else None)
    suite = find_suite(task.evaluate, metric)
    work = Path(result.output_dir) / "champion"

    scored: dict[int, Any] = {}  # champion version -> its rows, kept for the comparison logged on the run

    def score_champion(version: int):
        scored[version] = score_version(registered["model_name"], version, data, metric=metric, suite=suite,
                                        max_length=int(result.params.get("max_length", 256)), work_dir=work)
        return scored[version]

    # the new version's edit against production's, on its run (a warning at worst: never fails the night)
    log_production_diff(registered["model_name"], registered["version"], production_version(registered["model_name"]),
                        registered["run_id"])
    decision = gate_and_promote(registered["model_name"], registered["version"], policy, challenger=challenger,
                                score_champion=score_champion if data is not None else None)
    _log_gate(registered, decision, challenger, scored.get(decision.previous), data if suite is None else None)
    return decision


def _log_gate(registered: dict[str, Any], decision, challenger, champion, data) -> None:
    """The gate's comparison on the challenger's training run (``registry.tracking.log_gate_comparison``): metrics
    ``gate/*`` and the rows where the two versions disagree (with their texts when ``data``'s test split holds the
    compared rows). A view for people: a failure is a warning, never a failed night."""
    if not decision.comparison:
        return
    texts = None
    if data is not None and challenger is not None and len(data.test) == len(challenger):
        texts = {column: list(data.test[column]) for column in data.text_columns}
    try:
        log_gate_comparison(registered["run_id"], decision.comparison, challenger, champion, texts=texts,
                            label_names=getattr(data, "label_list", None))
    except Exception as exc:  # noqa: BLE001 - never fails the night
        log.warning("%s v%s: could not log the gate's comparison on run %s (%s: %s)", registered["model_name"],
                    registered["version"], registered["run_id"], type(exc).__name__, exc)


def gate_registered_step(cfg: RetrainConfig, task: TaskSpec, plan: Plan, data):
    """Gate version ``plan.latest_version``, registered from tonight's inputs by a run that died before its gate.

    Both sides are scored the way the gate always scores a champion: the registered versions loaded as they
    serve, on tonight's test rows (or the gate suite's rows) at the length the candidate trained with. A
    version that got its decision meanwhile (a twin run) keeps it: nothing is decided twice.
    """
    setup_store(cfg)
    name, version = cfg.model_name(task), int(plan.latest_version)
    mv = MlflowClient().get_model_version(name, str(version))
    metric = gate_metric(cfg, task, mv.tags.get("primary_metric") or "accuracy")
    suite = find_suite(task.evaluate, metric)
    max_length = trained_max_length(mv)
    work = task_dir(cfg, task) / "gate"
    _finish_registration(cfg, task, plan, name, version)

    scored: dict[int, Any] = {}  # champion version -> its rows, for the comparison logged on the run

    def score(v: int):
        return score_version(name, v, data, metric=metric, suite=suite, max_length=max_length, work_dir=work)

    def score_champion(v: int):
        scored[v] = score(v)
        return scored[v]

    challenger = score(version)
    decision = gate_and_promote(name, version, cfg.promotion_for(task).policy(), challenger=challenger,
                                score_champion=score_champion, once=True)
    if decision.previous in scored and mv.run_id:  # decided now, not by a twin: its comparison on its run
        _log_gate({"model_name": name, "version": version, "run_id": mv.run_id}, decision, challenger,
                  scored[decision.previous], data if suite is None else None)
    return decision


def _finish_registration(cfg: RetrainConfig, task: TaskSpec, plan: Plan, name: str, version: int) -> None:
    """What a registration that died after its version became ``ready`` left undone: the attempt that trained it
    is marked registered (so no later run, ``--force`` included, registers it again), and ``candidate`` points
    at it unless a newer version holds it."""
    done = finished_training(cfg, task, plan.identity)
    if done is not None:
        mark_registered(done, name, version, task=task.name)
    candidate = alias_version(name, CANDIDATE)
    if candidate is None or int(candidate.version) < version:
        move_alias(name, CANDIDATE, version, action="candidate",
                   reason="registered by a run that stopped before moving candidate")
