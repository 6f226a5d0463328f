"""Training attempts: a new run never resumes a finished one; only a crashed twin of the same inputs."""
from __future__ import annotations

import json
from pathlib import Path
import logging
import subprocess
import sys
import textwrap

import pytest

from tasks.lifecycle.attempts import complete_checkpoints, open_attempt, prune, read_state
from tasks.lifecycle.identity import Identity

SAME = Identity(data_hash="d1", config_hash="c1", base_id="b1", code_version="git:x")


def _checkpoint(folder, step, complete=True):
    from safetensors.torch import save_file
    import torch

    ckpt = folder / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(ckpt / "trainable.safetensors"))
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_each_run_gets_its_own_folder_and_a_finished_one_is_never_resumed(tmp_path):
    first = open_attempt(tmp_path, SAME, "night1")
    _checkpoint(first.folder, 4)
    result = first.folder / "result.json"
    result.write_text("{}")
    first.finish()
    assert read_state(first.folder)["status"] == "trained" and not first.checkpoints.exists() and result.exists()
    second = open_attempt(tmp_path, SAME, "night2")
    assert second.folder != first.folder and second.resume_from is None
    second.close()


def test_a_crashed_attempt_with_the_same_identity_is_resumed_in_place(tmp_path, caplog):
    crashed = open_attempt(tmp_path, SAME, "night1")
    _checkpoint(crashed.folder, 4)
    _checkpoint(crashed.folder, 8, complete=False)  # killed while writing this one
    crashed.close()  # the process died: its lock is gone, its status still says "training"
    with caplog.at_level(logging.WARNING, logger="tasks.lifecycle.attempts"):
        again = open_attempt(tmp_path, SAME, "night1-rerun")
    assert again.folder == crashed.folder and again.resume_from.endswith("checkpoint-4")
    assert "checkpoint-8" in caplog.text and "no trainer_state.json" in caplog.text
    assert any("resuming crashed attempt" in n for n in again.notes)
    assert read_state(again.folder)["resumed_by"] == "night1-rerun"
    again.close()


def test_a_crashed_attempt_of_other_inputs_is_left_alone_and_the_reason_said(tmp_path):
    crashed = open_attempt(tmp_path, SAME, "night1")
    _checkpoint(crashed.folder, 4)
    crashed.close()
    changed = Identity(data_hash="d2", config_hash="c1", base_id="b1", code_version="git:x")
    fresh = open_attempt(tmp_path, changed, "night2")
    assert fresh.folder != crashed.folder and fresh.resume_from is None
    assert any("not resuming crashed attempt" in n and "data changed (d1 -> d2)" in n for n in fresh.notes)
    fresh.close()


def test_deterministic_failures_are_not_resumed_but_transient_ones_are(tmp_path):
    nan = open_attempt(tmp_path, SAME, "a")
    _checkpoint(nan.folder, 4)
    nan.fail(RuntimeError("loss became nan"), transient=False)
    assert open_attempt(tmp_path, SAME, "b").resume_from is None
    io = open_attempt(tmp_path, SAME, "c")
    _checkpoint(io.folder, 4)
    io.fail(OSError("disk full"), transient=True)
    retry = open_attempt(tmp_path, SAME, "c")  # a retry in the same run
    assert retry.folder == io.folder and retry.resume_from.endswith("checkpoint-4")
    retry.close()


def test_the_same_inputs_are_not_trained_twice_at_once(tmp_path):
    from tasks.lifecycle.attempts import AttemptBusy

    live = open_attempt(tmp_path, SAME, "running")
    _checkpoint(live.folder, 4)
    with pytest.raises(AttemptBusy, match=r"training the same inputs in another live process"):
        open_attempt(tmp_path, SAME, "concurrent")  # `live` still holds its lock
    other = open_attempt(tmp_path, Identity(**{**SAME.to_dict(), "data_hash": "d2"}), "other-data")
    assert other.folder != live.folder and other.resume_from is None  # other inputs: trained beside it
    other.close()
    live.close()


def test_one_flow_run_executed_twice_at_once_trains_once(tmp_path):
    """A scheduler that starts the same flow run twice (same run key): the second finds its own folder locked by a
    live process and is busy, instead of training (and registering) the same inputs again in a new folder."""
    from tasks.lifecycle.attempts import AttemptBusy

    live = open_attempt(tmp_path, SAME, "flow-run-1")
    try:
        with pytest.raises(AttemptBusy):
            open_attempt(tmp_path, SAME, "flow-run-1")
        assert len([p for p in (tmp_path / "attempts").iterdir() if p.is_dir()]) == 1
    finally:
        live.close()


def test_a_killed_process_releases_its_attempt(tmp_path):
    """A real SIGKILL: the lock dies with the process, so the next run sees a crash, not a live run."""
    script = textwrap.dedent(f"""
        import os, signal
        from tasks.lifecycle.attempts import open_attempt
        from tasks.lifecycle.identity import Identity
        a = open_attempt({str(tmp_path)!r}, Identity("d1", "c1", "b1", "git:x"), "killed")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9
    folder = next(p for p in (tmp_path / "attempts").iterdir() if p.is_dir())
    _checkpoint(folder, 2)
    picked = open_attempt(tmp_path, SAME, "next")
    assert picked.folder == folder and picked.resume_from.endswith("checkpoint-2")
    picked.close()


def test_prune_keeps_the_newest_finished_attempts(tmp_path):
    import time

    for i in range(4):
        a = open_attempt(tmp_path, SAME, f"run{i}")
        a.finish()
        time.sleep(0.002)  # folder names carry the millisecond
    crashed = open_attempt(tmp_path, SAME, "crashed")
    crashed.close()
    removed = prune(tmp_path, keep=2)
    left = sorted(p.name for p in (tmp_path / "attempts").iterdir() if p.is_dir())
    assert len(removed) == 2 and len(left) == 3 and crashed.folder.name in left


def test_complete_checkpoints_skips_unreadable_tensors(tmp_path):
    good = _checkpoint(tmp_path, 2)
    bad = _checkpoint(tmp_path, 4)
    (bad / "trainable.safetensors").write_bytes(b"\x00\x01 not safetensors")
    assert complete_checkpoints(tmp_path / "checkpoints") == [good]


@pytest.mark.parametrize("field", ["data_hash", "config_hash", "base_id", "code_version"])
def test_identity_diff_names_what_changed(field):
    other = Identity(**{**SAME.to_dict(), field: "new"})
    assert len(other.diff(SAME)) == 1 and "-> new" in other.diff(SAME)[0]
    assert SAME.diff(SAME) == [] and Identity.from_dict({"data_hash": "x"}) is None


def test_a_checkpoint_whose_optimizer_state_is_cut_off_is_skipped(tmp_path, caplog):
    import torch

    crashed = open_attempt(tmp_path, SAME, "night1")
    for step in (4, 8):
        ckpt = _checkpoint(crashed.folder, step)
        torch.save({"state": {}}, ckpt / "optimizer.pt")
        torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    cut = crashed.checkpoints / "checkpoint-8" / "optimizer.pt"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])  # killed while writing it
    crashed.close()
    with caplog.at_level(logging.WARNING, logger="tasks.lifecycle.attempts"):
        again = open_attempt(tmp_path, SAME, "night2")
    assert again.resume_from.endswith("checkpoint-4") and "optimizer.pt: not a readable archive" in caplog.text
    again.close()


def test_a_checkpoint_that_failed_to_resume_is_not_tried_again(tmp_path):
    crashed = open_attempt(tmp_path, SAME, "night1")
    _checkpoint(crashed.folder, 4)
    _checkpoint(crashed.folder, 8)
    crashed.close()
    first = open_attempt(tmp_path, SAME, "night2")
    assert first.resume_from.endswith("checkpoint-8")
    first.mark_bad_checkpoint(first.resume_from, RuntimeError("cannot load"))
    first.fail(RuntimeError("cannot load"), transient=True)
    second = open_attempt(tmp_path, SAME, "night3")
    assert second.folder == first.folder and second.resume_from.endswith("checkpoint-4")
    assert any("skipping ['checkpoint-8']" in n for n in second.notes)
    second.close()


def test_the_code_identity_follows_the_method_and_trainer_sources_not_the_git_state(tmp_path):
    import shutil

    from tasks.lifecycle.identity import code_version, source_hash

    root = Path(__file__).resolve().parents[1]
    for package in ("red", "tasks"):
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_hash(tmp_path) == code_version()  # a copy (a clone, an install) is the same code
    (tmp_path / "tasks" / "NOTES.md").write_text("docs do not retrain")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "cli.py").write_text("# neither does the CLI")
    assert source_hash(tmp_path) == code_version()
    train = tmp_path / "tasks" / "training" / "config.py"
    before = train.read_text()
    after = before.replace("logging_steps: int = Field(default=10,", "logging_steps: int = Field(default=11,")
    assert after != before  # the edit below must change the trainer, or the test proves nothing
    train.write_text(after)
    assert source_hash(tmp_path) != code_version()  # an uncommitted change of the trainer is a change
