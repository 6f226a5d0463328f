"""Progress bars and transformers' model-load reports reach a terminal only: a Prefect worker's log (stderr a
pipe) gets neither tqdm's carriage-return bars nor ``LOAD REPORT ... Consider training on your downstream task``.
One real subprocess, two tiny real trainings of a 4-label task on a 2-label checkpoint (a fresh head: the load
report's case): the first with ``REDFLOW_PROGRESS=1`` (bars and report on, so the check can fail), the second as
a worker runs it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.training.progress import DropLoadReport, progress_wanted

REPO = Path(__file__).resolve().parents[1]
MARK = "=== as a worker ==="

SCRIPT = """
import os, sys
from tasks.data import DataSpec, prepare_data
from tasks.training import TrainConfig, train
base, root = sys.argv[1], sys.argv[2]
data = prepare_data(DataSpec(name="topic", source="synthetic", task="topic", path=root + "/data",
                             synthetic={"n_train": 16, "n_dev": 8}), seed=0, cache_dir=root + "/cache")
config = TrainConfig(model=base, epochs=1, batch_size=8, max_length=16, logging_steps=1)
os.environ["REDFLOW_PROGRESS"] = "1"
train(data, config, root + "/forced")
del os.environ["REDFLOW_PROGRESS"]
print("%s", file=sys.stderr, flush=True)
train(data, config, root + "/worker")
""" % MARK


def test_a_training_whose_stderr_is_not_a_terminal_logs_no_bars_and_no_load_report(tmp_path, tiny_checkpoints):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a CLI test earlier in this process (quiet_libraries) leaves the libraries' own switches in os.environ
    for key in ("REDFLOW_PROGRESS", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, tiny_checkpoints["bert"], str(tmp_path)], env=env,
                          capture_output=True, timeout=300)  # bytes: text mode would turn \r into \n
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr[-3000:]
    forced, worker = stderr.split(MARK)
    assert "\r" in forced and "LOAD REPORT" in forced  # what a worker's log was full of
    for text in (worker, stdout):
        assert "\r" not in text and "it/s" not in text, text[-2000:]
        assert "LOAD REPORT" not in text and "Consider training" not in text and "MISMATCH" not in text, text[-2000:]


def test_progress_is_wanted_on_a_terminal_or_when_asked(monkeypatch):
    monkeypatch.setenv("REDFLOW_PROGRESS", "0")
    assert not progress_wanted()
    monkeypatch.setenv("REDFLOW_PROGRESS", "1")
    assert progress_wanted()
    monkeypatch.delenv("REDFLOW_PROGRESS")
    assert progress_wanted() == sys.stderr.isatty()
    import logging

    keep = logging.LogRecord("transformers.modeling_utils", logging.WARNING, "x", 1, "Some weights were resized", (),
                             None)
    drop = logging.LogRecord("transformers.modeling_utils", logging.WARNING, "x", 1,
                             "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: /m\n...", (), None)
    assert DropLoadReport().filter(keep) and not DropLoadReport().filter(drop)
