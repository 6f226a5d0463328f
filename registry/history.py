"""The alias history of a registered model: where it is stored, how it reads back, how it shows in the MLflow UI.

* Stored: every alias move and gate decision is its own registered-model tag
  ``redflow.alias_history.<6-digit sequence>`` (JSON); each version involved keeps a JSON list of its entries in
  its tag ``redflow.alias_history`` (``registry.aliases`` writes both, under the promotion lock).
* ``history_entries``: the model's entries, oldest first.
* ``history_markdown`` / ``update_history_description``: the same history as a markdown section of the
  registered model's description (what the MLflow UI shows on the model page), newest first; the JSON
  tags stay the source of truth.
"""
from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

from .decisions import decision_name

HISTORY_TAG = "redflow.alias_history"            # on a version: its entries (JSON list); on a model: legacy list
HISTORY_ENTRY = "redflow.alias_history."          # on a model: one tag per entry, <prefix><6-digit sequence>
HISTORY_HEADING = "## Alias history (newest first)"
HISTORY_ROWS_SHOWN = 50
DESCRIPTION_CHARS = 5000  # registered_models.description is VARCHAR(5000) on MLflow's SQL stores


def json_list(text: str | None) -> list[dict[str, Any]]:
    """The JSON list in a history tag, or ``[]`` for a missing, unreadable or non-list value."""
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def history_entries(client: MlflowClient, name: str, model=None) -> list[dict[str, Any]]:
    """Every recorded alias move and gate decision of ``name``, oldest first.

    Each entry is its own registered-model tag (``redflow.alias_history.000042``): a SQL-backed MLflow
    store limits a model tag to 5,000 characters, so one growing JSON list would break within a week of
    nightly runs. A list in the tag ``redflow.alias_history`` (written by earlier versions) comes first.
    """
    model = model or client.get_registered_model(name)
    tags = model.tags or {}
    entries = json_list(tags.get(HISTORY_TAG))
    for key in sorted(k for k in tags if k.startswith(HISTORY_ENTRY) and k[len(HISTORY_ENTRY):].isdigit()):
        try:
            value = json.loads(tags[key])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            entries.append(value)
    return entries


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def history_markdown(entries: list[dict[str, Any]], limit: int = HISTORY_ROWS_SHOWN, *,
                     max_chars: int | None = None, reason_chars: int = 200) -> str:
    """The alias history (oldest-first ``entries``, as stored) as a markdown table, newest first.

    ``max_chars`` bounds the text (a registered model's description holds 5,000 characters on SQL
    stores): the oldest rows shown are dropped until it fits; ``redflow history`` shows them all.
    """
    newest = list(reversed(entries))
    head = [HISTORY_HEADING, ""]
    if not newest:
        return "\n".join(head + ["No alias moves yet."])
    head += ["| when (UTC) | alias | action | version | from | by | why |", "|---|---|---|---:|---:|---|---|"]
    rows = [f"| {_cell(str(e.get('at', ''))[:19].replace('T', ' '))} | {_cell(e.get('alias'))} | "
            f"{_cell(decision_name(e.get('action')))} | {_cell(e.get('version'))} | {_cell(e.get('from'))} | "
            f"{_cell(e.get('by'))} | {_cell(str(e.get('reason', ''))[:reason_chars])} |" for e in newest[:limit]]
    while True:
        hidden = len(newest) - len(rows)
        tail = [f"\n{hidden} older entries: `redflow history <model>`."] if hidden else []
        text = "\n".join(head + rows + tail)
        if max_chars is None or len(text) <= max_chars or not rows:
            return text
        rows.pop()


def update_history_description(client: MlflowClient, name: str, entries: list[dict[str, Any]]) -> None:
    """Rewrite the history section of ``name``'s description (the text above the section is kept),
    within the 5,000 characters a SQL-backed MLflow store allows."""
    model = client.get_registered_model(name)
    intro = (model.description or "").split(HISTORY_HEADING, 1)[0].rstrip()[:1500]
    prefix = intro + "\n\n" if intro else ""
    text = prefix + history_markdown(entries, max_chars=DESCRIPTION_CHARS - len(prefix))
    client.update_registered_model(name, description=text)
