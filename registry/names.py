"""Names redflow writes into the MLflow registry that its read-only views need without the code that writes them.

``registry/views.py`` (what ``redflow versions`` and ``redflow history`` run) reads these; importing them from
here rather than from ``aliases`` or ``locks`` keeps those commands off the gate's and the locks' imports (torch,
scipy, datasets), so a read costs about what a bare MLflow client script costs (``bench/cli_overhead.py``).
"""
from __future__ import annotations

STATUS_TAG = "redflow.status"      # a version's lifecycle status tag; absent or READY: usable
READY = "ready"
LOCK_MODEL_PREFIX = "redflow-lock."  # registered models that hold the promotion locks, not tasks
