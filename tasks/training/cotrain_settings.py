"""What co-training shares, checked before anything loads: how the tasks' rows are mixed (:class:`CoTrainConfig`,
the ``co_train:`` block of a retrain config) and the settings co-trained tasks must agree on (:func:`shared_settings`).

Kept apart from :mod:`tasks.training.cotrain` (which loads torch and the models) so that a retrain config is
validated without the training stack.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import EDIT_METHODS, TrainConfig

#: Settings every task of a co-training shares: one base, one method, one schedule.
SHARED = ("model", "revision", "method", "precision", "epochs", "max_steps", "warmup_ratio", "warmup_steps",
          "lr_scheduler")


class CoTrainConfig(BaseModel):
    """How the tasks' rows are mixed (see :mod:`tasks.training.mixing`)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=1.0, gt=0, description="Task k's share of the rows is proportional to "
                               "n_k^(1/temperature): 1 = proportional to size, larger flattens toward uniform "
                               "(.inf = uniform).")
    mixing: Literal["stratified", "random"] = Field(
        default="stratified", description="stratified: every step holds each task's share (deterministic); "
        "random: each row's task is drawn from the shares.")
    batch_size: int | None = Field(default=None, ge=1, description="Rows per forward pass (default: the largest "
                                   "batch_size of the tasks): the activation memory of one task's batch.")
    rows_per_step: int | None = Field(default=None, ge=1, description="Rows per optimizer step (default: the sum "
                                      "of the tasks' batch_size x grad_accum), cut into forward passes.")
    micro_batches: Literal["length", "task"] = Field(
        default="length", description="How a step's rows are cut into forward passes: sorted by length (least "
        "padding), or each task's rows together (with equal shares, every pass is one task's batch in the order "
        "training it alone takes). The step's gradient is the same either way.")

    def recipe(self) -> dict[str, Any]:
        """What part of a co-trained task's training identity (``tasks.training.config.training_identity``)."""
        return self.model_dump(mode="json")


def family(task_type: str) -> str:
    """Tasks of one family load the same model class and can share a base: ``sequence`` (classification and
    regression), ``causal_lm``, ``seq2seq``."""
    return "sequence" if task_type in ("classification", "regression") else task_type


def shared_settings(configs: dict[str, TrainConfig], presets: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings of :data:`SHARED`, which the co-trained tasks must agree on; ValueError naming what differs.

    ``configs``: task name -> its training config; ``presets``: task name -> the GLUE task its preset is looked up
    by (default the name). Methods other than RED are refused: ReFT's interventions sit at per-row prompt positions
    and LoRA, BitFit and full fine-tuning change weights the tasks would share.
    """
    values: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        if config.method != "red":
            how = ("its interventions sit at per-row prompt positions through a per-task low-rank projection, which "
                   "the co-training bank does not route" if config.method in EDIT_METHODS else
                   "it trains weights of the base model (or adapters on them) that the co-trained tasks share")
            raise ValueError(f"co-training trains RED edits; task {name!r} uses method {config.method!r}: {how}. "
                             f"Train it alone (co_train: false on the task) or use method: red.")
        hp = config.resolved((presets or {}).get(name, name))
        values[name] = {"model": config.model, "revision": config.revision, "method": config.method,
                        "precision": config.precision, "max_steps": config.max_steps,
                        **{k: hp[k] for k in ("epochs", "warmup_ratio", "warmup_steps", "lr_scheduler")}}
    first = next(iter(values.values()))
    for key in SHARED:
        seen = {name: v[key] for name, v in values.items()}
        if len({json.dumps(v, default=str) for v in seen.values()}) > 1:
            raise ValueError(f"co-trained tasks share one base model and one schedule, but they differ in {key} "
                             f"({', '.join(f'{n}: {v!r}' for n, v in seen.items())}). Set the same {key} for "
                             "them (e.g. in defaults), or train some alone (co_train: false) or in another group.")
    return dict(first)
