"""Cancellation: SIGTERM (``kill``, systemd, Kubernetes, and what a Prefect worker sends to cancel a flow run) stops
a retrain like Ctrl-C does: training stops at its next optimizer step, the attempt stays resumable, nothing the
command started is left running, and the command exits 143. A real ``redflow retrain`` process with its own
temporary Prefect server, a tiny real checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import synthetic_task, write_retrain_config

REPO = Path(__file__).resolve().parents[1]


def _long_training(tmp_path: Path, checkpoint: str, **task) -> Path:
    """A one-task config whose training (400 epochs of 4 steps) is still running whenever it is stopped."""
    return write_retrain_config(tmp_path / "c.yaml", checkpoint, tmp_path / "runs",
                                [{**synthetic_task("sentiment", "sentiment", tmp_path, n_train=64), **task}],
                                defaults={"method": "red", "epochs": 400, "batch_size": 16, "max_length": 32,
                                          "learning_rate": 1e-3})


def _terminate_when_trained_a_step(tmp_path: Path, cfg: Path, attempts: str) -> tuple[int, str]:
    """Run ``redflow retrain cfg``, send it SIGTERM once a training under ``tmp_path/attempts`` (a glob) saved a
    checkpoint; its exit code and output, after checking that every process it started has ended."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # its own temporary Prefect server: a child process it must stop
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "retrain", str(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob(f"{attempts}/*/checkpoints/checkpoint-*/trainer_state.json")):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint under {attempts}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the temporary Prefect server runs as a child process"
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        for child in children:
            if child.is_running():
                child.kill()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def test_the_sigterm_message_says_a_training_stopped_only_when_one_was_running():
    """A SIGTERM before any training (the temporary Prefect server starting, data being prepared) claims no
    resumable training; one that found a training in its slot says it stopped at its last step (fast: no signal)."""
    from flows.cli.common import terminated_message
    from tasks.training.control import clear_stop, request_stop, stopped_a_training, trainer_slot

    try:
        clear_stop()
        request_stop()  # nothing trains in this process
        assert not stopped_a_training()
        assert terminated_message(stopped_a_training()) == " (SIGTERM) while no training was running; nothing to resume"
        clear_stop()
        with trainer_slot():
            request_stop()
        assert stopped_a_training()  # still known once the stopped training has left its slot
        assert terminated_message(stopped_a_training()) == " (SIGTERM): training stopped at its last step, resumable"
        clear_stop()
        assert not stopped_a_training()
        assert "worker processes" in terminated_message(None)  # Dask/Ray: trainings this process cannot see
    finally:
        clear_stop()


def test_a_stop_request_stops_a_training_between_the_micro_batches_of_one_optimizer_step(caplog):
    """With grad_accum > 1 an optimizer step is several micro-batches: the stop does not wait for all of them."""
    from types import SimpleNamespace

    from tasks.training.control import clear_stop, request_stop
    from tasks.training.errors import TrainingInterrupted
    from tasks.training.guards import StopOnRequest

    state = SimpleNamespace(global_step=3, max_steps=57)
    StopOnRequest().on_substep_end(None, state, None)  # no request: goes on
    try:
        request_stop()
        with pytest.raises(TrainingInterrupted, match="stopped on request at step 3 of 57"):
            StopOnRequest().on_substep_end(None, state, None)
    finally:
        clear_stop()
    assert "training stopped on request at step 3 of 57" in caplog.text  # a worker's log says where it stopped


def test_sigterm_stops_training_at_the_next_step_stops_every_child_and_leaves_it_resumable(tmp_path,
                                                                                          tiny_checkpoints):
    from tasks.lifecycle.attempts import open_attempt
    from tasks.lifecycle.identity import Identity

    cfg = _long_training(tmp_path, tiny_checkpoints["bert"])
    code, out = _terminate_when_trained_a_step(tmp_path, cfg, "runs/test/sentiment/attempts")
    assert code == 143, out[-3000:]
    assert "terminated" in out and "Traceback" not in out

    attempts = tmp_path / "runs" / "test" / "sentiment" / "attempts"
    (folder,) = [p for p in attempts.iterdir() if p.is_dir()]
    state = json.loads((folder / "attempt.json").read_text())
    # stopped mid-way (400 epochs were asked for), not run to the end while the process waited for it
    assert state["status"] == "training" and not (folder / "result.json").exists()

    # the next run of the same inputs resumes this attempt from its last checkpoint
    attempt = open_attempt(folder.parent.parent, Identity.from_dict(state["identity"]), "next-night")
    try:
        assert attempt.folder == folder and attempt.resume_from is not None
        assert Path(attempt.resume_from).parent == folder / "checkpoints"
    finally:
        attempt.close()


def test_sigterm_during_a_tuning_study_stops_the_running_trial_at_the_next_step(tmp_path, tiny_checkpoints):
    """The tune subflow owns its own task runner (the trials): a SIGTERM reaches its trials too, instead of the
    subflow waiting for them to end."""
    tune = {"trials": 2, "parallel": 1, "pruner": "none", "learning_rate": [1e-4, 1e-2], "start_at_config": False}
    cfg = _long_training(tmp_path, tiny_checkpoints["bert"], tune=tune)
    code, out = _terminate_when_trained_a_step(tmp_path, cfg, "runs/test/sentiment/tune/*/attempts")
    assert code == 143, out[-3000:]
    assert "terminated" in out and "Traceback" not in out

    # trial 0, stopped mid-way (its 400 epochs were not waited for)
    (folder,) = [p for p in tmp_path.glob("runs/test/sentiment/tune/*/attempts/*") if p.is_dir()]
    assert json.loads((folder / "attempt.json").read_text())["status"] == "training"
    assert not (folder / "result.json").exists()


def test_a_sigkilled_retrains_temporary_prefect_server_is_stopped_by_the_next_command(tmp_path, tiny_checkpoints,
                                                                                     monkeypatch):
    """SIGKILL skips Prefect's atexit stop of its temporary server: the next redflow command stops it."""
    from flows.ephemeral_servers import SERVER_APP, reap_orphaned_servers

    monkeypatch.setenv("REDFLOW_STATE_DIR", str(tmp_path / "state"))
    cfg = _long_training(tmp_path, tiny_checkpoints["bert"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "retrain", str(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("runs/test/sentiment/attempts/*/checkpoints/checkpoint-*")):
        assert proc.poll() is None and time.time() < deadline, "the retrain never trained"
        time.sleep(0.2)
    (server,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if SERVER_APP in " ".join(p.cmdline())]
    proc.kill()  # the OOM killer, kill -9
    proc.wait()
    try:
        time.sleep(1)
        assert server.is_running(), "the orphan this test is about"
        assert reap_orphaned_servers() == [server.pid]  # what the next `redflow retrain` does first
        assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE
        assert not list((tmp_path / "state").glob("*.json"))
    finally:
        if server.is_running():
            server.kill()
