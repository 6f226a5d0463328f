"""Read-only views of a registered model for people: its versions, its alias history, a readable description.

* ``require_model`` / ``require_version``: the model (version) or a ``ModelNotFound`` that names what exists.
* ``version_rows``: one dict per version - aliases, status, method, key metrics, its decision and why.
* ``history_rows``: alias moves and gate decisions, newest first (from the ``redflow.alias_history`` tags;
  ``registry.history`` reads them and renders them into the model's description).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .decisions import decision_name
from .history import history_entries
from .names import LOCK_MODEL_PREFIX, STATUS_TAG
from .version_tags import GATE_DECISION_TAG, gate_details, version_metrics

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class ModelNotFound(LookupError):
    """No registered model (or version) by that name; the message lists what exists and the fix."""


def registered_model_names(client: MlflowClient | None = None) -> list[str]:
    """Names of the registered models in the store (redflow's internal lock models excluded)."""
    client = client or MlflowClient()
    return sorted(m.name for m in client.search_registered_models() if not m.name.startswith(LOCK_MODEL_PREFIX))


def require_model(name: str, client: MlflowClient | None = None) -> RegisteredModel:
    """The registered model ``name``, or ``ModelNotFound`` naming the models that exist."""
    client = client or MlflowClient()
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
    names = registered_model_names(client)
    listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "none"
    raise ModelNotFound(f"no registered model {name!r} in {client.tracking_uri} (registered: {listed}). "
                        "Fix: check the name, or pass the --tracking-uri of the store that holds it")


def require_version(name: str, version: int | str, client: MlflowClient | None = None) -> ModelVersion:
    """Version ``version`` of ``name``, or ``ModelNotFound`` naming the versions that exist."""
    client = client or MlflowClient()
    require_model(name, client)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in _MISSING:
            raise
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    raise ModelNotFound(f"{name} has no version {version} (versions: {', '.join(map(str, versions)) or 'none'}). "
                        f"Fix: pick one of them; `redflow versions {name}` lists them")


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def version_rows(name: str, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first: ``{"version", "aliases", "status", "method", "metric",
    "test", "validation", "decision", "reason", "created", "run_id"}``. ``test``/``validation`` are the
    version's primary metric on those splits (None when not recorded); ``decision`` its current one
    (``registry.decisions``: promoted, kept out, awaiting approval, approved, rejected, forced, rolled back; ""
    before the gate) and ``reason`` why."""
    client = client or MlflowClient()
    model = require_model(name, client)
    aliases: dict[int, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(int(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        metric = tags.get("primary_metric", "")
        metrics = version_metrics(tags)
        rows.append({
            "version": int(mv.version),
            "aliases": sorted(aliases.get(int(mv.version), [])),
            "status": tags.get(STATUS_TAG, "ready"),
            "method": tags.get("method", ""),
            "metric": metric,
            "test": metrics.get(f"test_{metric}"),
            "validation": metrics.get(f"validation_{metric}"),
            "decision": decision_name(tags.get(GATE_DECISION_TAG)),
            "reason": gate_details(tags).get("reason", ""),
            "created": _when(mv.creation_timestamp),
            "run_id": mv.run_id or "",
        })
    return sorted(rows, key=lambda r: -r["version"])


def history_rows(name: str, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Recorded alias moves and decisions of ``name``, newest first (``at, alias, action, version,
    from, by, reason`` and whatever else the move recorded); ``action`` under today's names
    (``registry.decisions.decision_name``), older histories included."""
    client = client or MlflowClient()
    entries = history_entries(client, name, require_model(name, client))
    return [{**e, "action": decision_name(e.get("action"))} for e in reversed(entries)]
