"""registry: the MLflow side of redflow.

* ``store``     - which MLflow store: ``--tracking-uri`` > config > ``$REDFLOW_TRACKING_URI`` /
  ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<runs_dir>/mlflow.db``; reading never creates a store.
* ``tracking``  - ``log_training`` (one MLflow run per task training: params, curves, metrics, artifacts, plots).
* ``plots``     - matplotlib (Agg) figures: training curves, per-layer edit heatmap.
* ``models``    - ``register_edit`` (one registered model per task, ``red-<task>``) and
  ``record_evaluation``.
* ``aliases``   - ``PromotionPolicy``, ``gate_and_promote``, ``rollback``, ``alias_history``.
* ``locks``     - the promotion lock (MLflow has no compare-and-set on aliases).
* ``serving``   - the serving stack (``registry/serving/``): ``RedEditModel`` (one version as an MLflow
  pyfunc), ``MultiTaskModel`` (many RED edits on one base, following their alias), ``register_bundle``,
  ``redflow serve``, and local ``mlflow server`` / ``mlflow models serve`` processes; see docs/serving.md.
* ``pyfunc``, ``multitask`` - one-line re-exports of ``RedEditModel`` and ``MultiTaskModel`` that versions
  registered before ``registry/serving/`` import by these names.

Imports are lazy (PEP 562) so that ``import registry.serving.pyfunc`` - what a model server does when
it loads a registered version - does not pull in matplotlib or Prefect. Importing the submodules
directly (``from registry.models import register_edit``) always works, also while the editable
install lists ``registry`` as a namespace package (then this file is not executed).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "setup_tracking": "store",
    "default_tracking_uri": "store",
    "resolve_tracking_uri": "store",
    "use_tracking": "store",
    "open_target": "store",
    "require_store": "store",
    "StoreNotFound": "store",
    "StoreUnreachable": "store",
    "require_reachable": "store",
    "TrackingTarget": "store",
    "get_or_create_experiment": "tracking",
    "log_training": "tracking",
    "code_version": "tracking",
    "training_curves_figure": "plots",
    "edit_heatmap_figure": "plots",
    "RedEditModel": "serving.pyfunc",
    "register_edit": "models",
    "record_evaluation": "models",
    "download_edit": "models",
    "model_name_for": "models",
    "resolve_version": "models",
    "RegistrationError": "models",
    "PromotionPolicy": "policy",
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
    "start_tracking_server": "serving.server",
    "start_model_server": "serving.server",
    "start_server_process": "serving.server",
    "invoke": "serving.server",
    "free_port": "serving.server",
    "ServerProcess": "serving.server",
    "ServerStartError": "serving.server",
    "MultiTaskModel": "serving.multitask",
    "load_multitask": "serving.multitask",
    "ServingConfig": "serving.serving_config",
    "ServingConfigError": "serving.serving_config",
    "register_bundle": "serving.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
