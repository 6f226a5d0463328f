"""Score a registered version on this run's rows: the champion's side of the champion/challenger gate.

The gate (``registry.aliases.gate_and_promote``) never compares numbers measured on different
test sets. It asks this module to score the current production version on exactly the rows
the candidate was just scored on (same text rows, same max length, each model with its own
tokenizer), in the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.evaluate.paired import RowScores


def score_version(name: str, version: int, data: Any, *, metric: str, max_length: int, work_dir: str | Path,
                  suite: Any = None) -> "RowScores":
    """Per-row scores of ``name`` version ``version`` on ``data``'s test rows, or on ``suite``'s rows.

    The version's edit is downloaded under ``work_dir`` (and checked against its registered
    checksum), loaded on the base model it records, scored, and released.
    """
    from red.pretrained import load_pretrained_edit
    from tasks.evaluate.paired import score_split

    from .models import download_edit

    folder = Path(work_dir) / name / str(version)
    edit = download_edit(name, version, folder)
    model, tokenizer, meta = load_pretrained_edit(edit)
    try:
        if suite is None:
            return score_split(model, tokenizer, data, metric=metric, max_length=max_length)
        from tasks.evaluate.suites import run_suite, suite_scores

        report = run_suite(suite, edit, data=data, out_dir=folder / "eval", max_length=max_length,
                           loaded=(model, tokenizer, meta))
        return suite_scores(report, metric)
    finally:
        del model


def trained_max_length(mv) -> int:
    """The max length a version was trained with (its tag, else its training run's param; 256 if unrecorded)."""
    value = mv.tags.get("max_length")
    if value is None and mv.run_id:
        from mlflow import MlflowClient

        value = MlflowClient().get_run(mv.run_id).data.params.get("max_length")
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 256
