"""Which versions a multi-task server should serve, and each one fetched and checked before it may serve.

* ``wanted_versions(config, client)``: ``{registered model: version}`` of the config's alias for every
  model it names or whose name fits one of its patterns.
* ``fetch_task(client, name, version, dest)``: download one version, check it, and describe it as a
  ``ServedTask``; ``VersionRefused`` (with the reason) for a version that must not serve.

A version is refused when it is not fully registered, is not a RED edit (ReFT interventions act on
each row's own prompt positions and are served alone with ``mlflow models serve``; LoRA/BitFit/full
checkpoints carry their own weights), its edit file fails its own checks (``red.read_edit``: tampered,
truncated, foreign) or its checksum differs from the ``edit_sha256`` it was registered with, or its
head does not match its labels. The base weights' fingerprint is checked when the edit is put into
its bank (``registry.serving.snapshot``).
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from red import EditFileError, read_edit

from ..aliases import READY, STATUS_TAG
from ..locks import LOCK_MODEL_PREFIX
from ..tracking import registered_checksum
from .serving_config import ServingConfig, ServingConfigError
from .version_config import head_num_labels, version_settings

_log = logging.getLogger(__name__)

REFT_METHODS = ("loreft", "direft", "nodireft")
BASELINES = {"lora": "a LoRA adapter", "bitfit": "BitFit biases", "full": "a fully fine-tuned checkpoint"}
BUNDLE_KIND_TAG = "redflow.kind"
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
_NO_SEARCH = ("ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED", "PERMISSION_DENIED")  # cannot list models


class VersionRefused(RuntimeError):
    """A registered version that must not be served; the message says why and what to do."""


@dataclass(frozen=True)
class ServedTask:
    """One registered version as the multi-task server serves it."""

    model: str                         # registered model name
    version: int
    task: str                          # the task's own name (version tag ``task``)
    task_type: str                     # classification | regression | causal_lm | seq2seq
    text_columns: tuple[str, ...]
    label_list: tuple[str, ...] | None
    max_length: int
    edit_path: str
    edit_sha256: str
    base_model: str                    # path or hub id of the base checkpoint
    base_revision: str | None
    model_class: str | None
    dtype: str | None                  # the dtype the base is served in (None: as the checkpoint loads)

    @property
    def generative(self) -> bool:
        return self.task_type in ("causal_lm", "seq2seq")

    @property
    def base_key(self) -> tuple:
        """Tasks with equal keys share one loaded base model (and one bank)."""
        return (self.base_model, self.base_revision, self.model_class, self.dtype)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "version": self.version, "task_type": self.task_type,
                "columns": list(self.text_columns), "labels": list(self.label_list) if self.label_list else None}


# ---------------------------------------------------------------------------------------------
# what should be served
# ---------------------------------------------------------------------------------------------
def _all_models(client: MlflowClient) -> list:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models += list(page)
        token = getattr(page, "token", None)
        if not token:
            return models


def _is_task_model(model) -> bool:
    """A redflow task model (registered by ``register_edit``), not a bundle nor a lock."""
    tags = model.tags or {}
    return (not model.name.startswith(LOCK_MODEL_PREFIX) and tags.get("redflow.managed") == "true"
            and tags.get(BUNDLE_KIND_TAG) != "bundle")


def _listing(client: MlflowClient, config: ServingConfig) -> dict[str, Any] | None:
    """Every registered model with its aliases, by name, in one search (a page per 1000 models), so a poll costs
    one registry call whatever the number of served models; ``None`` where the registry cannot list its models
    and the config names its models only (they are then read one by one)."""
    try:
        return {m.name: m for m in _all_models(client)}
    except MlflowException as exc:
        if config.patterns or exc.error_code not in _NO_SEARCH:
            raise  # a pattern needs the listing; an unreachable or failing registry is not retried per model
        _log.info("the registry does not list its models (%s); reading the %d named models one by one",
                  exc.error_code, len(config.names))
        return None


def _one_model(client: MlflowClient, name: str) -> Any:
    """Registered model ``name`` (with its aliases), or None if there is none."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
        return None


def wanted_versions(config: ServingConfig, client: MlflowClient, *, strict: bool = True) -> dict[str, int]:
    """``{model: version}`` that ``config.alias`` points to, for the named models and those fitting a pattern.

    The registry is read with one search for all models (``_listing``), not one call per model.
    ``strict`` (at start-up): a named model that does not exist or lacks the alias, or a pattern that
    matches no model with the alias, raises ``ServingConfigError``. Otherwise (polling) such models are
    left out and logged, and the server keeps what it serves.
    """
    wanted: dict[str, int] = {}
    problems = []
    listed = _listing(client, config)
    for name in config.names:
        model = listed.get(name) if listed is not None else _one_model(client, name)
        if model is None:
            problems.append(f"no registered model {name!r}")
            continue
        version = (model.aliases or {}).get(config.alias)
        if version is None:
            problems.append(f"{name} has no {config.alias!r} version (aliases: {sorted(model.aliases or {}) or 'none'})")
            continue
        wanted[name] = int(version)
    if config.patterns:
        matched = [m for m in listed.values() if _is_task_model(m)
                   and any(fnmatch.fnmatchcase(m.name, p) for p in config.patterns)]
        for model in matched:
            version = (model.aliases or {}).get(config.alias)
            if version is not None and model.name not in wanted:
                wanted[model.name] = int(version)
        for pattern in config.patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in wanted):
                problems.append(f"no redflow task model matching {pattern!r} has a {config.alias!r} version "
                                f"(matching: {sorted(m.name for m in matched if fnmatch.fnmatchcase(m.name, pattern)) or 'none'})")
    if problems and strict:
        raise ServingConfigError("; ".join(problems) + f" in {client.tracking_uri}. Fix: check the names (`redflow "
                                 "versions NAME`), promote a version, or point --tracking-uri at the store that holds them")
    for problem in problems:
        _log.warning("serving config: %s", problem)
    return wanted


# ---------------------------------------------------------------------------------------------
# one version, fetched and checked
# ---------------------------------------------------------------------------------------------
def refuse_method(name: str, version: int, method: str, tracking_uri: str | None = None) -> None:
    """``VersionRefused`` for anything but a RED edit, with the reason and how to serve it instead."""
    store = f"MLFLOW_TRACKING_URI={tracking_uri} " if tracking_uri else ""
    if method in REFT_METHODS:
        raise VersionRefused(
            f"{name} v{version} is a {method} (ReFT) edit: it intervenes on each row's own prompt positions in the "
            "residual stream, which this server's shared batch does not route per task (it batches RED edits, which "
            f"act on every position). Serve it on its own: {store}mlflow models serve -m models:/{name}/{version} "
            "--env-manager local; or retrain the task with method: red")
    if method in BASELINES:
        raise VersionRefused(
            f"{name} v{version} is {BASELINES[method]} ({method}), not an edit of the shared base: it cannot share "
            f"the base model. Serve it on its own: {store}mlflow models serve -m models:/{name}/{version} "
            "--env-manager local")
    if method != "red":
        raise VersionRefused(f"{name} v{version} has method {method!r}; the multi-task server serves RED edits only")


def _flavors(local: Path) -> dict[str, Any]:
    """The flavors of a downloaded version's MLmodel. Parsed with libyaml where PyYAML has it: MLflow's
    ``Model.load`` parses in pure Python, about 40 ms a version, seconds of a server's start at a hundred tasks."""
    try:
        with open(local / "MLmodel", encoding="utf-8") as f:
            flavors = (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("flavors")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise VersionRefused(f"{local.name}: its MLmodel cannot be read ({type(exc).__name__}: {exc})") from exc
    return flavors if isinstance(flavors, dict) else {}


def fetch_task(client: MlflowClient, name: str, version: int, dest: str | Path, *,
               tracking_uri: str | None = None) -> ServedTask:
    """Download version ``version`` of ``name`` into ``dest`` and check it (see the module docstring).

    Raises ``VersionRefused`` naming the reason; MLflow/network errors propagate (the caller retries).
    """
    mv = client.get_model_version(name, str(version))
    status = mv.tags.get(STATUS_TAG, READY)
    if status != READY:
        raise VersionRefused(f"{name} v{version} has status {status!r}: only fully registered versions are served")
    uri = tracking_uri or client.tracking_uri
    refuse_method(name, version, mv.tags.get("method") or "red", uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest),
                                                     tracking_uri=uri, registry_uri=uri))
    flavor = _flavors(local).get("python_function") or {}
    cfg = version_settings(flavor.get("config"))
    artifact = ((flavor.get("artifacts") or {}).get("edit") or {}).get("path")
    if not artifact or not (local / artifact).is_file():
        raise VersionRefused(f"{name} v{version} holds no edit file (artifacts: {sorted(flavor.get('artifacts') or {})})")
    edit_path = local / artifact
    try:
        tensors, meta = read_edit(edit_path)
    except EditFileError as exc:
        raise VersionRefused(f"{name} v{version}: its edit file fails its checks: {exc}") from exc
    refuse_method(name, version, meta["method"], uri)
    registered = registered_checksum(mv, client)
    if not registered or registered != meta["tensors_sha256"]:
        raise VersionRefused(f"{name} v{version}: the edit's checksum {meta['tensors_sha256'][:12]}... differs from "
                             f"the edit_sha256 it was registered with ({(registered or 'none')[:12]}...): the stored "
                             "file is not the registered one. Re-register the edit")
    extra = meta.get("extra") or {}
    task_type = cfg.get("task_type") or extra.get("task_type") or "classification"
    labels = cfg.get("label_list") if task_type == "classification" else None
    if task_type == "classification":
        width = head_num_labels(tensors)
        if not labels or (width is not None and width != len(labels)):
            raise VersionRefused(f"{name} v{version}: its head has {width} outputs but its labels are {labels}")
    columns = tuple(cfg.get("text_columns") or extra.get("text_columns") or ["text"])
    dtype = cfg.get("dtype", "auto")
    base = meta["base_model"]
    base_model = str(cfg.get("base_model") or base.get("name") or "")
    local_base = bool(base_model) and Path(base_model).exists()  # a folder has no hub revision
    return ServedTask(
        model=name, version=int(version), task=str(cfg.get("task") or mv.tags.get("task") or name),
        task_type=task_type, text_columns=columns, label_list=tuple(labels) if labels else None,
        max_length=int(cfg.get("max_length") or 256), edit_path=str(edit_path), edit_sha256=meta["tensors_sha256"],
        base_model=base_model, base_revision=None if local_base else (cfg.get("base_revision") or base.get("revision")),
        model_class=cfg.get("model_class") or base.get("class"),
        dtype=(base.get("dtype") if dtype in (None, "auto") else dtype))
