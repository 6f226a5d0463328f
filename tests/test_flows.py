"""The retrain flow under a real (temporary) Prefect server with a real MLflow backend.

Flow runs cost about a second each, so each test here checks a whole story.
"""
from __future__ import annotations

import pytest
from conftest import synthetic_task, write_retrain_config
from mlflow import MlflowClient

from flows.config import ConfigError, load_config

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
    with pytest.raises(RetrainFailed, match=r"1 of 3 tasks failed \(broken\).*sentence"):
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

    # the nightly job again: a new candidate, gated against production. Same data and seed give the
    # same score, and a tie does not replace production.
    retrain(config=str(cfg_path), only=["sentiment"])
    versions = client.search_model_versions("name='red-sentiment'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert int(client.get_model_version_by_alias("red-sentiment", "candidate").version) == 2
    assert int(client.get_model_version_by_alias("red-sentiment", "production").version) == 1


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
