"""Registry operations as plain functions: open the store, roll back, the gate's policy from a config.

Registry operations need no orchestrator: the CLI calls these directly (a second or two) unless a Prefect
API is configured, in which case it runs the flows of ``flows/manage.py`` - thin wrappers over these same
functions - so the operation shows up as a flow run. This module imports no Prefect, and no training stack
(the read-only commands ``versions`` and ``history`` open the store through it); promoting by hand, which
scores versions on a task's rows, is in ``flows/promotion.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import rollback
from registry.store import TrackingTarget, open_target
from registry.views import require_model, require_version

if TYPE_CHECKING:  # the config's module imports the training stack, which these operations never need
    from .config import RetrainConfig, TaskSpec


def open_store(tracking_uri: str | None = None, runs_dir: str | Path = "runs", *,
               cfg: "RetrainConfig | None" = None, create: bool = False) -> TrackingTarget:
    """Resolve the MLflow store (``--tracking-uri`` > config > env > default) and point MLflow at it.

    ``create=False`` (every command that works on existing models) raises ``StoreNotFound`` rather
    than creating an empty SQLite store.
    """
    return open_target(tracking_uri, cfg.runs_dir if cfg is not None else runs_dir,
                       config_uri=cfg.tracking_uri if cfg is not None else None, create=create)


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


def rollback_version(model_name: str, to_version: int | None = None, reason: str = "") -> Any:
    """Move ``production`` back (see ``registry.aliases.rollback``); ``ModelNotFound`` if there is no such model."""
    require_model(model_name)
    if to_version is not None:
        require_version(model_name, to_version)
    return rollback(model_name, to_version=to_version, reason=reason)
