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
from conftest import synthetic_task, write_retrain_config

REPO = Path(__file__).resolve().parents[1]


def _long_training(tmp_path: Path, checkpoint: str) -> Path:
    """A one-task config whose training (400 epochs of 4 steps) is still running whenever it is stopped."""
    return write_retrain_config(tmp_path / "c.yaml", checkpoint, tmp_path / "runs",
                                [synthetic_task("sentiment", "sentiment", tmp_path, n_train=64)],
                                defaults={"method": "red", "epochs": 400, "batch_size": 16, "max_length": 32,
                                          "learning_rate": 1e-3})


def test_sigterm_stops_training_at_the_next_step_stops_every_child_and_leaves_it_resumable(tmp_path,
                                                                                          tiny_checkpoints):
    from tasks.lifecycle.attempts import open_attempt
    from tasks.lifecycle.identity import Identity

    cfg = _long_training(tmp_path, tiny_checkpoints["bert"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # its own temporary Prefect server: a child process it must stop
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "retrain", str(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    attempts = tmp_path / "runs" / "test" / "sentiment" / "attempts"
    deadline = time.time() + 300
    while not list(attempts.glob("*/checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the temporary Prefect server runs as a child process"
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 143, out[-3000:]
        assert "terminated" in out and "Traceback" not in out
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        for child in children:
            if child.is_running():
                child.kill()

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

