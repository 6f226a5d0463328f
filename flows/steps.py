"""The steps of a retrain as plain functions: prepare, train, evaluate, register, promote.

Prefect tasks in flows/retrain.py are thin wrappers over these, so tests (and
people in a notebook) can call each step directly without Prefect.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks.result import TrainResult

from .config import RetrainConfig, TaskSpec

log = logging.getLogger(__name__)


def task_dir(cfg: RetrainConfig, task: TaskSpec) -> Path:
    return Path(cfg.runs_dir) / cfg.name / task.name


def prepare_step(cfg: RetrainConfig, task: TaskSpec):
    """Load, validate and split the task's data (cached by content hash under runs_dir/cache)."""
    from tasks.data import prepare_data

    spec = task.data if task.data.name else task.data.model_copy(update={"name": task.name})
    return prepare_data(spec, seed=cfg.train_config(task).seed, cache_dir=Path(cfg.runs_dir) / "cache" / "data")


def train_step(cfg: RetrainConfig, task: TaskSpec, data) -> TrainResult:
    from tasks.train import train

    out = task_dir(cfg, task) / "train"
    return train(data, cfg.train_config(task), out)


def evaluate_step(cfg: RetrainConfig, task: TaskSpec, result: TrainResult, data=None) -> list:
    """Run the task's evaluation suites; 'test' reports the held-out split scored after training."""
    from tasks.evaluate.report import EvalReport
    from tasks.evaluate.suites import run_suite

    reports = []
    for suite in task.evaluate:
        if suite == "test":  # scored by the training run on the best epoch: no need to load the model again
            reports.append(EvalReport(name=f"{task.name}/test", kind="classification" if result.task_type in (
                "classification", "regression") else result.task_type, metrics=dict(result.test),
                primary=result.primary_metric if result.primary_metric in result.test else None,
                model=result.edit_path or ""))
        else:
            reports.append(run_suite(suite, result.edit_path, data=data, out_dir=task_dir(cfg, task) / "eval",
                                     max_length=int(result.params.get("max_length", 256))))
    out = task_dir(cfg, task) / "eval"
    for r in reports:
        r.to_json(out / f"{r.name.replace('/', '_')}.json")
    return reports


def register_step(cfg: RetrainConfig, task: TaskSpec, result: TrainResult, reports: list) -> dict[str, Any]:
    """Log the run to MLflow and register the edit as a new version with alias 'candidate'."""
    from registry import log_training, register_edit, setup_tracking

    setup_tracking(cfg.tracking_uri, cfg.runs_dir)  # this may run in a Dask/Ray worker process

    run_id = log_training(result, experiment=cfg.experiment, eval_reports=reports,
                          config={"retrain": cfg.name, "task": task.name})
    version = register_edit(result, run_id, model_name=cfg.model_name(task))
    return {"run_id": run_id, "model_name": cfg.model_name(task), "version": int(version)}


def promote_step(cfg: RetrainConfig, task: TaskSpec, registered: dict[str, Any], result: TrainResult):
    """Move 'production' to the new version if it beats the current one by the configured margin."""
    from registry import PromotionPolicy, gate_and_promote, setup_tracking

    setup_tracking(cfg.tracking_uri, cfg.runs_dir)

    p = cfg.promotion_for(task)
    policy = PromotionPolicy(metric=p.metric or f"test_{result.primary_metric}", margin=p.margin, minimum=p.minimum,
                             higher_is_better=p.higher_is_better)
    return gate_and_promote(registered["model_name"], registered["version"], policy)
