"""Aliases: ``candidate`` for every new version, ``production`` behind a gate, rollback, history.

* Every alias move and every gate decision is appended, under the promotion lock
  (``registry.locks``), to a JSON list in the registered-model tag ``redflow.alias_history``
  (read it with ``alias_history(name)``); each version involved also gets the entry in its own
  ``redflow.alias_history`` tag, and gated versions carry ``redflow.gate.*`` tags.
* ``gate_and_promote`` re-reads the current production *inside* the lock, so two flows gating
  at once are serialized: the second compares against whatever the first promoted, and the
  better version ends up in production whichever order they run in.
* ``rollback`` moves ``production`` back to the version it replaced (following promotions and
  explicit ``move_alias`` moves, not earlier rollbacks, so repeated rollbacks walk further back) and marks the demoted version
  ``redflow.rolled_back_at`` so the gate will not automatically re-promote it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .locks import DEFAULT_TIMEOUT, registry_lock

CANDIDATE = "candidate"
PRODUCTION = "production"
HISTORY_TAG = "redflow.alias_history"
STATUS_TAG = "redflow.status"
READY = "ready"
_MAX_TAG = 100_000  # MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH
_log = logging.getLogger(__name__)


class RollbackError(RuntimeError):
    """There is nothing (valid) to roll back to."""


@dataclass(frozen=True)
class PromotionPolicy:
    """When a version may become ``production``.

    ``metric``: what to compare (default: the version's primary metric, test split); a bare
    name means ``test_<name>``, ``validation_<name>``/``test_<name>`` are taken as they are.
    ``margin``: the improvement over the current production needed (>= margin, and strictly
    better when margin is 0: a tie does not replace production). ``minimum``: a floor every
    promoted version must reach - in particular the first one, which has nothing to beat (None:
    no floor). ``higher_is_better=False`` for losses/perplexity.
    """

    metric: str | None = None
    margin: float = 0.0
    minimum: float | None = None
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        if self.minimum is not None and not math.isfinite(float(self.minimum)):
            raise ValueError(f"minimum must be finite or None, got {self.minimum!r}")

    def metric_key(self, primary_metric: str | None) -> str:
        name = self.metric or primary_metric
        if not name:
            raise ValueError("the policy names no metric and the version records no primary metric")
        return name if name.startswith(("test_", "validation_")) else f"test_{name}"

    def improvement(self, value: float, reference: float) -> float:
        return value - reference if self.higher_is_better else reference - value

    def meets_minimum(self, value: float) -> bool:
        if self.minimum is None:
            return True
        return value >= self.minimum if self.higher_is_better else value <= self.minimum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PromotionPolicy":
        return cls(**(data or {}))


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    previous: int | None                 # production version before the decision (None: there was none)
    version: int = 0
    model_name: str = ""
    metric: str | None = None
    value: float | None = None
    previous_value: float | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    decided_at: str = ""
    decided_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AliasMove:
    model_name: str
    alias: str
    version: int
    previous: int | None
    action: str
    reason: str = ""
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_list(text: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _bounded(entries: list[dict[str, Any]]) -> str:
    """JSON of ``entries``, dropping the oldest until it fits a registry tag value."""
    text = json.dumps(entries, separators=(",", ":"))
    while len(text) > _MAX_TAG and len(entries) > 1:
        entries = entries[max(1, len(entries) // 10):]
        text = json.dumps(entries, separators=(",", ":"))
    return text


def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version ``alias`` points to, or None if the alias is not set."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def metric_value(mv: ModelVersion, key: str) -> float | None:
    """A version's metric from its ``metric.<key>`` tag (set at registration), if any and numeric."""
    raw = mv.tags.get(f"metric.{key}")
    if raw is None and key == f"test_{mv.tags.get('primary_metric')}":
        raw = mv.tags.get("score")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _append(client: MlflowClient, name: str, entry: dict[str, Any], versions: list[int | None]) -> None:
    """Append ``entry`` to the model's history and to each involved version's (lock held)."""
    rm = client.get_registered_model(name)
    history = _json_list(rm.tags.get(HISTORY_TAG)) + [entry]
    client.set_registered_model_tag(name, HISTORY_TAG, _bounded(history))
    _describe_history(client, name, history)
    for v in dict.fromkeys(v for v in versions if v is not None):
        try:
            mv = client.get_model_version(name, str(v))
        except MlflowException:
            continue  # a deleted version
        client.set_model_version_tag(name, str(v), HISTORY_TAG,
                                     _bounded(_json_list(mv.tags.get(HISTORY_TAG)) + [entry]))


def _describe_history(client: MlflowClient, name: str, history: list[dict[str, Any]]) -> None:
    """Render the history into the model's description (readable in the UI); the tag stays the record."""
    from .views import update_history_description

    try:
        update_history_description(client, name, history)
    except MlflowException as exc:  # a description is a courtesy: never undo a recorded move for it
        _log.warning("could not render the alias history of %s into its description: %s", name, exc)


def _move_locked(client: MlflowClient, name: str, alias: str, version: int, *, action: str, reason: str,
                 owner: str, extra: dict[str, Any] | None = None) -> AliasMove:
    """Point ``alias`` at ``version`` and record it; the caller holds the lock."""
    prev_mv = alias_version(name, alias, client)
    previous = int(prev_mv.version) if prev_mv is not None else None
    client.set_registered_model_alias(name, alias, str(version))
    at = _now()
    entry = {"at": at, "alias": alias, "action": action, "version": int(version), "from": previous,
             "reason": reason, "by": owner, **(extra or {})}
    try:
        _append(client, name, entry, [int(version), previous])
    except BaseException:
        # keep alias and history consistent: undo the move if it cannot be recorded
        if previous is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(previous))
        raise
    return AliasMove(model_name=name, alias=alias, version=int(version), previous=previous,
                     action=action, reason=reason, at=at)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def move_alias(name: str, alias: str, version: int | str, *, action: str = "set", reason: str = "",
               client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT) -> AliasMove:
    """Point ``alias`` of ``name`` at ``version`` under the lock and record the move (manual override)."""
    client = client or MlflowClient()
    with registry_lock(name, client=client, timeout=lock_timeout) as owner:
        mv = client.get_model_version(name, str(version))
        if mv.tags.get(STATUS_TAG, READY) != READY:
            raise ValueError(f"{name} version {version} has status {mv.tags.get(STATUS_TAG)!r}; "
                             "only fully registered versions get aliases")
        move = _move_locked(client, name, alias, int(version), action=action, reason=reason, owner=owner)
        if alias == PRODUCTION and mv.tags.get("redflow.rolled_back_at"):
            client.delete_model_version_tag(name, str(version), "redflow.rolled_back_at")  # re-instated by hand
        return move


def gate_and_promote(name: str, version: int | str, policy: PromotionPolicy | None = None, *,
                     client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT
                     ) -> PromotionDecision:
    """Promote ``version`` to ``production`` if it passes ``policy`` against the current production.

    Compare-and-set under the promotion lock: the current production is read, compared and
    replaced (or not) while no other redflow process can move aliases of ``name``. The decision
    is recorded either way (history entry ``promote``/``reject``, ``redflow.gate.*`` version tags).
    """
    client = client or MlflowClient()
    policy = policy or PromotionPolicy()
    version = int(version)
    with registry_lock(name, client=client, timeout=lock_timeout) as owner:
        mv = client.get_model_version(name, str(version))
        prod = alias_version(name, PRODUCTION, client)
        previous = int(prod.version) if prod is not None else None
        key = value = previous_value = None
        status = mv.tags.get(STATUS_TAG)
        promote = False
        if status != READY:
            reason = (f"version {version} has status {status!r}: only fully registered ('ready') versions "
                      "can be promoted")
        elif mv.tags.get("redflow.rolled_back_at"):
            reason = (f"version {version} was rolled back out of production at {mv.tags['redflow.rolled_back_at']}; "
                      "promote it explicitly with move_alias if it is fixed")
        else:
            key = policy.metric_key(mv.tags.get("primary_metric"))
            value = metric_value(mv, key)
            previous_value = metric_value(prod, key) if prod is not None else None
            better = "higher" if policy.higher_is_better else "lower"
            if value is None:
                reason = f"version {version} has no finite {key} to gate on"
            elif previous == version:
                reason = f"version {version} is already production"
            elif not policy.meets_minimum(value):
                reason = f"{key}={value:.6g} does not reach the minimum {policy.minimum:.6g} ({better} is better)"
            elif prod is None:
                promote = True
                reason = (f"first production version: {key}={value:.6g}" +
                          (f" reaches the minimum {policy.minimum:.6g}" if policy.minimum is not None
                           else " (no minimum configured)"))
            elif previous_value is None:
                promote = True
                reason = f"production version {previous} records no {key}; {key}={value:.6g} replaces it"
            else:
                gain = policy.improvement(value, previous_value)
                if gain > 0 and gain >= policy.margin:
                    promote = True
                    reason = (f"{key}={value:.6g} beats production v{previous} ({previous_value:.6g}) by "
                              f"{gain:.6g} >= margin {policy.margin:.6g}")
                else:
                    reason = (f"{key}={value:.6g} does not beat production v{previous} ({previous_value:.6g}) by the "
                              f"margin {policy.margin:.6g} ({better} is better; improvement {gain:.6g})")
        decision = PromotionDecision(
            promoted=promote, reason=reason, previous=previous, version=version, model_name=name, metric=key,
            value=value, previous_value=previous_value, policy=policy.to_dict(), decided_at=_now(), decided_by=owner)
        extra = {"metric": key, "value": value, "previous_value": previous_value, "policy": policy.to_dict()}
        if promote:
            _move_locked(client, name, PRODUCTION, version, action="promote", reason=reason, owner=owner, extra=extra)
        else:
            _append(client, name, {"at": decision.decided_at, "alias": PRODUCTION, "action": "reject",
                                   "version": version, "from": previous, "reason": reason, "by": owner, **extra},
                    [version])
        for k, v in {"decision": "promoted" if promote else "rejected", "reason": reason,
                     "at": decision.decided_at}.items():
            client.set_model_version_tag(name, str(version), f"redflow.gate.{k}", v)
        return decision


def rollback(name: str, *, to_version: int | str | None = None, reason: str = "",
             client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT) -> AliasMove:
    """Move ``production`` back to the version the current production replaced (or ``to_version``)."""
    client = client or MlflowClient()
    with registry_lock(name, client=client, timeout=lock_timeout) as owner:
        prod = alias_version(name, PRODUCTION, client)
        if prod is None:
            raise RollbackError(f"{name} has no production version to roll back")
        current = int(prod.version)
        target = int(to_version) if to_version is not None else None
        if target is None:
            history = _json_list(client.get_registered_model(name).tags.get(HISTORY_TAG))
            for entry in reversed(history):
                if (entry.get("alias") == PRODUCTION and entry.get("action") not in ("reject", "rollback")
                        and entry.get("version") == current):
                    target = entry.get("from")
                    break
            if target is None:
                raise RollbackError(
                    f"{name}: production version {current} replaced no earlier production version (it was the first, "
                    "or production was set outside redflow); pass to_version= to choose one")
        if target == current:
            raise RollbackError(f"{name}: version {target} is already production")
        try:
            mv = client.get_model_version(name, str(target))
        except MlflowException as exc:
            raise RollbackError(f"{name}: cannot roll back to version {target}: {exc.message}") from exc
        if mv.tags.get(STATUS_TAG, READY) != READY:
            raise RollbackError(f"{name}: version {target} has status {mv.tags.get(STATUS_TAG)!r}")
        move = _move_locked(client, name, PRODUCTION, target, action="rollback",
                            reason=reason or f"rollback from v{current}", owner=owner)
        client.set_model_version_tag(name, str(current), "redflow.rolled_back_at", move.at)
        if reason:
            client.set_model_version_tag(name, str(current), "redflow.rolled_back_reason", reason)
        return move


def alias_history(name: str, alias: str | None = None, *, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Recorded alias moves and gate decisions of ``name``, oldest first (optionally one alias's).

    Entries: ``{"at", "alias", "action" ("candidate"|"promote"|"reject"|"rollback"|"set"),
    "version", "from", "reason", "by", ...}``.
    """
    client = client or MlflowClient()
    history = _json_list(client.get_registered_model(name).tags.get(HISTORY_TAG))
    return [e for e in history if alias is None or e.get("alias") == alias]


def production_version(name: str, client: MlflowClient | None = None) -> int | None:
    mv = alias_version(name, PRODUCTION, client)
    return int(mv.version) if mv is not None else None


__all__ = ["AliasMove", "CANDIDATE", "PRODUCTION", "PromotionDecision", "PromotionPolicy", "RollbackError",
           "alias_history", "alias_version", "gate_and_promote", "metric_value", "move_alias",
           "production_version", "rollback"]
