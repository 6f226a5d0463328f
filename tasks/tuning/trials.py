"""The TrainConfig one trial of a search trains: the task's config with the trial's values.

Part of the training code version (``tasks.lifecycle.identity.CODE_MODULES``): how a trial's values apply
decides the edit a tuned task gets. Kept apart from :mod:`tasks.tuning.space` because it needs
:class:`~tasks.training.config.TrainConfig`, which itself holds a ``TuneConfig`` (one direction only).
"""
from __future__ import annotations

from typing import Any

from tasks.training.config import TrainConfig

from .space import TUNABLE


def trial_config(config: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig one trial trains: ``config`` with the trial's values and no ``tune`` block.

    ``params``: searched field -> value (``lora_r`` is made an int, the rest floats). Raises ValueError for a
    name that is not in :data:`~tasks.tuning.space.TUNABLE`.
    """
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise ValueError(f"trial parameters {unknown} are not tunable fields ({', '.join(TUNABLE)})")
    values = {k: (int(v) if k == "lora_r" else float(v)) for k, v in params.items()}
    return config.model_copy(update={**values, "tune": None})
