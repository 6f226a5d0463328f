"""Floors: what a model scores without learning anything, and whether a training got above it.

A model that predicts one class for every row scores the *majority-class* floor: on a split whose
labels are 68 % positive, accuracy 0.68 and F1 0.81 (GLUE's binary F1 of class 1, when the
constant is class 1), MCC 0. A regression head with no signal correlates 0 with the labels. A
training whose validation score never rises above that floor has learned nothing the labels'
frequencies did not already say: typically a learning rate far too small or far too large for
the method (the RED paper's rates span 1e-3 to 1e-1 by model). :func:`learned` flags it so
the retrain summary can say "did not learn", whatever the method.

Causal and seq2seq language models have no such floor (their metric is a loss): ``None``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from tasks.evaluate.metrics import glue_metrics

# A score must exceed the floor by more than this (in the metric's own units: 0.01 = one point of
# accuracy, F1, MCC or correlation) to count as learned: one lucky row on a small validation split
# is not a model.
TOLERANCE = 0.01

_CORRELATIONS = ("pearson", "spearman")


def majority_label(labels: Iterable[Any]) -> Any:
    """The most frequent label (the smallest one on a tie, so the choice is deterministic)."""
    counts = Counter(labels)
    if not counts:
        raise ValueError("no labels to take a majority of")
    top = max(counts.values())
    return min(label for label, n in counts.items() if n == top)


def majority_scores(labels: Sequence[Any], metrics: Sequence[str], *, predict: Any = None,
                    task_type: str = "classification") -> dict[str, float] | None:
    """Scores of a constant predictor on ``labels`` for each of ``metrics`` (GLUE metric names).

    Classification: predict ``predict`` (default: the majority of ``labels`` themselves) for every row
    and score it with the GLUE metric functions, so accuracy and F1 are exactly what a model answering
    that class would get, and MCC is 0. Regression: 0 for the correlations (a constant has none).
    Language-model tasks: None (no floor). Raises ValueError for empty ``labels``.
    """
    if task_type not in ("classification", "regression"):
        return None
    labels = list(labels)
    if not labels:
        raise ValueError("no labels to compute a floor on")
    if task_type == "regression":
        return {m: 0.0 for m in metrics}
    constant = majority_label(labels) if predict is None else predict
    scores = glue_metrics(list(metrics), [constant] * len(labels), labels)
    return {m: (0.0 if m in _CORRELATIONS or math.isnan(v) else float(v)) for m, v in scores.items()}


def learned(scores: Iterable[float], floor: float | None, *, higher_is_better: bool = True,
            tolerance: float = TOLERANCE) -> bool | None:
    """Whether any of ``scores`` (e.g. the validation primary metric of every epoch) left the floor.

    True when one of them beats ``floor`` by more than ``tolerance``; None when there is no floor
    (language models) or no finite score to judge by.
    """
    if floor is None:
        return None
    finite = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
    if not finite:
        return None
    if higher_is_better:
        return max(finite) > floor + tolerance
    return min(finite) < floor - tolerance


def did_not_learn_note(metric: str, best: float | None, floor: float, *, tuned: bool = False) -> str:
    """The summary's note for a training that stayed at the floor (``tuned``: the best trial of a search)."""
    shown = "nan" if best is None else f"{best:.4f}"
    fix = ("the search's best trial too: widen its learning-rate range, add trials or epochs" if tuned
           else "try another learning rate (a `tune:` block searches one)")
    return (f"did not learn: validation {metric} {shown} never rose more than {TOLERANCE:g} above the "
            f"majority-class/chance floor {floor:.4f}; {fix}")
