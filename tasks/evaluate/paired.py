"""Champion vs challenger on the same rows: per-row scores and a paired bootstrap of their difference.

A promotion gate that compares a candidate's score with a number stored months ago compares
two test sets as much as two models. Here both models are scored on *the same rows* in the
same run, and the decision rests on the paired difference (challenger minus champion, signed
so that positive is better) with a percentile bootstrap confidence interval: rows are
resampled with replacement and the metric is recomputed for both models on each resample
(Efron & Tibshirani 1993, ch. 13; the paired form is the standard one for comparing systems
on one test set, e.g. Koehn 2004, "Statistical significance tests for machine translation").

Per-row scores:

- classification / regression: the model's prediction per row (class id or value) and the
  label; the metric (accuracy, F1, MCC, Pearson, Spearman) is recomputed on each resample;
- causal LM / seq2seq: each row's summed token negative log-likelihood and token count;
  ``loss`` is their ratio over the rows (token-weighted, like training), ``perplexity`` its exp;
- evaluation suites: any per-row values whose mean is the metric (lm-eval's per-sample
  ``acc``/``acc_norm``, AlpacaEval preferences).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from tasks.data import encode

from .classification import predict_classification
from .direction import higher_is_better
from .metrics import GLUE_TASK_METRICS, glue_metrics, normalize_task
from .report import EvalReport

GENERATIVE = ("causal_lm", "seq2seq")


@dataclass
class RowScores:
    """One model's outcome on each row of one split (what the bootstrap resamples).

    ``kind``: "prediction" (``predictions`` vs ``labels``), "nll" (``nll`` summed per row over
    ``tokens`` scored tokens) or "mean" (``values``: the metric is their mean).
    """

    metric: str
    kind: str
    predictions: list[float] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len({"prediction": self.labels, "nll": self.nll, "mean": self.values}[self.kind])

    def value(self, rows: np.ndarray | None = None) -> float:
        """The metric on ``rows`` (indices, repeats allowed), or on every row."""
        pick = (lambda xs: np.asarray(xs)) if rows is None else (lambda xs: np.asarray(xs)[rows])
        if self.kind == "nll":
            loss = float(pick(self.nll).sum() / max(1, pick(self.tokens).sum()))
            return math.exp(min(loss, 700.0)) if self.metric == "perplexity" else loss
        if self.kind == "mean":
            return float(pick(self.values).mean())
        if rows is None:
            return float(glue_metrics(self.metric, pick(self.predictions), pick(self.labels))[self.metric])
        return fast_metric(self.metric, pick(self.predictions), pick(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RowScores":
        return cls(**data)


@dataclass
class Comparison:
    """Challenger vs champion on the same ``n`` rows; ``difference`` > 0 means the challenger is better."""

    metric: str
    n: int
    challenger: float
    champion: float
    difference: float            # signed improvement: challenger - champion, or champion - challenger for losses
    ci_low: float
    ci_high: float
    confidence: float
    higher_is_better: bool
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.metric} {self.challenger:.4g} vs {self.champion:.4g} on the same {self.n} rows: "
                f"improvement {self.difference:+.4g} ({self.confidence:.0%} CI {self.ci_low:+.4g} to "
                f"{self.ci_high:+.4g}; {better} is better)")


def paired_bootstrap(challenger: RowScores, champion: RowScores, *, higher: bool | None = None,
                     resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Paired percentile bootstrap of the improvement of ``challenger`` over ``champion``.

    Both must score the same rows in the same order (checked through their labels where they have
    them). Resamples whose metric is undefined (a correlation of a constant) are dropped.
    """
    if len(challenger) != len(champion):
        raise ValueError(f"the two models were scored on different rows ({len(challenger)} vs {len(champion)})")
    if challenger.kind == "prediction" and not np.array_equal(np.asarray(challenger.labels),
                                                             np.asarray(champion.labels)):
        raise ValueError("the two models were scored on different rows (their labels differ)")
    if len(challenger) == 0:
        raise ValueError("no rows to compare on")
    higher = higher_is_better(challenger.metric) if higher is None else higher
    sign = 1.0 if higher else -1.0
    a, b = challenger.value(), champion.value()
    rng = np.random.default_rng(seed)
    n = len(challenger)
    diffs = []
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(resamples):
                rows = rng.integers(0, n, n)
                d = sign * (challenger.value(rows) - champion.value(rows))
                if math.isfinite(d):
                    diffs.append(d)
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(diffs, [alpha, 1 - alpha]).tolist() if diffs else [math.nan, math.nan])
    return Comparison(metric=challenger.metric, n=n, challenger=a, champion=b, difference=sign * (a - b),
                      ci_low=float(low), ci_high=float(high), confidence=confidence, higher_is_better=higher,
                      resamples=len(diffs))


def fast_metric(metric: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """``glue_metrics(metric, preds, labels)[metric]`` in plain numpy (a thousand resamples in milliseconds)."""
    if metric in ("pearson", "spearman"):
        x, y = preds.astype(float), labels.astype(float)
        if metric == "spearman":
            x, y = rankdata(x), rankdata(y)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return math.nan
        return float(np.corrcoef(x, y)[0, 1])
    p, t = preds.astype(np.int64), labels.astype(np.int64)
    if metric == "accuracy":
        return float((p == t).mean())
    classes = np.union1d(np.unique(t), np.unique(p))
    index = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    cm = np.bincount(np.vectorize(index.get)(t) * k + np.vectorize(index.get)(p), minlength=k * k).reshape(k, k)
    if metric == "f1":
        tp = np.diag(cm).astype(float)
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        with np.errstate(all="ignore"):
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        if k <= 2 and set(classes.tolist()) <= {0, 1}:  # binary F1 of class 1, GLUE's MRPC/QQP convention
            return float(f1[index[1]]) if 1 in index else 0.0
        return float(f1.mean())
    if metric == "mcc":
        n, correct = cm.sum(), np.trace(cm)
        true_k, pred_k = cm.sum(1).astype(float), cm.sum(0).astype(float)
        denominator = math.sqrt((n * n - pred_k @ pred_k) * (n * n - true_k @ true_k))
        return float((correct * n - true_k @ pred_k) / denominator) if denominator else 0.0
    return float(glue_metrics(metric, preds, labels)[metric])


# ---- scoring a model on encoded rows ---------------------------------------------------------------
def score_rows(model: torch.nn.Module, rows: Any, *, task_type: str, metric: str, pad_token_id: int | None,
               batch_size: int = 32) -> RowScores:
    """Score ``model`` on encoded ``rows`` (``tasks.data.encode`` output: input_ids, attention_mask, labels).

    ``metric``: classification/regression: accuracy, f1, mcc, pearson or spearman; generative: loss or
    perplexity. Returns per-row :class:`RowScores` in the rows' order.
    """
    if task_type in GENERATIVE:
        nll, tokens = _token_nll(model, rows, seq2seq=task_type == "seq2seq", pad_token_id=pad_token_id,
                                 batch_size=batch_size)
        return RowScores(metric=metric if metric in ("loss", "perplexity") else "loss", kind="nll", nll=nll,
                         tokens=tokens)
    preds, labels = predict_classification(model, rows, batch_size=batch_size, pad_token_id=pad_token_id,
                                           regression=task_type == "regression")
    return RowScores(metric=metric, kind="prediction", predictions=np.asarray(preds).tolist(),
                     labels=np.asarray(labels).tolist())


@torch.no_grad()
def _token_nll(model: torch.nn.Module, rows: Any, *, seq2seq: bool, pad_token_id: int | None,
               batch_size: int) -> tuple[list[float], list[int]]:
    """Per row: the summed negative log-likelihood of its label tokens (labels != -100) and their count."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_token_id if pad_token_id is not None else 0
    nll: list[float] = []
    counts: list[int] = []
    data = list(rows) if not hasattr(rows, "select_columns") else rows
    try:
        for start in range(0, len(data), batch_size):
            batch = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            ids = _pad([r["input_ids"] for r in batch], pad, device)
            mask = _pad([[1] * len(r["input_ids"]) for r in batch], 0, device)
            labels = _pad([r["labels"] for r in batch], -100, device)
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            logits = out.logits.float()
            if not seq2seq:  # a decoder predicts token t+1 at position t
                logits, labels = logits[:, :-1], labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                                          reduction="none")
            scored = labels != -100
            nll += (per_token * scored).sum(dim=1).tolist()
            counts += scored.sum(dim=1).tolist()
    finally:
        model.train(was_training)
    return nll, [int(c) for c in counts]


def _pad(seqs: Sequence[Sequence[int]], fill: int, device: torch.device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [fill] * (width - len(s)) for s in seqs], dtype=torch.long, device=device)


def score_split(model: torch.nn.Module, tokenizer: Any, data: Any, *, metric: str, max_length: int,
                split: str = "test", batch_size: int = 32) -> RowScores:
    """Score ``model`` on one split of ``data`` (a ``tasks.data.TaskData``), tokenized by its own tokenizer.

    Champion and challenger see the same text rows at the same ``max_length`` even when their
    tokenizers differ (another base model).
    """
    enc = encode(data, tokenizer, max_length=max_length, splits=(split,))
    return score_rows(model, enc.splits()[split], task_type=data.task_type, metric=metric,
                      pad_token_id=tokenizer.pad_token_id, batch_size=batch_size)


def rows_report(scores: RowScores, data: Any, *, name: str, model: str = "") -> EvalReport:
    """The EvalReport of a per-row scoring: every metric of the task (GLUE's set), or loss and perplexity."""
    if scores.kind == "nll":
        loss = RowScores(**{**scores.to_dict(), "metric": "loss"}).value()
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
        return EvalReport(name=name, kind=data.task_type, metrics=metrics, primary=scores.metric, model=model,
                          details={"n": len(scores), "tokens": int(sum(scores.tokens))})
    task = data.task if data.task and normalize_task(data.task) in GLUE_TASK_METRICS else data.metric
    metrics = glue_metrics(task, scores.predictions, scores.labels)
    if scores.metric not in metrics:
        metrics[scores.metric] = scores.value()
    return EvalReport(name=name, kind="classification", metrics=metrics, primary=scores.metric, model=model,
                      details={"n": len(scores)})
