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


def test_a_one_task_retrain_prints_one_screen_and_logs_the_rest(tmp_path, tiny_checkpoints):
    long_name = "sentiment-of-product-reviews"
    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                               [synthetic_task(long_name, "sentiment", tmp_path)])
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
