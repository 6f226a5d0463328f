"""Promoting a registered version by hand (``redflow promote``, the ``promote`` flow): through the gate, or forced.

With the task's retrain config the gate compares the version and the current production on the task's current
rows, as a retrain's gate does; that loads the task's data and both models, so this module imports the training
and evaluation stack (``flows/operations.py`` keeps the lighter registry operations).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from registry import AliasMove, PromotionPolicy, gate_and_promote, move_alias, production_version
from registry.champion import score_version, trained_max_length
from registry.decisions import FORCED
from registry.views import require_version
from tasks.evaluate.suite_specs import find_suite

from .config import RetrainConfig, TaskSpec
from .steps import prepare_step


def promote_version(model_name: str, version: int, *, force: bool = False, policy: dict | None = None,
                    reason: str = "", cfg: RetrainConfig | None = None, task: TaskSpec | None = None) -> Any:
    """Promote through the gate (or unconditionally with ``force``, which is recorded as such).

    With the task's retrain config (``cfg`` and ``task``) the version and the current production are
    both scored on the task's current test rows (or its gate suite's rows) at the version's trained
    max length, and the gate decides on that pair. Without them the gate can only promote a first
    version (on its recorded score): it never replaces production on scores from different test sets.

    Returns the gate's ``PromotionDecision`` (``force``: the ``AliasMove``). Raises ``ModelNotFound``
    for a model or version that does not exist.
    """
    require_version(model_name, version)
    if force:
        if production_version(model_name) == int(version):  # nothing to move, and no self-move in the history
            return AliasMove(model_name=model_name, alias="production", version=int(version), previous=int(version),
                             action="none", reason=f"version {version} is already production")
        return move_alias(model_name, "production", version, action=FORCED,
                          reason=reason or "promoted by hand without the gate")
    gate_policy = PromotionPolicy(**(policy or {}))
    if cfg is None or task is None:
        return gate_and_promote(model_name, version, gate_policy)
    score = same_row_scorer(cfg, task, model_name, version, gate_policy)
    return gate_and_promote(model_name, version, gate_policy, challenger=score(int(version)), score_champion=score)


def same_row_scorer(cfg: RetrainConfig, task: TaskSpec, model_name: str, version: int, policy: Any):
    """``score(v)``: version ``v``'s per-row scores on the task's current test rows (or gate suite's rows)."""
    mv = MlflowClient().get_model_version(model_name, str(version))
    metric = policy.metric_name(mv.tags.get("primary_metric"))
    suite = find_suite(task.evaluate, metric)
    data = prepare_step(cfg, task)
    max_length = trained_max_length(mv)

    def score(v: int):
        return score_version(model_name, v, data, metric=metric, suite=suite, max_length=max_length,
                             work_dir=Path(cfg.runs_dir) / "cache" / "gate")

    return score
