"""Score a registered version on this run's rows: the champion's side of the champion/challenger gate.

The gate (``registry.aliases.gate_and_promote``) never compares numbers measured on different
test sets. It asks this module to score the current production version on exactly the rows
the candidate was just scored on (same text rows, same max length, each model with its own
tokenizer), in the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from tasks.evaluate.paired import RowScores, score_split
from tasks.evaluate.suites import run_suite, suite_scores
from tasks.lifecycle.gate import in_label_space

from .models import serving_artifacts
from .serving.pyfunc import load_in_process


def load_registered(name: str, version: int):
    """``(model, tokenizer, meta)`` of a registered version, loaded exactly as a model server loads it
    (``mlflow.pyfunc.load_model``: artifact checks, fingerprint, dtype): what is compared is what serves.

    ``meta["extra"]["label_list"]`` is the label list the version serves with (its serving config, for
    every method): its class ids mean those names, whatever tonight's data calls id 0."""
    served = mlflow.pyfunc.load_model(f"models:/{name}/{int(version)}").unwrap_python_model()
    meta = dict(getattr(served, "meta", None) or {"extra": {"task": name}})
    labels = (getattr(served, "config", None) or {}).get("label_list")
    if labels is not None:
        meta["extra"] = {**(meta.get("extra") or {}), "label_list": list(labels)}
    return served.edited, served.tokenizer, meta


def load_trained(result: Any):
    """``(model, tokenizer, meta)`` of a training's saved artifact, loaded the way its version will serve."""
    artifacts, _, meta, config = serving_artifacts(result)
    served = load_in_process(artifacts, config)
    return served.edited, served.tokenizer, getattr(served, "meta", None) or meta


def score_loaded(loaded: tuple, data: Any, *, metric: str, max_length: int, suite: Any = None,
                 artifact: str | Path = "", out_dir: str | Path = "eval") -> RowScores:
    """Per-row scores of a loaded ``(model, tokenizer, meta)`` on ``data``'s test rows, or on ``suite``'s rows."""
    model, tokenizer, _ = loaded
    if suite is None:
        return score_split(model, tokenizer, data, metric=metric, max_length=max_length)
    report = run_suite(suite, artifact, data=data, out_dir=out_dir, max_length=max_length, loaded=loaded)
    return suite_scores(report, metric)


def score_version(name: str, version: int, data: Any, *, metric: str, max_length: int, work_dir: str | Path,
                  suite: Any = None) -> RowScores:
    """Per-row scores of ``name`` version ``version`` on ``data``'s test rows, or on ``suite``'s rows.

    A classifier's predicted ids are read through the version's own label list and given as tonight's ids
    (``tasks.lifecycle.gate.in_label_space``): a reordered ``label_list`` must not turn its accuracy into
    ``1 - accuracy``. Raises ``LabelSpaceMismatch`` when its labels are not tonight's set of names.
    """
    loaded = load_registered(name, version)
    rows = score_loaded(loaded, data, metric=metric, max_length=max_length, suite=suite,
                        artifact=f"models:/{name}/{version}", out_dir=Path(work_dir) / name / str(version))
    if suite is not None or data.task_type != "classification":
        return rows
    return in_label_space(rows, (loaded[2].get("extra") or {}).get("label_list"), data.label_list)


def trained_max_length(mv) -> int:
    """The max length a version was trained with (its tag, else its training run's param; 256 if unrecorded)."""
    value = mv.tags.get("max_length")
    if value is None and mv.run_id:
        value = MlflowClient().get_run(mv.run_id).data.params.get("max_length")
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 256
