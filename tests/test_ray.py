"""The Ray task runner on a real local Ray instance (prefect-ray), like the Dask test in test_flows.py."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import synthetic_task, write_retrain_config

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_ray_runs_the_flow_with_max_workers_cpus_and_keeps_its_files_out_of_home(tmp_path, tiny_checkpoints,
                                                                                 monkeypatch):
    from mlflow import MlflowClient

    from flows.retrain import retrain
    from flows.runners import make_task_runner

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR", "REDFLOW_RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    short = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))  # Ray's Unix sockets need a short session path
    try:
        runs = short / "runs"
        runner = make_task_runner("ray", 2, runs)
        assert runner.init_kwargs["num_cpus"] == 2 and runner.init_kwargs["_temp_dir"] == str((runs / "ray").resolve())

        cfg_path = write_retrain_config(tmp_path / "retrain.yaml", tiny_checkpoints["bert"], runs, [
            synthetic_task("sentiment", "sentiment", tmp_path, n_train=32, n_dev=16),
            synthetic_task("topic", "topic", tmp_path, n_train=32, n_dev=16)], task_runner="ray", max_workers=2)
        summary = retrain(config=str(cfg_path))
        assert {row["status"] for row in summary.values()} == {"trained"}, summary
        client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
        assert [int(v.version) for v in client.search_model_versions("name='red-topic'")] == [1]
        assert list((runs / "ray").glob("session_*")), "Ray's session files belong under runs_dir"
        assert not (home / ".ray").exists(), "Ray wrote into the home folder"
    finally:
        shutil.rmtree(short, ignore_errors=True)
