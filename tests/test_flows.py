"""The retrain flow under a real (temporary) Prefect server with a real MLflow backend.

Flow runs cost about a second each, so each test here checks a whole story.
"""
from __future__ import annotations

import pytest
from conftest import (ask_for_resources, assert_gpu_slots_honoured, run_four_gpu_probes, seed_store,
                      synthetic_task, trainings, write_retrain_config)
from mlflow import MlflowClient

from flows.config import ConfigError, load_config
from registry.version_tags import evaluations

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(cfg_path):
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def test_retrain_registers_every_good_task_even_when_one_fails(tmp_path, tiny_checkpoints):
    from flows.retrain import RetrainFailed, retrain

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,0\nok,1\n")  # the config below asks for a 'sentence' column
    cfg_path = write_retrain_config(tmp_path / "retrain.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [
        synthetic_task("sentiment", "sentiment", tmp_path),
        synthetic_task("topic", "topic", tmp_path),
        {"name": "broken", "data": {"source": "csv", "path": str(bad), "text_columns": ["sentence"]}},
    ])
    with pytest.raises(RetrainFailed, match=r"1 of 3 tasks failed \(broken\); the other 2 completed.*sentence"):
        retrain(config=str(cfg_path))
    client = _client(cfg_path)
    for task in ("sentiment", "topic"):
        versions = client.search_model_versions(f"name='red-{task}'")
        assert [int(v.version) for v in versions] == [1]
        mv = client.get_model_version_by_alias(f"red-{task}", "candidate")
        assert int(mv.version) == 1
        assert int(client.get_model_version_by_alias(f"red-{task}", "production").version) == 1  # minimum 0.0
        run = client.get_run(mv.run_id)
        assert "test_accuracy" in run.data.metrics and run.data.params["method"] == "red"
    assert client.search_registered_models("name='red-broken'") == []

    # promote by hand, roll back, re-evaluate production: flows a person (or the weekly job) runs
    from flows.manage import evaluate, promote, rollback
    from registry import alias_history

    summary = retrain(config=str(cfg_path), only=["sentiment"], force=True)  # same inputs, retrained on demand
    assert summary["sentiment"]["status"] == "trained" and summary["sentiment"]["version"] == 2
    assert summary["sentiment"]["decision"] == "kept out"  # the same edit again: a tie keeps production
    v2_run = client.get_model_version("red-sentiment", "2").run_id  # the night compared v2's edit with production's
    assert {f.path for f in client.list_artifacts(v2_run, "edit_diff")} == {"edit_diff/vs_production.json",
                                                                             "edit_diff/vs_production.png"}
    assert promote("red-sentiment", 2, force=True, tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db",
                   runs_dir=str(tmp_path / "runs"))["version"] == 2
    assert int(client.get_model_version_by_alias("red-sentiment", "production").version) == 2
    rollback("red-sentiment", tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db", runs_dir=str(tmp_path / "runs"))
    assert int(client.get_model_version_by_alias("red-sentiment", "production").version) == 1
    actions = [e["action"] for e in alias_history("red-sentiment", "production")]
    assert actions[-2:] == ["forced", "rolled back"]
    metrics = evaluate("red-sentiment", "production", ["test"], config=str(cfg_path), task="sentiment")
    assert "accuracy" in metrics["sentiment/test"]
    tags = client.get_model_version("red-sentiment", "1").tags
    assert evaluations(tags) and not any(k.startswith("eval.") for k in tags)  # one tag: redflow.evaluations


def test_bad_config_names_the_field(tmp_path, tiny_checkpoints):
    path = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                [synthetic_task("a", "sentiment", tmp_path)],
                                defaults={"method": "red", "learning_rate": "fast"})
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)
    path.write_text(path.read_text().replace("task_runner", "task_runer") + "task_runer: threads\n")
    with pytest.raises(ConfigError, match="task_runer"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_dask_task_runner_against_a_real_mlflow_server(tmp_path, tiny_checkpoints, monkeypatch):
    """Scale-out path: tasks run in Dask worker processes and log to a remote tracking server;
    one task trains LoReFT instead of RED with nothing else changed. Resources, on the local cluster redflow starts
    for trainings asking for a GPU (make_task_runner: three workers, two of which hold one logical GPU each; the
    flow joins it by $REDFLOW_DASK_ADDRESS): four tasks submitted as a training is, each asking for a GPU, never run
    more than two at once, each on its own worker's GPU (CUDA_VISIBLE_DEVICES); the flow's two trainings ask for
    one each too."""
    from flows.config import Resources
    from flows.retrain import retrain
    from flows.runners import make_task_runner
    from registry import start_tracking_server

    monkeypatch.setenv("REDFLOW_GPUS", "2")  # the local cluster's GPU workers: two, on this GPU-less machine
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("REDFLOW_DASK_ADDRESS", raising=False)
    with make_task_runner("dask", 3, requests=[Resources(gpus=1)]) as cluster, \
            start_tracking_server(seed_store(tmp_path / "server")) as server:
        monkeypatch.setenv("REDFLOW_DASK_ADDRESS", cluster.client.scheduler.address)
        assert_gpu_slots_honoured(run_four_gpu_probes(make_task_runner("dask"), "dask"), {"0", "1"})
        cfg_path = write_retrain_config(tmp_path / "retrain.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [
            synthetic_task("sentiment", "sentiment", tmp_path),
            {**synthetic_task("topic", "topic", tmp_path),  # ReFT goes through the same pipeline, no special case
             "train": {"method": "loreft", "edit": {"rank": 2, "positions": "f2+l2"}}}],
            tracking_uri=server.url, task_runner="dask")
        summary = retrain(config=str(ask_for_resources(cfg_path, {"gpus": 1})))
        assert {row["status"] for row in summary.values()} == {"trained"}
        assert_gpu_slots_honoured(trainings(tmp_path / "runs", ["sentiment", "topic"]), {"0", "1"})
        client = MlflowClient(server.url)
        for task in ("sentiment", "topic"):
            mv = client.get_model_version_by_alias(f"red-{task}", "production")
            assert int(mv.version) == 1 and client.get_run(mv.run_id).data.metrics["test_accuracy"] >= 0
        topic = client.get_run(client.get_model_version_by_alias("red-topic", "candidate").run_id)
        assert topic.data.params["method"] == "loreft" and topic.data.params["cuda_visible_devices"] in ("0", "1")
        assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to the local default


def test_deployments_in_prefect_yaml_deploy_with_their_schedules(tmp_path):
    """`prefect work-pool create` + `prefect --no-prompt deploy --all` against the temporary server."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "REDFLOW_HOME"}  # as the README deploys: no REDFLOW_HOME
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    prefect = [sys.executable, "-m", "prefect"]
    run = dict(cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    out = subprocess.run(prefect + ["work-pool", "create", "redflow-process", "--type", "process",
                                    "--overwrite"], **run)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(prefect + ["--no-prompt", "deploy", "--all"], **run)
    assert out.returncode == 0, out.stdout + out.stderr

    import asyncio

    from prefect.client.orchestration import get_client

    async def deployments():
        async with get_client() as client:
            return {d.name: d for d in await client.read_deployments()}

    found = asyncio.run(deployments())
    nightly, weekly = found["nightly-retrain"], found["weekly-reevaluate"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in weekly.schedules] == ["0 4 * * 0"]
    assert nightly.work_pool_name == "redflow-process" and nightly.entrypoint == "flows/retrain.py:retrain"
    assert nightly.parameters == {"config": "configs/demo.yaml"}
    assert weekly.entrypoint == "flows/manage.py:reevaluate"
    # the pull step keeps its placeholder: Prefect fills in REDFLOW_HOME when a run starts, from the worker's env
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": "{{ $REDFLOW_HOME }}"}}]
