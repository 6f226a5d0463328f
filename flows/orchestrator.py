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
* ``record_ephemeral_server()`` / ``reap_orphaned_servers()``: Prefect stops its temporary server at exit
  (``atexit``), which a SIGKILL (the OOM killer, ``kill -9``, a lost pod) skips: the server then runs on,
  re-parented to init, night after night. Each command records the server it started beside its own pid;
  the next command that starts one stops every recorded server whose owner is gone.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
SERVER_APP = "prefect.server.api.server:create_app"  # on the command line of Prefect's temporary server

EPHEMERAL_STARTUP_TIMEOUT_S = 180


def prefect_api_url() -> str | None:
    """The Prefect API URL this process would use, or None (Prefect would start a temporary server)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


@contextmanager
def ephemeral_server_grace(seconds: int = EPHEMERAL_STARTUP_TIMEOUT_S) -> Iterator[int]:
    """Within this block Prefect waits up to ``seconds`` for its temporary server unless the user chose a
    timeout; yields the timeout in effect."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    with temporary_settings(set_defaults={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: seconds}) as settings:
        yield settings.server.ephemeral.startup_timeout_seconds


def _records() -> Path:
    return Path(os.environ.get("REDFLOW_STATE_DIR") or Path(tempfile.gettempdir()) / "redflow-servers")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_prefect_server(pid: int) -> bool:
    """Whether ``pid`` runs Prefect's temporary server (its command line; Linux /proc), so a reused pid is never
    taken for one."""
    try:
        return SERVER_APP in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def record_ephemeral_server() -> int | None:
    """Record the temporary Prefect server this process started (its pid and ours), if it started one."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover - a Prefect without it
        return None
    for server in list(SubprocessASGIServer._instances.values()):
        process = getattr(server, "server_process", None)
        if process is None or process.poll() is not None:
            continue
        folder = _records()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{process.pid}.json").write_text(json.dumps({"server": process.pid, "owner": os.getpid(),
                                                                    "at": time.time()}))
        except OSError as exc:  # a record is a safety net, never a failure
            log.debug("could not record the temporary Prefect server: %s", exc)
        return process.pid
    return None


def reap_orphaned_servers(grace: float = 5.0) -> list[int]:
    """Stop the recorded temporary Prefect servers whose owner process is gone (SIGTERM, then SIGKILL after
    ``grace`` seconds); forget records whose server is gone too. Returns the pids stopped."""
    stopped = []
    folder = _records()
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(record.read_text())
            server, owner = int(entry["server"]), int(entry["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if _alive(owner):
            continue
        if _alive(server) and _is_prefect_server(server):
            log.warning("stopping the temporary Prefect server (pid %d) left running by redflow process %d, which "
                        "was killed before it could stop it", server, owner)
            os.kill(server, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(server) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(server):
                os.kill(server, signal.SIGKILL)
            stopped.append(server)
        record.unlink(missing_ok=True)
    return stopped
