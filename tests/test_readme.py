"""Every shell command in the README works copy-pasted after the demo.

The README's fenced ``bash`` blocks are parsed at test time (so the test follows the README as it
changes) and their commands run, in order, with ``bash`` in a folder laid out like a checkout after
``redflow demo``: ``configs/demo.yaml`` and a ``runs/`` store holding the demo's ``red-sentiment``
with two versions. The store comes from a tiny retrain of the demo config (a tiny BERT instead of
MiniLM, one epoch, a few rows; the demo's 0.6 floor lowered, which a tiny model cannot reach), run
twice with different learning rates so there is a version 2. ``redflow`` is this checkout's CLI.

Servers (``mlflow ui``, ``mlflow models serve``) are started in the background, waited for before the
next command, and stopped at the end; their ports are replaced by free ones. A few commands are not
run, each for the reason in ``SKIP`` (a rule that matches no README command fails the test, so the list
stays as short as the README allows).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

SKIP = [  # (pattern at the start of a command, why this test does not run it)
    (r"python3 -m venv", "installs packages from the network (then runs the demo or the suite; the demo's store "
                         "is rebuilt here by a tiny retrain of the same config)"),
    (r"prefect server start", "a Prefect server that runs until stopped; the flows run under the test's harness"),
    (r"prefect config set PREFECT_API_URL", "writes the user's Prefect profile; tests use their own server "
                                            "(bench/cancel.py runs this block's server, pool, deployment and worker)"),
    (r"until curl -sf http://127.0.0.1:\d+/api/health", "waits for the skipped `prefect server start`"),
    (r"(prefect work-pool|prefect --no-prompt deploy|REDFLOW_HOME=\S+ prefect worker)",
     "a work pool, deployments and a worker: test_flows.py::test_deployments_in_prefect_yaml_deploy_with_their_schedules"),
    (r"redflow retrain configs/(roberta-base-glue|llama2-ultrafeedback)\.yaml",
     "downloads models and data from the hub; sized for a GPU"),
    (r"redflow bench glue", "needs the GLUE files and hours of training"),
]
SERVERS = [(r"mlflow ui\b", "/health"), (r"(\S+=\S+ )*mlflow models serve\b", "/ping"), (r"redflow serve\b", "/ping")]
MAY_SAY_NO = r"redflow promote (?!.*--force)"  # a gated promotion exits 1 when the gate says no


def readme_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks, each a list of commands (one per logical line: backslash continuations joined)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def _free_ports(commands: list[str]) -> dict[str, str]:
    from registry.serving.server import free_port

    ports = {p for c in commands for p in re.findall(r"(?:--port |127\.0\.0\.1:|localhost:)(\d{4,5})\b", c)}
    return {p: str(free_port()) for p in sorted(ports)}


def _with_ports(command: str, ports: dict[str, str]) -> str:
    return re.sub(r"(--port |127\.0\.0\.1:|localhost:)(\d{4,5})\b", lambda m: m.group(1) + ports.get(m.group(2),
                                                                                                    m.group(2)), command)


def _demo_store(workdir: Path, bert: str) -> None:
    """configs/demo.yaml (tiny) and runs/ with red-sentiment v1 and v2, as after running the demo twice."""
    from flows.retrain import retrain

    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["base_model"] = bert
    cfg["defaults"].update(epochs=1, max_length=32, batch_size=16)
    cfg["promotion"]["minimum"] = 0.0
    for task in cfg["tasks"]:
        task["data"]["synthetic"] = {"n_train": 32, "n_dev": 16}
    (workdir / "configs").mkdir()
    (workdir / "configs" / "demo.yaml").write_text(yaml.safe_dump(cfg))
    night2 = {**cfg, "defaults": {**cfg["defaults"], "learning_rate": 5e-3}}  # a changed config: a new version
    (workdir / "night2.yaml").write_text(yaml.safe_dump(night2))
    retrain(config="configs/demo.yaml", only=["sentiment"])
    retrain(config="night2.yaml", only=["sentiment"])


@pytest.mark.usefixtures("prefect_harness")
def test_every_readme_command_works_after_the_demo(tmp_path, tiny_checkpoints, monkeypatch):
    blocks = readme_blocks((ROOT / "README.md").read_text())
    commands = [c for block in blocks for c in block]
    unused = [why for pattern, why in SKIP if not any(re.match(pattern, c) for c in commands)]
    assert not unused, f"SKIP rules that match no README command (remove them): {unused}"

    monkeypatch.chdir(tmp_path)
    _demo_store(tmp_path, tiny_checkpoints["bert"])
    for var in ("MLFLOW_TRACKING_URI", "REDFLOW_TRACKING_URI", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)  # a fresh shell: nothing exported (MLflow exported the last URI)

    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "redflow").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m flows.cli "$@"\n')
    (shim / "redflow").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),  # this checkout
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # `mlflow ui` without its background job workers: CPU
    ports = _free_ports(commands)
    ran, skipped = [], []
    for block in blocks:
        with ThreadPoolExecutor(max_workers=4) as pool:
            servers = []  # the block's servers: started in the background, stopped when the block is done
            try:
                for raw in block:
                    _run(raw, _with_ports(raw, ports), env, tmp_path, pool, servers, ran, skipped)
                for server in servers:
                    server.result()
            finally:
                for server in servers:
                    if server.done() and server.exception() is None:
                        server.result().stop()
    assert any(c.startswith("redflow rollback") for c in ran) and any("models serve" in c for c in ran)
    print("\nskipped:\n" + "\n".join(f"  {c}\n    -> {why}" for c, why in skipped))


def _run(raw: str, command: str, env: dict, cwd: Path, pool, servers: list, ran: list, skipped: list) -> None:
    """Run one README command (or start it, for a server) and check its outcome."""
    from registry.serving.server import start_server_process

    why = next((why for pattern, why in SKIP if re.match(pattern, command)), None)
    if why is not None:
        skipped.append((raw, why))
        return
    health = next((path for pattern, path in SERVERS if re.match(pattern, command)), None)
    if health is not None:
        port = int(re.search(r"--port (\d+)", command).group(1))
        servers.append(pool.submit(start_server_process, ["bash", "-c", command.rstrip("& ")], host="127.0.0.1",
                                   port=port, health_path=health, env=env, cwd=cwd,
                                   log_path=cwd / f"server-{port}.log", timeout=180))
        ran.append(raw)
        return
    for server in servers:
        server.result()  # the servers started so far answer before the next command runs
    if command.startswith("curl") and shutil.which("curl") is None:
        skipped.append((raw, "curl is not installed"))
        return
    out = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    allowed = (0, 1) if re.match(MAY_SAY_NO, command) else (0,)
    assert out.returncode in allowed, f"{raw}\nexit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    if command.startswith("curl"):
        assert json.loads(out.stdout)["predictions"][0]["label"] in ("negative", "positive"), out.stdout
    ran.append(raw)
