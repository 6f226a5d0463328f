"""The Ray task runner on a real local Ray instance (prefect-ray), like the Dask test in test_flows.py."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import assert_gpu_slots_honoured, run_four_gpu_probes, synthetic_task, write_retrain_config

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_ray_runs_the_flow_with_max_workers_cpus_and_keeps_its_files_out_of_home(tmp_path, tiny_checkpoints,
                                                                                 monkeypatch):
    """Also resources, on one Ray instance (two logical GPUs, $REDFLOW_GPUS) started here with the arguments the
    flow's runner builds, which the flow then joins: four tasks submitted as a training is (``requesting``), each
    asking for a GPU and half a CPU (room in CPUs for four at once), never run more than two at once and each sees
    its own CUDA_VISIBLE_DEVICES; the flow's trainings pass their resources through Ray (one asks for memory).

    The four are tiny tasks, and the flow's trainings ask for no GPU here: Ray runs each GPU task in a fresh worker
    process (max_calls=1), and a training's worker imports the whole training stack (the test took 305 s instead of
    about 100 s with them). Trainings that ask for GPUs in a real flow, with the GPU recorded on the MLflow run:
    test_flows.py's Dask test, through the same ``requesting``."""
    import ray
    from mlflow import MlflowClient

    from flows.config import Resources
    from flows.retrain import retrain
    from flows.runners import make_task_runner

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("REDFLOW_GPUS", "2")  # what ray.init declares: two logical GPUs on this GPU-less machine
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR", "REDFLOW_RAY_ADDRESS",
                "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    short = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))  # Ray's Unix sockets need a short session path
    try:
        runs = short / "runs"
        runner = make_task_runner("ray", 2, runs, [Resources(gpus=1, cpus=0.5)])
        assert runner.init_kwargs["num_cpus"] == 2 and runner.init_kwargs["_temp_dir"] == str((runs / "ray").resolve())
        assert runner.init_kwargs["num_gpus"] == 2
        with pytest.raises(ValueError, match=r"asks for 3 GPU\(s\) .* has 2 .*Fix: lower resources.gpus"):
            make_task_runner("ray", 2, runs, [Resources(gpus=3)])
        ray.init(**runner.init_kwargs)  # the instance both flows below use (prefect-ray joins a running one)
        assert_gpu_slots_honoured(run_four_gpu_probes(runner, "ray"), {"0", "1"})

        tasks = [synthetic_task(name, name, tmp_path, n_train=32, n_dev=16) for name in ("sentiment", "topic")]
        tasks[1]["resources"] = {"memory_gb": 0.25}  # merged over defaults.resources key by key
        cfg_path = write_retrain_config(tmp_path / "retrain.yaml", tiny_checkpoints["bert"], runs, tasks,
                                        task_runner="ray", max_workers=2)
        summary = retrain(config=str(cfg_path))
        assert {row["status"] for row in summary.values()} == {"trained"}, summary
        client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
        assert [int(v.version) for v in client.search_model_versions("name='red-topic'")] == [1]
        assert list((runs / "ray").glob("session_*")), "Ray's session files belong under runs_dir"
        assert not (home / ".ray").exists(), "Ray wrote into the home folder"
    finally:
        ray.shutdown()
        shutil.rmtree(short, ignore_errors=True)
