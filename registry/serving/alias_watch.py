"""A cheap answer to "did any alias move?" for a server that polls a local SQLite registry.

A multi-task server polls the registry every ``poll_interval`` seconds. Listing every registered model through
MLflow (``search_registered_models``) loads each model's latest versions and tags: at a hundred models that is
0.1-0.4 s of Python per poll on the server's own interpreter, beside the requests it answers (measured with
``bench/serving.py --tasks 128``). What decides what is served is far smaller: the alias rows, which models exist,
and the two model tags that make a model a redflow task model. ``registry_state(uri)`` reads exactly that with
three indexed SQL queries on a read-only connection (about a millisecond at 128 models), so a poll that finds
the same state as the last full listing can stop there; any change, and a full listing at least every
``FULL_LISTING_EVERY_S``, goes through MLflow as before.

Only ``sqlite:///`` registries are read this way (the embedded default). Other registries (a tracking server,
whose own process does the listing; a database server) return ``None``: every poll lists through MLflow. A
schema this code does not know (a future MLflow) also returns ``None`` rather than guessing.
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from ..store import sqlite_path
from .served_tasks import BUNDLE_KIND_TAG

FULL_LISTING_EVERY_S = 60.0  # a full MLflow listing at least this often, whatever the SQL summary says
WATCHED_TAGS = ("redflow.managed", BUNDLE_KIND_TAG)  # the model tags that make a model a served task model


def registry_state(registry_uri: str | None) -> tuple[Any, ...] | None:
    """What a poll needs to know has not changed: every alias row, the number of registered models and the
    task-model tags, read from the SQLite file of ``registry_uri``; ``None`` where it cannot be read that way."""
    path = sqlite_path(registry_uri or "")
    if path is None or not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            aliases = db.execute("SELECT * FROM registered_model_aliases ORDER BY name, alias").fetchall()
            (models,) = db.execute("SELECT count(*) FROM registered_models").fetchone()
            marks = "?" * len(WATCHED_TAGS)
            tags = db.execute(f"SELECT name, key, value FROM registered_model_tags WHERE key IN ({','.join(marks)}) "
                              "ORDER BY name, key", WATCHED_TAGS).fetchall()
    except sqlite3.Error:
        return None  # locked for long, or a schema this code does not know: list through MLflow instead
    return tuple(aliases), models, tuple(tags)
