"""What one training asks the cluster for (``resources:``): the config's checks and what each engine is given.

Plain functions only (no cluster starts here): the Ray and Dask flows that honour them run in test_ray.py and in
test_flows.py's Dask test.
"""
from __future__ import annotations

import pytest
import yaml
from conftest import synthetic_task

from flows.config import ConfigError, Resources, load_config
from flows.runners import dask_cluster_kwargs, local_gpu_ids, ray_options, requesting


def _config(tmp_path, defaults: dict | None = None, **task_fields):
    task = {**synthetic_task("sentiment", "sentiment", tmp_path), **task_fields}
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(tmp_path), "defaults": defaults or {}, "tasks": [task]}))
    return path


@pytest.mark.parametrize("defaults, task_resources, problem", [
    ({}, {"gpus": -1}, r"tasks\.0\.resources\.gpus: Input should be greater than or equal to 0"),
    ({}, {"gpus": 1.5}, r"tasks\.0\.resources\.gpus: 1\.5 GPUs: above 1, GPUs come whole .*Fix: use 1 or 2"),
    ({}, {"cpus": 0}, r"tasks\.0\.resources\.cpus: Input should be greater than 0"),
    ({"resources": {"memory_gb": -4}}, None, r"defaults\.resources\.memory_gb: Input should be greater than 0"),
    ({"resources": {"gpu": 1}}, None, r"defaults\.resources\.gpu: Extra inputs .*known fields: gpus, cpus, memory_gb"),
    ({"resources": 2}, None, r"defaults\.resources: must be a mapping such as `resources: \{gpus: 1"),
])
def test_bad_resources_name_the_field_and_the_fix(tmp_path, defaults, task_resources, problem):
    fields = {} if task_resources is None else {"resources": task_resources}
    with pytest.raises(ConfigError, match=problem):
        load_config(_config(tmp_path, defaults, **fields))


def test_a_task_resources_merge_over_defaults_and_leave_the_training_alone(tmp_path):
    plain = load_config(_config(tmp_path, {"epochs": 1}))
    cfg = load_config(_config(tmp_path, {"epochs": 1, "resources": {"gpus": 1, "cpus": 4}},
                              resources={"memory_gb": 16, "cpus": 2}))
    task = cfg.tasks[0]
    assert cfg.resources_for(task) == Resources(gpus=1, cpus=2, memory_gb=16)
    assert plain.resources_for(plain.tasks[0]) == Resources()
    # not part of what trains (nor of its identity): a change of resources retrains nothing
    assert cfg.train_config(task).recipe("sentiment") == plain.train_config(plain.tasks[0]).recipe("sentiment")
    assert ray_options(cfg.resources_for(task)) == {"num_gpus": 1, "num_cpus": 2, "memory": 16 * 2**30}
    assert ray_options(Resources()) == {}  # Ray's defaults: one CPU, no GPU


def test_each_engine_gets_the_request_when_submitting_and_threads_ignore_it():
    import dask
    from prefect_ray.context import RemoteOptionsContext

    wants = Resources(gpus=0.5, cpus=2)
    with requesting("ray", wants):
        assert RemoteOptionsContext.get().current_remote_options == {"num_gpus": 0.5, "num_cpus": 2}
    with requesting("dask", wants):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}  # Dask hands out whole GPUs
    with requesting("threads", wants), requesting("dask", Resources(cpus=8)):
        assert dask.get_annotations() == {} and RemoteOptionsContext.get().current_remote_options == {}


def test_a_local_dask_cluster_gives_each_gpu_worker_its_own_devices(monkeypatch):
    monkeypatch.setenv("REDFLOW_GPUS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # ids are the ones this process may use
    assert local_gpu_ids() == ["4", "5", "6"]
    spec = dask_cluster_kwargs(3, [Resources(gpus=2), Resources(gpus=1)])
    workers = spec["cluster_kwargs"]["workers"]
    assert spec["cluster_class"] == "distributed.SpecCluster"
    assert [w["options"]["env"]["CUDA_VISIBLE_DEVICES"] for w in workers.values()] == ["4,5", "", ""]
    assert [w["options"].get("resources") for w in workers.values()] == [{"GPU": 2}, None, None]
    # nobody asks for a GPU: the plain LocalCluster, as before
    assert dask_cluster_kwargs(2, [Resources(cpus=2)]) == {"cluster_kwargs": {
        "n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}}
    with pytest.raises(ValueError, match=r"asks for 4 GPU\(s\) .* local dask cluster has 3 .*REDFLOW_DASK_ADDRESS"):
        dask_cluster_kwargs(2, [Resources(gpus=4)])
    monkeypatch.setenv("REDFLOW_GPUS", "two")
    with pytest.raises(ValueError, match="REDFLOW_GPUS='two' is not a count of GPUs. Fix"):
        local_gpu_ids()
