"""GLUE by task, whatever the user calls it: presets come from the data's GLUE task, and every place that scores
a GLUE task (training, the evaluation suites that re-evaluation also runs) reports the task's metric set with
the paper's primary metric: MRPC/QQP accuracy and F1 (accuracy primary), STS-B Pearson and Spearman, CoLA MCC.
"""
from __future__ import annotations

import pytest

from tasks.data import DataSpec, prepare_data
from tasks.evaluate.metrics import metric_set
from tasks.training import TrainConfig, train

from test_data import write_glue


def test_metric_sets_put_the_primary_metric_first():
    assert metric_set("mrpc", "accuracy") == ("accuracy", "f1")
    assert metric_set("qqp", "accuracy") == ("accuracy", "f1")
    assert metric_set("stsb", "pearson") == ("pearson", "spearman")
    assert metric_set("cola", "mcc") == ("mcc",)
    assert metric_set("mrpc", "f1") == ("f1", "accuracy")  # a config may rank by F1: it leads, accuracy still reported
    assert metric_set("sentiment", "accuracy") == ("accuracy",)  # not a GLUE task: its one metric
    assert metric_set(None, "matthews_correlation") == ("mcc",)


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return write_glue(tmp_path_factory.mktemp("glue"), n_train=16, n_dev={"MRPC": 12, "STS-B": 12})


@pytest.mark.parametrize("task,name,metrics,primary,learning_rate", [
    ("mrpc", "mrpc-nightly", {"accuracy", "f1"}, "accuracy", 5e-3),
    ("stsb", "sts-weekly", {"pearson", "spearman"}, "pearson", 3e-3),
])
def test_a_renamed_glue_task_trains_with_its_preset_and_reports_its_metric_set(glue_root, tiny_checkpoints, tmp_path,
                                                                              task, name, metrics, primary,
                                                                              learning_rate):
    from tasks.evaluate.suites import run_suite

    data = prepare_data(DataSpec(name=name, source="glue", path=glue_root, task=task), seed=0)
    assert data.name == name and data.task == task
    config = TrainConfig(model=tiny_checkpoints["bert"], preset="roberta-base-glue", epochs=1, batch_size=8,
                         max_length=32, logging_steps=1)
    result = train(data, config, tmp_path / "out")
    assert result.params["learning_rate"] == learning_rate  # the paper's value for this GLUE task (RoBERTa-base, RED)
    assert result.primary_metric == primary
    assert set(result.validation) >= metrics and set(result.test) >= metrics
    assert all(metrics <= {k[len("validation_"):] for k in e} for e in result.epochs)
    report = run_suite("test", result.edit_path, data=data, out_dir=tmp_path / "eval")  # as re-evaluation runs it
    assert set(report.metrics) == metrics and report.primary == primary
    assert report.metrics == pytest.approx({m: result.test[m] for m in metrics}, nan_ok=True)
