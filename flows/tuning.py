"""The tune branch of a retrain: a Prefect subflow per tuned task, its trials fanned out as Prefect tasks.

A task with a ``tune:`` block does not train once: ``tune_flow`` opens (or resumes) the task's Optuna
study (``tasks.tuning.study``; storage ``sqlite:///<runs_dir>/optuna.db``), asks ``parallel`` trials at a time,
submits each as a ``tune-trial`` task through the task runner of the retrain (threads, Dask or Ray),
and tells each result back as it finishes (ask-and-tell). Trials report every epoch's validation score
to the study from the process that runs them, so the study's pruner stops poor ones early. The best
trial's TrainResult, carrying the task's identity, then goes on to evaluation, registration and the
gate like any other training: one version per tuned task.

What the study leaves behind: an MLflow parent run with one nested run per trial, the best values
and Optuna's plots (``registry.studies``); a Prefect artifact listing the trials; and the study in
the storage, which a run after a crash resumes without redoing finished trials.

No ``from __future__ import annotations``: the subflow's parameters are validated against real annotations
wherever Prefect runs it (see flows/retrain.py).
"""
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from registry.studies import finish_study_run, log_trial_run, start_study_run, version_hyperparameters
from registry.studies import trials_markdown as trials_table_markdown
from tasks.training import TrainResult, stop_training_when_interrupted
from tasks.tuning.study import (best_result, discard_artifacts, enqueue_first, open_study, outcome_of, run_study,
                                run_trial, storage_url, study_name, summary_note, trials_table)

from . import console
from .artifacts import artifact_key
from .config import RetrainConfig, TaskSpec
from .retries import retry_if_transient
from .runners import requesting
from .steps import Plan, prepare_step, setup_store, task_dir

log = logging.getLogger(__name__)


# ---- plain steps (callable without Prefect) -----------------------------------------------------
def open_step(cfg: RetrainConfig, task: TaskSpec, data, plan: Plan):
    """Open or resume the task's study, enqueue its first trials, and open its MLflow parent run.

    Returns ``(OpenStudy, parent_run_id)``. The first trials, when they lie in the search space: the
    production (else latest) version's values (``reuse_best``), then ``first_trials``, then the
    configured values (``start_at_config``).
    """
    setup_store(cfg)
    _quiet_optuna()
    config = cfg.train_config(task)
    tune = config.tune
    hp = config.resolved(data.task or data.name)
    space = tune.space(hp, config.method)
    metric = data.metric if data.task_type in ("classification", "regression") else "loss"
    name = study_name(f"{cfg.name}.{task.name}", plan.identity.to_dict())
    url = storage_url(cfg.runs_dir)
    opened = open_study(url, name, tune, space, direction="minimize" if metric == "loss" else "maximize",
                        metric=metric, folder=task_dir(cfg, task) / "tune")
    candidates: list[tuple[dict[str, Any], str]] = []
    if tune.reuse_best:
        previous = version_hyperparameters(cfg.model_name(task), list(space))
        if previous is not None:
            candidates.append((previous[1], f"v{previous[0]}'s values"))
    candidates += [(values, f"first_trials[{i}]") for i, values in enumerate(tune.first_trials)]
    if tune.start_at_config:
        candidates.append((tune.configured(hp, space), "the configured values"))
    opened.notes.extend(enqueue_first(opened, candidates))
    settings = {**tune.recipe(), "space": {k: repr(v) for k, v in space.items()}, "metric": metric}
    parent = start_study_run(cfg.experiment, task.name, config.method, opened.study.study_name, url, settings,
                             run_id=opened.study.user_attrs.get("mlflow_parent_run"))
    opened.study.set_user_attr("mlflow_parent_run", parent)
    for note in opened.notes:
        log.info("%s: %s", task.name, note)
    return opened, parent


def trial_step(cfg: RetrainConfig, task: TaskSpec, data, ref, number: int, params: dict[str, Any], run_key: str,
               callbacks: list | None = None):
    """Train one trial (in whichever process the task runner chose); a ``tasks.tuning.study.TrialOutcome``."""
    return run_trial(data, cfg.train_config(task), ref, number, params, run_key=run_key,
                     cache_dir=Path(cfg.runs_dir) / "cache" / "base", callbacks=callbacks)


def log_told(cfg: RetrainConfig, task: TaskSpec, opened, parent: str, number: int, outcome) -> str:
    """The trial's nested MLflow run (once: the study remembers its run id)."""
    key = f"mlflow_run.{number}"
    if key in opened.study.user_attrs:
        return opened.study.user_attrs[key]
    run_id = log_trial_run(cfg.experiment, parent, task.name, number, outcome, opened.ref.metric)
    opened.study.set_user_attr(key, run_id)
    return run_id


def log_earlier_trials(cfg: RetrainConfig, task: TaskSpec, opened, parent: str) -> None:
    """Nested runs for trials a crashed run told but did not log yet."""
    for frozen in opened.study.get_trials(deepcopy=False):
        if frozen.state.is_finished() and f"mlflow_run.{frozen.number}" not in opened.study.user_attrs \
                and not frozen.user_attrs.get("crashed"):
            log_told(cfg, task, opened, parent, frozen.number, outcome_of(frozen))


def finish_step(cfg: RetrainConfig, task: TaskSpec, plan: Plan, opened, parent: str, data) -> TrainResult:
    """The best trial's TrainResult as the task's training: the task's identity, the study's notes and record.

    The best trial's attempt folder (its edit) is kept, the other trials' artifacts are dropped; the study is
    marked finished only after that. Until register_step marks that attempt registered, a run that dies
    on the way leaves the study to be reused by the next run (``tasks.tuning.study.open_study``), not searched again."""
    rows = trials_table(opened.study)
    try:
        best, result = best_result(opened)
    except Exception:
        finish_study_run(parent, opened.study, trials=rows)
        raise
    finish_study_run(parent, opened.study, best=best, trials=rows)
    for row in rows:  # only the winner's artifacts are needed (evaluation and registration read them)
        output = opened.study.trials[row["number"]].user_attrs.get("output_dir")
        if row["number"] != best.number and output and output != result.output_dir:
            discard_artifacts(output)
    result.identity = plan.identity.to_dict()  # the tuned task's identity: what "unchanged" compares
    # and the recipe it hashed (tune block included), which the next night's diff reads
    result.recipe = json.loads(json.dumps(cfg.train_config(task).recipe(data.task or data.name), default=str))
    result.notes = list(plan.reasons) + list(opened.notes) + [summary_note(opened, best)]
    if opened.reused:  # a finished search taken up again (its run died before registering): this run trained nothing
        result.steps_trained = 0
    result.tuning = {"study": opened.study.study_name, "storage": opened.ref.storage_url, "parent_run_id": parent,
                     "best_trial": best.number, "best_params": dict(best.params), "metric": opened.ref.metric,
                     "trials": [{k: r[k] for k in ("number", "state", "params", "value", "crashed")} for r in rows]}
    result.save(Path(opened.ref.folder) / "result.json")
    opened.finish()
    return result


def trials_markdown(task: TaskSpec, opened, parent: str, best_number: int | None) -> str:
    """The tuning subflow's Prefect artifact: the study, its MLflow parent run, every trial, the study's notes."""
    return "\n".join([f"# Tuning `{task.name}`", "", f"Study `{opened.study.study_name}` in "
                      f"`{opened.ref.storage_url}`; MLflow parent run `{parent}`; best trial "
                      f"{best_number if best_number is not None else '-'} (validation {opened.ref.metric}).", "",
                      trials_table_markdown(trials_table(opened.study)), "", *(f"- {n}" for n in opened.notes)])


def _quiet_optuna() -> None:
    """Optuna's messages go through standard logging (the run's log file), not straight to stderr."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


# ---- Prefect ---------------------------------------------------------------------------------------
@task(name="tune-trial", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      task_run_name="trial-{task.name}-{number}")
def trial_task(cfg: RetrainConfig, task: TaskSpec, data, ref, number: int, params: dict[str, Any], run_key: str):
    console.report(task.name, "tune", f"trial {number}")
    return trial_step(cfg, task, data, ref, number, params, run_key,
                      callbacks=[console.training_callback(task.name)])


def _outcome(future):
    future.wait()  # the final state, not the API's view of it, which may lag
    state = future.state
    if state.is_completed():
        return future.result()
    error = state.result(raise_on_failure=False)
    return error if isinstance(error, BaseException) else RuntimeError(state.message or state.name)


@flow(name="tune", flow_run_name="tune-{task.name}")
def tune_flow(cfg: RetrainConfig, task: TaskSpec, plan: Plan, run_key: str) -> TrainResult:
    """Run (or resume) the task's study and return its best trial's TrainResult (see the module doc).

    The prepared data is read back from the retrain's data cache here rather than passed in: a flow's
    parameters are serialised to the Prefect API, and the splits are no parameter to store there."""
    with stop_training_when_interrupted():  # a SIGTERM stops the running trials at their next step
        return _tune(cfg, task, plan, run_key)


def _tune(cfg: RetrainConfig, task: TaskSpec, plan: Plan, run_key: str) -> TrainResult:
    data = prepare_step(cfg, task)
    if data.data_hash != plan.identity.data_hash:
        raise RuntimeError(f"{task.name}: the data changed between planning and tuning "
                           f"({plan.identity.data_hash} -> {data.data_hash}); run the retrain again")
    opened, parent = open_step(cfg, task, data, plan)
    tune = opened.ref.tune
    best_number = None
    try:
        log_earlier_trials(cfg, task, opened, parent)
        console.report(task.name, "tune", f"{opened.remaining()} of {tune.trials} trials to run")

        def told(number: int, outcome) -> None:
            log_told(cfg, task, opened, parent, number, outcome)
            state = "failed" if isinstance(outcome, BaseException) else outcome.state
            value = getattr(outcome, "value", None)
            console.report(task.name, "tune", f"trial {number} {state}" + (f" {value:.4f}" if value is not None
                                                                             else ""))

        with requesting(cfg.task_runner, cfg.resources_for(task)):  # each trial is a training: it asks for them
            run_study(opened, parallel=tune.parallel or cfg.max_workers,
                      submit=lambda number, params: trial_task.submit(cfg, task, data, opened.ref, number, params,
                                                                      run_key),
                      as_completed=as_completed, outcome=_outcome, on_told=told)
        result = finish_step(cfg, task, plan, opened, parent, data)
        best_number = result.tuning["best_trial"]
        return result
    finally:
        opened.close()
        create_markdown_artifact(key=artifact_key("tune", cfg.name, task.name),
                                 markdown=trials_markdown(task, opened, parent, best_number),
                                 description=f"tuning {task.name}: every trial, its values, state and validation score")

