"""The names of redflow's decisions about a version, and who a person deciding is.

One name per outcome, used everywhere a person reads it: the console, the night summary and its Prefect
artifact, the version tag ``redflow.gate.decision``, ``redflow versions`` and the ``action`` of ``redflow history``
(docs/lifecycle.md, "Decisions"):

=====================  ==========================================================================================
``promoted``           the gate moved ``production`` to the version
``kept out``           the gate decided no: production stays where it was
``awaiting approval``  the version passed the gate, ``promotion.approval: required``: a person decides
``approved``           a person approved it (``redflow approve``): production moved to it
``rejected``           a person rejected it (``redflow reject``); only ever a person's decision
``forced``             moved to production by hand without the gate (``redflow promote --force``)
``rolled back``        moved back by ``redflow rollback``; the version it left is marked rolled back
=====================  ==========================================================================================

Histories written before these names keep their old actions; :func:`decision_name` reads them under the new
ones. Light on purpose (no MLflow): ``registry/views.py`` imports it.
"""
from __future__ import annotations

import getpass
import os
import socket

PROMOTED, KEPT_OUT, AWAITING_APPROVAL = "promoted", "kept out", "awaiting approval"
APPROVED, REJECTED, FORCED, ROLLED_BACK = "approved", "rejected", "forced", "rolled back"
DECISIONS = (PROMOTED, KEPT_OUT, AWAITING_APPROVAL, APPROVED, REJECTED, FORCED, ROLLED_BACK)
#: the decisions that put a version in production (a history entry with one of them moved the alias there)
MOVED_TO_PRODUCTION = (PROMOTED, APPROVED, FORCED, ROLLED_BACK)

_LEGACY = {"promote": PROMOTED, "reject": KEPT_OUT, "force-promote": FORCED, "rollback": ROLLED_BACK}


def decision_name(action: str | None) -> str:
    """``action`` (a history entry's, or a ``redflow.gate.decision`` tag) under today's name; older histories
    said ``promote``, ``reject``, ``force-promote`` and ``rollback``. Anything else (``candidate``, ``set``) as is."""
    return _LEGACY.get(action or "", action or "")


def user_name() -> str:
    """The login name of this process's user (``uid<n>`` where there is no passwd entry, as in some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def person() -> str:
    """Who is recorded as ``by`` in the alias history: ``$REDFLOW_USER`` when set (a CI job or a Prefect worker
    acting for someone), else ``user@host``. Never a process id: the lock keeps those (``registry.locks``)."""
    return os.environ.get("REDFLOW_USER", "").strip() or f"{user_name()}@{socket.gethostname()}"
