"""A real ``redflow serve`` to fuzz: two RED tasks on MiniLM (``sentiment`` reads ``sentence``, ``paraphrase`` reads
``sentence1`` + ``sentence2``) registered in a fresh SQLite store and served by the CLI in its own process.

Shared by ``tests/test_fuzz_surfaces.py`` (one server per module) and ``bench/fuzz.py --surface server``.
"""
from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from bench.task_edits import TaskSpec, register_task, task_edits
from registry.aliases import move_alias
from registry.serving.server import ServerProcess, free_port, start_server_process
from registry.store import setup_tracking

REPO = Path(__file__).resolve().parents[1]
SPECS = (TaskSpec("sentiment", ("negative", "positive"), ("sentence",), 32),
         TaskSpec("paraphrase", ("not_equivalent", "equivalent"), ("sentence1", "sentence2"), 32))
SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
              "TRANSFORMERS_VERBOSITY": "error"}


def register_tasks(base_path: str, root: Path) -> str:
    """Both tasks registered and in production at v1 in ``root/runs``; returns the tracking URI."""
    uri = setup_tracking(None, root / "runs")
    MlflowClient().search_experiments()
    for spec, path in zip(SPECS, task_edits(base_path, root / "edits", list(SPECS), seeds=[1, 2])):
        version = register_task(path, spec, f"red-{spec.name}", validate=False)
        move_alias(f"red-{spec.name}", "production", version)
    return uri


@contextmanager
def fuzz_server(base_path: str, root: Path, timeout: float = 240.0) -> Iterator[ServerProcess]:
    """``redflow serve --models 'red-*'`` on a free port over the tasks of :func:`register_tasks`; stopped on exit."""
    uri = register_tasks(base_path, root)
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "serve", "--models", "red-*", "--poll-interval", "0",
               "--tracking-uri", uri, "--port", str(port)]
    with start_server_process(command, host="127.0.0.1", port=port, health_path="/ping", env=SERVER_ENV,
                              timeout=timeout, log_path=root / "redflow-serve.log", cwd=REPO) as server:
        yield server


def post(server: ServerProcess, path: str, body: bytes | None, headers: dict[str, str] | None = None,
         method: str = "POST", timeout: float = 60.0) -> tuple[int, str, str]:
    """``(status, content type, body text)`` of one request, sent with exactly ``headers`` (no Content-Type
    unless given: urllib would add a form type)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read().decode(errors="replace")
    finally:
        connection.close()
