"""GLUE metrics with scikit-learn and SciPy.

``evaluate.load("glue", ...)`` downloads its script from the hub, which is not
reachable from the training machines, so the official metric set of each GLUE
task is computed here directly. Key names follow the project contract
(``TaskData.metric``): accuracy, f1, mcc, pearson, spearman.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# Official metric set per GLUE task (as in the GLUE paper and HF's glue metric).
GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("mcc",),
}
# The single number each task is ranked by: the RED paper's Table 1 (as LoRA's and BitFit's GLUE tables):
# MCC for CoLA, Pearson for STS-B, accuracy for every other task (MRPC and QQP included).
GLUE_PRIMARY: dict[str, str] = {task: metrics[0] for task, metrics in GLUE_TASK_METRICS.items()}

REGRESSION_METRICS = frozenset({"pearson", "spearman"})
METRIC_ALIASES = {
    "acc": "accuracy",
    "accuracy": "accuracy",
    "f1": "f1",
    "mcc": "mcc",
    "matthews_correlation": "mcc",
    "matthews": "mcc",
    "pearson": "pearson",
    "pearsonr": "pearson",
    "spearman": "spearman",
    "spearmanr": "spearman",
}


def normalize_task(name: str) -> str:
    """'SST-2', 'glue/sst2', 'STS-B' -> 'sst2', 'sst2', 'stsb'."""
    key = name.strip().lower().split("/")[-1].replace("-", "").replace(" ", "")
    return {"mnlim": "mnli_matched", "mnlimm": "mnli_mismatched", "stsbenchmark": "stsb"}.get(key, key)


def metric_names(task_or_metric: str) -> tuple[str, ...]:
    """The metric keys computed for a GLUE task name or a single metric name."""
    task = normalize_task(task_or_metric)
    if task in GLUE_TASK_METRICS:
        return GLUE_TASK_METRICS[task]
    metric = METRIC_ALIASES.get(task_or_metric.strip().lower())
    if metric is None:
        raise ValueError(
            f"unknown GLUE task or metric {task_or_metric!r}; tasks: {sorted(GLUE_TASK_METRICS)}, "
            f"metrics: {sorted(set(METRIC_ALIASES.values()))}"
        )
    return (metric,)


def metric_set(task: str | None, metric: str) -> tuple[str, ...]:
    """The metrics to report for a task: ``metric`` (its primary) first, then the rest of GLUE's set for a GLUE task.

    ``task`` is the data's GLUE task (``TaskData.task``: 'mrpc', 'stsb'...) or None/a non-GLUE name;
    ``metric`` the primary metric (``TaskData.metric``). MRPC with 'accuracy' -> ('accuracy', 'f1').
    """
    primary = metric_names(metric)[0] if metric else None
    glue = GLUE_TASK_METRICS.get(normalize_task(task), ()) if task else ()
    names = ([primary] if primary else []) + [m for m in glue if m != primary]
    if not names:
        raise ValueError("metric_set needs a metric or a GLUE task")
    return tuple(names)


def primary_metric(task_or_metric: str) -> str:
    task = normalize_task(task_or_metric)
    return GLUE_PRIMARY.get(task) or metric_names(task_or_metric)[0]


def is_regression(task_or_metric: str) -> bool:
    return all(m in REGRESSION_METRICS for m in metric_names(task_or_metric))


def glue_metrics(task_or_metric: str | Sequence[str], predictions: Sequence[Any] | np.ndarray,
                 labels: Sequence[Any] | np.ndarray) -> dict[str, float]:
    """Metrics of ``predictions`` against ``labels`` for a GLUE task ('cola', 'SST-2'...) or a metric name.

    ``task_or_metric`` may also be a list of metric names (e.g. from ``metric_set``).
    Predictions are class ids (classification) or scores (STS-B). F1 is the
    binary F1 of class 1 when there are two classes (GLUE's MRPC/QQP
    convention) and macro F1 otherwise. Correlations of a constant prediction
    are undefined: they come back as NaN with a warning, never as 0.
    """
    if isinstance(task_or_metric, str):
        names = metric_names(task_or_metric)
    else:
        names = tuple(metric_names(m)[0] for m in task_or_metric)
    preds = np.asarray(predictions)
    refs = np.asarray(labels)
    if preds.shape[0] != refs.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions for {refs.shape[0]} labels")
    if preds.shape[0] == 0:
        raise ValueError("no predictions to score")
    out: dict[str, float] = {}
    for name in names:
        out[name] = _METRIC_FNS[name](preds, refs)
    return out


def _accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float(accuracy_score(refs, preds))


def _f1(preds: np.ndarray, refs: np.ndarray) -> float:
    classes = np.union1d(np.unique(refs), np.unique(preds))
    binary = len(classes) <= 2 and set(classes.tolist()) <= {0, 1}
    return float(f1_score(refs, preds, average="binary" if binary else "macro", zero_division=0))


def _mcc(preds: np.ndarray, refs: np.ndarray) -> float:
    return float(matthews_corrcoef(refs, preds))


def _correlation(kind: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def fn(preds: np.ndarray, refs: np.ndarray) -> float:
        preds = preds.astype(float).reshape(-1)
        refs = refs.astype(float).reshape(-1)
        if np.ptp(preds) == 0 or np.ptp(refs) == 0:
            warnings.warn(f"{kind} correlation of a constant input is undefined; reporting NaN", stacklevel=3)
            return math.nan
        if kind == "pearson":
            return float(stats.pearsonr(preds, refs)[0])
        return float(stats.spearmanr(preds, refs)[0])

    return fn


_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": _correlation("pearson"),
    "spearman": _correlation("spearman"),
}


def logits_to_predictions(logits: Any, regression: bool | None = None) -> np.ndarray:
    """Class ids (argmax) or regression scores from model outputs.

    ``regression=None`` decides from the shape: one output column means a
    regression head. A tuple (logits, hidden states...) uses its first element,
    as Trainer passes it.
    """
    if isinstance(logits, tuple):  # Trainer's (logits, *extra outputs); a list is data, not a tuple
        logits = logits[0]
    arr = np.asarray(logits)
    if regression is None:
        regression = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[-1] == 1)
    if regression:
        return arr.reshape(arr.shape[0], -1)[:, 0].astype(float) if arr.ndim > 1 else arr.astype(float)
    if arr.ndim == 1:
        return arr.astype(int)  # already class ids
    return arr.argmax(axis=-1)


def make_compute_metrics(task_or_metric: str, *, regression: bool | None = None,
                         prefix: str = "", metrics: Sequence[str] | None = None) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer``: EvalPrediction -> {metric: value}.

    Regression is decided by the task (STS-B, pearson/spearman) unless given;
    ``metrics`` (e.g. ``metric_set(data.task, data.metric)``) overrides which metrics
    are computed; Trainer prefixes the keys with ``eval_`` itself, so ``prefix`` is
    only for other callers.
    """
    if regression is None:
        regression = is_regression(task_or_metric)
    which: str | Sequence[str] = tuple(metrics) if metrics else task_or_metric

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if isinstance(eval_pred, (tuple, list)):
            logits, labels = eval_pred[0], eval_pred[1]
        else:
            logits, labels = eval_pred.predictions, eval_pred.label_ids
        preds = logits_to_predictions(logits, regression=regression)
        labels = np.asarray(labels).reshape(-1)
        if regression:
            labels = labels.astype(float)
        return {f"{prefix}{k}": v for k, v in glue_metrics(which, preds, labels).items()}

    compute_metrics.__qualname__ = f"compute_metrics[{task_or_metric}]"
    return compute_metrics
