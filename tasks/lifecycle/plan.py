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

from .identity import Identity

TRAIN, UNCHANGED, GATE = "train", "unchanged", "gate"


@dataclass
class Plan:
    """What tonight's run does with a task, and why."""

    action: str                         # TRAIN, UNCHANGED or GATE
    identity: Identity
    reasons: list[str] = field(default_factory=list)
    latest_version: int | None = None   # the newest registered version (what "unchanged" refers to)
    init_version: int | None = None     # production version to start from (init: production)
