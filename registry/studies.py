"""A hyperparameter search in MLflow: one parent run per tuned task, one nested run per trial.

Layout in the task's experiment::

    <task> tune <method> <UTC time>          redflow.run_kind=tune; params tune.* (budget, space, pruner,
      |                                       sampler) and best.* (the winning values); metrics best_value,
      |                                       trials_complete/pruned/failed; artifacts plots/optimization_history.png,
      |                                       plots/param_importances.png, trials.json, trials.md
      +- trial 0 .. trial N-1                 redflow.run_kind=trial; params = the trial's values; metrics
      |                                       epoch/validation_<metric> (the curve the pruner saw), value; tag
      |                                       optuna.state (complete, pruned, fail)
      +- <task> <method> <UTC time>           the best trial's training, logged by registry.tracking.log_training
                                              and registered as the task's one new version

The figures are Optuna's own (``optuna.visualization.matplotlib``). Nothing here imports Prefect.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from .aliases import alias_version
from .models import latest_version
from .tracking import get_or_create_experiment, log_batches, mlflow_key, number_metric, param_text

RUN_KIND_TUNE, RUN_KIND_TRIAL = "tune", "trial"
_log = logging.getLogger(__name__)


def start_study_run(experiment: str, task: str, method: str, study_name: str, storage_url: str,
                    settings: Mapping[str, Any], *, run_id: str | None = None) -> str:
    """The parent run of a study: reopened when ``run_id`` (a resumed study's) still exists, else created."""
    client = MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                return run_id
        except MlflowException:
            pass
    experiment_id = get_or_create_experiment(experiment, client)
    tags = {"mlflow.runName": f"{task} tune {method} {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
            "redflow.run_kind": RUN_KIND_TUNE, "task": task, "method": method,
            "optuna.study_name": study_name, "optuna.storage": storage_url}
    run = client.create_run(experiment_id, tags=tags)
    params = [Param(mlflow_key(f"tune.{k}"), param_text(v)) for k, v in settings.items() if v is not None]
    log_batches(client, run.info.run_id, params=params)
    return run.info.run_id


def log_trial_run(experiment: str, parent_run_id: str, task: str, number: int, outcome, metric: str) -> str:
    """One nested run for told trial ``number`` (a ``tasks.tuning.study.TrialOutcome`` or the exception that ended it)."""
    client = MlflowClient()
    experiment_id = get_or_create_experiment(experiment, client)
    failed = isinstance(outcome, BaseException)
    state = "fail" if failed else outcome.state
    tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": f"trial {number}",
            "redflow.run_kind": RUN_KIND_TRIAL, "task": task, "optuna.trial_number": str(number),
            "optuna.state": state}
    error = f"{type(outcome).__name__}: {outcome}" if failed else outcome.error
    if error:
        tags["error"] = error[:5000]
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    ts = int(time.time() * 1000)
    metrics: list[Metric | None] = []
    params: list[Param] = []
    if not failed:
        params = [Param(mlflow_key(k), param_text(v)) for k, v in outcome.params.items()]
        result = outcome.result
        curve = ({int(e["epoch"]): e.get(f"validation_{metric}") for e in result.epochs} if result is not None
                 else dict(outcome.intermediate))
        metrics += [number_metric(f"epoch/validation_{metric}", v, epoch, ts) for epoch, v in curve.items()]
        if result is not None:
            metrics += [number_metric("epoch/train_loss", e.get("train_loss"), int(e["epoch"]), ts)
                        for e in result.epochs]
            metrics.append(number_metric("best_epoch", result.best_epoch, 0, ts))
        metrics += [number_metric("value", outcome.value, 0, ts), number_metric("seconds", outcome.seconds, 0, ts)]
    log_batches(client, run_id, metrics=[m for m in metrics if m is not None], params=params)
    client.set_terminated(run_id, "FAILED" if failed or state == "fail" else "FINISHED")
    return run_id


def finish_study_run(parent_run_id: str, study, *, best=None, trials: list[dict[str, Any]] | None = None) -> None:
    """Best values as ``best.*`` params, the counts, Optuna's history and importance plots, the trial table."""
    client = MlflowClient()
    ts = int(time.time() * 1000)
    rows = trials or []
    counts = {s: sum(1 for r in rows if r["state"] == s and not r.get("crashed"))
              for s in ("complete", "pruned", "fail")}
    metrics = [number_metric(f"trials_{'failed' if s == 'fail' else s}", n, 0, ts) for s, n in counts.items()]
    params: list[Param] = []
    if best is not None:
        params = [Param(mlflow_key(f"best.{k}"), param_text(v)) for k, v in best.params.items()]
        params.append(Param("best.trial", str(best.number)))
        metrics.append(number_metric("best_value", best.value, 0, ts))
    existing = client.get_run(parent_run_id).data.params
    params = [p for p in params if p.key not in existing]  # a resumed study logged them already
    log_batches(client, parent_run_id, metrics=[m for m in metrics if m is not None], params=params)
    client.log_text(parent_run_id, json.dumps(rows, indent=1, default=str), "trials.json")
    client.log_text(parent_run_id, trials_markdown(rows), "trials.md")
    for name, figure in study_figures(study).items():
        client.log_figure(parent_run_id, figure, f"plots/{name}.png")
        plt.close(figure)
    client.set_terminated(parent_run_id, "FINISHED")


def study_figures(study) -> dict[str, Any]:
    """Optuna's optimisation history and (with two or more finished trials) parameter importances."""
    with warnings.catch_warnings():  # optuna.visualization.matplotlib is marked experimental
        warnings.simplefilter("ignore")
        matplotlib.use("Agg", force=False)
        figures: dict[str, Any] = {}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            figures["optimization_history"] = optuna_plots.plot_optimization_history(study).figure
        if len(complete) >= 2:
            try:
                figures["param_importances"] = optuna_plots.plot_param_importances(study).figure
            except (ValueError, RuntimeError) as exc:  # e.g. every trial with the same values
                _log.info("no parameter-importance plot: %s", exc)
    for figure in figures.values():
        figure.set_size_inches(7, 4.5)
        figure.tight_layout()
    return figures


def trials_markdown(rows: list[dict[str, Any]]) -> str:
    """The trials as a Markdown table (number, state, values, score, epochs, seconds, note)."""
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    lines = ["| trial | state | " + " | ".join(names) + " | value | epochs | seconds | note |",
             "|---:|---|" + "---:|" * len(names) + "---:|---:|---:|---|"]
    for r in rows:
        values = " | ".join(_num(r["params"].get(n)) for n in names)
        note = ("crashed, asked again" if r.get("crashed") else f"retry of {r['retry_of']}" if r.get("retry_of")
                is not None else r.get("source") or (r.get("error") or "")[:80])
        lines.append(f"| {r['number']} | {r['state']} | {values} | {_num(r.get('value'))} | "
                     f"{len(r.get('intermediate') or {})} | {_num(r.get('seconds'))} | {note} |")
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def version_hyperparameters(model_name: str, names: list[str]) -> tuple[int, dict[str, float]] | None:
    """``(version, values)``: the hyperparameters ``names`` that the production version (else the latest) of
    ``model_name`` was trained with, read from its training run's params; None when there is none."""
    client = MlflowClient()
    try:
        mv = alias_version(model_name, "production", client) or latest_version(model_name, client)
    except MlflowException:
        return None
    if mv is None or not mv.run_id:
        return None
    try:
        params = client.get_run(mv.run_id).data.params
    except MlflowException:
        return None
    values: dict[str, float] = {}
    for name in names:
        if name in params:
            try:
                values[name] = int(params[name]) if name == "lora_r" else float(params[name])
            except ValueError:
                continue
    return (int(mv.version), values) if values else None
