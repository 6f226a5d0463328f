"""Small helpers every layer shares (red is the lowest one: tasks, registry and flows all import it).

Each exists once so that the names it makes stay the same wherever they are made: a study name, an
attempt folder or a lock file written by one module is found by another.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

import torch


def slug(text: str, *, keep: str = "A-Za-z0-9_.-", fill: str = "-", strip: str = "-.", default: str = "run",
         limit: int | None = None, lower: bool = False) -> str:
    """``text`` safe for a file, study or artifact name: runs of characters outside ``keep`` (a regex class
    body) become ``fill``, ``strip`` is trimmed from both ends, empty gives ``default``, cut at ``limit``."""
    text = text.lower() if lower else text
    out = re.sub(f"[^{keep}]+", fill, text).strip(strip) or default
    return out[:limit] if limit is not None else out


def utc_now(timespec: str = "milliseconds") -> str:
    """The current UTC time in ISO 8601 (``2026-12-07T14:03:11.123+00:00``): what history entries record."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: where a model is put when the caller does not say."""
    return "cuda" if torch.cuda.is_available() else "cpu"
