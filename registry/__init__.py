"""registry: the MLflow side of redflow.

* ``store``     - which MLflow store: ``--tracking-uri`` > config > ``$REDFLOW_TRACKING_URI`` /
  ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<runs_dir>/mlflow.db``; reading never creates a store.
* ``tracking``  - ``log_training`` (one MLflow run per task training: params, curves, metrics, artifacts, plots).
* ``plots``     - matplotlib (Agg) figures: training curves, per-layer edit heatmap.
* ``pyfunc``    - ``RedEditModel``, the MLflow pyfunc that loads base model + edit and predicts.
* ``models``    - ``register_edit`` (one registered model per task, ``red-<task>``) and
  ``record_evaluation``.
* ``aliases``   - ``PromotionPolicy``, ``gate_and_promote``, ``rollback``, ``alias_history``.
* ``locks``     - the promotion lock (MLflow has no compare-and-set on aliases).
* ``server``    - start/stop a local ``mlflow server`` or ``mlflow models serve`` (tests, demo).
* ``multitask`` - ``MultiTaskModel``: many registered RED edits on one base, following their alias
  (``serving_config``, ``served_tasks``, ``routing``; ``bundle`` registers it, ``serve_app`` is
  ``redflow serve``; see docs/serving.md).

Imports are lazy (PEP 562) so that ``import registry.pyfunc`` - what a model server does when it
loads a registered version - pulls in neither matplotlib nor ``tasks`` nor Prefect. Importing the
submodules directly (``from registry.models import register_edit``) always works, also while the
editable install lists ``registry`` as a namespace package (then this file is not executed).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "setup_tracking": "store",
    "default_tracking_uri": "store",
    "resolve_tracking_uri": "store",
    "use_tracking": "store",
    "require_store": "store",
    "StoreNotFound": "store",
    "TrackingTarget": "store",
    "get_or_create_experiment": "tracking",
    "log_training": "tracking",
    "code_version": "tracking",
    "training_curves_figure": "plots",
    "edit_heatmap_figure": "plots",
    "RedEditModel": "pyfunc",
    "register_edit": "models",
    "record_evaluation": "models",
    "download_edit": "models",
    "model_name_for": "models",
    "resolve_version": "models",
    "RegistrationError": "models",
    "PromotionPolicy": "aliases",
    "PromotionDecision": "aliases",
    "AliasMove": "aliases",
    "gate_and_promote": "aliases",
    "rollback": "aliases",
    "alias_history": "aliases",
    "alias_version": "aliases",
    "production_version": "aliases",
    "move_alias": "aliases",
    "RollbackError": "aliases",
    "registry_lock": "locks",
    "LockTimeout": "locks",
    "start_tracking_server": "server",
    "start_model_server": "server",
    "start_server_process": "server",
    "invoke": "server",
    "free_port": "server",
    "ServerProcess": "server",
    "ServerStartError": "server",
    "MultiTaskModel": "multitask",
    "load_multitask": "multitask",
    "ServingConfig": "serving_config",
    "ServingConfigError": "serving_config",
    "register_bundle": "bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
