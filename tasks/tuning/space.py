"""Hyperparameter search for one task: what to search (the ``tune:`` block) and how a trial's values apply.

RED's quality depends on its learning rate more than on anything else it asks for (the paper's
RoBERTa-base rates span 1e-3 to 8e-3, T5's 5e-3 to 1e-1), so a new task gets a search instead of
a guess. :class:`TuneConfig` is the ``tune:`` block of a task: the search space (learning rate on a
log scale, by default one decade either side of the configured rate; optionally warmup ratio,
weight decay and, for LoRA, the rank), the trial and time budgets, the pruner and the sampler.
The TrainConfig one trial trains is :func:`tasks.tuning.trials.trial_config`. Running a study (Optuna's
storage, the ask-and-tell loop, one trial with pruning, resuming after a crash) is :mod:`tasks.tuning.study`.
"""
from __future__ import annotations

import warnings
from typing import Any, Literal

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TUNABLE = ("learning_rate", "warmup_ratio", "weight_decay", "lora_r")


class TuneConfig(BaseModel):
    """The ``tune:`` block of a task (or of ``defaults``): what to search, how long, and how to prune.

    Ranges are ``[low, high]``. Without ``learning_rate`` the rate is searched on a log scale over
    ``[rate / span, rate * span]`` around the task's configured rate (its preset's, or the default).
    """

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(default=8, ge=1, description="Trials per study (finished, pruned and failed ones count).")
    timeout: float | None = Field(default=None, gt=0, description="Seconds; no new trial starts after this "
                                  "(trials already running finish). Per run of the study.")
    learning_rate: tuple[float, float] | None = Field(default=None, description="[low, high], log scale.")
    span: float = Field(default=10.0, gt=1.0, description="Without learning_rate: search [rate/span, rate*span].")
    warmup_ratio: tuple[float, float] | None = Field(default=None, description="[low, high] in [0, 1).")
    weight_decay: tuple[float, float] | None = Field(default=None, description="[low, high], >= 0.")
    lora_r: list[int] | None = Field(default=None, description="LoRA ranks to choose from (method lora only).")
    pruner: Literal["median", "successive_halving", "none"] = Field(
        default="median", description="Stops trials whose per-epoch validation score is poor.")
    pruner_startup_trials: int = Field(default=2, ge=0, description="Median pruner: trials that finish unpruned "
                                       "before it prunes any.")
    sampler: Literal["tpe", "qmc", "random"] = Field(default="tpe", description="tpe (Optuna's default), qmc "
                                                     "(quasi-random: even coverage for a few trials) or random.")
    seed: int = Field(default=0, description="The sampler's seed.")
    parallel: int | None = Field(default=None, ge=1, description="Trials at once (default: the config's "
                                 "max_workers). How they run, not what they train: not in the identity.")
    start_at_config: bool = Field(default=True, description="The first trial uses the configured values (the "
                                  "centre of the default range).")
    reuse_best: bool = Field(default=True, description="Nightly: the first trial uses the hyperparameters of the "
                             "task's production (else latest) version, when they lie in the search space.")
    first_trials: list[dict[str, float]] = Field(default_factory=list, description="Values to try first, in order "
                                                 "(each a mapping of searched names to values).")

    @field_validator("learning_rate", "weight_decay", "warmup_ratio")
    @classmethod
    def _range(cls, value, info):
        if value is None:
            return value
        low, high = value
        if not low < high:
            raise ValueError(f"{info.field_name} must be [low, high] with low < high, not {list(value)}")
        if info.field_name == "learning_rate" and low <= 0:
            raise ValueError(f"learning_rate is searched on a log scale: low must be > 0, not {low}")
        if info.field_name == "warmup_ratio" and not (0 <= low and high < 1):
            raise ValueError(f"warmup_ratio is a fraction of the training steps: [low, high] within [0, 1), "
                             f"not {list(value)}")
        if info.field_name == "weight_decay" and low < 0:
            raise ValueError(f"weight_decay must be >= 0, not {low}")
        return value

    @field_validator("lora_r")
    @classmethod
    def _ranks(cls, value):
        if value is not None and (not value or any(r < 1 for r in value)):
            raise ValueError(f"lora_r must list ranks >= 1, not {value}")
        return sorted(set(value)) if value else value

    @model_validator(mode="after")
    def _first_trials_in_space(self) -> "TuneConfig":
        searched = {"learning_rate", *(k for k in TUNABLE[1:] if getattr(self, k) is not None)}
        for i, values in enumerate(self.first_trials):
            unknown = sorted(set(values) - searched)
            if unknown:
                raise ValueError(f"first_trials[{i}] sets {unknown}, which this block does not search "
                                 f"(searched: {sorted(searched)})")
        return self

    def recipe(self) -> dict[str, Any]:
        """What decides the search's outcome (hashed into the training identity; ``parallel`` is left out)."""
        return self.model_dump(mode="json", exclude={"parallel"})

    def space(self, hp: dict[str, Any], method: str) -> dict[str, "optuna.distributions.BaseDistribution"]:
        """Optuna distributions by TrainConfig field, for resolved hyperparameters ``hp`` of ``method``."""
        centre = float(hp["learning_rate"])
        low, high = self.learning_rate or (centre / self.span, centre * self.span)
        space: dict[str, Any] = {"learning_rate": FloatDistribution(low, high, log=True)}
        if self.warmup_ratio is not None:
            space["warmup_ratio"] = FloatDistribution(*self.warmup_ratio)
        if self.weight_decay is not None:
            space["weight_decay"] = FloatDistribution(*self.weight_decay)
        if self.lora_r is not None:
            if method != "lora":
                raise ValueError(f"tune.lora_r searches LoRA's rank; method {method!r} has none")
            space["lora_r"] = CategoricalDistribution(self.lora_r)
        return space

    def configured(self, hp: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
        """The configured values of the searched fields (the first trial when ``start_at_config``)."""
        return {k: hp[k] for k in space if hp.get(k) is not None}

    def make_sampler(self, asked: int = 0):
        """The study's sampler, for a study that already holds ``asked`` trials (0 when it is new).

        A seeded sampler is a random stream that starts over whenever it is rebuilt, and a resumed study
        rebuilds it: with the bare seed, the first trial asked after a resume drew the values trial 0 had
        already trained. The stream's seed is therefore ``seed + asked``: a new study samples exactly as
        before (same seed, same first trials) and each resume draws from a stream of its own (``asked``
        grows with every run that asked a trial). QMC keeps the bare seed for its sequence: Optuna stores
        the sequence's position in the study (a system attribute keyed by the seed), so a resume continues
        it; only its fallback random stream (used until a trial finishes) is offset.
        """
        stream = self.seed + asked
        if self.sampler == "qmc":
            with warnings.catch_warnings():  # "experimental" since Optuna 3.0; its interface is what we use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.QMCSampler(scramble=True, seed=self.seed, warn_asynchronous_seeding=False,
                                                  warn_independent_sampling=False,
                                                  independent_sampler=optuna.samplers.RandomSampler(seed=stream))
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=stream)
        return optuna.samplers.TPESampler(seed=stream)

    def make_pruner(self):
        """The study's pruner (``pruner``): median, successive halving, or none."""
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup_trials, n_warmup_steps=0)
        if self.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
        return optuna.pruners.NopPruner()


def in_space(values: dict[str, Any], space: dict[str, Any]) -> dict[str, Any] | None:
    """``values`` restricted to the searched names, or None when one of them lies outside its distribution."""
    picked = {k: values[k] for k in space if k in values}
    if not picked:
        return None
    for k, v in picked.items():
        dist = space[k]
        try:
            inside = v in dist.choices if isinstance(dist, CategoricalDistribution) else dist.low <= float(v) <= dist.high
        except (TypeError, ValueError):
            return None
        if not inside:
            return None
    return picked
