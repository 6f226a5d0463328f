"""Read-only views of a registered model for people: its versions, its alias history, a readable description.

* ``require_model`` / ``require_version``: the model (version) or a ``ModelNotFound`` that names what exists.
* ``version_rows``: one dict per version - aliases, status, method, key metrics, the gate's decision.
* ``history_rows``: alias moves and gate decisions, newest first (from the ``redflow.alias_history`` tag).
* ``history_markdown`` / ``update_history_description``: the same history as a markdown section of the
  registered model's description (what the MLflow UI shows on the model page), newest first; the JSON
  tag stays the source of truth.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .aliases import HISTORY_TAG, STATUS_TAG
from .locks import LOCK_MODEL_PREFIX

HISTORY_HEADING = "## Alias history (newest first)"
HISTORY_ROWS_SHOWN = 50
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


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def version_rows(name: str, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first: ``{"version", "aliases", "status", "method", "metric",
    "test", "validation", "gate", "gate_reason", "created", "run_id"}``. ``test``/``validation`` are the
    version's primary metric on those splits (None when not recorded)."""
    client = client or MlflowClient()
    model = require_model(name, client)
    aliases: dict[int, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(int(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        metric = tags.get("primary_metric", "")
        rows.append({
            "version": int(mv.version),
            "aliases": sorted(aliases.get(int(mv.version), [])),
            "status": tags.get(STATUS_TAG, "ready"),
            "method": tags.get("method", ""),
            "metric": metric,
            "test": _float(tags.get(f"metric.test_{metric}", tags.get("score"))),
            "validation": _float(tags.get(f"metric.validation_{metric}")),
            "gate": tags.get("redflow.gate.decision", ""),
            "gate_reason": tags.get("redflow.gate.reason", ""),
            "created": _when(mv.creation_timestamp),
            "run_id": mv.run_id or "",
        })
    return sorted(rows, key=lambda r: -r["version"])


def _entries(model: RegisteredModel) -> list[dict[str, Any]]:
    try:
        value = json.loads((model.tags or {}).get(HISTORY_TAG) or "[]")
    except json.JSONDecodeError:
        return []
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def history_rows(name: str, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Recorded alias moves and gate decisions of ``name``, newest first (``at, alias, action, version,
    from, by, reason`` and whatever else the move recorded)."""
    return list(reversed(_entries(require_model(name, client or MlflowClient()))))


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def history_markdown(entries: list[dict[str, Any]], limit: int = HISTORY_ROWS_SHOWN) -> str:
    """The alias history (oldest-first ``entries``, as stored) as a markdown table, newest first."""
    newest = list(reversed(entries))
    lines = [HISTORY_HEADING, ""]
    if not newest:
        return "\n".join(lines + ["No alias moves yet."])
    lines += ["| when (UTC) | alias | action | version | from | by | why |", "|---|---|---|---:|---:|---|---|"]
    for e in newest[:limit]:
        lines.append(f"| {_cell(str(e.get('at', ''))[:19].replace('T', ' '))} | {_cell(e.get('alias'))} | "
                     f"{_cell(e.get('action'))} | {_cell(e.get('version'))} | {_cell(e.get('from'))} | "
                     f"{_cell(e.get('by'))} | {_cell(e.get('reason'))} |")
    if len(newest) > limit:
        lines.append(f"\n{len(newest) - limit} older entries are in the tag `{HISTORY_TAG}`.")
    return "\n".join(lines)


def update_history_description(client: MlflowClient, name: str, entries: list[dict[str, Any]]) -> None:
    """Rewrite the history section of ``name``'s description (the text above the section is kept)."""
    model = client.get_registered_model(name)
    intro = (model.description or "").split(HISTORY_HEADING, 1)[0].rstrip()
    text = (intro + "\n\n" if intro else "") + history_markdown(entries)
    client.update_registered_model(name, description=text)
