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
==========================================  =======================================================

``force`` trains whatever was found. The same rules hold for a task trained alone, co-trained in a group,
or tuned by a search.
"""
from __future__ import annotations

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
    latest_version: int | None = None   # the newest registered version (what "unchanged" refers to)
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
           init_production: bool = False, production: int | None = None) -> Plan:
    """Tonight's action for a task whose inputs are ``identity``, given its latest version (module table).

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
        if not latest.gated:  # registered, then the run died (or the gate gave up) before the gate decided
            return Plan(GATE, identity, [f"v{number} was registered from these inputs but never gated (its run "
                                         "stopped between register and promote): gating it now"],
                        latest_version=number)
        return Plan(UNCHANGED, identity, [f"same data, training config, base model and code as v{number}"] + changes,
                    latest_version=number)
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
