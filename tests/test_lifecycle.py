"""A process may die between any two steps of a night: the next run finishes exactly what is missing.

Trained? registered? gated? Each story kills a run at one seam (a real SIGKILL in a child process where it
matters) and checks that the next run registers what trained and gates what registered, nothing twice.
Real Prefect (the session's test harness), a real MLflow registry on SQLite, a tiny BERT checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import synthetic_task, write_retrain_config
from mlflow import MlflowClient

from flows.config import load_config
from registry.tracking import registered_checksum

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[1]


def _client(cfg_path) -> MlflowClient:
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def _die_after(step: str, cfg_path: Path, task: str) -> None:
    """Run one task's night up to and including ``step`` in a child process, then SIGKILL it there."""
    script = textwrap.dedent(f"""
        import os, signal
        from flows import steps
        from flows.config import load_config
        cfg = load_config({str(cfg_path)!r})
        task = next(t for t in cfg.tasks if t.name == {task!r})
        data = steps.prepare_step(cfg, task)
        plan = steps.plan_step(cfg, task, data)
        result = steps.train_step(cfg, task, data, plan, "killed-run")
        if {step!r} == "register":
            evaluation = steps.evaluate_step(cfg, task, result, data)
            steps.register_step(cfg, task, result, evaluation)
        elif {step!r} == "version":  # the version is ready, the attempt not yet marked registered
            from registry import log_training, register_edit
            steps.setup_store(cfg)
            register_edit(result, log_training(result, experiment=cfg.experiment), model_name=cfg.model_name(task),
                          tags={{"retrain_config": cfg.name}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def test_a_version_registered_by_a_run_killed_before_its_gate_is_gated_by_the_next_run(tmp_path, tiny_checkpoints):
    from flows import steps
    from flows.retrain import retrain

    task = synthetic_task("sentiment", "sentiment", tmp_path)
    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [task])
    assert retrain(config=str(cfg_path))["sentiment"]["decision"] == "promoted"  # night 1: v1 in production

    task["train"] = {"learning_rate": 2e-2}  # night 2 trains v2, registers it, and dies before the gate
    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs", [task])
    _die_after("register", cfg_path, "sentiment")
    client = _client(cfg_path)
    v2 = client.get_model_version("red-sentiment", "2")
    assert "redflow.gate.decision" not in v2.tags
    assert int(client.get_model_version_by_alias("red-sentiment", "production").version) == 1

    row = retrain(config=str(cfg_path))["sentiment"]  # the rerun: nothing to train, v2 still to gate
    assert row["status"] == "gated" and row["version"] == 2 and row["steps_trained"] == 0, row
    assert "never gated" in row["why"]
    test_rows = len(steps.prepare_step(load_config(cfg_path), load_config(cfg_path).tasks[0]).test)
    assert row["champion_version"] == 1 and row["rows"] == test_rows  # against production, on the same rows
    assert client.get_model_version("red-sentiment", "2").tags["redflow.gate.decision"] == row["decision"]
    gate = client.get_run(v2.run_id).data.metrics  # the rerun's comparison on v2's run, as a night's gate logs it
    assert gate["gate/champion"] == pytest.approx(row["champion"]) and gate["gate/rows"] == test_rows
    assert len(client.search_model_versions("name='red-sentiment'")) == 2  # nothing registered twice

    again = retrain(config=str(cfg_path))["sentiment"]  # gated now: the night after has nothing to do
    assert again["status"] == "unchanged" and again["version"] == 2


def test_a_first_version_killed_before_its_gate_reaches_production_on_the_rerun(tmp_path, tiny_checkpoints):
    """Killed after the version became ready but before the attempt recorded it: the gating run records it, so a
    later --force trains afresh instead of registering (and gating) the same training again."""
    from flows.retrain import retrain

    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [synthetic_task("topic", "topic", tmp_path)])
    _die_after("version", cfg_path, "topic")
    row = retrain(config=str(cfg_path))["topic"]
    assert (row["status"], row["decision"], row["version"]) == ("gated", "promoted", 1)
    client = _client(cfg_path)
    assert int(client.get_model_version_by_alias("red-topic", "production").version) == 1
    forced = retrain(config=str(cfg_path), force=True)["topic"]
    assert forced["status"] == "trained" and forced["steps_trained"] > 0 and forced["version"] == 2
    history = json.loads(client.get_model_version("red-topic", "1").tags["redflow.alias_history"])
    assert [e["action"] for e in history].count("promoted") == 1  # gated once


def test_production_removed_by_hand_is_not_taken_for_a_first_version(tmp_path, tiny_checkpoints):
    from flows.retrain import retrain

    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [synthetic_task("topic", "topic", tmp_path)])
    assert retrain(config=str(cfg_path))["topic"]["decision"] == "promoted"
    _client(cfg_path).delete_registered_model_alias("red-topic", "production")
    row = retrain(config=str(cfg_path), force=True)["topic"]
    assert row["version"] == 2 and row["decision"] == "kept out"
    assert "v1 held it" in row["reason"] and "redflow promote red-topic 1 --force" in row["reason"]


def test_a_version_decided_meanwhile_keeps_its_decision(tmp_path, tiny_checkpoints):
    """A twin run that gated the version first wins: the gate decides once per version."""
    from flows import steps
    from registry import gate_and_promote
    from registry.aliases import PromotionPolicy

    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [synthetic_task("topic", "topic", tmp_path)])
    _die_after("register", cfg_path, "topic")
    client = _client(cfg_path)
    first = gate_and_promote("red-topic", 1, PromotionPolicy(minimum=2.0))  # the twin: rejected (unreachable min)
    assert not first.promoted
    cfg = load_config(cfg_path)
    task = cfg.tasks[0]
    data = steps.prepare_step(cfg, task)
    plan = steps.plan_step(cfg, task, data)
    assert plan.action == steps.UNCHANGED, plan.reasons  # decided: nothing left to do
    again = steps.gate_registered_step(cfg, task, steps.Plan(steps.GATE, plan.identity, latest_version=1), data)
    assert not again.promoted and again.reason == first.reason
    history = json.loads(client.get_model_version("red-topic", "1").tags["redflow.alias_history"])
    assert [e["action"] for e in history].count("kept out") == 1


def test_a_co_training_killed_before_registering_is_registered_task_by_task_without_retraining(tmp_path,
                                                                                              tiny_checkpoints):
    from flows import steps
    from flows.retrain import retrain
    from tasks.lifecycle.attempts import read_state

    tasks = [synthetic_task("sentiment", "sentiment", tmp_path), synthetic_task("topic", "topic", tmp_path)]
    cfg_path = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs", tasks,
                                    co_train=True)
    cfg = load_config(cfg_path)
    datas = [steps.prepare_step(cfg, t) for t in cfg.tasks]
    plans = [steps.plan_step(cfg, t, d) for t, d in zip(cfg.tasks, datas)]
    group = steps.co_train_key(cfg, cfg.tasks[0], datas[0])
    results = steps.cotrain_step(cfg, group, cfg.tasks, datas, plans, "died-before-register")
    assert all(r.steps_trained > 0 for r in results.values())
    steps.register_step(cfg, cfg.tasks[0], results["sentiment"], None)  # ...and the process died here

    summary = retrain(config=str(cfg_path))  # sentiment: gate what registered; topic (alone now): register
    assert summary["sentiment"]["status"] == "gated" and summary["sentiment"]["version"] == 1
    assert summary["topic"]["status"] == "trained" and summary["topic"]["steps_trained"] == 0
    assert "reusing finished attempt" in summary["topic"]["why"]
    client = _client(cfg_path)
    for name, result in results.items():
        (mv,) = client.search_model_versions(f"name='red-{name}'")
        assert registered_checksum(mv) == __import__("red").read_edit(result.edit_path)[1]["tensors_sha256"]
    attempts = [p for p in (tmp_path / "runs" / "test" / "@cotrain" / group / "attempts").iterdir() if p.is_dir()]
    assert len(attempts) == 1  # no second co-training
    state = read_state(attempts[0])
    assert state["status"] == "registered" and set(state["registered"]) == {"sentiment", "topic"}
    assert all(row["status"] == "unchanged" for row in retrain(config=str(cfg_path)).values())


def test_a_training_registered_twice_is_one_version(tmp_path, tiny_checkpoints):
    """A retry of the register step, or a twin run that found the same finished training, registers nothing new."""
    from flows import steps

    cfg_path = write_retrain_config(tmp_path / "n.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [synthetic_task("topic", "topic", tmp_path)])
    cfg = load_config(cfg_path)
    task = cfg.tasks[0]
    data = steps.prepare_step(cfg, task)
    result = steps.train_step(cfg, task, data, steps.plan_step(cfg, task, data), "run")
    evaluation = steps.evaluate_step(cfg, task, result, data)
    first = steps.register_step(cfg, task, result, evaluation)
    second = steps.register_step(cfg, task, result, evaluation)
    assert first == second and first["version"] == 1
    assert len(_client(cfg_path).search_model_versions("name='red-topic'")) == 1


def test_prune_keeps_every_attempt_a_later_run_could_still_use(tmp_path):
    """Crashed, transiently failed and finished-but-unregistered attempts survive any ``keep``; registered and
    deterministically failed ones beyond it go, and so does a finished one whose inputs were registered since."""
    from tasks.lifecycle.attempts import mark_registered, open_attempt, prune
    from tasks.lifecycle.identity import Identity

    def ident(data: str) -> Identity:
        return Identity(data_hash=data, config_hash="c", base_id="b", code_version="src:x")

    def attempt(data: str, end: str):
        a = open_attempt(tmp_path, ident(data), f"run-{data}-{end}")
        if end == "transient":
            a.fail(OSError("disk full"), transient=True)
        elif end == "nan":
            a.fail(ValueError("loss is NaN"), transient=False)
        elif end == "crashed":
            a.close()  # still 'training', its process gone
        else:
            (a.folder / "result.json").write_text("{}")
            a.finish()
            if end == "registered":
                mark_registered(a.folder, "red-t", 1)
        return a.folder

    keep = {attempt("d1", "transient"), attempt("d2", "trained"), attempt("d3", "crashed")}
    gone = {attempt("d4", "nan"), attempt("d5", "trained"), attempt("d6", "registered")}
    newest = attempt("d5", "registered")  # registers d5's inputs: the older unregistered d5 is superseded
    removed = set(prune(tmp_path, keep=1))
    assert removed == gone
    assert all(folder.is_dir() for folder in keep | {newest})


def _identity(**changes: str):
    from tasks.lifecycle.identity import Identity

    return Identity(**{"data_hash": "d", "config_hash": "c", "base_id": "b", "code_version": "src:x", **changes})


@pytest.mark.parametrize("latest, force, action, reason", [
    (None, False, "train", "first training of this task"),
    (dict(gated=True), False, "unchanged", "same data, training config, base model and code as v3"),
    (dict(gated=False), False, "gate", "v3 was registered from these inputs but never gated"),
    (dict(gated=True), True, "train", "forced: same inputs as v3"),
    (dict(gated=False), True, "train", "forced: same inputs as v3"),
    (dict(gated=True, identity=None), False, "train", "v3 records no training identity"),
    (dict(gated=True, identity=_identity(data_hash="old")), False, "train", "since v3: data changed (old -> d)"),
])
def test_the_plan_trains_changed_inputs_gates_what_was_never_gated_and_leaves_the_rest(latest, force, action,
                                                                                        reason):
    from tasks.lifecycle.plan import VersionRecord, decide

    record = None if latest is None else VersionRecord(number=3, **{"identity": _identity(), **latest})
    plan = decide(_identity(), record, force=force)
    assert plan.action == action and plan.reasons[0].startswith(reason)
    assert plan.latest_version == (None if latest is None else 3)


def test_a_config_set_back_to_an_earlier_value_names_that_version_and_trains_nothing():
    """Not only the latest version: any registered version with tonight's identity is tonight's (the newest such)."""
    from tasks.lifecycle.plan import VersionRecord, decide

    latest = VersionRecord(number=3, identity=_identity(config_hash="new"), gated=True)
    earlier = [VersionRecord(number=1, identity=_identity(), gated=True),
               VersionRecord(number=2, identity=_identity(), gated=True)]
    plan = decide(_identity(), latest, earlier=earlier)
    assert plan.action == "unchanged" and plan.latest_version == 2
    assert plan.reasons[0].startswith("same data, training config, base model and code as v2, an earlier version "
                                      "than the latest (v3): nothing trained, no duplicate registered")
    never_gated = decide(_identity(), latest, earlier=[VersionRecord(number=2, identity=_identity(), gated=False)])
    assert (never_gated.action, never_gated.latest_version) == ("gate", 2)
    assert decide(_identity(), latest, earlier=earlier, force=True).action == "train"  # --force still trains
    assert decide(_identity(config_hash="other"), latest, earlier=earlier).action == "train"


def test_the_plan_names_the_recipe_fields_that_changed_and_the_production_version_to_start_from():
    from tasks.lifecycle.plan import VersionRecord, decide

    record = VersionRecord(number=2, identity=_identity(config_hash="old"), gated=True,
                           recipe={"learning_rate": 0.01, "edit": {"kind": "scale+bias"}})
    plan = decide(_identity(), record, recipe={"learning_rate": 0.05, "edit": {"kind": "scale+bias"}},
                  init_production=True, production=1)
    assert plan.action == "train" and plan.init_version == 1
    assert plan.reasons == ["since v2: training config changed: learning_rate 0.01 -> 0.05"]
    fresh = decide(_identity(), None, init_production=True, production=None)
    assert fresh.init_version is None and "no production version yet: starting fresh" in fresh.reasons[-1]


def test_an_unreadable_attempt_record_is_skipped_with_a_warning_naming_it_and_the_fix(tmp_path, caplog):
    import logging

    from tasks.lifecycle.attempts import finished_unregistered, open_attempt, read_state

    attempt = open_attempt(tmp_path, _identity(), "run")
    (attempt.folder / "result.json").write_text("{}")
    attempt.finish()
    (attempt.folder / "attempt.json").write_text('{"status": "trai')  # cut off by a full disk
    with caplog.at_level(logging.WARNING, logger="tasks.lifecycle.attempts"):
        assert finished_unregistered(tmp_path, _identity()) is None
        assert read_state(attempt.folder) is None  # said once per file
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(attempt.folder / "attempt.json") in warning and "delete the folder" in warning
