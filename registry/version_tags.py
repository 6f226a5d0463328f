"""Which tags a registered version carries, and how to read them (older layouts included).

A version carries only what an operator reads in the MLflow UI's versions table (docs/lifecycle.md, "What the
MLflow UI shows"): ``task``, ``method``, ``base_model``, ``primary_metric``, ``metrics`` (its final validation and
test metrics, one JSON object), ``identity_digest``, ``retrain_config`` (when a night registered it),
``redflow.status``, ``redflow.alias_history``, ``redflow.gate.decision``, ``redflow.gate`` (the rest of the
decision, one JSON object: reason, when, the production it was compared with, the paired comparison) and, once
re-evaluated, ``redflow.evaluations`` (one JSON object: per report its run, when, and its metrics while they fit).
The full identity, the environment and the resolved training config are in the training run's artifact
``identity.json``; the edit's checksum and max length in the training run's tags and params.

Versions registered by an older redflow carried one tag per field (``metric.<key>``, ``redflow.gate.<key>``,
``eval.<report>.<key>``, ``identity.*``, ``env.*``): the readers here fall back to them. Light on purpose (no
MLflow, no torch): ``registry/views.py`` reads versions through it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

METRICS_TAG = "metrics"                 # {"test_accuracy": 0.81, "validation_accuracy": 0.8, ...}
IDENTITY_DIGEST_TAG = "identity_digest"  # Identity.digest(): equal digests, same training inputs
GATE_DECISION_TAG = "redflow.gate.decision"
GATE_TAG = "redflow.gate"                # {"reason", "at", "champion", "metric", "comparison"}
EVALUATIONS_TAG = "redflow.evaluations"  # {report: {"run_id", "at", "metrics"}}
IDENTITY_ARTIFACT = "identity.json"     # on the training run: identity, dependencies, training config, ...
DEPENDENCIES_RUN_TAG = "redflow.dependencies"  # on the training run: identity.json's dependencies, so a
#                                              plan reads them for many versions in one search (registry/plan_lookup.py)
MAX_TAG = 5000                          # a model version tag's value limit in MLflow's SQL stores

_OLD_GATE = "redflow.gate."
_OLD_EVAL = "eval."


def json_or_none(text: str | None) -> Any:
    """``text`` parsed as JSON; None when empty or not JSON."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def compact(value: Any) -> str:
    """``value`` as the compact JSON a tag holds."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      default=lambda o: o.item() if hasattr(o, "item") else str(o))  # numpy numbers as numbers


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """A version's final metrics by key (``test_accuracy``, ``validation_f1``...): its ``metrics`` tag, else its
    older ``metric.<key>`` tags and ``score`` (the test primary metric)."""
    found = json_or_none(tags.get(METRICS_TAG))
    if not isinstance(found, dict):
        found = {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.")}
        primary = tags.get("primary_metric")
        if primary and "score" in tags:
            found.setdefault(f"test_{primary}", tags["score"])
    out: dict[str, float] = {}
    for key, raw in found.items():
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def gate_details(tags: Mapping[str, str]) -> dict[str, Any]:
    """The gate's record on a version besides its decision: ``reason``, ``at``, ``champion`` (the production
    version it saw, None (JSON null) when there was none; "None" in versions gated before 2026-12-07: read it with
    :func:`gate_champion`), ``metric`` and ``comparison`` (challenger, champion, difference, ci_low, ci_high, n)
    where recorded; from tag ``redflow.gate`` or the older ``redflow.gate.<key>`` tags."""
    found = json_or_none(tags.get(GATE_TAG))
    if isinstance(found, dict):
        return found
    old = {k[len(_OLD_GATE):]: v for k, v in tags.items() if k.startswith(_OLD_GATE) and k != GATE_DECISION_TAG}
    details: dict[str, Any] = {k: old[k] for k in ("reason", "at", "champion", "metric") if k in old}
    if old.get("rows"):
        try:
            low, high = json.loads(old["ci"])
            details["comparison"] = {"challenger": float(old["challenger_score"]),
                                     "champion": float(old["champion_score"]),
                                     "difference": float(old["difference"]), "ci_low": low, "ci_high": high,
                                     "n": int(old["rows"])}
        except (KeyError, ValueError, TypeError):
            pass
    return details


def gate_champion(details: Mapping[str, Any]) -> int | None:
    """The production version the gate compared with (``gate_details(...)["champion"]``): None when there was none
    (JSON null, or "None" in versions gated before 2026-12-07) or none was recorded."""
    champion = details.get("champion")
    return None if champion in (None, "None") else int(champion)


def evaluations(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """A version's recorded re-evaluations by report name: ``run_id``, ``at`` and ``metrics`` (empty when they did
    not fit the tag: the evaluation run holds them); from tag ``redflow.evaluations`` or older ``eval.*`` tags."""
    found = json_or_none(tags.get(EVALUATIONS_TAG))
    out: dict[str, dict[str, Any]] = found if isinstance(found, dict) else {}
    for key, value in tags.items():  # older versions: eval.<report>.<metric|run_id|at>
        if key.startswith(_OLD_EVAL) and key.count(".") >= 2:
            report, field = key[len(_OLD_EVAL):].rsplit(".", 1)
            entry = out.setdefault(report, {"metrics": {}})
            if field in ("run_id", "at"):
                entry.setdefault(field, value)
            else:
                try:
                    entry.setdefault("metrics", {}).setdefault(field, float(value))
                except ValueError:
                    pass
    return out


def with_evaluation(tags: Mapping[str, str], report: str, run_id: str, at: str,
                    metrics: Mapping[str, float]) -> str:
    """The ``redflow.evaluations`` tag with ``report``'s latest evaluation added: within the tag's limit, the
    older reports' metrics are dropped first (their runs keep them), then the oldest reports, then, only if
    this report's metrics alone are too long, those."""
    found = json_or_none(tags.get(EVALUATIONS_TAG))
    entries: dict[str, dict[str, Any]] = dict(found) if isinstance(found, dict) else {}
    entries.pop(report, None)
    entries[report] = {"run_id": run_id, "at": at,
                       "metrics": {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else str(v))
                                   for k, v in metrics.items()}}
    text = compact(entries)
    older = sorted((r for r in entries if r != report), key=lambda r: str(entries[r].get("at", "")))
    for name in older:  # the older reports' metrics first: their runs keep them
        if len(text) <= MAX_TAG:
            break
        entries[name] = {k: v for k, v in entries[name].items() if k != "metrics"}
        text = compact(entries)
    for name in older:  # then the oldest reports
        if len(text) <= MAX_TAG:
            break
        entries.pop(name)
        text = compact(entries)
    if len(text) > MAX_TAG:  # this report's metrics alone are too long: its run holds them
        entries[report].pop("metrics")
        text = compact(entries)
    return text
