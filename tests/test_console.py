"""What a person sees: a one-task retrain fits a screen at 80 columns, plain lines off a terminal, details in a log."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import synthetic_task, write_retrain_config
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _retrain(*args: str):
    return CliRunner().invoke(app, ["retrain", *args], terminal_width=80)


def test_a_one_task_retrain_prints_one_screen_and_logs_the_rest(tmp_path, tiny_checkpoints, monkeypatch):
    long_name = "sentiment-of-product-reviews"
    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                               [synthetic_task(long_name, "sentiment", tmp_path)])
    monkeypatch.chdir(tmp_path)  # the runs lie under the working directory: the paths printed are relative
    out = _retrain(str(cfg))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) <= 40, out.output
    assert "\x1b[" not in out.output  # not a terminal: plain lines, no cursor movement
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("retrain summary")):][:6]
    assert all(len(line.rstrip()) <= 80 for line in table), out.output  # paths and commands may run on: copy-paste
    assert long_name in out.output and "…" not in out.output  # names fold, never cut
    for noise in ("LOAD REPORT", "Consider training", "CloudPickle", "train_runtime", "Traceback"):
        assert noise not in out.output
    assert re.search(rf"{long_name}: train", out.output) and "promoted" in out.output
    steps = lines[lines.index("Next"):]
    assert all(len(line.rstrip()) <= 80 for line in steps), steps  # relative paths: nothing wraps at 80 columns
    assert "sqlite:///runs/mlflow.db" in out.output and "--config c.yaml" in out.output
    assert str(tmp_path) not in "\n".join(steps) and "full log: runs/" in out.output
    log = Path(re.search(r"full log: (\S+)", out.output).group(1))
    text = log.read_text() if log.is_absolute() else (Path.cwd() / log).read_text()
    assert "Finished in state Completed" in text  # Prefect's run lines went to the file
    assert f"{long_name}: trained" in text  # and redflow's own


def test_a_failed_task_is_in_the_summary_and_the_exit_code_says_no(tmp_path, tiny_checkpoints):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,0\nok,1\n")
    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [
        synthetic_task("good", "sentiment", tmp_path),
        {"name": "broken", "data": {"source": "csv", "path": str(bad), "text_columns": ["sentence"]}}])
    out = _retrain(str(cfg))
    assert out.exit_code == 1, out.output
    table = out.output[out.output.index("retrain summary"):]
    assert re.search(r"broken\s+failed", table) and re.search(r"good\s+trained", table)
    assert "missing column(s) ['sentence']" in out.output  # the brackets survive
    assert "Traceback" not in out.output
    assert "no: 1 of 2 tasks failed (broken); the other 1 completed." in out.output
    assert "Next" not in out.output.splitlines()  # what to look at next after a failure is the failure


def test_ctrl_c_stops_training_at_the_next_step_and_leaves_it_resumable(tmp_path, tiny_checkpoints):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                               [synthetic_task("sentiment", "sentiment", tmp_path, n_train=64)],
                               defaults={"method": "red", "epochs": 400, "batch_size": 16, "max_length": 32,
                                         "learning_rate": 1e-3})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PREFECT_API_URL", None)  # its own temporary server, like a user's shell
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "retrain", str(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    attempts = tmp_path / "runs" / "test" / "sentiment" / "attempts"
    deadline = time.time() + 240
    while not list(attempts.glob("*/checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    (folder,) = [p for p in attempts.iterdir() if p.is_dir()]
    state = json.loads((folder / "attempt.json").read_text())
    assert state["status"] == "training" and not (folder / "result.json").exists()  # stopped mid-way, resumable
