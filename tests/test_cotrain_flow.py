"""Co-training in the nightly retrain: one Prefect task trains the group, each task is registered and gated alone.

Real Prefect (the session's test server), a real MLflow registry on SQLite, a tiny BERT checkpoint.
"""
from __future__ import annotations

import pytest
from conftest import synthetic_task, write_retrain_config
from mlflow import MlflowClient

from flows.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(cfg_path) -> MlflowClient:
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def _task_runs(prefix: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=prefix)))
    return sorted(r.name for r in runs)


def test_a_co_trained_night_registers_each_task_alone_and_a_bad_task_fails_alone(tmp_path, tiny_checkpoints):
    from flows.retrain import RetrainFailed, retrain

    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nfine,good\nok,bad\nmeh,awful\n")  # 'awful' is not a label of the list below
    tasks = [synthetic_task("sentiment", "sentiment", tmp_path),
             {**synthetic_task("topic", "topic", tmp_path), "train": {"learning_rate": 5e-3}},
             {**synthetic_task("paraphrase", "paraphrase", tmp_path), "train": {"learning_rate": 1e6}},
             {"name": "broken", "data": {"source": "csv", "path": str(bad), "text_columns": ["sentence"],
                                         "label_list": ["bad", "good"]}}]
    cfg_path = write_retrain_config(tmp_path / "retrain.yaml", tiny_checkpoints["bert"], tmp_path / "runs", tasks,
                                    co_train=True)
    with pytest.raises(RetrainFailed, match=r"2 of 4 tasks failed \(paraphrase, broken\); the other 2 completed"
                                            r".*paraphrase: train: TrainingDiverged: task paraphrase: the training "
                                            r"loss rose.*broken: prepare: DataError: .*awful"):
        retrain(config=str(cfg_path), force=False)
    client = _client(cfg_path)
    runs = {}
    for task in ("sentiment", "topic"):
        (version,) = client.search_model_versions(f"name='red-{task}'")
        assert int(version.version) == 1
        assert int(client.get_model_version_by_alias(f"red-{task}", "production").version) == 1  # gated: minimum 0
        run = client.get_run(version.run_id)
        runs[task] = run.info.run_id
        assert run.data.params["co_train.tasks"] == "sentiment,topic,paraphrase"
        assert run.data.params["learning_rate"] == {"sentiment": "0.01", "topic": "0.005"}[task]
        curve = client.get_metric_history(run.info.run_id, "train/loss")  # each task's own loss curve
        assert len(curve) >= 3 and "test_accuracy" in run.data.metrics
    assert runs["sentiment"] != runs["topic"]
    assert _task_runs("co-train-") == ["co-train-default.sequence"]  # one Prefect task trained the three
    assert not (tmp_path / "runs" / "test" / "sentiment" / "attempts").exists()  # in the group's attempt folder
    assert len([p for p in (tmp_path / "runs" / "test" / "@cotrain" / "default.sequence" / "attempts").iterdir()
                if p.is_dir()]) == 1
    assert client.search_registered_models("name='red-paraphrase'") == []  # diverged: stopped, not registered
    assert client.search_registered_models("name='red-broken'") == []

    # next night, same inputs: nothing is trained; forced, the two are co-trained again and gated against v1
    good = ["sentiment", "topic"]
    assert {r["status"] for r in retrain(config=str(cfg_path), only=good).values()} == {"unchanged"}
    summary = retrain(config=str(cfg_path), only=good, force=True)
    for task, other in (("sentiment", "topic"), ("topic", "sentiment")):
        row = summary[task]
        assert row["status"] == "trained" and row["version"] == 2 and row["co_trained_with"] == [other]
        assert row["champion_version"] == 1 and row["decision"] in ("promoted", "kept out") and row["rows"] > 0
        assert "co-trained with" in row["why"]


def test_co_training_refuses_reft_and_a_schedule_the_tasks_do_not_share(tmp_path, tiny_checkpoints):
    def config(*tasks, **extra):
        return load_config(write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                                list(tasks), **extra))

    a, b = synthetic_task("a", "sentiment", tmp_path), synthetic_task("b", "topic", tmp_path)
    with pytest.raises(ConfigError, match=r"co_train group 'default': co-training trains RED edits; task 'b' uses "
                                          r"method 'loreft': .*per-row prompt positions.*co_train: false"):
        config(a, {**b, "train": {"method": "loreft"}}, co_train=True)
    with pytest.raises(ConfigError, match=r"they differ in epochs \(a: 1.0, b: 3.0\)"):
        config(a, {**b, "train": {"epochs": 3}}, co_train=True)
    # alone, or in another group, either is fine; per-task learning rates never need to agree
    assert config(a, {**b, "train": {"method": "loreft"}, "co_train": False}, co_train=True).co_train_group(
        load_config(tmp_path / "c.yaml").tasks[1]) is None
    cfg = config(a, {**b, "train": {"epochs": 3, "learning_rate": 1e-3}, "co_train": "slow"},
                 co_train={"temperature": 2.0})
    assert [cfg.co_train_group(t) for t in cfg.tasks] == ["default", "slow"]
    assert cfg.co_train_settings().temperature == 2.0
