"""GLUE metrics, Trainer compute_metrics, classifier evaluation and the report object."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from red import EditConfig, attach
from tasks.evaluate import (EvalReport, evaluate_classification, glue_metrics, make_compute_metrics,
                            predict_classification, primary_metric)




# ---- glue_metrics --------------------------------------------------------------------------
def test_each_glue_task_reports_its_official_metric_set():
    preds, labels = [1, 0, 1, 1], [1, 0, 0, 1]
    assert set(glue_metrics("sst2", preds, labels)) == {"accuracy"}
    assert set(glue_metrics("mrpc", preds, labels)) == {"accuracy", "f1"}
    assert set(glue_metrics("cola", preds, labels)) == {"mcc"}
    assert set(glue_metrics("stsb", [0.1, 2.0, 3.5, 4.0], [0.0, 2.5, 3.0, 5.0])) == {"pearson", "spearman"}
    # names as they appear in file trees and configs
    assert glue_metrics("SST-2", preds, labels) == glue_metrics("glue/sst2", preds, labels)
    # the primary metric is the RED paper's Table 1 column: accuracy for MRPC and QQP, MCC for CoLA, Pearson for STS-B
    assert primary_metric("STS-B") == "pearson" and primary_metric("mrpc") == "accuracy"
    assert primary_metric("qqp") == "accuracy" and primary_metric("cola") == "mcc"


def test_values_match_hand_computed_ones():
    preds, labels = [1, 0, 1, 1], [1, 0, 0, 1]
    # tp=2, fp=1, fn=0, tn=1
    assert glue_metrics("accuracy", preds, labels) == {"accuracy": 0.75}
    assert glue_metrics("f1", preds, labels)["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    mcc = (2 * 1 - 1 * 0) / math.sqrt((2 + 1) * (2 + 0) * (1 + 1) * (1 + 0))
    assert glue_metrics("cola", preds, labels)["mcc"] == pytest.approx(mcc)
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0])
    out = glue_metrics("stsb", x, y)
    assert out["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert out["spearman"] == pytest.approx(0.8)  # rank correlation of 1,2,3,4 vs 1,3,2,4


def test_multiclass_f1_is_macro_and_constant_correlation_is_nan_not_zero():
    assert glue_metrics("f1", [0, 1, 2, 2], [0, 1, 2, 1])["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(glue_metrics("pearson", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0])["pearson"])


def test_bad_inputs_fail_loudly():
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        glue_metrics("sst2", [1, 0], [1, 0, 1])


# ---- Trainer compute_metrics ----------------------------------------------------------------
def test_compute_metrics_takes_argmax_of_classifier_logits():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    fn = make_compute_metrics("mrpc")
    out = fn(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0])))
    assert out == glue_metrics("mrpc", [1, 0, 1], [1, 0, 0])
    # Trainer passes (logits, hidden_states, ...) tuples when the model returns extra outputs
    assert fn(EvalPrediction(predictions=(logits, np.zeros((3, 4))), label_ids=np.array([1, 0, 0]))) == out


def test_compute_metrics_is_regression_aware():
    scores = np.array([[0.5], [2.0], [4.5], [3.0]])  # one output column: a regression head
    labels = np.array([0.4, 2.2, 4.0, 3.3], dtype=np.float32)
    out = make_compute_metrics("stsb")(EvalPrediction(predictions=scores, label_ids=labels))
    assert out == pytest.approx(glue_metrics("stsb", scores[:, 0], labels))
    assert out["pearson"] > 0.9


# ---- evaluate_classification ----------------------------------------------------------------
def _rows(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 4 + i % 5  # ragged: exercises padding
        ids = torch.randint(5, 90, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 3})
    return rows


def _randomize(edited, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def test_classifier_predictions_do_not_depend_on_batching(make_tiny):
    model = make_tiny("bert", head="cls")
    rows = _rows()
    one, labels = predict_classification(model, rows, batch_size=1)
    many, _ = predict_classification(model, rows, batch_size=4)
    assert np.array_equal(one, many) and labels.tolist() == [r["labels"] for r in rows]


def test_edited_classifier_scores_the_same_attached_and_merged(make_tiny):
    import datasets

    rows = _rows(12)
    dataset = datasets.Dataset.from_list(rows)  # what tasks.data.encode produces
    edited = attach(make_tiny("bert", head="cls"), EditConfig())
    _randomize(edited)
    attached = evaluate_classification(edited, dataset, "accuracy", batch_size=5)
    edited.merge()
    merged = evaluate_classification(edited, rows, "accuracy", batch_size=5)
    assert attached.metrics == merged.metrics
    assert attached.kind == "classification" and attached.primary == "accuracy"
    assert attached.details["n"] == 12 and sum(attached.details["predicted_class_counts"].values()) == 12


def test_regression_head_is_scored_with_correlations(make_tiny):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                   num_labels=1, problem_type="regression")).eval()
    rows = [{**r, "labels": float(i)} for i, r in enumerate(_rows(8))]
    report = evaluate_classification(model, rows, "stsb")
    assert set(report.metrics) == {"pearson", "spearman"} and report.primary == "pearson"
    assert -1.0 <= report.value <= 1.0


# ---- EvalReport ---------------------------------------------------------------------------
def test_report_round_trips_through_json_and_renders_a_markdown_table(tmp_path):
    report = EvalReport(name="glue/sst2", kind="classification", metrics={"accuracy": 0.9125, "f1": 0.5},
                        primary="accuracy", stderr={"accuracy": 0.01}, model="roberta-base + red",
                        details={"n": np.int64(872), "nested": {"x": (1, 2)}, "bad": math.nan})
    path = report.to_json(tmp_path / "r" / "report.json")
    data = json.loads(path.read_text())
    assert data["metrics"] == {"accuracy": 0.9125, "f1": 0.5} and data["details"]["bad"] is None
    again = EvalReport.from_json(path)
    assert again.metrics == report.metrics and again.primary == "accuracy" and again.details["n"] == 872
    md = report.to_markdown()
    assert "| **accuracy** | 0.9125 | 0.0100 |" in md and "| f1 | 0.5000 |  |" in md
    assert md.index("accuracy") < md.index("f1")


def test_report_refuses_a_primary_metric_it_does_not_hold():
    with pytest.raises(KeyError, match="primary metric"):
        EvalReport(name="x", kind="classification", metrics={"accuracy": 1.0}, primary="f1")
