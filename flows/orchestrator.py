"""Whether a command talks to a Prefect API, and patience with Prefect's temporary server.

* ``prefect_api_url()``: the configured Prefect API (``PREFECT_API_URL`` from the environment, a
  ``.env``/``prefect.toml`` file or the active Prefect profile), or None. Registry commands
  (promote, rollback, evaluate) run as plain functions when it is None - no temporary server,
  about two seconds - and as flow runs (visible in the Prefect UI) when it is set.
* ``ephemeral_server_grace()``: commands that need Prefect without a configured API (retrain,
  demo) start a temporary server; Prefect waits ``server.ephemeral.startup_timeout_seconds``
  (default 20 s) for it, which a loaded machine exceeds. Inside this context that *default* is
  ``EPHEMERAL_STARTUP_TIMEOUT_S``; a value the user set (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``,
  a profile, ``prefect.toml``) still wins (``temporary_settings(set_defaults=...)`` only replaces unset values).

What a command does about a temporary server that outlives it (a SIGKILL skips Prefect's own stop) is in
``flows/ephemeral_servers.py``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from prefect.settings import (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings,
                              temporary_settings)

EPHEMERAL_STARTUP_TIMEOUT_S = 180


def prefect_api_url() -> str | None:
    """The Prefect API URL this process would use, or None (Prefect would start a temporary server)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    return get_current_settings().api.url or None


@contextmanager
def ephemeral_server_grace(seconds: int = EPHEMERAL_STARTUP_TIMEOUT_S) -> Iterator[int]:
    """Within this block Prefect waits up to ``seconds`` for its temporary server unless the user chose a
    timeout; yields the timeout in effect."""
    with temporary_settings(set_defaults={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: seconds}) as settings:
        yield settings.server.ephemeral.startup_timeout_seconds
