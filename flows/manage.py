"""Flows that act on registered versions: re-evaluate, promote, approve or reject, roll back.

Each is a thin Prefect flow over a plain function (``evaluate_version`` here, ``promote_version`` in
``flows.promotion``, ``rollback_version`` in ``flows.operations``), which the CLI calls directly when no Prefect API is
configured, and tests can call too.

No ``from __future__ import annotations``: Prefect validates the flows' parameters against real annotations wherever
it runs them (see flows/retrain.py).
"""
from pathlib import Path
from typing import Any, Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from red.pretrained import load_pretrained_edit
from registry import download_edit, record_evaluation, resolve_version
from registry.approval import decide_approval
from registry.champion import trained_max_length
from registry.views import require_model
from tasks.evaluate.suites import run_suite, suite_name

from .config import RetrainConfig, load_config
from .operations import open_store, promotion_policy, rollback_version, task_for_model
from .promotion import promote_version
from .steps import prepare_step


def evaluate_version(model_name: str, version_or_alias: int | str, suites: list[Any], *,
                     cfg: RetrainConfig | None = None, task_name: str | None = None,
                     out_dir: str | Path = "runs/eval") -> list:
    """Evaluate one registered version on ``suites`` and record each report on that version."""
    version = resolve_version(model_name, version_or_alias)
    edit_path = download_edit(model_name, version, Path(out_dir) / model_name / str(version))
    loaded = load_pretrained_edit(edit_path)
    max_length = trained_max_length(MlflowClient().get_model_version(model_name, str(version)))
    data = None
    if any(suite_name(s) in ("test", "classification", "glue") for s in suites):
        if cfg is None or task_name is None:
            raise ValueError("suite 'test' needs the task's data. Fix: pass --config (the retrain config) "
                             "and, if the model is not red-<task>, --task")
        task = next((t for t in cfg.tasks if t.name == task_name), None)
        if task is None:
            raise ValueError(f"task {task_name!r} is not in config {cfg.name!r}: {[t.name for t in cfg.tasks]}")
        data = prepare_step(cfg, task)  # the rows the retrain flow splits off, whatever the training seed
    reports = []
    for suite in suites:
        report = run_suite(suite, edit_path, data=data, out_dir=Path(out_dir) / model_name / str(version),
                           loaded=loaded, max_length=max_length)
        record_evaluation(model_name, version, report)
        reports.append(report)
    return reports


class ReevaluationFailed(RuntimeError):
    """Some versions could not be re-evaluated; the others were, and recorded. The message names which and why."""


def evaluate_reports(model_name: str, version_or_alias: str = "production", suites: list[Any] | None = None,
                     config: str | None = None, task: str | None = None, tracking_uri: str | None = None) -> list:
    """The body of ``evaluate`` as a plain function: resolve the store and the task, evaluate, record."""
    cfg = load_config(config) if config else None
    open_store(tracking_uri, cfg=cfg)  # the existing store (flag > config > env > default); never creates one
    require_model(model_name)
    if cfg is not None:
        task = task_for_model(cfg, model_name, task).name
    return evaluate_version(model_name, version_or_alias, suites or ["test"], cfg=cfg, task_name=task,
                            out_dir=Path(cfg.runs_dir if cfg else "runs") / "eval")


@flow(name="evaluate-version")
def evaluate(model_name: str, version_or_alias: str = "production", suites: list[Any] | None = None,
             config: str | None = None, task: str | None = None, tracking_uri: str | None = None) -> dict:
    """Re-evaluate any version or alias on any suites; the result is recorded on that version."""
    reports = evaluate_reports(model_name, version_or_alias, suites, config, task, tracking_uri)
    md = "\n\n".join(r.to_markdown() for r in reports)
    create_markdown_artifact(key="evaluation", markdown=f"# {model_name}@{version_or_alias}\n\n{md}")
    return {r.name: r.metrics for r in reports}


@flow(name="reevaluate")
def reevaluate(config: str = "configs/demo.yaml", alias: str = "production") -> dict:
    """The weekly job: re-evaluate every task's ``alias`` version on the task's suites.

    Each version is evaluated on its own: one that fails does not stop the others; the flow ends
    Failed afterwards (so a schedule alerts), naming what failed and why.
    """
    cfg = load_config(config)
    open_store(None, cfg=cfg)  # the existing store; never creates one
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


@flow(name="promote")
def promote(model_name: str, version: int, force: bool = False, margin: float | None = None,
            minimum: float | None = None, metric: str | None = None, tracking_uri: str | None = None,
            runs_dir: str = "runs", higher_is_better: bool | None = None, config: str | None = None,
            task: str | None = None) -> dict:
    """Move 'production' to ``version`` through the gate (``force``: without it, recorded as forced).

    With ``config`` both versions are scored on the task's current rows (see ``promotion.promote_version``).
    """
    cfg = load_config(config) if config else None
    open_store(tracking_uri, runs_dir, cfg=cfg)
    spec = task_for_model(cfg, model_name, task) if cfg is not None else None
    policy = promotion_policy(cfg, spec, margin=margin, minimum=minimum, metric=metric,
                              higher_is_better=higher_is_better)
    return promote_version(model_name, version, force=force, policy=policy, cfg=cfg, task=spec).to_dict()


@flow(name="rollback")
def rollback(model_name: str, to_version: int | None = None, reason: str = "", tracking_uri: str | None = None,
             runs_dir: str = "runs") -> dict:
    """Move 'production' back to the version it replaced (or ``to_version``)."""
    open_store(tracking_uri, runs_dir)
    return rollback_version(model_name, to_version, reason).to_dict()


@flow(name="approve-version")
def approve_version(model_name: str, version: int, decision: Literal["approve", "reject"], reason: str = "",
                    approver: str = "", config: str | None = None, tracking_uri: str | None = None,
                    runs_dir: str = "runs") -> dict:
    """A person's decision on a version awaiting approval (``promotion.approval: required``), from the Prefect UI
    (the ``approve-version`` deployment: its run form asks for these parameters) or ``redflow approve``/``reject``.

    ``approver``: who decides, recorded as ``by`` in the alias history (default: the worker's user@host or its
    ``$REDFLOW_USER``). Refuses, and the flow run fails with the reason, when the version is not awaiting approval
    or production moved since the gate (``registry.approval``)."""
    open_store(tracking_uri, runs_dir, cfg=load_config(config) if config else None)
    return decide_approval(model_name, version, decision == "approve", reason, by=approver or None).to_dict()
