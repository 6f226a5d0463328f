"""Cancel a running nightly retrain from Prefect, as an operator does, and time what follows.

A real local Prefect server (``prefect server start``), the ``nightly-retrain`` deployment of prefect.yaml in a
process work pool, and a ``prefect worker start`` with Prefect's default settings (as README's scheduling block
starts them). A flow run of the demo config (three tasks, MiniLM, one training at a time) is cancelled with
``prefect flow-run cancel`` a few seconds into its first training. Reported:

* ``to_training_stopped_s``: from the cancel to the training's task run ending (its final state's time);
* ``to_cancelled_s``: from the cancel to the flow run's first Cancelled state; ``to_final_state_s``: to its last
  state (the worker's own Cancelled, after it looked for ``on_cancellation`` hooks);
* ``stopped_at_step``: the optimizer step the stop request stopped the training at (None: it was not stopped by
  the request, e.g. it ran to its end or was killed);
* whether the store is unchanged (no model version registered) and the attempt left resumable
  (status ``training``, no result, reopened by the same inputs).

    python bench/cancel.py [--json bench/results/cancel.json]

Not a test (it takes about two minutes of a machine); docs/benchmarks.md records a run. Why a bench: the issue's
bound (training stopped within 10 s of the cancel) holds only against Prefect's real cancellation path: the worker
or the flow run's own observer noticing the Cancelling state, SIGTERM to the flow run's process, the engine's
TerminationSignal, the trainings' stop request.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

from registry.serving.server import free_port
from tasks.lifecycle.attempts import open_attempt, read_state
from tasks.lifecycle.identity import Identity

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "redflow-process"
SETTLE_S = 8.0  # seconds after the first training started (loading MiniLM, a few steps) before the cancel


def _wait_until(check, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def demo_config(root: Path) -> Path:
    """configs/demo.yaml with its runs and data under ``root`` (absolute: the worker runs in REDFLOW_HOME)."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["runs_dir"] = str(root / "runs")
    for t in config["tasks"]:
        t["data"]["path"] = str(root / "runs" / "data" / t["name"])
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _all_flow_run_ids(client, flow_run_id) -> list:
    """The flow run and its subflow runs (any depth)."""
    ids, frontier = [flow_run_id], [flow_run_id]
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        frontier = [c.id for c in children]
        ids += frontier
    return ids


def _train_runs(client, flow_run_id) -> list:
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=_all_flow_run_ids(client, flow_run_id))))
    return [r for r in runs if r.name.startswith("train")]


def measure(root: Path) -> dict:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": api,
           "REDFLOW_HOME": str(REPO), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": env["PREFECT_HOME"]})
    procs: list[subprocess.Popen] = []
    logs = {name: root / f"{name}.log" for name in ("server", "worker")}
    try:
        procs.append(subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, cwd=root, stdout=logs["server"].open("w"), stderr=subprocess.STDOUT))
        _wait_until(lambda: _healthy(api), 180, "the Prefect server to answer")
        for args in (["work-pool", "create", POOL, "--type", "process"],
                     ["--no-prompt", "deploy", "--name", "nightly-retrain"]):
            subprocess.run([PREFECT, *args], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
        client = get_client(sync_client=True)
        deployment = client.read_deployment_by_name("retrain/nightly-retrain")
        client.pause_deployment(deployment.id)  # no 02:00 run
        procs.append(subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL], env=env, cwd=root,
                                      stdout=logs["worker"].open("w"), stderr=subprocess.STDOUT))
        config = demo_config(root)
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": str(config)})
        attempts = root / "runs" / "demo" / "sentiment" / "attempts"
        _wait_until(lambda: any((read_state(p.parent) or {}).get("status") == "training"
                                for p in attempts.glob("*/attempt.json")), 600,
                    "the first training to start")
        time.sleep(SETTLE_S)
        cancelled_at = time.time()
        subprocess.run([PREFECT, "flow-run", "cancel", str(flow_run.id)], env=env, check=True, capture_output=True,
                       timeout=60)
        state = _wait_until(lambda: (s := client.read_flow_run(flow_run.id).state).is_final() and s, 300,
                            "the flow run to end")
        first_cancelled = min((s.timestamp.timestamp() for s in client.read_flow_run_states(flow_run.id)
                               if s.is_cancelled()), default=None)  # the worker sets Cancelled again once it finished
        trains = _train_runs(client, flow_run.id)
        ended = [r.state.timestamp.timestamp() for r in trains if r.state and r.state.is_final()]
        text = logs["worker"].read_text()
        return {
            "final_state": state.type.value, "final_message": state.message,
            "to_cancelled_s": None if first_cancelled is None else round(first_cancelled - cancelled_at, 1),
            "to_final_state_s": round(state.timestamp.timestamp() - cancelled_at, 1),
            "to_training_stopped_s": round(max(ended) - cancelled_at, 1) if ended else None,  # the last to end
            "train_task_states": {r.name: f"{r.state.type.value}: {r.state.message}" for r in trains},
            "stopped_at_step": _stopped_at(text),
            **_store(root, root / "runs" / "demo"),
            "load_reports_in_worker_log": text.count("LOAD REPORT"),
            "carriage_returns_in_worker_log": text.count("\r"),
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _stopped_at(log: str) -> str | None:
    """``N of M``: the optimizer step a stop request stopped the training at (StopOnRequest's warning in the
    worker's log), if it did."""
    found = re.findall(r"stopped on request at step (\d+ of \d+)", log)
    return found[0] if found else None


def _store(root: Path, tasks_dir: Path) -> dict:
    """Whether the cancel left the store as before the night (no version) and every attempt resumable."""
    uri = f"sqlite:///{root}/runs/mlflow.db"
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() if Path(
        f"{root}/runs/mlflow.db").exists() else []
    folders = sorted(p for p in tasks_dir.glob("*/attempts/*") if p.is_dir())
    states = [read_state(p) or {} for p in folders]
    reopened = []
    for folder, state in zip(folders, states):
        if "identity" not in state:  # unreadable record: not reopened (read_state said why)
            reopened.append(False)
            continue
        attempt = open_attempt(folder.parent.parent, Identity.from_dict(state["identity"]), "next-night")
        reopened.append(attempt.folder == folder)
        attempt.close()
    return {"registered_models": [m.name for m in versions],
            "attempts": {f"{p.parent.parent.name}/{p.name}": s.get("status") for p, s in zip(folders, states)},
            "results_written": [p.name for p in folders if (p / "result.json").exists()],
            "attempts_reopened_by_next_night": all(reopened) if reopened else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and print its path")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="redflow-cancel-"))
    try:
        result = {"command": "python bench/cancel.py" + (f" --json {args.json}" if args.json else ""),
                  **measure(root)}
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
