"""Start and stop local MLflow servers (tests, demos, flows that want a UI).

* ``start_tracking_server(runs_dir)`` - ``mlflow server`` on a SQLite store with proxied
  artifacts in ``<runs_dir>/mlartifacts``; returns when ``/health`` answers.
* ``start_model_server("models:/red-sst2@production", tracking_uri=...)`` - ``mlflow models
  serve --env-manager local``; returns when ``/ping`` answers.

Both return a ``ServerProcess`` (also a context manager) whose ``stop()`` terminates the
server's whole process group (uvicorn workers included) and nothing else. A server that exits
or does not answer within ``timeout`` raises ``ServerStartError`` with the command, the reason
and the tail of its log.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ..store import ARTIFACTS_DIRNAME, DB_FILENAME, normalize_uri, sqlite_path


class ServerStartError(RuntimeError):
    """A server process exited early or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:]


@dataclass
class ServerProcess:
    """A running server started by this module."""

    process: subprocess.Popen
    url: str
    host: str
    port: int
    log_path: Path
    command: list[str]
    health_path: str = "/health"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self, limit: int = 4000) -> str:
        return _tail(self.log_path, limit)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the server's process group, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # its own session: pgid == pid
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=timeout)
        else:  # the leader exited; reap stragglers of its group
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_healthy(server: ServerProcess, timeout: float) -> None:
    """Poll ``server.url + health_path`` until it answers 200; raise ``ServerStartError`` (and stop the
    server) if the process exits or ``timeout`` passes."""
    url = server.url + server.health_path
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()
            raise ServerStartError(
                f"{' '.join(server.command)} exited with code {server.process.returncode} before {url} answered.\n"
                f"--- log {server.log_path} (tail) ---\n{server.log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.25)
    server.stop()
    raise ServerStartError(
        f"{' '.join(server.command)} did not answer {url} within {timeout:.0f}s (last: {last}); it was stopped.\n"
        f"--- log {server.log_path} (tail) ---\n{server.log()}")


def start_server_process(command: list[str], *, host: str, port: int, health_path: str = "/health",
                         log_path: str | Path | None = None, env: dict[str, str] | None = None,
                         timeout: float = 120.0, cwd: str | Path | None = None) -> ServerProcess:
    """Start ``command`` (an HTTP server listening on ``host:port``) in its own session, logging to
    ``log_path``, and wait until ``health_path`` answers 200 (see ``wait_until_healthy``)."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="redflow-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", **(env or {})}
    # MLflow's model server execs `uvicorn`/`gunicorn` by name: find them beside this interpreter even when
    # the virtual environment is not activated.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in full_env.get("PATH", "").split(os.pathsep):
        full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=full_env, cwd=cwd, start_new_session=True)
    server = ServerProcess(process=process, url=f"http://{host}:{port}", host=host, port=port, log_path=log_path,
                           command=command, health_path=health_path)
    try:
        wait_until_healthy(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_tracking_server(
    runs_dir: str | Path | None = None,
    *,
    backend_uri: str | None = None,
    artifacts_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    timeout: float = 120.0,
    log_path: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """``mlflow server`` on ``backend_uri`` (default ``sqlite:///<runs_dir>/mlflow.db``), serving
    artifacts from ``artifacts_dir`` (default ``<db dir>/mlartifacts``). Use ``server.url`` as the
    tracking URI (``setup_tracking(server.url)``)."""
    if backend_uri is None:
        if runs_dir is None:
            raise ValueError("pass runs_dir or backend_uri")
        backend_uri = f"sqlite:///{Path(runs_dir).resolve() / DB_FILENAME}"
    backend_uri = normalize_uri(backend_uri)
    db = sqlite_path(backend_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    if artifacts_dir is None:
        base = db.parent if db is not None else Path(runs_dir or ".")
        artifacts_dir = base / ARTIFACTS_DIRNAME
    artifacts_dir = Path(artifacts_dir).resolve()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    if log_path is None and db is not None:
        log_path = db.parent / f"mlflow-server-{port}.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", str(artifacts_dir), "--host", host, "--port", str(port),
               "--workers", str(workers)]
    server = start_server_process(command, host=host, port=port, health_path="/health", log_path=log_path, env=env,
                                  timeout=timeout)
    server.extra.update(backend_uri=backend_uri, artifacts_dir=str(artifacts_dir))
    return server


def start_model_server(
    model_uri: str,
    *,
    tracking_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    timeout: float = 180.0,
    log_path: str | Path | None = None,
    env: dict[str, str] | None = None,
    env_manager: str = "local",
) -> ServerProcess:
    """``mlflow models serve -m <model_uri> --env-manager local`` (e.g. ``models:/red-sst2@production``).

    ``tracking_uri`` (default: the current one) tells the server where ``models:/`` URIs live.
    Predictions: ``POST server.url + "/invocations"`` with ``{"dataframe_split": ...}`` or
    ``{"dataframe_records": [...]}``; answers ``{"predictions": [...]}``.
    """
    port = port or free_port(host)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", env_manager,
               "--host", host, "--port", str(port), "--workers", str(workers)]
    server_env = {"MLFLOW_TRACKING_URI": tracking_uri or mlflow.get_tracking_uri(),
                  "MLFLOW_REGISTRY_URI": tracking_uri or mlflow.get_registry_uri(), **(env or {})}
    server = start_server_process(command, host=host, port=port, health_path="/ping", log_path=log_path,
                                  env=server_env, timeout=timeout)
    server.extra.update(model_uri=model_uri)
    return server


def invoke(server: ServerProcess, records: list[dict[str, Any]] | None = None, *, frame: pd.DataFrame | None = None,
           params: dict[str, Any] | None = None, timeout: float = 120.0) -> Any:
    """POST to ``/invocations`` (``dataframe_split`` for a DataFrame, else ``dataframe_records``) and
    return the decoded ``predictions``."""
    if frame is not None:
        payload: dict[str, Any] = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    else:
        payload = {"dataframe_records": records or []}
    if params:
        payload["params"] = params
    request = urllib.request.Request(server.url + "/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"/invocations answered HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
    return body.get("predictions", body)
