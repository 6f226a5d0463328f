"""Prefect's temporary servers that outlive the redflow command that started them, and how the next one stops them.

Commands that need Prefect without a configured API (retrain, demo) start a temporary server, which Prefect stops
at exit (``atexit``). A SIGKILL (the OOM killer, ``kill -9``, a lost pod) skips that: the server then runs on,
re-parented to init, night after night. ``record_ephemeral_server()`` records the server a command started beside
the command's own pid (under ``$REDFLOW_STATE_DIR``, default ``<temp>/redflow-servers``);
``reap_orphaned_servers()``, called by the next command that starts one, stops every recorded server whose owner
is gone, after checking its command line so that a reused pid is never taken for one.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

try:
    from prefect.server.api.server import SubprocessASGIServer
except ImportError:  # pragma: no cover - a Prefect without it starts no subprocess server: nothing to record
    SubprocessASGIServer = None

log = logging.getLogger(__name__)
SERVER_APP = "prefect.server.api.server:create_app"  # on the command line of Prefect's temporary server


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
    if SubprocessASGIServer is None:  # pragma: no cover - a Prefect without it
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
