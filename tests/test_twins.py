"""Two copies of one retrain at once (a schedule firing twice, a manual run beside the nightly one).

Whatever the store's state, one copy trains and registers, the other reports the task ``busy`` and exits 0; no
process deletes or ends an MLflow run that a live process still owns. Real ``redflow retrain`` processes, a real
SQLite MLflow store, real Prefect (each process its own temporary server), a tiny real checkpoint.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_task, write_retrain_config
from test_registry import build_edits, fresh_runs_dir, make_result

REPO = Path(__file__).resolve().parents[1]


def _twins(cfg: Path, cwd: Path, *extra: str) -> list[tuple[int, str]]:
    """Start two ``redflow retrain CFG`` processes at the same moment; (exit code, output) of each."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # each its own temporary Prefect server, as two cron jobs would have
    command = [sys.executable, "-m", "flows.cli", "retrain", str(cfg), *extra]
    procs = [subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _status(output: str) -> str:
    """The task's status in the printed summary table."""
    match = re.search(r"\bsentiment\s+(trained|busy|unchanged|failed|diverged)\b", output)
    assert match, output[-4000:]
    return match.group(1)


def _night(cfg: Path, cwd: Path, *extra: str) -> None:
    """Both twins exit 0; exactly one trained, the other was busy."""
    results = _twins(cfg, cwd, *extra)
    for code, output in results:
        assert code == 0, output[-4000:]
    assert sorted(_status(out) for _, out in results) == ["busy", "trained"], [o[-3000:] for _, o in results]
    busy = next(out for _, out in results if _status(out) == "busy")
    assert "training the same inputs in another live process" in " ".join(busy.split())  # lines wrap at 80


def _training_runs(tracking_uri: str) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # not a process-wide registry
    experiment = client.get_experiment_by_name("redflow-test")
    return client.search_runs([experiment.experiment_id], "tags.`redflow.run_kind` = 'train'",
                              run_view_type=ViewType.ALL)


def _versions(tracking_uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return sorted(client.search_model_versions("name = 'red-sentiment'"), key=lambda v: int(v.version))


def test_twin_retrains_on_a_fresh_then_an_existing_store_one_trains_the_other_is_busy(tmp_path, tiny_checkpoints):
    runs = tmp_path / "runs"
    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], runs,
                               [synthetic_task("sentiment", "sentiment", tmp_path, n_train=64)], fresh_store=True,
                               defaults={"method": "red", "epochs": 150, "batch_size": 16, "max_length": 32,
                                         "learning_rate": 1e-3})
    uri = f"sqlite:///{runs}/mlflow.db"

    _night(cfg, tmp_path)  # night 1: no store yet, both create it at once
    assert [int(v.version) for v in _versions(uri)] == [1]

    _night(cfg, tmp_path, "--force")  # night 2: the store exists, both find last night's runs
    versions = _versions(uri)
    assert [int(v.version) for v in versions] == [1, 2]

    runs_logged = _training_runs(uri)
    assert all(r.info.lifecycle_stage == "active" for r in runs_logged), "a run was deleted"
    assert not [r for r in runs_logged if r.data.tags.get("redflow.orphaned")], "a live run was ended as orphaned"
    by_id = {r.info.run_id: r for r in runs_logged}
    assert {v.run_id for v in versions} <= set(by_id)
    assert all(by_id[v.run_id].info.status == "FINISHED" for v in versions)


# ---- the ownership rule itself, on a real SQLite store --------------------------------------------------------
@pytest.fixture
def store(tmp_path, minilm_path):
    """A fresh SQLite store (MLflow's tracking URI points at it) and one real RED edit file."""
    from registry import setup_tracking

    setup_tracking(None, fresh_runs_dir(tmp_path / "runs"))
    return build_edits(minilm_path, tmp_path / "edits", seeds=(1,))[0]


@pytest.fixture
def other_live_process():
    """A live process on this host other than the test's: the owner of a twin's run."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_processs_training_run_is_never_ended_however_old(store, other_live_process):
    import socket
    import time

    from mlflow.tracking import MlflowClient

    from registry import get_or_create_experiment, log_training

    client = MlflowClient()
    experiment = get_or_create_experiment("twins")
    two_days_ago = int((time.time() - 2 * 86400) * 1000)
    live = client.create_run(experiment, start_time=two_days_ago, tags={
        "redflow.run_kind": "train", "redflow.owner": f"{socket.gethostname()}:{other_live_process.pid}"})
    log_training(make_result(store, 0.7), experiment="twins")  # closes orphans on its way
    run = client.get_run(live.info.run_id)
    assert run.info.status == "RUNNING" and "redflow.orphaned" not in run.data.tags


def test_a_run_another_live_process_is_logging_for_the_same_training_is_kept_not_replaced(store, other_live_process,
                                                                                        monkeypatch):
    """A retried registration beside a twin logging the same training: it waits for the twin's run (and gives up
    with a transient error if it never ends) instead of deleting it under the twin; once the twin has finished,
    the retry returns the twin's run: one training, one run."""
    import socket

    from mlflow.tracking import MlflowClient

    import registry.tracking
    from registry import get_or_create_experiment, log_training
    from registry.tracking import training_key

    monkeypatch.setattr(registry.tracking, "LIVE_RUN_WAIT_S", 2.0, raising=False)  # how long a retry waits
    result = make_result(store, 0.7)
    client = MlflowClient()
    experiment = get_or_create_experiment("twins")
    twin = client.create_run(experiment, tags={
        "redflow.run_kind": "train", "redflow.training_id": training_key(result),
        "redflow.owner": f"{socket.gethostname()}:{other_live_process.pid}"}).info.run_id
    with pytest.raises(TimeoutError, match="still being logged"):
        log_training(result, experiment="twins")
    assert client.get_run(twin).info.lifecycle_stage == "active"
    assert [r.info.run_id for r in client.search_runs([experiment])] == [twin]  # nothing logged beside it

    client.set_terminated(twin, "FINISHED")  # the twin finishes logging
    assert log_training(result, experiment="twins") == twin
    assert [r.info.run_id for r in client.search_runs([experiment])] == [twin]
