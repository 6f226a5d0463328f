"""Registry operations as plain functions: open the store, promote, roll back, the gate's policy from a config.

Registry operations need no orchestrator: the CLI calls these directly (a second or two) unless a Prefect
API is configured, in which case it runs the flows of ``flows/manage.py`` - thin wrappers over these same
functions - so the operation shows up as a flow run. This module imports no Prefect.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.store import TrackingTarget

    from .config import RetrainConfig, TaskSpec


def open_store(tracking_uri: str | None = None, runs_dir: str | Path = "runs", *,
               cfg: "RetrainConfig | None" = None, create: bool = False) -> "TrackingTarget":
    """Resolve the MLflow store (``--tracking-uri`` > config > env > default) and point MLflow at it.

    ``create=False`` (every command that works on existing models) raises ``StoreNotFound`` rather
    than creating an empty SQLite store.
    """
    from registry.store import resolve_tracking_uri, use_tracking

    target = resolve_tracking_uri(tracking_uri, cfg.runs_dir if cfg is not None else runs_dir,
                                  config_uri=cfg.tracking_uri if cfg is not None else None, source="--tracking-uri")
    use_tracking(target, create=create)
    return target


def task_for_model(cfg: "RetrainConfig", model_name: str, task: str | None = None) -> "TaskSpec":
    """The config's task named ``task``, or else the one whose registered model is ``model_name``."""
    names = [t.name for t in cfg.tasks]
    if task is not None:
        found = next((t for t in cfg.tasks if t.name == task), None)
        if found is None:
            raise LookupError(f"config {cfg.name!r} has no task {task!r}. Fix: pass --task with one of {names}")
        return found
    found = next((t for t in cfg.tasks if cfg.model_name(t) == model_name), None)
    if found is None:
        raise LookupError(f"no task of config {cfg.name!r} registers {model_name!r} (its models: "
                          f"{[cfg.model_name(t) for t in cfg.tasks]}). Fix: pass --task with one of {names}")
    return found


def promotion_policy(cfg: "RetrainConfig | None" = None, task: "TaskSpec | None" = None,
                     **overrides: Any) -> dict[str, Any]:
    """The gate's policy: the task's promotion settings from ``cfg`` (if given), then ``overrides`` that are not None."""
    policy: dict[str, Any] = {}
    if cfg is not None and task is not None:
        policy = cfg.promotion_for(task).model_dump()
    policy.update({k: v for k, v in overrides.items() if v is not None})
    return policy


def promote_version(model_name: str, version: int, *, force: bool = False, policy: dict | None = None,
                    reason: str = "", cfg: "RetrainConfig | None" = None, task: "TaskSpec | None" = None) -> Any:
    """Promote through the gate (or unconditionally with ``force``, which is recorded as such).

    With the task's retrain config (``cfg`` and ``task``) the version and the current production are
    both scored on the task's current test rows (or its gate suite's rows) at the version's trained
    max length, and the gate decides on that pair. Without them the gate can only promote a first
    version (on its recorded score): it never replaces production on scores from different test sets.

    Returns the gate's ``PromotionDecision`` (``force``: the ``AliasMove``). Raises ``ModelNotFound``
    for a model or version that does not exist.
    """
    from registry import AliasMove, PromotionPolicy, gate_and_promote, move_alias, production_version
    from registry.views import require_version

    require_version(model_name, version)
    if force:
        if production_version(model_name) == int(version):  # nothing to move, and no self-move in the history
            return AliasMove(model_name=model_name, alias="production", version=int(version), previous=int(version),
                             action="none", reason=f"version {version} is already production")
        return move_alias(model_name, "production", version, action="force-promote",
                          reason=reason or "promoted by hand without the gate")
    gate_policy = PromotionPolicy(**(policy or {}))
    if cfg is None or task is None:
        return gate_and_promote(model_name, version, gate_policy)
    score = same_row_scorer(cfg, task, model_name, version, gate_policy)
    return gate_and_promote(model_name, version, gate_policy, challenger=score(int(version)), score_champion=score)


def same_row_scorer(cfg: "RetrainConfig", task: "TaskSpec", model_name: str, version: int, policy: Any):
    """``score(v)``: version ``v``'s per-row scores on the task's current test rows (or gate suite's rows)."""
    from mlflow import MlflowClient

    from registry.champion import score_version, trained_max_length
    from tasks.evaluate.suites import find_suite

    from .steps import prepare_step

    mv = MlflowClient().get_model_version(model_name, str(version))
    metric = policy.metric_name(mv.tags.get("primary_metric"))
    suite = find_suite(task.evaluate, metric)
    data = prepare_step(cfg, task)
    max_length = trained_max_length(mv)

    def score(v: int):
        return score_version(model_name, v, data, metric=metric, suite=suite, max_length=max_length,
                             work_dir=Path(cfg.runs_dir) / "cache" / "gate")

    return score


def rollback_version(model_name: str, to_version: int | None = None, reason: str = "") -> Any:
    """Move ``production`` back (see ``registry.aliases.rollback``); ``ModelNotFound`` if there is no such model."""
    from registry import rollback
    from registry.views import require_model, require_version

    require_model(model_name)
    if to_version is not None:
        require_version(model_name, to_version)
    return rollback(model_name, to_version=to_version, reason=reason or "rollback")
