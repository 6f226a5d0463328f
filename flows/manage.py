"""Flows that act on registered versions: re-evaluate, promote, roll back.

Each is a thin Prefect flow over a plain function (``*_version``), which the CLI
and the tests can also call directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from .config import RetrainConfig, load_config


def _tracking(cfg: RetrainConfig | None, tracking_uri: str | None) -> str:
    from registry import setup_tracking

    if cfg is not None:
        return setup_tracking(tracking_uri or cfg.tracking_uri, cfg.runs_dir)
    return setup_tracking(tracking_uri)


def evaluate_version(model_name: str, version_or_alias: int | str, suites: list[Any], *,
                     cfg: RetrainConfig | None = None, task_name: str | None = None,
                     out_dir: str | Path = "runs/eval") -> list:
    """Evaluate one registered version on ``suites`` and record each report on that version."""
    from red.pretrained import load_pretrained_edit
    from registry import download_edit, record_evaluation, resolve_version
    from tasks.evaluate.suites import run_suite, suite_name

    from mlflow import MlflowClient

    version = resolve_version(model_name, version_or_alias)
    edit_path = download_edit(model_name, version, Path(out_dir) / model_name / str(version))
    loaded = load_pretrained_edit(edit_path)
    max_length = _trained_max_length(MlflowClient().get_model_version(model_name, str(version)))
    data = None
    if any(suite_name(s) in ("test", "classification", "glue") for s in suites):
        if cfg is None or task_name is None:
            raise ValueError("suite 'test' needs the task's data: pass the retrain config and the task name")
        from tasks.data import prepare_data

        task = next((t for t in cfg.tasks if t.name == task_name), None)
        if task is None:
            raise ValueError(f"task {task_name!r} is not in config {cfg.name!r}: {[t.name for t in cfg.tasks]}")
        spec = task.data if task.data.name else task.data.model_copy(update={"name": task.name})
        data = prepare_data(spec, seed=cfg.train_config(task).seed, cache_dir=Path(cfg.runs_dir) / "cache" / "data")
    reports = []
    for suite in suites:
        report = run_suite(suite, edit_path, data=data, out_dir=Path(out_dir) / model_name / str(version),
                           loaded=loaded, max_length=max_length)
        record_evaluation(model_name, version, report)
        reports.append(report)
    return reports


def _trained_max_length(mv) -> int:
    """The max length a version was trained with (its tag, else its training run's param; 256 if unrecorded)."""
    value = mv.tags.get("max_length")
    if value is None and mv.run_id:
        from mlflow import MlflowClient

        value = MlflowClient().get_run(mv.run_id).data.params.get("max_length")
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 256


class ReevaluationFailed(RuntimeError):
    """Some versions could not be re-evaluated; the others were, and recorded. The message names which and why."""


@flow(name="evaluate-version")
def evaluate(model_name: str, version_or_alias: str = "production", suites: list[Any] | None = None,
             config: str | None = None, task: str | None = None, tracking_uri: str | None = None) -> dict:
    """Re-evaluate any version or alias on any suites; the result is recorded on that version."""
    cfg = load_config(config) if config else None
    _tracking(cfg, tracking_uri)
    reports = evaluate_version(model_name, version_or_alias, suites or ["test"], cfg=cfg, task_name=task,
                               out_dir=Path(cfg.runs_dir if cfg else "runs") / "eval")
    md = "\n\n".join(r.to_markdown() for r in reports)
    create_markdown_artifact(key="evaluation", markdown=f"# {model_name}@{version_or_alias}\n\n{md}")
    return {r.name: r.metrics for r in reports}


@flow(name="reevaluate")
def reevaluate(config: str = "configs/demo.yaml", alias: str = "production") -> dict:
    """The weekly job: re-evaluate every task's ``alias`` version on the task's suites.

    Each version is evaluated on its own: one that fails does not stop the others; the flow ends
    Failed afterwards (so a schedule alerts), naming what failed and why.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = load_config(config)
    _tracking(cfg, None)
    client = MlflowClient()
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    lines = [f"# Re-evaluation of `{alias}` ({cfg.name})", "", "| task | version | metrics |", "|---|---:|---|"]
    for task in cfg.tasks:
        name = cfg.model_name(task)
        try:
            version = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            results[task.name] = {"status": f"no {alias} version"}
            lines.append(f"| {task.name} | – | no `{alias}` version |")
            continue
        try:
            reports = evaluate_version(name, version, task.evaluate, cfg=cfg, task_name=task.name,
                                       out_dir=Path(cfg.runs_dir) / "eval")
        except Exception as exc:  # noqa: BLE001 - isolated per version, reported below
            failures[task.name] = f"{name} v{version}: {type(exc).__name__}: {exc}"
            results[task.name] = {"version": version, "status": "failed", "error": failures[task.name]}
            lines.append(f"| {task.name} | {version} | **failed**: {type(exc).__name__}: {str(exc)[:200]} |")
            continue
        metrics = {k: v for r in reports for k, v in r.metrics.items()}
        results[task.name] = {"version": version, "status": "ok", "metrics": metrics}
        lines.append(f"| {task.name} | {version} | " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + " |")
    create_markdown_artifact(key=f"reevaluate-{alias}", markdown="\n".join(lines))
    if failures:
        raise ReevaluationFailed(f"{len(failures)} of {len(cfg.tasks)} re-evaluations failed; the others were "
                                 "recorded. " + "; ".join(failures.values()))
    return results


def promote_version(model_name: str, version: int, *, force: bool = False, policy: dict | None = None,
                    reason: str = "", cfg: RetrainConfig | None = None, task_name: str | None = None) -> Any:
    """Promote through the gate (or unconditionally with ``force``, which is recorded as such).

    With the task's retrain config (``cfg`` and ``task_name``) the candidate and the current
    production are both scored on the task's current test rows at the candidate's max length,
    and the gate decides on that pair, with the config's promotion policy under ``policy``.
    Without it the gate can only promote a first version (on its recorded score).
    """
    from registry import PromotionPolicy, gate_and_promote, move_alias

    if force:
        return move_alias(model_name, "production", version, action="force-promote",
                          reason=reason or "promoted by hand without the gate")
    if cfg is None:
        return gate_and_promote(model_name, version, PromotionPolicy(**(policy or {})))
    from mlflow import MlflowClient

    from registry.champion import score_version
    from tasks.evaluate.suites import find_suite

    from .steps import prepare_step

    task = _task(cfg, task_name)
    merged = {**cfg.promotion_for(task).model_dump(), **{k: v for k, v in (policy or {}).items() if v is not None}}
    gate_policy = PromotionPolicy(**merged)
    mv = MlflowClient().get_model_version(model_name, str(version))
    metric = gate_policy.metric_name(mv.tags.get("primary_metric"))
    suite = find_suite(task.evaluate, metric)
    data = prepare_step(cfg, task)
    work = Path(cfg.runs_dir) / "cache" / "gate"

    def score(v: int):
        return score_version(model_name, v, data, metric=metric, suite=suite, work_dir=work,
                             max_length=_trained_max_length(mv))

    return gate_and_promote(model_name, version, gate_policy, challenger=score(int(version)), score_champion=score)


def _task(cfg: RetrainConfig, task_name: str | None):
    task = next((t for t in cfg.tasks if t.name == task_name), None)
    if task is None:
        raise ValueError(f"task {task_name!r} is not in config {cfg.name!r}: {[t.name for t in cfg.tasks]}")
    return task


@flow(name="promote")
def promote(model_name: str, version: int, force: bool = False, margin: float = 0.0, minimum: float | None = None,
            metric: str | None = None, tracking_uri: str | None = None, runs_dir: str = "runs") -> dict:
    from registry import setup_tracking

    setup_tracking(tracking_uri, runs_dir)
    result = promote_version(model_name, version, force=force,
                             policy={"margin": margin, "minimum": minimum, "metric": metric})
    return result.to_dict()


@flow(name="rollback")
def rollback(model_name: str, to_version: int | None = None, reason: str = "", tracking_uri: str | None = None,
             runs_dir: str = "runs") -> dict:
    from registry import rollback as registry_rollback
    from registry import setup_tracking

    setup_tracking(tracking_uri, runs_dir)
    return registry_rollback(model_name, to_version=to_version, reason=reason or "rollback").to_dict()
