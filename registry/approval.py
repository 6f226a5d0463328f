"""A person's decision on a version the gate left ``awaiting approval`` (``promotion.approval: required``).

``decide_approval`` is what ``redflow approve`` / ``redflow reject`` and the ``approve-version`` flow (the Prefect UI)
run. It is a compare-and-set under the promotion lock: it refuses (``ApprovalRefused``, exit 2) when the version is
not awaiting approval, or when ``production`` moved since the gate compared the version with it (the gate recorded
the production it saw in the version tag ``redflow.gate.champion``), since the comparison that was approved
would no longer be the one that holds. ``approved`` moves production as a promotion does (``move_locked``, with
the history entry); ``rejected`` records the rejection and moves nothing. Both record who (``registry.decisions.
person``) and why.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from red.utils import utc_now

from .aliases import PRODUCTION, alias_version, append_entry, mark_decision, move_locked
from .decisions import APPROVED, AWAITING_APPROVAL, REJECTED, decision_name, person
from .locks import DEFAULT_TIMEOUT, registry_lock
from .version_tags import GATE_DECISION_TAG, gate_champion, gate_details
from .views import require_version


class ApprovalRefused(ValueError):
    """The version cannot be approved or rejected now; the message says why and what to do."""


@dataclass
class ApprovalDecision:
    """What a person decided: ``decision`` is ``approved`` or ``rejected``; ``previous`` production before it."""

    model_name: str
    version: int
    decision: str
    previous: int | None
    reason: str
    by: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_approval(name: str, version: int | str, approve: bool, reason: str = "", *, by: str | None = None,
                    client: MlflowClient | None = None, lock_timeout: float = DEFAULT_TIMEOUT) -> ApprovalDecision:
    """Approve (production moves to ``version``) or reject ``version`` of ``name``, if it awaits approval and
    production is still the version the gate compared it with. ``by``: the person deciding (default: this
    process's, ``registry.decisions.person``; a flow run passes the name given in the Prefect UI).
    ``ModelNotFound`` for a model or version that does not exist, ``ApprovalRefused`` otherwise."""
    client = client or MlflowClient()
    version = int(version)
    verb = "approve" if approve else "reject"
    require_version(name, version, client)
    with registry_lock(name, client=client, timeout=lock_timeout):
        mv = client.get_model_version(name, str(version))
        status = decision_name(mv.tags.get(GATE_DECISION_TAG)) or "not gated yet"
        if status != AWAITING_APPROVAL:
            raise ApprovalRefused(f"{name} v{version} is not awaiting approval (its decision: {status}), so there is "
                                  f"nothing to {verb}. Fix: `redflow versions {name}` shows which versions await "
                                  "approval")
        seen = gate_champion(gate_details(mv.tags))  # production when the gate decided
        prod = alias_version(name, PRODUCTION, client)
        previous = int(prod.version) if prod is not None else None
        if previous != seen:
            shown = (lambda v: "none" if v is None else f"v{v}")
            raise ApprovalRefused(
                f"production moved since the gate passed {name} v{version}: it was {shown(seen)} then and is "
                f"{shown(previous)} now, so the comparison to {verb} no longer holds. Fix: gate it again against "
                f"today's production (`redflow promote {name} {version} --config <retrain config>`), then {verb} it")
        decision = APPROVED if approve else REJECTED
        by, why = by or person(), reason or f"{decision} by hand (no reason given)"
        if approve:
            at = move_locked(client, name, PRODUCTION, version, action=APPROVED, reason=why, by=by).at
        else:
            at = utc_now()
            append_entry(client, name, {"at": at, "alias": PRODUCTION, "action": REJECTED, "version": version,
                                        "from": previous, "reason": why, "by": by}, [version])
        mark_decision(client, name, version, decision, f"by {by}: {why}", at)
        return ApprovalDecision(model_name=name, version=version, decision=decision, previous=previous,
                                reason=why, by=by, at=at)
