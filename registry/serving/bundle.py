"""A serving bundle: a registered model whose versions are serving configs of the multi-task pyfunc.

``register_bundle("redflow-serving", {"models": ["red-*"]})`` checks the config (every model it names
has an alias version that loads and passes its checks: the bundle is loaded once in this process),
logs ``registry/serving/bundle_code.py`` as a models-from-code pyfunc (no pickle; the config is its
``model_config``, the code is the installed redflow's) into a run of the ``redflow-bundles``
experiment, registers it as a new version of the bundle and points ``production`` at it (recorded in
the alias history like any other move). Then::

    MLFLOW_TRACKING_URI=<store> mlflow models serve -m models:/redflow-serving@production --env-manager local

serves every task in one process, following each task model's alias. The bundle's own alias is read
once, when the server starts: a new bundle version (another set of models) needs a restart.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..aliases import PRODUCTION, READY, STATUS_TAG, move_alias
from ..tracking import code_version, get_or_create_experiment
from .multitask import bundle_signature, load_multitask
from .requirements import pip_requirements
from .served_tasks import BUNDLE_KIND_TAG
from .serving_config import ServingConfig, ServingConfigError, serving_config

_log = logging.getLogger(__name__)

BUNDLE_CODE = Path(__file__).resolve().parent / "bundle_code.py"
BUNDLE_EXPERIMENT = "redflow-bundles"
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _ensure_bundle_model(client: MlflowClient, name: str) -> None:
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
        try:
            client.create_registered_model(
                name, tags={BUNDLE_KIND_TAG: "bundle"},
                description=("A redflow serving bundle: each version is a serving config of the multi-task pyfunc "
                             "(which task models, which alias, poll interval). Serve it with `mlflow models serve "
                             f"-m models:/{name}@production --env-manager local`."))
        except MlflowException as exc2:
            if exc2.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        return
    if (model.tags or {}).get(BUNDLE_KIND_TAG) != "bundle":
        raise ServingConfigError(f"registered model {name!r} exists and is not a serving bundle (it has no tag "
                                 f"{BUNDLE_KIND_TAG}=bundle). Fix: choose another bundle name")


def register_bundle(name: str, config: ServingConfig | dict[str, Any], *, promote: bool = True,
                    validate: bool = True, experiment: str = BUNDLE_EXPERIMENT) -> dict[str, Any]:
    """Register ``config`` as a new version of the bundle ``name`` (see the module docstring).

    ``validate`` loads the bundle in this process first (every task fetched, checked and run on one row);
    ``promote`` points ``production`` at the new version. Returns ``{"name", "version", "models", "uri"}``.
    Raises ``ServingConfigError`` for a config that cannot serve (nothing is registered then).
    """
    cfg = serving_config(config)
    client = MlflowClient()
    served: list[dict[str, Any]] = []
    if validate:
        model = load_multitask(cfg)
        try:
            served = model.status()["tasks"]
        finally:
            model.close()
    _ensure_bundle_model(client, name)
    experiment_id = get_or_create_experiment(experiment, client)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bundle {name}") as run, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")  # no input example, no type hints
        info = mlflow.pyfunc.log_model(
            name="bundle", python_model=str(BUNDLE_CODE), model_config=cfg.to_dict(),
            signature=bundle_signature(cfg), pip_requirements=pip_requirements(),
            metadata={"redflow": {"kind": "bundle", "code_version": code_version(),
                                  "requires": "the redflow package (red, registry)"}},
            tags={"redflow.kind": "bundle"})
    tags = {BUNDLE_KIND_TAG: "bundle", "models": ",".join(cfg.models), "alias": cfg.alias,
            "poll_interval": str(cfg.poll_interval), "code_version": code_version(),
            "served_at_registration": ", ".join(f"{t['model']} v{t['version']}" for t in served)[:5000],
            "redflow.owner": f"{socket.gethostname()}:{os.getpid()}"}
    mv = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
                                     tags={**tags, STATUS_TAG: READY},
                                     description=f"serves {', '.join(cfg.models)} @{cfg.alias}")
    version = int(mv.version)
    if promote:
        move_alias(name, PRODUCTION, version, action="bundle", reason=f"serving config {cfg.models} @{cfg.alias}")
    return {"name": name, "version": version, "models": cfg.models, "served": served,
            "uri": f"models:/{name}@{PRODUCTION}" if promote else f"models:/{name}/{version}"}
