"""Tonight's action for one task, decided from what the task's inputs are and what earlier runs left.

A process may die at any moment of a nightly run. What the next run finds then, and what it does:

==========================================  =======================================================
found                                       action
==========================================  =======================================================
no version with tonight's identity          ``train`` (resuming a crashed twin's checkpoint if any)
an attempt that trained tonight's identity  ``train`` reuses its result: registered, not retrained
and never registered
the latest version has tonight's identity   ``gate``: score it on tonight's rows and gate it
but no gate decision                        (registered, never gated: the run died before promote)
the latest version has tonight's identity   ``unchanged``: nothing to do
and a gate decision
an earlier version has tonight's identity   the same, for that version (the newest such): ``unchanged``
(a config flipped back, say)                naming it, or ``gate`` if it was never gated; never a duplicate
==========================================  =======================================================

``force`` trains whatever was found. The same rules hold for a task trained alone, co-trained in a group,
or tuned by a search.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .identity import Identity, recipe_diff

TRAIN, UNCHANGED, GATE = "train", "unchanged", "gate"


@dataclass
class Plan:
    """What tonight's run does with a task, and why."""

    action: str                         # TRAIN, UNCHANGED or GATE
    identity: Identity
    reasons: list[str] = field(default_factory=list)
    latest_version: int | None = None   # the version tonight refers to: the newest, or the newest with tonight's
    #                                     identity when an earlier one has it (what "unchanged" and "gate" act on)
    init_version: int | None = None     # production version to start from (init: production)


@dataclass(frozen=True)
class VersionRecord:
    """What the registry holds about a task's latest ``ready`` version: all the plan needs from it.

    Read from MLflow by ``registry.models.version_record``; this package never talks to MLflow itself.
    """

    number: int
    identity: Identity | None           # None: registered without one (by hand, or by an old redflow)
    gated: bool                         # the gate decided on it (tag ``redflow.gate.decision``)
    recipe: dict[str, Any] | None = None  # the resolved training config it recorded (tag ``training_config``)


def decide(identity: Identity, latest: VersionRecord | None, *, force: bool = False,
           dependencies: bool = False, recipe: dict[str, Any] | None = None,
           init_production: bool = False, production: int | None = None,
           earlier: Sequence[VersionRecord] = ()) -> Plan:
    """Tonight's action for a task whose inputs are ``identity``, given its latest version (module table).

    ``earlier``: the task's other registered versions (any order): one with tonight's identity is what tonight
    refers to when the latest is not (nothing is trained to register a duplicate of it);
    ``dependencies``: a changed torch/transformers/peft version retrains (else it is only listed);
    ``recipe``: tonight's resolved training config, to name the fields that changed since ``latest``;
    ``init_production``/``production``: the task warm-starts from the production version, if there is one.
    """
    number = latest.number if latest is not None else None
    previous = latest.identity if latest is not None else None
    same = identity.matches(previous, dependencies=dependencies)
    changes = [f"since v{number}: {d}" for d in identity.diff(previous, dependencies=dependencies)] \
        if previous is not None else []
    if same and not force:
        return _trained_already(identity, latest, changes)
    if not force:
        match = max((r for r in earlier if r.number != number and r.identity is not None
                     and identity.matches(r.identity, dependencies=dependencies)), key=lambda r: r.number, default=None)
        if match is not None:
            return _trained_already(identity, match, [], latest=number)
    if latest is None:
        reasons = ["first training of this task"]
    elif same:
        reasons = [f"forced: same inputs as v{number}"]
    elif previous is None:
        reasons = [f"v{number} records no training identity"]
    else:
        reasons = changes
        changed = recipe_diff(latest.recipe, recipe) if latest.recipe and recipe is not None \
            and previous.config_hash != identity.config_hash else []
        if changed:
            prefix = f"since v{number}: training config changed"
            reasons = [f"{prefix}: {', '.join(changed)}" if r.startswith(prefix) else r for r in reasons]
    init_version = production if init_production else None
    if init_production and production is None:
        reasons.append("init: production, but there is no production version yet: starting fresh")
    return Plan(TRAIN, identity, reasons, latest_version=number, init_version=init_version)


def _trained_already(identity: Identity, found: VersionRecord, changes: list[str], latest: int | None = None) -> Plan:
    """Tonight's inputs are those of version ``found``: nothing to train. ``unchanged``, or ``gate`` when its run
    died (or the gate gave up) between register and promote. ``latest``: the newest version when ``found`` is an
    earlier one (a config set back to an earlier value)."""
    number = found.number
    if not found.gated:
        return Plan(GATE, identity, [f"v{number} was registered from these inputs but never gated (its run "
                                     "stopped between register and promote): gating it now"], latest_version=number)
    earlier = "" if latest is None else (
        f", an earlier version than the latest (v{latest}): nothing trained, no duplicate registered. To serve "
        f"it again: `redflow promote <model> {number} --config <this config>` (through the gate) or --force")
    return Plan(UNCHANGED, identity, [f"same data, training config, base model and code as v{number}{earlier}"]
                + changes, latest_version=number)
