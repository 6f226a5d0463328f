"""The deployments of prefect.yaml run: a real `prefect deploy` of the nightly retrain into a real process work
pool, a real `prefect worker start` for it, and flow runs created through the Prefect API of the test session's
server, as the schedule creates them. The worker runs each flow run as `python -m prefect.engine` in
REDFLOW_HOME (the pull step), loading the flow from its entrypoint; it cancels one by sending it SIGTERM (and
SIGKILL 30 s later if it is still alive).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from conftest import synthetic_task, write_retrain_config

REPO = Path(__file__).resolve().parents[1]
POOL = "redflow-process"


def _shipped(flow):
    """The flow as a served deployment (``flow.serve()``, a Runner) hands it to the flow run's process: pickled by
    value with cloudpickle, its function keeping only the globals its code uses."""
    import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(flow))


def test_every_flow_validates_its_parameters_wherever_prefect_runs_it(tmp_path):
    """A worker loads a deployment's entrypoint as a script; a served deployment ships the flow object to the flow
    run's process; a subflow's parameters are validated in whichever process runs its parent. In each, the
    parameters validate against the flow's annotations: prefect.yaml's deployments with their declared
    parameters, and every flow or subflow that a deployment runs."""
    from prefect.flows import load_flow_from_entrypoint

    from flows import manage, retrain, tuning
    from flows.config import load_config
    from tasks.lifecycle.identity import Identity
    from tasks.lifecycle.plan import TRAIN, Plan

    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["name"] for d in project["deployments"]} == {"nightly-retrain", "weekly-reevaluate", "approve-version"}
    asked = {"approve-version": {"model_name": "red-sentiment", "version": 2, "decision": "approve"}}  # run form
    for deployment in project["deployments"]:
        loaded = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]), use_placeholder_flow=False)
        given = asked.get(deployment["name"], {})
        for flow in (loaded, _shipped(loaded)):
            assert flow.validate_parameters({**given, **deployment["parameters"]}) == {
                **flow.validate_parameters(given), **deployment["parameters"]}, deployment["name"]

    path = write_retrain_config(tmp_path / "c.yaml", "a-base", tmp_path / "runs",
                                [synthetic_task("sentiment", "sentiment", tmp_path)])
    cfg = load_config(path)
    plan = Plan(TRAIN, Identity("data", "config", "base", "code"))
    for flow, parameters in [
        (retrain.retrain, {"config": path, "only": ["sentiment"]}),
        (retrain.retrain_tasks, {"cfg": cfg, "run_key": "key"}),
        (tuning.tune_flow, {"cfg": cfg, "task": cfg.tasks[0], "plan": plan, "run_key": "key"}),
        (manage.reevaluate, {"config": str(path)}),
        (manage.evaluate, {"model_name": "red-sentiment", "suites": ["test"]}),
        (manage.promote, {"model_name": "red-sentiment", "version": 2}),
        (manage.rollback, {"model_name": "red-sentiment"}),
        (manage.approve_version, {"model_name": "red-sentiment", "version": 2, "decision": "reject"}),
    ]:
        assert _shipped(flow).validate_parameters(parameters) == flow.validate_parameters(parameters), flow.name


class Worker:
    """A process work pool, the nightly-retrain deployment from prefect.yaml, and a worker polling the pool."""

    def __init__(self, api_url: str, home: Path):
        self.env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "REDFLOW_HOME": str(REPO),
                    "PYTHONPATH": str(REPO),
                    "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                    "REDFLOW_PROGRESS": "0"}
        self.log = home / "worker.log"
        self._prefect("work-pool", "create", POOL, "--type", "process")
        self._prefect("--no-prompt", "deploy", "--name", "nightly-retrain")
        self.deployment_id = self._client().read_deployment_by_name("retrain/nightly-retrain").id
        self._client().pause_deployment(self.deployment_id)  # no 02:00 run of configs/demo.yaml mid-test
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL,
                                      "--type", "process"], env=self.env, cwd=home,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def _prefect(self, *args: str) -> None:
        done = subprocess.run([str(Path(sys.executable).parent / "prefect"), *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    @staticmethod
    def _client():
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def run(self, config: Path):
        """A flow run of the deployment, as the schedule creates one, with ``config`` for its parameter."""
        return self._client().create_flow_run_from_deployment(self.deployment_id, parameters={"config": str(config)})

    def state(self, flow_run_id):
        return self._client().read_flow_run(flow_run_id).state

    def wait_final(self, flow_run_id, timeout: float = 400):
        deadline = time.time() + timeout
        while not (state := self.state(flow_run_id)).is_final():
            assert self.proc.poll() is None and time.time() < deadline, (state, self.tail())
            time.sleep(1)
        return state

    def tail(self) -> str:
        return self.log.read_text()[-6000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def worker(prefect_harness, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    worker = Worker(PREFECT_API_URL.value(), tmp_path_factory.mktemp("prefect-home"))
    try:
        yield worker
    finally:
        worker.stop()


def _config(tmp_path: Path, checkpoint: str, epochs: int) -> Path:
    return write_retrain_config(tmp_path / "c.yaml", checkpoint, tmp_path / "runs",
                                [synthetic_task("sentiment", "sentiment", tmp_path, n_train=64)],
                                defaults={"method": "red", "epochs": epochs, "batch_size": 16, "max_length": 32,
                                          "learning_rate": 1e-3})


def _task_runs(flow_run_id, name: str) -> list:
    """The task runs called ``name`` in the subflows of flow run ``flow_run_id``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter,
                                                TaskRunFilterName)

    return get_client(sync_client=True).read_task_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])),
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


def _versions(runs: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{runs}/mlflow.db"  # the registry too: an earlier test may have set another one process-wide
    return MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='red-sentiment'")


def test_a_served_retrain_deployment_runs_a_flow_run_to_completion_and_registers_the_edit(prefect_harness, tmp_path,
                                                                                          tiny_checkpoints):
    """``retrain.serve()``: a Runner polling the server, each flow run in its own process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    config = _config(tmp_path, tiny_checkpoints["bert"], epochs=1)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "REDFLOW_PROGRESS": "0"}
    log = tmp_path / "serve.log"
    served = subprocess.Popen([sys.executable, "-c", "from flows.retrain import retrain; retrain.serve(name='served')"],
                              env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    client = get_client(sync_client=True)
    try:
        deadline = time.time() + 300
        while not (found := client.read_deployments(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["served"])))):
            assert served.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        flow_run = client.create_flow_run_from_deployment(found[0].id, parameters={"config": str(config)})
        while not (state := client.read_flow_run(flow_run.id).state).is_final():
            assert served.poll() is None and time.time() < deadline + 300, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        served.terminate()
        served.wait(timeout=60)
    assert state.is_completed(), (state, log.read_text()[-3000:])
    assert [v.version for v in _versions(tmp_path / "runs")] == [1]


def test_cancelling_a_flow_run_stops_training_at_the_next_step_and_the_next_run_resumes_it(worker, tmp_path,
                                                                                         tiny_checkpoints):
    from prefect.states import Cancelling

    config = _config(tmp_path, tiny_checkpoints["bert"], epochs=40)
    flow_run = worker.run(config)
    attempts = tmp_path / "runs" / "test" / "sentiment" / "attempts"
    deadline = time.time() + 300
    while not list(attempts.glob("*/checkpoints/checkpoint-*/trainer_state.json")):
        assert not worker.state(flow_run.id).is_final() and time.time() < deadline, worker.tail()
        time.sleep(0.2)
    (engine,) = psutil.Process(worker.proc.pid).children()  # python -m prefect.engine: the flow run's process
    processes = [engine, *engine.children(recursive=True)]

    Worker._client().set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))
    state = worker.wait_final(flow_run.id, timeout=120)
    assert state.is_cancelled(), (state, worker.tail())  # not Crashed: the engine acknowledged the cancellation
    _, alive = psutil.wait_procs(processes, timeout=60)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    # the training itself stopped on the request (TrainingInterrupted, a KeyboardInterrupt, which nothing else
    # raises in a task runner's thread), not by the SIGKILL that follows the worker's 30 s grace
    (train,) = _task_runs(flow_run.id, "train-sentiment")
    assert train.state.is_crashed() and "interrupt" in train.state.message, train.state

    (folder,) = [p for p in attempts.iterdir() if p.is_dir()]
    attempt = json.loads((folder / "attempt.json").read_text())
    assert attempt["status"] == "training" and not (folder / "result.json").exists()  # stopped mid-way

    flow_run = worker.run(config)
    state = worker.wait_final(flow_run.id)
    assert state.is_completed(), (state, worker.tail())
    assert [p for p in attempts.iterdir() if p.is_dir()] == [folder]  # the same attempt, resumed in place
    result = json.loads((folder / "result.json").read_text())
    assert result["resumed_from"] and Path(result["resumed_from"]).parent == folder / "checkpoints"
    assert [v.version for v in _versions(tmp_path / "runs")] == [1]
