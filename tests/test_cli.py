"""The redflow command line: exit codes, one-line errors with their fix, registry commands, parameter counts."""
from __future__ import annotations

import json

import pytest
from conftest import synthetic_task, write_retrain_config
from mlflow import MlflowClient
from test_registry import build_edits, fresh_runs_dir, make_result
from typer.testing import CliRunner

from flows.cli import app
from registry.version_tags import evaluations

runner = CliRunner()


def test_params_prints_red_lora_and_full():
    out = runner.invoke(app, ["params", "meta-llama/Llama-2-7b-hf"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "262,144" in out.output and "4,194,304" in out.output and "6,738,415,616" in out.output


def test_params_of_the_packaged_minilm():
    out = runner.invoke(app, ["params", "minilm", "--position", "ffn+attn"], terminal_width=200)
    assert out.exit_code == 0 and "9,216" in out.output


def test_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: minilm\ntasks:\n  - name: a\n    data: {source: synthetic, task: sentiment}\n"
                   "    train: {epochs: many}\n")
    out = runner.invoke(app, ["retrain", str(bad)], terminal_width=200)
    assert out.exit_code == 2
    assert "epochs" in out.output and "valid number" in out.output


def test_unknown_model_for_params_is_a_clear_error():
    out = runner.invoke(app, ["params", "/no/such/model"], terminal_width=200)
    assert out.exit_code == 2 and "cannot read a config" in out.output


# ---------------------------------------------------------------------------------------------
# exit codes, one-line errors, registry commands (real MLflow on SQLite, real MiniLM edits)
# ---------------------------------------------------------------------------------------------
def _cli(*args: str):
    return runner.invoke(app, list(args), terminal_width=200)


def _json(output: str):
    """The JSON document in a command's output (notes go to stderr, which the runner mixes in before it)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("{", "[")))
    return json.JSONDecoder().raw_decode("\n".join(lines[start:]))[0]


def test_every_argument_and_option_has_help():
    import typer.main

    group = typer.main.get_command(app)
    missing = [f"{name} {p.name}" for name, cmd in group.commands.items() if hasattr(cmd, "params")
               for p in cmd.params if not getattr(p, "help", None)]
    assert not missing
    out = _cli("--help")
    assert out.exit_code == 0 and "Exit codes: 0 success" in out.output and "MLFLOW_TRACKING_URI" in out.output
    version = _cli("--version")
    assert version.exit_code == 0 and version.output.startswith("redflow ")


def test_config_errors_are_one_line_with_the_yaml_path_and_brackets_survive(tmp_path, tiny_checkpoints):
    path = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                [{**synthetic_task("a", "sentiment", tmp_path), "train": {"edit": {"kindd": "scale"}}}],
                                fresh_store=True)
    out = _cli("retrain", str(path))
    assert out.exit_code == 2 and "tasks.0.train.edit.kindd: Extra inputs are not permitted" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert out.output.rstrip().endswith(f"Fix: correct the named field(s) in {path}")

    good = write_retrain_config(tmp_path / "g.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                [synthetic_task("a", "sentiment", tmp_path)], fresh_store=True)
    out = _cli("retrain", str(good), "--only", "nosuchtask,b[1]")
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1
    assert "['nosuchtask', 'b[1]']" in out.output and out.output.rstrip().endswith("names from that list")
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_registry_commands_from_another_folder_find_no_store_and_create_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["versions", "red-x"], ["history", "red-x"], ["rollback", "red-x"], ["promote", "red-x", "1"]):
        out = _cli(*command)
        assert out.exit_code == 2, out.output
        assert f"no MLflow store at {tmp_path / 'runs' / 'mlflow.db'}" in out.output and "--tracking-uri" in out.output
    assert not (tmp_path / "runs").exists()


def test_an_unexpected_error_exits_3_with_its_traceback_in_a_log_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REDFLOW_LOG_DIR", str(tmp_path / "logs"))
    broken = tmp_path / "broken.db"
    broken.write_text("not a database")
    out = _cli("versions", "red-x", "--tracking-uri", f"sqlite:///{broken}")
    assert out.exit_code == 3 and "internal error:" in out.output and "Traceback" not in out.output
    logs = list((tmp_path / "logs").glob("redflow-*.log"))
    assert len(logs) == 1 and str(logs[0]) in out.output and "Traceback" in logs[0].read_text()
    assert "Traceback" in _cli("--debug", "versions", "red-x", "--tracking-uri", f"sqlite:///{broken}").output


@pytest.fixture
def two_versions(tmp_path, minilm_path):
    """red-sst2 v1 (test accuracy 0.80, production) and v2 (0.70, candidate) in runs/ under tmp_path."""
    from registry.models import register_edit
    from registry.tracking import get_or_create_experiment, setup_tracking

    runs = fresh_runs_dir(tmp_path / "runs")
    uri = setup_tracking(None, runs)
    client = MlflowClient()
    edits = build_edits(minilm_path, tmp_path / "edits")
    for edit, score in zip(edits, (0.80, 0.70)):
        run_id = client.create_run(get_or_create_experiment("cli-tests")).info.run_id
        register_edit(make_result(edit, score), run_id, validate=False)
    return uri


def test_versions_history_promote_and_rollback_tell_scripts_what_happened(tmp_path, two_versions, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _cli("promote", "red-sst2", "1")
    assert out.exit_code == 0  # the first production version: the store, the verdict, where it was recorded
    assert len(out.output.strip().splitlines()) <= 3, out.output
    assert "red-sst2: production -> v1 (promoted: " in out.stdout and "redflow history red-sst2" in out.stdout
    out = _cli("promote", "red-sst2", "1")
    assert out.exit_code == 0 and "already production" in out.output  # the state asked for: not a failure
    out = _cli("promote", "red-sst2", "2", "--margin", "0.01")
    assert out.exit_code == 1 and len(out.output.strip().splitlines()) <= 3, out.output  # no: not a success
    assert "no: red-sst2 v2 kept out" in out.output and "production stays v1" in out.output
    out = _cli("promote", "red-sst2", "2", "--margin", "0.01", "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["promoted"] is False  # the document alone on stdout
    assert "no: red-sst2 v2 kept out" in out.stderr and "MLflow store: sqlite:///" in out.stderr

    config = write_retrain_config(tmp_path / "c.yaml", "minilm", tmp_path / "runs",
                                  [synthetic_task("sst2", "sentiment", tmp_path)],
                                  promotion={"margin": 0.0, "minimum": 0.9})
    out = _cli("promote", "red-sst2", "2", "--config", str(config), "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["policy"]["minimum"] == 0.9  # the config's policy applied

    assert _cli("promote", "red-sst2", "2", "--force").exit_code == 0
    out = _cli("versions", "red-sst2")
    assert out.exit_code == 0 and "production" in out.output and "candidate" in out.output and "0.7000" in out.output
    rows = _json(_cli("versions", "red-sst2", "--json").output)
    assert [(r["version"], r["aliases"]) for r in rows] == [(2, ["candidate", "production"]), (1, [])]
    assert [r["decision"] for r in rows] == ["forced", "promoted"]  # a forced promotion shows as forced
    assert "v2 forced: promoted by hand without the gate" in out.output

    out = _cli("rollback", "red-sst2", "--reason", "bad [canary] results")
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) <= 3, out.output
    assert "red-sst2: production v2 -> v1 (rolled back: bad [canary] results)" in out.stdout
    history = _json(_cli("history", "red-sst2", "--json").output)
    assert [e["action"] for e in history[:3]] == ["rolled back", "forced", "kept out"]  # newest first
    assert history[0]["by"].split("@")[0] and history[0]["reason"] == "bad [canary] results"
    text = _cli("history", "red-sst2").output
    assert "bad [canary] results" in text and "v2 -> v1" in text
    description = MlflowClient().get_registered_model("red-sst2").description
    assert "## Alias history (newest first)" in description and description.index("| rolled back |") < \
        description.index("| forced |")

    out = _cli("rollback", "red-nosuch")
    assert out.exit_code == 2 and "no registered model 'red-nosuch'" in out.output and "red-sst2" in out.output
    out = _cli("promote", "red-sst2", "7")
    assert out.exit_code == 2 and "has no version 7 (versions: 1, 2)" in out.output


def test_approve_and_reject_answer_in_three_lines_or_json_and_refuse_with_exit_2(tmp_path, two_versions,
                                                                                  monkeypatch):
    """A version awaiting approval (promotion.approval: required) is decided by a named person; deciding one that
    does not await approval is a usage error (exit 2) that moves nothing."""
    from registry.aliases import PromotionPolicy, gate_and_promote, production_version
    from test_registry import same_rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDFLOW_USER", "bob@desk")
    assert _cli("promote", "red-sst2", "1").exit_code == 0
    out = _cli("approve", "red-sst2", "2")
    assert out.exit_code == 2 and "red-sst2 v2 is not awaiting approval (its decision: not gated yet)" in out.output
    scores = {1: same_rows(0.80, 1), 2: same_rows(0.90, 2)}

    def gate() -> None:
        d = gate_and_promote("red-sst2", 2, PromotionPolicy(approval="required"), challenger=scores[2],
                             score_champion=scores.__getitem__)
        assert d.outcome == "awaiting approval" and production_version("red-sst2") == 1

    gate()
    assert "awaiting approval" in _cli("versions", "red-sst2").output
    out = _cli("reject", "red-sst2", "2", "--reason", "canary failed", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["decision"] == "rejected"  # the document alone on stdout
    assert json.loads(out.stdout)["by"] == "bob@desk" and production_version("red-sst2") == 1
    assert "red-sst2 v2 rejected by bob@desk: canary failed; production stays v1" in out.stderr
    gate()  # gated again: awaiting approval again
    out = _cli("approve", "red-sst2", "2", "--reason", "canary fixed")
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) <= 3, out.output
    assert "red-sst2: production v1 -> v2 (approved by bob@desk: canary fixed)" in out.stdout
    assert production_version("red-sst2") == 2
    history = _json(_cli("history", "red-sst2", "--json").output)
    assert [(e["action"], e["by"]) for e in history[:4]] == [("approved", "bob@desk"), ("awaiting approval", "bob@desk"),
                                                            ("rejected", "bob@desk"), ("awaiting approval", "bob@desk")]


def test_evaluate_names_the_version_it_resolved_and_where_it_recorded_the_result(tmp_path, two_versions,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _cli("promote", "red-sst2", "1").exit_code == 0
    config = write_retrain_config(tmp_path / "c.yaml", "minilm", tmp_path / "runs",
                                  [synthetic_task("sst2", "sentiment", tmp_path)])
    out = _cli("evaluate", "red-sst2", "--config", str(config))
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) <= 3, out.output
    assert "red-sst2@production is v1: " in out.stdout and "accuracy=" in out.stdout
    [run_id] = [e["run_id"] for e in evaluations(MlflowClient().get_model_version("red-sst2", "1").tags).values()]
    assert f"recorded on red-sst2 v1 (tag redflow.evaluations) and as MLflow run(s) {run_id}" in out.stdout

    out = _cli("evaluate", "red-sst2", "--version", "2", "--config", str(config), "--json")
    document = json.loads(out.stdout)  # nothing else on stdout
    assert out.exit_code == 0 and document["version"] == 2 and document["requested"] == "2"
    tags = MlflowClient().get_model_version("red-sst2", "2").tags
    assert list(document["runs"].values()) == [e["run_id"] for e in evaluations(tags).values()]
    [(suite, metrics)] = document["metrics"].items()
    assert suite in document["runs"] and "accuracy" in metrics
    assert "recorded on red-sst2 v2" in out.stderr


def test_with_a_prefect_api_configured_promote_runs_as_a_flow_run(tmp_path, two_versions, monkeypatch,
                                                                  prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL

    async def promote_runs() -> int:
        async with get_client() as client:
            return len(await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["promote"]))))

    before = asyncio.run(promote_runs())
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    out = _cli("promote", "red-sst2", "1", "--tracking-uri", two_versions, "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["promoted"] is True and "ran as a flow run" in out.stderr
    assert asyncio.run(promote_runs()) == before + 1


def test_a_retrain_whose_only_task_fails_exits_1_and_claims_nothing_else_registered(tmp_path, tiny_checkpoints,
                                                                                    prefect_harness):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,0\nok,1\n")  # the task asks for a 'sentence' column
    path = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [
        {"name": "broken", "data": {"source": "csv", "path": str(bad), "text_columns": ["sentence"]}}])
    out = _cli("retrain", str(path))
    assert out.exit_code == 1 and "1 of 1 tasks failed (broken)" in out.output
    assert "others were registered" not in out.output


def test_prefect_temporary_server_gets_three_minutes_to_start_unless_the_user_chose_a_timeout():
    """Fresh processes: Prefect reads its settings once per process."""
    import os
    import subprocess
    import sys

    script = ("from flows.orchestrator import ephemeral_server_grace\n"
              "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as S\n"
              "with ephemeral_server_grace() as t:\n    print(t, S.value())\nprint(S.value())\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    default = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert default.stdout.split() == ["180", "180", "20"], default.stderr  # only inside the block, Prefect's 20 after
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "33"
    chosen = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert chosen.stdout.split() == ["33", "33", "33"], chosen.stderr
