"""The scheduled retrain, night after night, on one registry: what the product exists for.

Real Prefect flows (under the session's test harness), a real MLflow registry on SQLite, real
models (the packaged MiniLM; tiny GPT-2 for the causal-LM task). Each test is one story.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import write_retrain_config
from mlflow import MlflowClient

from flows.config import load_config
from registry.models import read_identity_document
from registry.tracking import registered_checksum
from registry.version_tags import evaluations, gate_details

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(cfg_path) -> MlflowClient:
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def _sentiment_rows(n: int, seed: int, exclude: set | None = None) -> list[tuple[str, str]]:
    from tasks.data.synthetic import generate_rows

    return [(texts[0], label) for texts, label in generate_rows("sentiment", n, seed, exclude)]


def _prepared(cfg_path, task: str):
    from flows.steps import prepare_step

    cfg = load_config(cfg_path)
    return prepare_step(cfg, next(t for t in cfg.tasks if t.name == task))


def test_four_nights_of_a_growing_csv(tmp_path, minilm_path):
    """Night 1 registers and promotes v1; night 2 (same data) registers nothing; night 3 (rows appended)
    trains afresh, keeps every test row in test, and is gated against production re-scored on the same
    rows; night 4 (training labels corrupted) is not promoted."""
    from flows.retrain import retrain
    from registry.champion import score_version

    data_file = tmp_path / "reviews.csv"
    rows = _sentiment_rows(260, seed=1)
    _write_rows(data_file, rows)
    task = {"name": "reviews", "data": {"source": "csv", "path": str(data_file), "text_columns": ["sentence"],
                                        "label_list": ["negative", "positive"], "test_size": 0.2,
                                        "validation_size": 0.1}}
    cfg_path = write_retrain_config(tmp_path / "nightly.yaml", minilm_path, tmp_path / "runs", [task],
                                    defaults={"method": "red", "epochs": 2, "batch_size": 16, "max_length": 48,
                                              "learning_rate": 2e-2, "logging_steps": 5},
                                    promotion={"margin": 0.0, "minimum": 0.6})
    client = _client(cfg_path)

    # night 1
    night1 = retrain(config=str(cfg_path))["reviews"]
    assert night1["status"] == "trained" and night1["steps_trained"] > 0 and night1["promoted"]
    assert night1["version"] == 1 and night1["champion_version"] is None
    first = _prepared(cfg_path, "reviews")

    # night 2: nothing changed, nothing is trained or registered
    night2 = retrain(config=str(cfg_path))["reviews"]
    assert night2["status"] == "unchanged" and night2["steps_trained"] == 0 and night2["version"] == 1
    assert "same data, training config, base model and code as v1" in night2["reason"]
    assert [int(v.version) for v in client.search_model_versions("name='red-reviews'")] == [1]

    # night 3: the file grew
    _write_rows(data_file, rows + _sentiment_rows(60, seed=2, exclude={(t,) for t, _ in rows}))
    night3 = retrain(config=str(cfg_path))["reviews"]
    grown = _prepared(cfg_path, "reviews")
    assert night3["status"] == "trained" and night3["version"] == 2 and night3["resumed_from"] is None
    assert night3["steps_trained"] == 2 * -(-len(grown.train) // 16)  # every step, from scratch
    assert "data changed" in night3["why"]
    assert set(first.test["sentence"]) <= set(grown.test["sentence"])  # no test row moved
    assert not set(first.train["sentence"]) & set(grown.test["sentence"])  # no training row became a test row
    v1, v2 = (client.get_model_version("red-reviews", v) for v in ("1", "2"))
    assert registered_checksum(v1) != registered_checksum(v2)
    # the champion was re-scored on tonight's rows, not taken from night 1's record
    assert night3["rows"] == len(grown.test) and night3["champion_version"] == 1
    rescored = score_version("red-reviews", 1, grown, metric="accuracy", max_length=48, work_dir=tmp_path / "check")
    assert night3["champion"] == pytest.approx(rescored.value())
    gated = gate_details(v2.tags)
    assert gated["champion"] == "1" and gated["comparison"]["n"] == len(grown.test)
    run2 = client.get_run(v2.run_id)  # the MLflow UI: the comparison on the challenger's run, which names v2
    assert re.search(r"\bv2\b", run2.data.tags["mlflow.runName"])
    assert run2.data.metrics["gate/champion"] == pytest.approx(night3["champion"])
    assert {"gate/challenger", "gate/difference", "gate/ci_low", "gate/ci_high"} <= set(run2.data.metrics)
    assert run2.info.end_time - run2.info.start_time >= run2.data.metrics["train_seconds"] * 1000 - 1
    gate_rows = json.loads(Path(client.download_artifacts(v2.run_id, "gate/disagreements.json")).read_text())
    assert gate_rows["columns"] == ["row", "sentence", "label", "challenger", "champion"]

    # night 4: a bad batch of labels (every training row flipped; the test rows are untouched)
    train_rows = set(grown.train["sentence"]) | set(grown.validation["sentence"])
    flip = {"negative": "positive", "positive": "negative"}
    current = [(t, flip[label] if t in train_rows else label) for t, label in
               list(csv.reader(data_file.open()))[1:]]
    _write_rows(data_file, current)
    night4 = retrain(config=str(cfg_path))["reviews"]
    production = night3["version"] if night3["promoted"] else 1
    assert night4["status"] == "trained" and night4["version"] == 3, night4
    assert not night4["promoted"] and night4["difference"] < 0, night4
    assert night4["difference"] < 0 and night4["champion_version"] == production
    assert int(client.get_model_version_by_alias("red-reviews", "production").version) == production


def test_causal_lm_gate_prefers_the_lower_loss(tmp_path, tiny_checkpoints):
    """Loss is lower-is-better: a worse (higher-loss) candidate stays out, a better one goes in."""
    from flows.retrain import retrain

    task = {"name": "chat", "data": {"source": "synthetic", "task": "instructions",
                                     "path": str(tmp_path / "data"), "synthetic": {"n_train": 48, "n_dev": 24}}}

    def night(**train):
        cfg_path = write_retrain_config(tmp_path / "lm.yaml", tiny_checkpoints["gpt2"], tmp_path / "runs",
                                        [{**task, "train": train}], promotion={"margin": 0.0},
                                        defaults={"method": "red", "epochs": 1, "batch_size": 16, "max_length": 64,
                                                  "logging_steps": 5})
        return retrain(config=str(cfg_path))["chat"]

    first = night(learning_rate=1e-2)
    assert first["promoted"] and first["metric"] == "loss"
    frozen = night(learning_rate=1e-30)  # the edit stays the identity (below fp32 resolution): a higher loss than v1's
    assert frozen["status"] == "trained" and "training config changed: learning_rate 0.01 -> 1e-30" in frozen["why"]
    assert not frozen["promoted"] and frozen["challenger"] > frozen["champion"] and frozen["difference"] < 0
    assert "lower is better" in frozen["reason"]
    better = night(learning_rate=3e-2, epochs=3)
    assert better["promoted"] and better["challenger"] < better["champion"] and better["champion_version"] == 1


def _arc_file(path: Path, n: int = 6) -> Path:
    rows = [{"id": f"q{i}", "question": {"stem": f"Which number is {i}?", "choices": [
        {"text": str(i), "label": "A"}, {"text": str(i + 1), "label": "B"}, {"text": str(i + 2), "label": "C"}]},
        "answerKey": "A"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gate_on_an_evaluation_suite_metric_scores_the_champion_on_the_same_questions(tmp_path, tiny_checkpoints):
    from flows.retrain import retrain

    arc = _arc_file(tmp_path / "arc.jsonl")
    cfg_path = write_retrain_config(
        tmp_path / "suite.yaml", tiny_checkpoints["gpt2"], tmp_path / "runs",
        [{"name": "chat", "data": {"source": "synthetic", "task": "instructions", "path": str(tmp_path / "data"),
                                   "synthetic": {"n_train": 32, "n_dev": 16}},
          "evaluate": ["test", {"suite": "arc", "path": str(arc)}],
          "promotion": {"metric": "arc/acc_norm", "margin": 0.0}}],
        defaults={"method": "red", "epochs": 1, "batch_size": 16, "max_length": 64, "learning_rate": 1e-2})
    first = retrain(config=str(cfg_path))["chat"]
    assert first["promoted"] and first["metric"] == "arc/acc_norm"
    second = retrain(config=str(cfg_path), force=True)["chat"]
    assert second["metric"] == "arc/acc_norm" and second["champion_version"] == 1
    # the same edit (same inputs, forced) on the same questions: the same score, so production stays
    assert second["challenger"] == pytest.approx(second["champion"]) and not second["promoted"]
    assert second["rows"] == 6


def test_a_gate_metric_no_suite_produces_is_a_config_error(tmp_path, tiny_checkpoints):
    from flows.config import ConfigError

    cfg_path = write_retrain_config(
        tmp_path / "bad.yaml", tiny_checkpoints["gpt2"], tmp_path / "runs",
        [{"name": "chat", "data": {"source": "synthetic", "task": "instructions"},
          "promotion": {"metric": "alpaca/lc_win_rate"}}])
    with pytest.raises(ConfigError, match=r"tasks.0.promotion.metric: .*'alpaca', which is not among .*\['test'\]"):
        load_config(cfg_path)
    cfg_path.write_text(cfg_path.read_text().replace("alpaca/lc_win_rate", "accuracy"))
    with pytest.raises(ConfigError, match=r"'accuracy' is not one the task's test rows give \(loss, perplexity\)"):
        load_config(cfg_path)


def test_a_run_killed_mid_training_is_resumed_by_the_next_run_only(tmp_path, tiny_checkpoints):
    """A real SIGKILL after the first epoch's checkpoint; the next run resumes it, trains only what is left,
    and registers an edit equal to an uninterrupted training's."""
    import os
    import subprocess
    import sys
    import textwrap

    from flows.retrain import retrain

    cfg_path = write_retrain_config(
        tmp_path / "crash.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
        [{"name": "sentiment", "data": {"source": "synthetic", "task": "sentiment", "path": str(tmp_path / "data"),
                                        "synthetic": {"n_train": 64, "n_dev": 24}}}],
        defaults={"method": "red", "epochs": 2, "batch_size": 16, "max_length": 32, "learning_rate": 1e-2})
    script = textwrap.dedent(f"""
        import os, signal
        from transformers import TrainerCallback
        from flows.config import load_config
        from flows import steps

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

        cfg = load_config({str(cfg_path)!r})
        task = cfg.tasks[0]
        data = steps.prepare_step(cfg, task)
        plan = steps.plan_step(cfg, task, data)
        steps.train_step(cfg, task, data, plan, "killed-run", callbacks=[Kill()])
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "REDFLOW_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]

    row = retrain(config=str(cfg_path))["sentiment"]
    assert row["status"] == "trained" and row["resumed_from"].endswith("checkpoint-4")
    assert row["steps_trained"] == 4  # epoch 2 only
    cfg = load_config(cfg_path)
    attempts = sorted(p for p in (Path(cfg.runs_dir) / cfg.name / "sentiment" / "attempts").iterdir() if p.is_dir())
    assert len(attempts) == 1  # it continued in the crashed run's folder, not a new one
    state = json.loads((attempts[0] / "attempt.json").read_text())
    assert state["status"] == "registered" and state["run_key"] == "killed-run" and state["version"] == 1


def test_warm_start_from_production_and_a_diverged_run_is_not_registered(tmp_path, tiny_checkpoints):
    from flows.retrain import RetrainFailed, retrain

    task = {"name": "sentiment", "data": {"source": "synthetic", "task": "sentiment", "path": str(tmp_path / "d"),
                                          "synthetic": {"n_train": 48, "n_dev": 24}}}

    def config(**train):
        return write_retrain_config(tmp_path / "warm.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [{**task, "train": train}])

    assert retrain(config=str(config()))["sentiment"]["version"] == 1
    warm = retrain(config=str(config(init="production", learning_rate=1e-30)))["sentiment"]
    assert warm["init"] == "production v1" and warm["version"] == 2
    client = _client(config())
    v1, v2 = (client.get_model_version("red-sentiment", v) for v in ("1", "2"))
    assert read_identity_document(v2)["init"] == "production v1"
    assert registered_checksum(v1) == registered_checksum(v2)  # lr 1e-30: v1 kept

    with pytest.raises(RetrainFailed, match=r"sentiment: train: TrainingDiverged: the training loss rose"):
        retrain(config=str(config(learning_rate=1e6, epochs=3)))
    assert len(client.search_model_versions("name='red-sentiment'")) == 2  # nothing registered
    # another edit layout trains from scratch (it used to crash on the old checkpoints with a KeyError)
    scale_only = retrain(config=str(config(edit={"kind": "scale"})))["sentiment"]
    assert scale_only["status"] == "trained" and scale_only["version"] == 3 and scale_only["steps_trained"] > 0


def test_weekly_reevaluation_scores_causal_lms_by_loss_at_their_length_and_isolates_failures(tmp_path,
                                                                                            tiny_checkpoints):
    from flows.manage import ReevaluationFailed, reevaluate
    from flows.retrain import retrain

    tasks = [{"name": n, "data": {"source": "synthetic", "task": "instructions", "path": str(tmp_path / "d"),
                                  "synthetic": {"n_train": 32, "n_dev": 16}}} for n in ("chat", "chat2")]
    cfg_path = write_retrain_config(tmp_path / "weekly.yaml", tiny_checkpoints["gpt2"], tmp_path / "runs", tasks,
                                    defaults={"method": "red", "epochs": 1, "batch_size": 16, "max_length": 24,
                                              "learning_rate": 1e-2}, promotion={"margin": 0.0})
    trained = retrain(config=str(cfg_path))
    client = _client(cfg_path)
    client.set_model_version_tag("red-chat2", "1", "edit_sha256", "0" * 64)  # its artifact no longer checks out
    with pytest.raises(ReevaluationFailed, match=r"1 of 2 re-evaluations failed; the others were recorded\. "
                                                 r"red-chat2 v1: .*checksum"):
        reevaluate(config=str(cfg_path))
    tags = client.get_model_version("red-chat", "1").tags
    recorded = evaluations(tags)["chat-test"]["metrics"]
    loss = recorded["loss"]
    assert recorded["perplexity"] == pytest.approx(__import__("math").exp(loss))
    assert loss == pytest.approx(trained["chat"]["challenger"], rel=1e-6)  # scored at the trained max length (24)


def test_a_finished_training_whose_run_died_before_registering_is_registered_not_retrained(tmp_path,
                                                                                            tiny_checkpoints):
    from flows import steps
    from flows.retrain import retrain

    cfg_path = write_retrain_config(
        tmp_path / "reg.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
        [{"name": "sentiment", "data": {"source": "synthetic", "task": "sentiment", "path": str(tmp_path / "d"),
                                        "synthetic": {"n_train": 48, "n_dev": 24}}}])
    cfg = load_config(cfg_path)
    task = cfg.tasks[0]
    data = steps.prepare_step(cfg, task)
    trained = steps.train_step(cfg, task, data, steps.plan_step(cfg, task, data), "died-before-register")
    assert trained.steps_trained > 0  # ...and then the process died: nothing registered
    row = retrain(config=str(cfg_path))["sentiment"]
    assert row["status"] == "trained" and row["version"] == 1 and row["steps_trained"] == 0
    assert "reusing finished attempt" in row["why"]
    client = _client(cfg_path)
    assert registered_checksum(client.get_model_version("red-sentiment", "1")) == \
        __import__("red").read_edit(trained.edit_path)[1]["tensors_sha256"]
    assert retrain(config=str(cfg_path))["sentiment"]["status"] == "unchanged"


def test_changing_how_a_task_trains_does_not_move_its_test_rows(tmp_path):
    from flows.steps import prepare_step

    lines = ["sentence,label"] + [f"row number {i},{i % 2}" for i in range(300)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    task = {"name": "t", "data": {"source": "csv", "path": str(tmp_path / "d.csv"), "text_columns": ["sentence"]}}
    splits = []
    for seed in (42, 43):
        cfg = load_config(write_retrain_config(tmp_path / f"s{seed}.yaml", "minilm", tmp_path / "runs", [task],
                                               defaults={"method": "red", "seed": seed}))
        splits.append(prepare_step(cfg, cfg.tasks[0]))
    assert list(splits[0].test["sentence"]) == list(splits[1].test["sentence"])
