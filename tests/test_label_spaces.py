"""Label spaces: a class id means something only through the label list its model was trained with.

Reorder a task's ``label_list`` (or let an inferred label set gain a class) and production's ids name other
classes tonight. The gate must score production in tonight's label space (by name) or not compare at all, and
``init: production`` must put the old head's rows in tonight's order or refuse. Real flows, a real MLflow
registry on SQLite, the packaged MiniLM (it learns the sentiment rows) and a tiny BERT (warm starts).
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import write_retrain_config
from mlflow import MlflowClient

from flows.config import load_config
from registry.version_tags import gate_details
from tasks.evaluate.paired import RowScores
from tasks.lifecycle.gate import LabelledState, LabelSpaceMismatch, align_head, in_label_space, label_mapping


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def _sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    from tasks.data.synthetic import generate_rows

    return [(texts[0], label) for texts, label in generate_rows("sentiment", n, seed)]


def _client(cfg_path: Path) -> MlflowClient:
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def _task(data_file: Path, label_list: list[str] | None, **train) -> dict:
    data = {"source": "csv", "path": str(data_file), "text_columns": ["sentence"], "test_size": 0.2,
            "validation_size": 0.1}
    if label_list is not None:
        data["label_list"] = label_list
    return {"name": "reviews", "data": data, **({"train": train} if train else {})}


# ---- the mapping itself ----------------------------------------------------------------------------------
def test_label_mapping_gives_tonights_id_of_each_champion_id_by_name():
    assert label_mapping(["negative", "positive"], ["negative", "positive"]) == [0, 1]
    assert label_mapping(["negative", "positive"], ["positive", "negative"]) == [1, 0]
    assert label_mapping(["a", "b", "c"], ["c", "a", "b"]) == [1, 2, 0]


def test_a_label_without_counterpart_or_a_changed_count_is_a_mismatch_that_names_them_and_the_fix():
    with pytest.raises(LabelSpaceMismatch) as gained:
        label_mapping(["negative", "positive"], ["mixed", "negative", "positive"])
    message = str(gained.value)
    assert "['mixed']" in message and "from 2 to 3" in message
    assert "redflow promote <model> <version> --force" in message and isinstance(gained.value, ValueError)
    with pytest.raises(LabelSpaceMismatch, match=r"\['negative'\] have no counterpart tonight.*\['bad'\] have no "
                                                 r"counterpart in the champion's labels"):
        label_mapping(["negative", "positive"], ["bad", "positive"])
    with pytest.raises(LabelSpaceMismatch, match="repeated"):
        label_mapping(["a", "a", "b"], ["a", "b", "b"])


def test_champion_predictions_are_read_through_its_own_labels_and_unlabelled_tasks_are_untouched():
    rows = RowScores(metric="accuracy", kind="prediction", predictions=[0.0, 1.0, 1.0], labels=[1.0, 0.0, 1.0])
    mapped = in_label_space(rows, ["negative", "positive"], ["positive", "negative"])
    assert mapped.predictions == [1.0, 0.0, 0.0] and mapped.labels == rows.labels
    assert mapped.value() == pytest.approx(2 / 3) and rows.value() == pytest.approx(1 / 3)
    regression = RowScores(metric="pearson", kind="prediction", predictions=[0.2, 0.9], labels=[0.1, 1.0])
    assert in_label_space(regression, None, None) is regression
    with pytest.raises(LabelSpaceMismatch):  # a champion that records no labels cannot be read tonight
        in_label_space(rows, None, ["negative", "positive"])


def test_align_head_permutes_only_the_output_rows_and_refuses_other_names():
    dense = torch.arange(4.0).reshape(2, 2)  # a hidden layer as wide as the label count: never permuted
    out = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    state = LabelledState({"edit.layer.0.scale": torch.ones(2), "head.classifier.dense.weight": dense,
                           "head.classifier.out_proj.weight": out, "head.classifier.out_proj.bias": torch.tensor(
                               [10.0, 20.0, 30.0])}, ["a", "b", "c"])
    aligned = align_head(state, ["c", "a", "b"], "production v1")
    assert torch.equal(aligned["head.classifier.out_proj.weight"], out[[2, 0, 1]])
    assert aligned["head.classifier.out_proj.bias"].tolist() == [30.0, 10.0, 20.0]
    assert aligned["head.classifier.dense.weight"] is dense and aligned.label_list == ["c", "a", "b"]
    plain = dict(state)  # no recorded labels: loaded as given (the caller vouches for it)
    assert align_head(plain, ["c", "a", "b"]) is plain
    with pytest.raises(LabelSpaceMismatch, match=r"production v1 was trained on labels \['a', 'b', 'c'\], tonight's "
                                                 r"data has \['a', 'b', 'd'\].*init: fresh.*old label order"):
        align_head(state, ["a", "b", "d"], "production v1")


# ---- the gate, night after night ------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_a_reordered_or_grown_label_list_never_promotes_an_untrained_candidate(tmp_path, minilm_path):
    """Night 1 promotes v1. Night 2 reorders label_list, and a candidate that does not learn (tiny learning
    rate) meets production rescored in tonight's space: the same score as on night 1, not 1 - it, so the
    candidate stays out. Night 3's inferred labels gain a class: no comparison, and the reason says why."""
    from flows.retrain import retrain

    data_file = tmp_path / "reviews.csv"
    rows = _sentiment_rows(260, seed=1)
    _write_rows(data_file, rows)

    def night(label_list, **train):
        return write_retrain_config(tmp_path / "nightly.yaml", minilm_path, tmp_path / "runs",
                                    [_task(data_file, label_list, **train)],
                                    defaults={"method": "red", "epochs": 2, "batch_size": 16, "max_length": 48,
                                              "learning_rate": 2e-2, "logging_steps": 5},
                                    promotion={"margin": 0.0, "minimum": 0.0})

    cfg_path = night(["negative", "positive"])
    client = _client(cfg_path)
    night1 = retrain(config=str(cfg_path))["reviews"]
    assert night1["promoted"] and night1["version"] == 1 and night1["challenger"] > 0.6, night1

    night2 = retrain(config=str(night(["positive", "negative"], learning_rate=1e-9, epochs=1)))["reviews"]
    assert night2["status"] == "trained" and night2["version"] == 2 and night2["champion_version"] == 1
    # v1 on the same test rows (splits hash the text) in tonight's label space: its night-1 score, not 1 - it
    assert night2["champion"] == pytest.approx(night1["challenger"])
    assert not night2["promoted"] and night2["difference"] < 0, night2
    assert int(client.get_model_version_by_alias("red-reviews", "production").version) == 1

    mixed = [(f"an ordinary film, some parts fine and some not, number {i}", "mixed") for i in range(60)]
    _write_rows(data_file, rows + mixed)  # no label_list: inferred, sorted, and one class more
    night3 = retrain(config=str(night(None, learning_rate=1e-9, epochs=1)))["reviews"]
    assert night3["status"] == "trained" and night3["version"] == 3 and not night3["promoted"], night3
    reason = night3["reason"]
    assert reason.startswith("label spaces differ: production v1 and v3 are not compared"), reason
    assert "['mixed']" in reason and "from 2 to 3" in reason
    assert "redflow promote red-reviews 3 --force" in reason
    v3 = client.get_model_version("red-reviews", "3")
    assert v3.tags["redflow.gate.decision"] == "kept out" and gate_details(v3.tags)["reason"] == reason
    assert int(client.get_model_version_by_alias("red-reviews", "production").version) == 1


# ---- warm starts ------------------------------------------------------------------------------------------
def _head(client: MlflowClient, version: int, root: Path) -> dict[str, torch.Tensor]:
    from red import read_edit
    from registry.models import download_edit

    return read_edit(download_edit("red-reviews", version, root / f"v{version}"))[0]


@pytest.mark.usefixtures("prefect_harness")
def test_warm_start_maps_head_rows_by_label_name_and_refuses_other_labels(tmp_path, tiny_checkpoints):
    from flows.retrain import RetrainFailed, retrain

    data_file = tmp_path / "reviews.csv"
    rows = _sentiment_rows(120, seed=3)
    _write_rows(data_file, rows)

    def night(label_list, **train):
        return write_retrain_config(tmp_path / "warm.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [_task(data_file, label_list, **train)])

    cfg_path = night(["negative", "positive"])
    client = _client(cfg_path)
    assert retrain(config=str(cfg_path))["reviews"]["version"] == 1
    warm = retrain(config=str(night(["positive", "negative"], init="production", learning_rate=1e-30)))["reviews"]
    assert warm["init"] == "production v1" and warm["version"] == 2
    v1, v2 = _head(client, 1, tmp_path / "dl"), _head(client, 2, tmp_path / "dl")
    assert v1.keys() == v2.keys() and {"head.classifier.weight", "head.classifier.bias"} <= set(v1)
    for key, tensor in v1.items():  # lr 0: v2 is v1, its classifier rows in tonight's order
        expected = tensor[[1, 0]] if key.startswith("head.classifier.") else tensor
        torch.testing.assert_close(v2[key], expected, rtol=0, atol=0, msg=key)
    assert warm["champion"] == pytest.approx(warm["challenger"]) and warm["difference"] == 0  # one model, one space

    renamed = [(text, "bad" if label == "negative" else label) for text, label in rows]
    _write_rows(data_file, renamed)
    assert int(client.get_model_version_by_alias("red-reviews", "production").version) == 1  # a tie stays out
    with pytest.raises(RetrainFailed, match=r"cannot warm-start: production v1 was trained on labels \['negative', "
                                            r"'positive'\], tonight's data has \['bad', 'positive'\].*init: fresh"):
        retrain(config=str(night(["bad", "positive"], init="production")))
    assert len(client.search_model_versions("name='red-reviews'")) == 2  # nothing trained on swapped classes


def test_co_training_warm_start_maps_head_rows_by_name_and_refuses_other_labels(tmp_path, tiny_checkpoints):
    from red import read_edit
    from tasks.data import DataSpec, prepare_data
    from tasks.training import CoTask, TrainConfig, TrainingError, co_train, train

    rows = _sentiment_rows(80, seed=4)
    _write_rows(tmp_path / "reviews.csv", rows)
    _write_rows(tmp_path / "renamed.csv", [(t, "bad" if label == "negative" else label) for t, label in rows])

    def data(name: str, file: str, labels: list[str]):
        spec = DataSpec(name=name, source="csv", path=tmp_path / file, text_columns=["sentence"], label_list=labels)
        return prepare_data(spec, seed=42, cache_dir=tmp_path / "cache")

    def config(**kw) -> TrainConfig:
        return TrainConfig(**{**dict(model=tiny_checkpoints["bert"], epochs=1, batch_size=8, learning_rate=1e-30,
                                     max_length=32, logging_steps=1), **kw})

    old = data("old", "reviews.csv", ["negative", "positive"])
    # a real start (non-zero head bias), then a rate of 1e-30, below fp32 resolution: the rows move only by the mapping
    start = read_edit(train(old, config(learning_rate=1e-2), tmp_path / "start").edit_path)[0]
    production = LabelledState(start, old.label_list)
    results = co_train([CoTask(data("reordered", "reviews.csv", ["positive", "negative"]), config(),
                               tmp_path / "co" / "reordered", init_state=production, init_note="production v1"),
                        CoTask(data("renamed", "renamed.csv", ["bad", "positive"]), config(seed=2),
                               tmp_path / "co" / "renamed", init_state=production, init_note="production v1")],
                       None, tmp_path / "co")
    assert isinstance(results["renamed"], TrainingError)
    assert "production v1 was trained on labels ['negative', 'positive']" in str(results["renamed"])
    assert "init: fresh" in str(results["renamed"])
    warm = read_edit(results["reordered"].edit_path)[0]
    for key in ("head.classifier.weight", "head.classifier.bias"):
        torch.testing.assert_close(warm[key], start[key][[1, 0]], rtol=0, atol=0, msg=key)
