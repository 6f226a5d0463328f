"""Whether a command talks to a Prefect API, and patience with Prefect's temporary server.

* ``prefect_api_url()``: the configured Prefect API (``PREFECT_API_URL`` from the environment, a
  ``.env``/``prefect.toml`` file or the active Prefect profile), or None. Registry commands
  (promote, rollback, evaluate) run as plain functions when it is None - no temporary server,
  about two seconds - and as flow runs (visible in the Prefect UI) when it is set.
* ``require_prefect_api()``: the configured API as ``prefect_api_url()``, after a few seconds' probe that it
  answers: a dead address raises ``PrefectApiUnreachable`` (exit 2, naming the URL and the fix) instead of
  Prefect's client retrying for minutes and failing as an internal error.
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

from registry.reachability import Unreachable, connect_error

EPHEMERAL_STARTUP_TIMEOUT_S = 180


class PrefectApiUnreachable(Unreachable):
    """``PREFECT_API_URL`` (or the profile's API) names a server that does not answer (the CLI exits 2)."""


def prefect_api_url() -> str | None:
    """The Prefect API URL this process would use, or None (Prefect would start a temporary server)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    return get_current_settings().api.url or None


def require_prefect_api() -> str | None:
    """``prefect_api_url()``, probed: raises ``PrefectApiUnreachable`` within seconds when nothing answers there.

    None (no API configured: Prefect starts a temporary server, or the command runs as a plain function) is
    not probed. The probe asks the API's ``/health`` and counts only a failed connection
    (``registry/reachability.py``)."""
    url = prefect_api_url()
    if url is None:
        return None
    reason = connect_error(url.rstrip("/") + "/health")
    if reason is not None:
        raise PrefectApiUnreachable(
            f"no Prefect API answers at {url} (PREFECT_API_URL, from the environment or the Prefect profile): "
            f"{reason}. Fix: start it (`prefect server start`), or set PREFECT_API_URL to a running server "
            "(`prefect config view` shows where it is set), or unset it (redflow then starts a temporary server "
            "where it needs one)")
    return url


@contextmanager
def ephemeral_server_grace(seconds: int = EPHEMERAL_STARTUP_TIMEOUT_S) -> Iterator[int]:
    """Within this block Prefect waits up to ``seconds`` for its temporary server unless the user chose a
    timeout; yields the timeout in effect."""
    with temporary_settings(set_defaults={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: seconds}) as settings:
        yield settings.server.ephemeral.startup_timeout_seconds
