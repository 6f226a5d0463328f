"""Aliases: ``candidate`` for every new version, ``production`` behind a gate, rollback, history.

* Every alias move and every gate decision is appended, under the promotion lock
  (``registry.locks``), to a JSON list in the registered-model tag ``redflow.alias_history``
  (read it with ``alias_history(name)``); each version involved also gets the entry in its own
  ``redflow.alias_history`` tag, and gated versions carry ``redflow.gate.*`` tags.
* ``gate_and_promote`` is champion vs challenger *on the same rows*: the caller passes the
  candidate's per-row scores on this run's evaluation rows and a function that scores any
  version on those same rows; the gate scores the current production with it and decides on
  the paired difference (with a bootstrap confidence interval, ``tasks.evaluate.paired``).
  Scores stored on versions by earlier runs come from other test sets: they are shown in the
  reason, never compared. It is compare-and-set: if production moves while the champion is
  being scored, the new production is scored and compared instead, so two flows gating at
  once end with the better version in production whichever order they run in.
* ``rollback`` moves ``production`` back to the version it replaced (following promotions and
  explicit ``move_alias`` moves, not earlier rollbacks, so repeated rollbacks walk further back) and marks the demoted version
  ``redflow.rolled_back_at`` so the gate will not automatically re-promote it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from red.utils import utc_now
from tasks.evaluate.paired import RowScores, paired_bootstrap
from tasks.lifecycle.gate import LabelSpaceMismatch

from .decisions import (APPROVED, AWAITING_APPROVAL, FORCED, KEPT_OUT, MOVED_TO_PRODUCTION, PROMOTED,
                        ROLLED_BACK, decision_name, person)
from .history import HISTORY_ENTRY, HISTORY_TAG, history_entries, json_list, update_history_description
from .locks import DEFAULT_TIMEOUT, registry_lock
from .names import READY, STATUS_TAG
from .policy import PromotionPolicy
from .version_tags import (GATE_DECISION_TAG, GATE_TAG, MAX_TAG, compact, gate_champion, gate_details,
                           version_metrics)

CANDIDATE = "candidate"
PRODUCTION = "production"
_MAX_MODEL_TAG = 5000    # registered_model_tags.value is VARCHAR(5000) on MLflow's SQL stores
_MAX_VERSION_TAG = 20_000  # a version's own copy, bounded (model_version_tags.value is TEXT)
_log = logging.getLogger(__name__)


class RollbackError(RuntimeError):
    """There is nothing (valid) to roll back to."""


@dataclass
class PromotionDecision:
    """What the gate decided and on which numbers (all on the same rows unless said otherwise)."""

    promoted: bool
    reason: str
    previous: int | None                 # production version before the decision (None: there was none)
    version: int = 0
    model_name: str = ""
    metric: str | None = None
    value: float | None = None           # the candidate's score on this run's rows
    previous_value: float | None = None  # production's score on the same rows
    comparison: dict[str, Any] | None = None   # tasks.evaluate.paired.Comparison (difference, CI, n)
    stored: dict[str, float] = field(default_factory=dict)  # scores recorded by earlier runs: shown, not compared
    policy: dict[str, Any] = field(default_factory=dict)
    decided_at: str = ""
    decided_by: str = ""                 # the person (user@host, or $REDFLOW_USER)
    outcome: str = ""                    # registry.decisions: promoted, kept out or awaiting approval

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
def _bounded(entries: list[dict[str, Any]], limit: int = _MAX_VERSION_TAG) -> str:
    """JSON of ``entries``, dropping the oldest until it fits ``limit`` characters."""
    text = json.dumps(entries, separators=(",", ":"))
    while len(text) > limit and len(entries) > 1:
        entries = entries[max(1, len(entries) // 10):]
        text = json.dumps(entries, separators=(",", ":"))
    return text


def _entry_text(entry: dict[str, Any]) -> str:
    """One history entry as JSON that fits a registered-model tag: detail is shortened, never the move itself."""
    entry = dict(entry)
    text = json.dumps(entry, separators=(",", ":"), default=str)
    for key in ("comparison", "policy", "previous_value", "value"):
        if len(text) <= _MAX_MODEL_TAG:
            break
        entry.pop(key, None)
        text = json.dumps(entry, separators=(",", ":"), default=str)
    if len(text) > _MAX_MODEL_TAG:
        entry["reason"] = str(entry.get("reason", ""))[:max(0, _MAX_MODEL_TAG - len(text) + len(str(entry.get("reason",
                                                                                                    ""))) - 20)]
        text = json.dumps(entry, separators=(",", ":"), default=str)
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
    """A version's final metric ``key`` as recorded at registration (tag ``metrics``; older versions: ``metric.<key>``
    or ``score``), if any and finite."""
    return version_metrics(mv.tags).get(key)


def append_entry(client: MlflowClient, name: str, entry: dict[str, Any], versions: list[int | None]) -> None:
    """Append ``entry`` to the model's history and to each involved version's (the caller holds the lock)."""
    rm = client.get_registered_model(name)
    history = history_entries(client, name, rm) + [entry]
    numbers = [int(k[len(HISTORY_ENTRY):]) for k in (rm.tags or {})
               if k.startswith(HISTORY_ENTRY) and k[len(HISTORY_ENTRY):].isdigit()]
    client.set_registered_model_tag(name, f"{HISTORY_ENTRY}{max(numbers, default=0) + 1:06d}", _entry_text(entry))
    _describe_history(client, name, history)
    for v in dict.fromkeys(v for v in versions if v is not None):
        try:
            mv = client.get_model_version(name, str(v))
        except MlflowException:
            continue  # a deleted version
        client.set_model_version_tag(name, str(v), HISTORY_TAG,
                                     _bounded(json_list(mv.tags.get(HISTORY_TAG)) + [entry]))


def _describe_history(client: MlflowClient, name: str, history: list[dict[str, Any]]) -> None:
    """Render the history into the model's description (readable in the UI); the tag stays the record."""
    try:
        update_history_description(client, name, history)
    except MlflowException as exc:  # a description is a courtesy: never undo a recorded move for it
        _log.warning("could not render the alias history of %s into its description: %s", name, exc)


def move_locked(client: MlflowClient, name: str, alias: str, version: int, *, action: str, reason: str,
                by: str | None = None, extra: dict[str, Any] | None = None) -> AliasMove:
    """Point ``alias`` at ``version`` and record it, ``by`` a person (default: this one,
    ``registry.decisions.person``); the caller holds the lock."""
    prev_mv = alias_version(name, alias, client)
    previous = int(prev_mv.version) if prev_mv is not None else None
    client.set_registered_model_alias(name, alias, str(version))
    at = utc_now()
    entry = {"at": at, "alias": alias, "action": action, "version": int(version), "from": previous,
             "reason": reason, "by": by or person(), **(extra or {})}
    try:
        append_entry(client, name, entry, [int(version), previous])
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
    """Point ``alias`` of ``name`` at ``version`` under the lock and record the move (manual override).

    ``action`` ``forced`` (``redflow promote --force``) also becomes the version's decision (``redflow versions``)."""
    client = client or MlflowClient()
    with registry_lock(name, client=client, timeout=lock_timeout):
        mv = client.get_model_version(name, str(version))
        if mv.tags.get(STATUS_TAG, READY) != READY:
            raise ValueError(f"{name} version {version} has status {mv.tags.get(STATUS_TAG)!r}; "
                             "only fully registered versions get aliases")
        move = move_locked(client, name, alias, int(version), action=action, reason=reason)
        if alias == PRODUCTION and mv.tags.get("redflow.rolled_back_at"):
            client.delete_model_version_tag(name, str(version), "redflow.rolled_back_at")  # re-instated by hand
        if alias == PRODUCTION and action == FORCED:
            mark_decision(client, name, int(version), FORCED, reason, move.at)
        return move


def gate_and_promote(name: str, version: int | str, policy: PromotionPolicy | None = None, *,
                     challenger: RowScores | None = None,
                     score_champion: Callable[[int], RowScores] | None = None,
                     client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT,
                     max_rescores: int = 3, once: bool = False) -> PromotionDecision:
    """Promote ``version`` to ``production`` if it beats the current production on the same rows.

    ``challenger``: the candidate's per-row scores on this run's evaluation rows for the policy's
    metric; ``score_champion(v)``: scores version ``v`` on exactly those rows (same max length).
    Without them a first version can still pass its ``minimum`` (on its recorded score), but a
    version is never compared with production on numbers from different test sets: the gate then
    rejects and says how to compare (``redflow promote NAME V --config ...``) or to force.

    Compare-and-set under the promotion lock; if production moved while its scores were being
    computed, the new production is scored instead (up to ``max_rescores`` times). The decision is
    recorded either way (history entry ``promoted``/``kept out``, ``redflow.gate.*`` version tags). With
    ``policy.approval`` ``required`` a version that passes stays at ``candidate``, ``awaiting approval``
    (``registry.approval`` decides it).

    ``once``: a version the gate already decided on keeps that decision (returned as recorded, nothing
    re-scored or moved): what a nightly run that gates a version registered by an earlier, crashed run
    passes, so a twin run gating the same version at the same time never decides twice.
    """
    client = client or MlflowClient()
    policy = policy or PromotionPolicy()
    version = int(version)
    if once:  # decided already: not worth scoring anything (checked again under the lock below)
        mv = client.get_model_version(name, str(version))
        if is_gated(mv):
            return recorded_decision(name, mv)
    for _ in range(max_rescores + 1):
        prod = alias_version(name, PRODUCTION, client)
        champion_version = int(prod.version) if prod is not None else None
        champion_rows, champion_error = None, None
        if champion_version not in (None, version) and challenger is not None and score_champion is not None:
            try:
                champion_rows = score_champion(champion_version)
            except Exception as exc:  # noqa: BLE001 - reported in the decision, never promoted past
                champion_error = exc
        with registry_lock(name, client=client, timeout=lock_timeout):
            prod = alias_version(name, PRODUCTION, client)
            if (int(prod.version) if prod is not None else None) != champion_version:
                continue  # production moved while we scored it: score the new one
            mv = client.get_model_version(name, str(version))
            if once and is_gated(mv):
                return recorded_decision(name, mv)
            metric = policy.metric_name(mv.tags.get("primary_metric"))
            stored = {}  # what earlier runs recorded, on their own test rows: shown beside a comparison, never used
            if prod is not None and champion_version != version:
                stored = {f"v{version}": metric_value(mv, f"test_{metric}"),
                          f"v{champion_version}": metric_value(prod, f"test_{metric}")}
            stored = {k: v for k, v in stored.items() if v is not None}
            recorded = metric_value(mv, f"test_{metric}")  # its own test rows: for a first version's minimum only
            lost = _lost_production(client, name) if champion_version is None else None
            decision = _decide(name, mv, version, champion_version, policy, metric, challenger, champion_rows,
                               champion_error, stored, recorded, paired_bootstrap, lost_production=lost)
            if decision.promoted and policy.needs_approval:  # passed the gate: a person moves production
                decision.promoted = False
                decision.outcome = AWAITING_APPROVAL
                decision.reason += (f"; awaiting approval (promotion.approval: required): `redflow approve {name} "
                                    f"{version}` or `redflow reject {name} {version}`")
            decision.decided_by = person()
            if champion_version == version:  # already production: nothing decided, its own decision stands
                decision.outcome = decision_name(mv.tags.get(GATE_DECISION_TAG)) or PROMOTED
                return decision
            _record_decision(client, name, version, decision)
            return decision
    raise RuntimeError(f"{name}: production kept moving while the gate scored it ({max_rescores + 1} tries); rerun")


def _decide(name: str, mv: ModelVersion, version: int, champion: int | None, policy: PromotionPolicy, metric: str,
            challenger, champion_rows, champion_error: Exception | None, stored: dict[str, float],
            recorded: float | None, paired_bootstrap, lost_production: dict | None = None) -> PromotionDecision:
    """The gate's rule, on numbers already gathered (the caller holds the lock)."""
    higher = policy.higher(metric)
    better = "higher" if higher else "lower"
    decision = PromotionDecision(promoted=False, reason="", previous=champion, version=version, model_name=name,
                                 metric=metric, stored=stored, policy=policy.to_dict(), decided_at=utc_now())
    shown = ("; their recorded test scores, each on its own rows and so not compared: " +
             ", ".join(f"{k} {v:.4g}" for k, v in stored.items())) if stored and challenger is None else ""
    status = mv.tags.get(STATUS_TAG)
    value = challenger.value() if challenger is not None else recorded
    decision.value = value
    comparison = None
    if challenger is not None and champion_rows is not None:  # reported whatever rule decides
        comparison = paired_bootstrap(challenger, champion_rows, higher=higher, confidence=policy.confidence)
        decision.comparison = comparison.to_dict()
        decision.previous_value = comparison.champion
    if status != READY:
        decision.reason = f"version {version} has status {status!r}: only fully registered ('ready') versions can " \
                          "be promoted"
    elif mv.tags.get("redflow.rolled_back_at"):
        decision.reason = (f"version {version} was rolled back out of production at "
                           f"{mv.tags['redflow.rolled_back_at']}; promote it explicitly (--force) if it is fixed")
    elif champion == version:
        decision.reason = f"version {version} is already production"
    elif value is None or not math.isfinite(value):
        decision.reason = f"version {version} has no finite {metric} to gate on"
    elif not policy.meets_minimum(value, metric):
        decision.reason = f"{metric}={value:.6g} does not reach the minimum {policy.minimum:.6g} ({better} is better)"
        if comparison is not None:
            decision.reason += f"; against production v{champion}: {comparison.describe()}"
    elif champion is None and lost_production is not None:  # not a first version: production went missing
        held = lost_production["version"]
        decision.reason = (f"production has no version, but the alias history says v{held} held it (moved there "
                           f"{lost_production.get('at', '?')}, {decision_name(lost_production.get('action')) or '?'}): "
                           "the alias was "
                           f"removed outside redflow, so v{version} is not promoted as if it were the first. Fix: "
                           f"restore it with `redflow promote {name} {held} --force`, then rerun the gate "
                           f"(`redflow promote {name} {version} --config <retrain config>`), or promote v{version} "
                           "with --force")
    elif champion is None:
        decision.promoted = True
        decision.reason = (f"first production version: {metric}={value:.6g}" +
                           (f" reaches the minimum {policy.minimum:.6g}" if policy.minimum is not None
                            else " (no minimum configured)"))
    elif challenger is None:
        decision.reason = (f"production v{champion} and v{version} were not scored on the same rows, and scores "
                           "from different test sets are not compared. Fix: run `redflow promote "
                           f"{name} {version} --config <retrain config>` to score both on the task's rows, or "
                           "--force")
    elif champion_rows is None:
        decision.reason = _unscored_reason(name, version, champion, champion_error)
    else:
        gain = comparison.difference
        significant = comparison.ci_low > 0
        if gain > 0 and gain >= policy.margin and (significant or not policy.require_significant):
            decision.promoted = True
            decision.reason = f"beats production v{champion} by >= margin {policy.margin:.4g}: {comparison.describe()}"
            if not significant:  # promoted on the point estimate: say that the interval allows no gain at all
                decision.reason += (f"; not significant: {policy.confidence:.0%} CI {comparison.ci_low:+.3f}.."
                                    f"{comparison.ci_high:+.3f} spans 0")
        else:
            why = ("the improvement is not significant" if gain > 0 and gain >= policy.margin
                   else f"not better than production v{champion} by the margin {policy.margin:.4g}")
            decision.reason = f"{why}: {comparison.describe()}"
    decision.reason += shown
    decision.outcome = PROMOTED if decision.promoted else KEPT_OUT
    return decision


def _lost_production(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """The last history entry that put a version in ``production``, when the alias is gone although no redflow
    command removed it (someone deleted it by hand): None when production never had a version."""
    for entry in reversed(history_entries(client, name)):
        if entry.get("alias") == PRODUCTION and decision_name(entry.get("action")) in MOVED_TO_PRODUCTION + ("set",):
            return entry
    return None


def _unscored_reason(name: str, version: int, champion: int | None, error: Exception | None) -> str:
    """Why a champion that could not be scored on this run's rows blocks the candidate, and what to do."""
    if isinstance(error, LabelSpaceMismatch):  # class ids of two label spaces: any score across them is noise
        return (f"label spaces differ: production v{champion} and v{version} are not compared, and v{version} is "
                f"not promoted on a score across label spaces ({error.describe()}). Fix: look at both label lists "
                f"(v{champion}'s and the data spec's `label_list`) and, if v{version} should serve, run "
                f"`redflow promote {name} {version} --force`")
    return (f"production v{champion} could not be scored on this run's rows ({type(error).__name__}: {error}); "
            f"v{version} is not promoted past a champion it cannot be compared with. Fix the champion "
            "or promote with --force")


def _record_decision(client: MlflowClient, name: str, version: int, decision: PromotionDecision) -> None:
    """The gate's decision in the history (``promoted`` moves production; ``kept out`` and ``awaiting approval``
    move nothing) and on the version (``redflow.gate.*``; ``champion``: the production the gate saw, which
    ``redflow approve`` checks is still production)."""
    extra = {"metric": decision.metric, "value": decision.value, "previous_value": decision.previous_value,
             "comparison": decision.comparison, "policy": decision.policy}
    if decision.promoted:
        move_locked(client, name, PRODUCTION, version, action=PROMOTED, reason=decision.reason,
                    by=decision.decided_by, extra=extra)
    else:
        append_entry(client, name, {"at": decision.decided_at, "alias": PRODUCTION, "action": decision.outcome,
                                    "version": version, "from": decision.previous, "reason": decision.reason,
                                    "by": decision.decided_by, **extra}, [version])
    details = {"champion": None if decision.previous is None else str(decision.previous)}  # JSON null: no champion
    if decision.comparison:
        details.update({"metric": str(decision.metric), "comparison": dict(decision.comparison)})
    mark_decision(client, name, version, decision.outcome, decision.reason, decision.decided_at, details)


def mark_decision(client: MlflowClient, name: str, version: int, outcome: str, reason: str, at: str,
                  details: dict[str, Any] | None = None) -> None:
    """Version ``version``'s current decision (a name of ``registry.decisions``, tag ``redflow.gate.decision``) and
    in tag ``redflow.gate`` why and when, with ``details`` (the production the gate saw, its comparison); without
    ``details`` the gate's earlier ones are kept (a rollback or an approval decides on the gate's comparison).
    What ``redflow versions`` shows for it; the history keeps every earlier decision."""
    record = dict(details) if details is not None else gate_details(client.get_model_version(name, str(version)).tags)
    record.update({"reason": str(reason), "at": at})
    text = compact(record)
    if len(text) > MAX_TAG:  # a very long reason: shortened, the comparison kept
        record["reason"] = record["reason"][:max(0, MAX_TAG - len(text) + len(record["reason"]) - 20)]
        text = compact(record)
    client.set_model_version_tag(name, str(version), GATE_TAG, text)
    client.set_model_version_tag(name, str(version), GATE_DECISION_TAG, str(outcome))


def is_gated(mv: ModelVersion | None) -> bool:
    """Whether the gate (or a person) decided on ``mv`` (tag ``redflow.gate.decision``, any of
    ``registry.decisions``). A version
    registered by a run that died before its gate is not: the next run of the same inputs gates it."""
    return mv is not None and bool(mv.tags.get(GATE_DECISION_TAG))


def recorded_decision(name: str, mv: ModelVersion) -> PromotionDecision:
    """The gate decision recorded on ``mv`` (tags ``redflow.gate.decision`` and ``redflow.gate``; older versions:
    ``redflow.gate.*``), as :func:`gate_and_promote` returned it."""
    details = gate_details(mv.tags)
    outcome = decision_name(mv.tags.get(GATE_DECISION_TAG))
    decision = PromotionDecision(promoted=outcome in (PROMOTED, APPROVED, FORCED), previous=None,
                                 reason=details.get("reason", ""), version=int(mv.version), model_name=name,
                                 metric=details.get("metric"), decided_at=details.get("at"), outcome=outcome)
    if details.get("comparison"):
        decision.comparison = dict(details["comparison"])
        decision.value = decision.comparison["challenger"]
        decision.previous_value = decision.comparison["champion"]
        decision.previous = gate_champion(details)
    return decision


def rollback(name: str, *, to_version: int | str | None = None, reason: str = "",
             client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT) -> AliasMove:
    """Move ``production`` back to the version the current production replaced (or ``to_version``)."""
    client = client or MlflowClient()
    with registry_lock(name, client=client, timeout=lock_timeout):
        prod = alias_version(name, PRODUCTION, client)
        if prod is None:
            raise RollbackError(f"{name} has no production version to roll back")
        current = int(prod.version)
        target = int(to_version) if to_version is not None else None
        if target is None:
            history = history_entries(client, name)
            for entry in reversed(history):
                if (entry.get("alias") == PRODUCTION and entry.get("version") == current
                        and decision_name(entry.get("action")) in (PROMOTED, APPROVED, FORCED, "set")):
                    target = entry.get("from")
                    break
            if target is None:
                raise RollbackError(
                    f"{name}: production version {current} replaced no earlier production version (it was the first, "
                    "or production was set outside redflow); choose the version: --to-version N (to_version=N in Python)")
        if target == current:
            raise RollbackError(f"{name}: version {target} is already production")
        try:
            mv = client.get_model_version(name, str(target))
        except MlflowException as exc:
            raise RollbackError(f"{name}: cannot roll back to version {target}: {exc.message}") from exc
        if mv.tags.get(STATUS_TAG, READY) != READY:
            raise RollbackError(f"{name}: version {target} has status {mv.tags.get(STATUS_TAG)!r}")
        move = move_locked(client, name, PRODUCTION, target, action=ROLLED_BACK,
                           reason=reason or f"rollback from v{current}")
        client.set_model_version_tag(name, str(current), "redflow.rolled_back_at", move.at)
        mark_decision(client, name, current, ROLLED_BACK,
                      f"production rolled back to v{target}" + (f": {reason}" if reason else ""), move.at)
        return move


def alias_history(name: str, alias: str | None = None, *, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Recorded alias moves and gate decisions of ``name``, oldest first (optionally one alias's).

    Entries: ``{"at", "alias", "action", "version", "from", "reason", "by", ...}``; ``action`` is ``candidate``,
    ``set`` or a decision of ``registry.decisions`` (older histories: ``promote``, ``reject``, ``force-promote``,
    ``rollback``; ``decision_name`` maps them), ``by`` the person (user@host or ``$REDFLOW_USER``).
    """
    client = client or MlflowClient()
    history = history_entries(client, name)
    return [e for e in history if alias is None or e.get("alias") == alias]


def production_version(name: str, client: MlflowClient | None = None) -> int | None:
    mv = alias_version(name, PRODUCTION, client)
    return int(mv.version) if mv is not None else None


__all__ = ["AliasMove", "CANDIDATE", "append_entry", "mark_decision", "PRODUCTION", "PromotionDecision",
           "PromotionPolicy", "RollbackError", "alias_history", "alias_version", "gate_and_promote", "is_gated",
           "metric_value", "move_alias", "production_version", "rollback"]
