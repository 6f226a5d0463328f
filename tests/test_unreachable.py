"""Fail fast: a tracking server or a Prefect API that nothing answers at is exit 2 within seconds, with the fix.

Real dead ports (a socket bound, closed, its port reused: nothing listens there), the real CLI; the bound is the
issue's (20 s: MLflow's own client retries for about four minutes), asserted on wall time with the probe's
timeouts at their defaults. A server that accepts the connection but answers slowly is not unreachable.
"""
from __future__ import annotations

import socket
import time

import pytest
from conftest import synthetic_task, write_retrain_config
from test_registry import fresh_runs_dir
from typer.testing import CliRunner

from flows.cli import app
from registry.reachability import connect_error

BOUND_S = 20.0  # issue 27: an unreachable server is an error within 20 s


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str):
    start = time.perf_counter()
    out = CliRunner().invoke(app, list(args), terminal_width=200)
    return out, time.perf_counter() - start


@pytest.fixture(autouse=True)
def _no_configured_servers(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "REDFLOW_TRACKING_URI", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)


def test_registry_commands_and_retrain_with_a_dead_tracking_server_exit_2_naming_it(tmp_path, tiny_checkpoints):
    uri = f"http://127.0.0.1:{_dead_port()}"
    config = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                  [synthetic_task("a", "sentiment", tmp_path)], fresh_store=True)
    for command in (["versions", "red-x", "--tracking-uri", uri], ["history", "red-x", "--tracking-uri", uri],
                    ["rollback", "red-x", "--tracking-uri", uri], ["retrain", str(config), "--tracking-uri", uri]):
        out, seconds = _cli(*command)
        assert out.exit_code == 2, (command, out.output)
        assert f"no MLflow tracking server answers at {uri}" in out.output, out.output
        assert "Fix: start the server" in out.output and "MLFLOW_TRACKING_URI" in out.output
        assert "internal error" not in out.output and seconds < BOUND_S, (command, seconds)
    assert not (tmp_path / "runs").exists()  # the retrain stopped before it started


def test_a_dead_prefect_api_is_exit_2_with_the_fix(tmp_path, tiny_checkpoints, monkeypatch):
    runs = fresh_runs_dir(tmp_path / "runs")
    api = f"http://127.0.0.1:{_dead_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)
    config = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], runs,
                                  [synthetic_task("a", "sentiment", tmp_path)])
    for command in (["rollback", "red-x", "--tracking-uri", f"sqlite:///{runs}/mlflow.db"], ["retrain", str(config)]):
        out, seconds = _cli(*command)
        assert out.exit_code == 2, (command, out.output)
        assert f"no Prefect API answers at {api}" in out.output and "prefect server start" in out.output
        assert "PREFECT_API_URL" in out.output and seconds < BOUND_S, (command, seconds)


def test_a_server_that_accepts_but_answers_slowly_is_reachable_and_a_closed_port_is_not():
    with socket.socket() as slow:  # the kernel accepts connections into the backlog; nobody ever answers
        slow.bind(("127.0.0.1", 0))
        slow.listen(4)
        assert connect_error(f"http://127.0.0.1:{slow.getsockname()[1]}/health", connect_timeout_s=1) is None
    reason = connect_error(f"http://127.0.0.1:{_dead_port()}/health")
    assert reason is not None and "refused" in reason.lower()
