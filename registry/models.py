"""Registered models: one per task (``red-<task>``), one version per registered edit.

``register_edit`` logs the edit as an MLflow pyfunc (``registry.serving.pyfunc.RedEditModel``) into the
training run with the full identity (``identity.json``), creates a model version with the few tags an operator
reads (``registry.version_tags``: task, method, base model id, metrics, identity digest) and points ``candidate``
at it. ``record_evaluation`` stores a later evaluation on a version (one tag + its own run).

Failure safety: the edit is checked (read, checksum, loaded and run on the input example) before
anything is written. A version is created together with all its tags and
``redflow.status=registering`` in one call, then marked ``ready``, and only then gets the
``candidate`` alias. If anything fails after creation the version is deleted; if even that fails
it is tagged ``redflow.status=failed`` and stripped of aliases. The gate (``registry.aliases``)
never promotes a version that is not ``ready``, so a crash at any point (even a killed process,
which leaves ``registering``) leaves no half-registered version in use.
"""
from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from red import read_edit
from tasks.lifecycle.identity import Identity, dependency_versions
from tasks.lifecycle.plan import VersionRecord
from tasks.training.model_names import display_name

from .aliases import CANDIDATE, READY, STATUS_TAG, alias_version, is_gated, move_locked
from .baselines import ARTIFACT_KEYS, BaselineArtifactError, artifact_sha256, refuse_pickle, save_bitfit
from .locks import DEFAULT_TIMEOUT, registry_lock
from .serving.pyfunc import load_in_process, shared_loads
from .serving.requirements import pip_requirements
from .serving.version_config import build_model_config, default_input_example, model_signature, version_settings
from .tracking import (as_dict, code_revision, code_version, final_metric_key, get_or_create_experiment, is_finite,
                       is_orphaned, log_batches, owner_tag, registered_checksum, report_markdown, report_metrics,
                       report_name, versioned_run_name)
from .version_tags import (DEPENDENCIES_RUN_TAG, EVALUATIONS_TAG, IDENTITY_ARTIFACT, IDENTITY_DIGEST_TAG, MAX_TAG,
                           METRICS_TAG, compact, json_or_none, with_evaluation)

if TYPE_CHECKING:
    import pandas as pd

    from tasks.training import TrainResult

_logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RED_DIR = REPO_ROOT / "red"
REGISTRY_DIR = Path(__file__).resolve().parent
MODEL_CODE = REGISTRY_DIR / "serving" / "model_code.py"  # the pyfunc, logged as models-from-code
MODEL_ARTIFACT = "model"
OWNER_TAG = "redflow.owner"  # on a version while it is registering: the process registering it


class RegistrationError(RuntimeError):
    """Registering an edit failed; no usable version was left behind."""


def model_name_for(task: str) -> str:
    """The registered model of a task: ``red-<task>`` (characters MLflow refuses become '-')."""
    return "red-" + (re.sub(r"[/:\s]+", "-", task).strip("-") or "task")


def resolve_version(name: str, version_or_alias: int | str, client: MlflowClient | None = None) -> int:
    """A version number from a number, ``"3"``, ``"v3"`` or an alias (``"production"``)."""
    client = client or MlflowClient()
    if isinstance(version_or_alias, int) or re.fullmatch(r"v?\d+", str(version_or_alias)):
        return int(str(version_or_alias).lstrip("v"))
    mv = alias_version(name, str(version_or_alias), client)
    if mv is None:
        raise ValueError(f"registered model {name!r} has no alias {version_or_alias!r}")
    return int(mv.version)


def download_edit(name: str, version_or_alias: int | str, out_dir: str | Path) -> Path:
    """Download a version's edit file (with its metadata JSON) into ``out_dir`` and return its path.

    The file is checked against the ``edit_sha256`` the version was registered with.
    """
    client = MlflowClient()
    version = resolve_version(name, version_or_alias, client)
    mv = client.get_model_version(name, str(version))
    method = mv.tags.get("method", "")
    if method in _KIND:
        raise ValueError(f"{name} v{version} is a {_KIND[method]} ({method}), not an edit file. Fix: load it as a "
                         f"pyfunc (mlflow.pyfunc.load_model('models:/{name}/{version}')) to evaluate it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(out)))
    found = sorted(local.rglob("artifacts/*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"{name} version {version}: expected one edit file in the model's artifacts, "
                                f"found {[str(p) for p in found]}")
    _, meta = read_edit(found[0])
    expected = registered_checksum(mv, client)
    if expected and meta.get("tensors_sha256") != expected:
        raise ValueError(f"{name} version {version}: the downloaded edit's checksum {meta.get('tensors_sha256')} "
                         f"differs from the registered {expected}")
    return found[0]


_KIND = {"lora": "LoRA adapter", "bitfit": "BitFit biases", "full": "fully fine-tuned checkpoint"}


def serving_artifacts(result: "TrainResult", text_columns: list[str] | tuple[str, ...] | None = None,
                      model_name: str | None = None
                      ) -> tuple[dict[str, str], dict | None, dict[str, Any], dict[str, Any]]:
    """``(artifacts, tensors, meta, model_config)``: what a version of ``result`` is logged and served with
    (``model_name``: the registered model it is logged for, named in its answers; default ``red-<task>``)."""
    params = result.params or {}
    columns = text_columns or params.get("text_columns")
    artifacts, tensors, meta = registration_artifacts(result, columns)
    config = build_model_config(
        task=result.task, task_type=result.task_type, meta=meta, tensors=tensors, base_model=result.base_model,
        base_revision=result.base_revision, text_columns=columns, label_list=result.label_list,
        max_length=int(params.get("max_length") or 256), method=result.method,
        artifact_sha256=meta.get("artifact_sha256") or meta.get("tensors_sha256"),
        model=model_name or model_name_for(result.task))
    return artifacts, tensors, meta, config


def registration_artifacts(result: "TrainResult", text_columns: list[str] | tuple[str, ...] | None = None
                           ) -> tuple[dict[str, str], dict | None, dict[str, Any]]:
    """``(artifacts, tensors, meta)`` a version of ``result`` is logged with.

    Edit methods (red, loreft, direft): the checked edit file (``edit``) and its JSON (``edit_meta``);
    ``tensors``/``meta`` are the file's. Baselines (``registry.baselines``): ``adapter`` (LoRA),
    ``bitfit`` (biases + head, cut out of the trained checkpoint here) or ``checkpoint`` (full);
    ``meta`` is built from the result. Raises ``RegistrationError`` for anything else.
    """
    path = Path(result.edit_path) if result.edit_path else None
    if result.method in ARTIFACT_KEYS:
        if path is None or not path.is_dir():
            raise RegistrationError(f"{result.task}/{result.method}: expected the trained folder, got {result.edit_path!r}")
        extra = {"task": result.task, "task_type": result.task_type, "label_list": result.label_list,
                 "text_columns": list(text_columns) if text_columns else None}
        try:
            if result.method == "bitfit":
                path = save_bitfit(path, path.parent / f"{result.task}.bitfit.safetensors", base_model=result.base_model,
                                   revision=result.base_revision, task_type=result.task_type,
                                   label_list=result.label_list, extra=extra)
            else:
                refuse_pickle(path)
        except BaselineArtifactError as exc:
            raise RegistrationError(f"{result.task}/{result.method}: {exc}") from exc
        meta = {"method": result.method, "extra": extra, "artifact_sha256": artifact_sha256(path),
                "base_model": {"name": result.base_model, "revision": result.base_revision}}
        return {ARTIFACT_KEYS[result.method]: str(path)}, None, meta
    if path is None or path.suffix != ".safetensors" or not path.is_file():
        raise RegistrationError(f"{result.task}/{result.method}: expected a redflow edit file (.safetensors), "
                                f"got {result.edit_path!r}")
    tensors, meta = read_edit(path)
    recorded = (meta.get("base_model") or {}).get("fingerprint")
    if result.base_fingerprint and recorded and result.base_fingerprint != recorded:
        raise RegistrationError(f"the TrainResult's base fingerprint {result.base_fingerprint} differs from the edit "
                                f"file's {recorded}: the result does not belong to this edit file")
    artifacts = {"edit": str(path)}
    if path.with_suffix(".json").is_file():
        artifacts["edit_meta"] = str(path.with_suffix(".json"))
    return artifacts, tensors, meta


@contextmanager
def _resumed_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run (so fluent logging and the LoggedModel land in its experiment),
    restoring its previous status afterwards - a failed registration does not fail the training run."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    info = MlflowClient().get_run(run_id).info
    status = info.status if info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED"
    mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield
    finally:
        mlflow.end_run(status=status)
        if info.end_time:  # the run keeps the span of its training and logging, not the registration's end
            MlflowClient().set_terminated(run_id, status, end_time=info.end_time)


def _str(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_TAG]


def version_tags(result: "TrainResult", meta: Mapping[str, Any], run_id: str) -> dict[str, str]:
    """The tags an operator reads on a version (``registry.version_tags``): task, method, base model by id, the
    primary metric, the final metrics (one JSON tag) and the identity's digest. The rest of what identifies it is
    in the training run ``run_id`` (:func:`identity_document`, its tags and params)."""
    base = meta.get("base_model") or {}
    metrics = {final_metric_key(split, k): v for split, values in (("validation", result.validation),
                                                                   ("test", result.test))
               for k, v in (values or {}).items() if is_finite(v)}
    if is_finite(result.score):
        metrics.setdefault(f"test_{result.primary_metric}", result.score)
    identity = Identity.from_dict(result.identity or {})
    tags: dict[str, Any] = {
        "task": result.task,
        "method": result.method,
        "base_model": display_name(result.base_model or base.get("name")),
        "primary_metric": result.primary_metric,
        METRICS_TAG: compact(metrics),
        IDENTITY_DIGEST_TAG: identity.digest() if identity is not None else None,
    }
    return {k: _str(v) for k, v in tags.items() if v is not None}


def identity_document(result: "TrainResult", meta: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """What identifies a version in full (artifact ``identity.json`` on its training run): the training identity
    (the four hashes), the environment that trained it, the resolved training config, the base model's path,
    revision and fingerprint, the edit's checksums and sizes, and how it trained."""
    base = meta.get("base_model") or {}
    return {
        "identity": dict(result.identity or {}),
        "dependencies": dependency_versions(),  # one per deployment: shown when it differs next night
        "training_config": getattr(result, "recipe", None),
        "task_type": result.task_type,
        "base_model_path": result.base_model or base.get("name"),
        "base_revision": result.base_revision or base.get("revision") or "",
        "base_fingerprint": result.base_fingerprint or base.get("fingerprint") or "",
        "data_hash": result.data_hash,
        "code_version": code_version(),
        "code_revision": code_revision(),
        "edit_sha256": meta.get("tensors_sha256", ""),
        "artifact_sha256": meta.get("artifact_sha256") or meta.get("tensors_sha256", ""),
        "edit_parameters": result.edit_parameters or meta.get("edit_parameters", 0),
        "trainable_parameters": result.trainable_parameters,
        "best_epoch": result.best_epoch,
        "steps_trained": result.steps_trained,
        "init": result.init,
        "max_length": (result.params or {}).get("max_length"),
        "run_id": run_id,
    }


def read_identity_document(mv, client: MlflowClient | None = None) -> dict[str, Any]:
    """Version ``mv``'s ``identity.json`` (:func:`identity_document`) from its training run; for a version
    registered before the artifact existed, the same fields from its older tags (``identity.*``, ``env.*``...)."""
    tags = mv.tags or {}
    if IDENTITY_DIGEST_TAG in tags and mv.run_id:
        client = client or MlflowClient()
        try:
            return json.loads(Path(client.download_artifacts(mv.run_id, IDENTITY_ARTIFACT)).read_text())
        except (MlflowException, OSError, ValueError) as exc:
            _logger.warning("%s v%s: cannot read %s of run %s: %s", mv.name, mv.version, IDENTITY_ARTIFACT,
                            mv.run_id, exc)
            return {}
    document: dict[str, Any] = {k: v for k, v in tags.items() if "." not in k}
    document["identity"] = {k[len("identity."):]: v for k, v in tags.items() if k.startswith("identity.")}
    document["dependencies"] = {k[len("env."):]: v for k, v in tags.items() if k.startswith("env.")}
    document["training_config"] = json_or_none(tags.get("training_config"))
    return document


def ready_versions(name: str, client: MlflowClient | None = None, *, config: str | None = None) -> list:
    """The fully registered (``ready``) versions of ``name``, newest first (none when the model does not exist).

    ``config``: only versions registered by that retrain config (tag ``retrain_config``; versions without the
    tag count too), so two configs that share a task name do not take each other's versions for their own.
    """
    client = client or MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return []
        raise
    return ready_of(versions, config=config)


def ready_of(versions, *, config: str | None = None) -> list:
    """The ``ready`` versions among ``versions`` (one model's), newest first; ``config``: as :func:`ready_versions`."""
    ready = [mv for mv in versions if mv.tags.get(STATUS_TAG, READY) == READY
             and (config is None or mv.tags.get("retrain_config", config) == config)]
    return sorted(ready, key=lambda mv: -int(mv.version))


def latest_version(name: str, client: MlflowClient | None = None, *, config: str | None = None):
    """The newest ``ready`` version of ``name`` (see :func:`ready_versions`), or None."""
    ready = ready_versions(name, client, config=config)
    return ready[0] if ready else None


def registered_from(name: str, run_id: str, client: MlflowClient | None = None) -> int | None:
    """The ``ready`` version of ``name`` registered from training run ``run_id``, if any: a run that died after
    registering but before recording it registers nothing twice."""
    client = client or MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    found = [int(mv.version) for mv in versions
             if mv.run_id == run_id and mv.tags.get(STATUS_TAG, READY) == READY]
    return max(found) if found else None


def version_record(mv) -> VersionRecord | None:
    """What the nightly plan needs of version ``mv`` (``tasks.lifecycle.plan.VersionRecord``); None for None.
    Reads its ``identity.json`` (one artifact): :func:`may_have_identity` tells which versions need no reading."""
    if mv is None:
        return None
    document = read_identity_document(mv)
    recipe = document.get("training_config")
    return VersionRecord(number=int(mv.version), identity=_identity_of(document), gated=is_gated(mv),
                         recipe=recipe if isinstance(recipe, dict) else None)


def may_have_identity(mv, identity: Identity) -> bool:
    """False when version ``mv``'s ``identity_digest`` shows it was trained from other inputs than ``identity``
    (no artifact read); True when it is the same digest or the version records none (read it in full)."""
    digest = (mv.tags or {}).get(IDENTITY_DIGEST_TAG)
    return digest is None or digest == identity.digest()


def _identity_of(document: Mapping[str, Any]) -> Identity | None:
    return Identity.from_dict(document.get("identity") or {}, dependencies=document.get("dependencies") or {})


def version_identity(mv) -> Identity | None:
    """The :class:`tasks.lifecycle.identity.Identity` a version was trained from (None for versions registered without),
    with the dependency versions it recorded (none for versions registered before they were recorded); from its
    training run's ``identity.json`` (older versions: tags ``identity.*`` and ``env.*``)."""
    if mv is None:
        return None
    return _identity_of(read_identity_document(mv))


def remove_stale_versions(name: str, client: MlflowClient | None = None, *, stale_after: float = 3600.0) -> list[int]:
    """Delete versions a crash left half-registered (status ``registering``) and return their numbers.

    A version is stale when the process that was registering it is gone (same host), or when it
    has been ``registering`` for over ``stale_after`` seconds and its owner is on another host
    (registration takes seconds); a live owner's version is never removed. Such a
    version never had an alias (aliases are set only once a version is ``ready``), so nothing
    served it; it is removed so that it cannot be listed or served as if it were good.
    """
    client = client or MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    removed = []
    for mv in versions:
        if mv.tags.get(STATUS_TAG) != "registering":
            continue
        if is_orphaned(mv.tags.get(OWNER_TAG), mv.creation_timestamp, stale_after=stale_after):
            try:
                client.delete_model_version(name, mv.version)
                removed.append(int(mv.version))
            except MlflowException:
                continue  # removed concurrently
    return removed


def _ensure_registered_model(client: MlflowClient, name: str, result: "TrainResult") -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise
    try:
        client.create_registered_model(
            name,
            tags={"task": result.task, "task_type": result.task_type, "primary_metric": result.primary_metric,
                  "redflow.managed": "true"},
            description=(f"RED edits for task {result.task!r}. Each version is a pyfunc that loads its base model "
                         "plus the edit. Aliases: 'candidate' = newest registered version, 'production' = the "
                         "version that passed the promotion gate (history in tag redflow.alias_history)."),
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise  # else: created concurrently by another flow


def _discard_version(client: MlflowClient, name: str, version: str, why: BaseException) -> str:
    """Delete a half-registered version; if that fails, tag it failed and strip its aliases."""
    try:
        client.delete_model_version(name, version)
        return "deleted"
    except Exception:  # noqa: BLE001 - best effort, fall back to marking it
        pass
    try:
        client.set_model_version_tag(name, version, STATUS_TAG, "failed")
        client.set_model_version_tag(name, version, "redflow.error", f"{type(why).__name__}: {why}"[:MAX_TAG])
        for alias in client.get_model_version(name, version).aliases:
            client.delete_registered_model_alias(name, alias)
        return "marked failed"
    except Exception:  # noqa: BLE001
        return "left with status 'registering' (never promoted)"


def _check_predicts(name: str, artifacts: dict[str, str], config: dict[str, Any], example: pd.DataFrame) -> None:
    """Load the model in this process and predict on ``example``: ``RegistrationError`` when it does not load or
    answers another number of rows (checked before anything is written)."""
    try:
        predictions = load_in_process(artifacts, config).predict(None, example)
        if len(predictions) != len(example):
            raise ValueError(f"{len(predictions)} predictions for {len(example)} inputs")
    except Exception as exc:
        raise RegistrationError(f"{name}: the edit does not load or predict with base model "
                                f"{version_settings(config)['base_model']!r}: {exc}") from exc


def _log_pyfunc(result: TrainResult, artifacts: dict[str, str], config: dict[str, Any], example: pd.DataFrame,
                meta: Mapping[str, Any], bundle_code: bool):
    """Log the edit as a models-from-code pyfunc (artifact ``model``) into the active run; MLflow's ``ModelInfo``."""
    serving = version_settings(config)
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=str(MODEL_CODE),  # models-from-code: the version holds source, not a pickle
        artifacts=artifacts,
        code_paths=[str(RED_DIR), str(REGISTRY_DIR)] if bundle_code else None,
        signature=model_signature(config),
        input_example=example,
        pip_requirements=pip_requirements(),
        model_config=config,
        metadata={"redflow": {"task": result.task, "method": result.method, "task_type": result.task_type,
                              "base_model": serving["base_model"], "edit_sha256": meta.get("tensors_sha256"),
                              "artifact_sha256": serving["artifact_sha256"],
                              "code_version": code_version(), "bundled_code": bundle_code,
                              "requires": "the redflow package (red, registry) unless bundled_code"}},
        tags={"task": result.task, "method": result.method},
    )


def _create_candidate_version(client: MlflowClient, name: str, result: TrainResult, run_id: str, info,
                              tags: dict[str, str], base_model: str, lock_timeout: float) -> int:
    """Create the version with ``tags`` and status ``registering`` in one call, mark it ``ready``, point
    ``candidate`` at it (under the registry lock); the version number. On any failure the version is discarded
    (:func:`_discard_version`), the logged model tagged failed, and ``RegistrationError`` raised (an interruption
    that is not an ``Exception`` goes on as itself)."""
    mv = None
    try:
        # one call: the version exists only together with its tags and status 'registering'
        mv = client.create_model_version(
            name, source=info.model_uri, run_id=run_id, tags={**tags, STATUS_TAG: "registering"},
            model_id=info.model_id,
            description=f"{_KIND.get(result.method, result.method + ' edit')} for {result.task} on {base_model} "
                        f"({result.primary_metric}={result.score:.4g} on test)")
        version = str(mv.version)
        client.set_model_version_tag(name, version, STATUS_TAG, READY)
        client.delete_model_version_tag(name, version, OWNER_TAG)  # only a half-registered version needs its owner
        with registry_lock(name, client=client, timeout=lock_timeout):
            move_locked(client, name, CANDIDATE, int(version), action="candidate",
                        reason=f"registered from run {run_id}")
    except BaseException as exc:
        outcome = _discard_version(client, name, str(mv.version), exc) if mv is not None else "not created"
        try:
            client.set_logged_model_tags(info.model_id, {STATUS_TAG: "failed"})
        except Exception:  # noqa: BLE001
            pass
        if not isinstance(exc, Exception):
            raise
        raise RegistrationError(
            f"registering {name} from run {run_id} failed ({type(exc).__name__}: {exc}); the new version was "
            f"{outcome}") from exc
    return int(mv.version)


def register_edit(
    result: "TrainResult",
    run_id: str,
    *,
    model_name: str | None = None,
    text_columns: list[str] | tuple[str, ...] | None = None,
    input_example: "pd.DataFrame | None" = None,
    tags: Mapping[str, Any] | None = None,
    validate: bool = True,
    bundle_code: bool = False,
    lock_timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Register ``result``'s edit as a new version of ``model_name`` (default ``red-<task>``), tag it,
    point ``candidate`` at it and return the version number.

    ``run_id`` is the training run from ``log_training``; the pyfunc is logged into it (artifact
    ``model``). ``text_columns`` defaults to ``result.params["text_columns"]``, the edit's
    ``extra["text_columns"]``, then ``("text",)`` (``("prompt",)`` for LMs). ``validate`` loads the
    model in-process and predicts on the input example before anything is written. ``tags`` are
    extra version tags. Raises ``RegistrationError`` (nothing usable left behind) on failure.

    Code: by default a version holds no code; it loads ``registry.serving.pyfunc`` and ``red`` from the
    installed redflow package (the edit file's format version is the compatibility contract, and
    ``code_version`` records what registered it). ``bundle_code=True`` copies ``red/`` and
    ``registry/`` into the model (``code_paths``) so it also serves where redflow is not
    installed - at the price that a process loading such a model imports those copies instead
    of the installed packages if it had not imported them yet.
    """
    client = MlflowClient()
    name = model_name or model_name_for(result.task)
    artifacts, _, meta, config = serving_artifacts(result, text_columns, name)
    example = input_example if input_example is not None else default_input_example(config)
    with shared_loads():  # the smoke test and MLflow's input-example validation load the base model once
        if validate:
            _check_predicts(name, artifacts, config, example)
        with _resumed_run(run_id):
            info = _log_pyfunc(result, artifacts, config, example, meta, bundle_code)

    _ensure_registered_model(client, name, result)
    all_tags = version_tags(result, meta, run_id)
    # the full identity, beside the edit on the training run; the version keeps its digest
    document = identity_document(result, meta, run_id)
    client.log_dict(run_id, document, IDENTITY_ARTIFACT)
    # its dependencies on the run too: a night's plans read them for all tasks in one search (registry/plan_lookup)
    client.set_tag(run_id, DEPENDENCIES_RUN_TAG, compact(document["dependencies"]))
    if meta.get("tensors_sha256"):  # what serving and download_edit check the stored edit against
        client.set_tag(run_id, "edit_sha256", meta["tensors_sha256"])
    all_tags.update({k: _str(v) for k, v in (tags or {}).items()})
    stale = remove_stale_versions(name, client)
    if stale:
        _logger.warning("%s: removed version(s) %s left half-registered by a crashed registration", name, stale)
    all_tags[OWNER_TAG] = owner_tag()
    version = _create_candidate_version(client, name, result, run_id, info, all_tags,
                                        display_name(result.base_model or version_settings(config)["base_model"]),
                                        lock_timeout)
    try:  # the run list in the UI tells versions apart by name
        client.set_tag(run_id, "mlflow.runName", versioned_run_name(result.task, result.method, version))
    except MlflowException as exc:  # a name is a courtesy: never fail a registered version for it
        _logger.warning("%s v%s: could not rename training run %s: %s", name, version, run_id, exc)
    return version


EVALUATIONS_SUFFIX = "-evaluations"


def evaluation_experiment(client: MlflowClient, mv) -> str:
    """Where evaluations of version ``mv`` are logged: ``<its training run's experiment>-evaluations`` (else
    ``<model>-evaluations``), so the training runs' list compares trainings only."""
    if mv.run_id:
        try:
            experiment = client.get_experiment(client.get_run(mv.run_id).info.experiment_id)
            return experiment.name + EVALUATIONS_SUFFIX
        except MlflowException:  # its training run was deleted
            pass
    return mv.name + EVALUATIONS_SUFFIX


def record_evaluation(
    name: str,
    version_or_alias: int | str,
    report: Any,
    *,
    experiment: str | None = None,
) -> str:
    """Store a (re-)evaluation of a version: a run with the report's metrics (linked to the version's
    logged model) and artifacts, and on the version the report's entry in its one ``redflow.evaluations`` tag
    (run id, when, metrics; ``registry.version_tags.evaluations`` reads it). Returns the evaluation run id.

    ``report``: a dict (or dataclass/pydantic model) with a name (``name``/``benchmark``/``dataset``/
    ``task``) and ``metrics`` (or numeric top-level fields). ``experiment`` defaults to
    :func:`evaluation_experiment`: beside the training runs' experiment, never among its runs.
    """
    client = MlflowClient()
    version = resolve_version(name, version_or_alias, client)
    mv = client.get_model_version(name, str(version))
    data = as_dict(report)
    rname = report_name(data)
    metrics = report_metrics(data)
    if experiment is not None:
        experiment_id = get_or_create_experiment(experiment, client)
    else:  # kept apart from the training runs: "<training experiment>-evaluations"
        experiment_id = get_or_create_experiment(evaluation_experiment(client, mv), client)
    run = client.create_run(experiment_id, tags={
        "mlflow.runName": f"eval-{name}-v{version}-{rname}", "redflow.run_kind": "evaluation",
        "model_name": name, "model_version": str(version), "report": rname,
        "task": mv.tags.get("task", ""), "code_version": code_version()})
    run_id = run.info.run_id
    try:
        ts = int(time.time() * 1000)
        model_id = getattr(mv, "model_id", None)
        log_batches(client, run_id, metrics=[Metric(k, v, ts, 0, model_id=model_id) for k, v in metrics.items()])
        client.log_dict(run_id, json.loads(json.dumps(data, default=str)), f"evaluation/{rname}.json")
        client.log_text(run_id, report_markdown(rname, data, report), f"evaluation/{rname}.md")
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with registry_lock(name, client=client):  # read-modify-write of one tag: two evaluations keep both
            tags = client.get_model_version(name, str(version)).tags
            client.set_model_version_tag(name, str(version), EVALUATIONS_TAG,
                                         with_evaluation(tags, rname, run_id, at, metrics))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
