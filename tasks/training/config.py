"""What decides a training run: :class:`TrainConfig` (method, hyperparameters, edit, search), its recipe, and the
:class:`~tasks.lifecycle.identity.Identity` of training it on prepared data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from red import EditConfig
from tasks.lifecycle.identity import Identity, base_id, code_version, config_hash, dependency_versions
from tasks.tuning.space import TuneConfig

from .presets import preset_values

Method = Literal["red", "loreft", "direft", "nodireft", "lora", "bitfit", "full", "head"]
EDIT_METHODS = ("red", "loreft", "direft", "nodireft")


class TrainConfig(BaseModel):
    """Everything that decides a training run. Fields left unset come from ``preset``, then defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The base model: a hub id (e.g. roberta-base), a local checkpoint folder, or "
                       "'minilm' for the packaged MiniLM. Set by the retrain config's base_model.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of the base "
                                 "model; null: the default branch. Set by the retrain config's revision.")
    method: Method = Field(default="red", description="What is trained: red (scale and bias vectors), loreft, "
                           "direft, nodireft (ReFT interventions), lora, bitfit (biases), full (every weight); "
                           "head (only the task head) is a floor for `redflow bench glue`, not a model to register.")
    edit: dict[str, Any] = Field(default_factory=dict, description="red.EditConfig fields for edit methods: "
                                 "position, kind, layers, rank, positions (see the Edit section).")
    preset: str | None = Field(default=None, description="A hyperparameter table from the RED/ReFT papers "
                               "(tasks/training/presets.py, e.g. glue-roberta-base); explicit fields win over it.")
    learning_rate: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="Peak learning "
                                        "rate (finite, > 0; a rate of 0 would train nothing: measure an untrained "
                                        "baseline with `redflow evaluate` instead). "
                                        "Default: the preset's, else 1e-3.")
    epochs: float | None = Field(default=None, ge=1, allow_inf_nan=False, description="Passes over the training "
                                 "rows (>= 1). Default: the preset's, else 3.")
    batch_size: int | None = Field(default=None, ge=1, description="Training rows per forward pass (>= 1). "
                                   "Default: the preset's, else 32.")
    eval_batch_size: int | None = Field(default=None, ge=1, description="Rows per forward pass when scoring the "
                                        "validation and test rows (>= 1; does not change the result). Default: "
                                        "max(batch_size, 32).")
    grad_accum: int | None = Field(default=None, ge=1, description="Forward passes accumulated per optimizer step "
                                   "(>= 1): a step sees batch_size x grad_accum rows. Default: 1.")
    weight_decay: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="AdamW weight decay "
                                       "(>= 0). Default: the preset's, else 0.")
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1, description="Share of the optimizer steps spent "
                                       "warming the learning rate up from 0 (0 <= ratio < 1). Default: the "
                                       "preset's, else 0.06; warmup_steps > 0 wins over it.")
    warmup_steps: int | None = Field(default=None, ge=0, description="Warm-up length in optimizer steps (>= 0); "
                                     "0 uses warmup_ratio. Default: 0.")
    lr_scheduler: str | None = Field(default=None, description="transformers' learning-rate schedule after the "
                                     "warm-up (linear, cosine, constant, constant_with_warmup, polynomial...). "
                                     "Default: the preset's, else linear.")
    max_length: int | None = Field(default=None, ge=1, description="Tokens per row (>= 1); longer rows are "
                                   "truncated and the run reports how many were. Default: the preset's, else 256.")
    label_smoothing: float | None = Field(default=None, ge=0, lt=1, description="Label smoothing of the "
                                          "classification loss (0 <= value < 1). Default: 0.")
    lora_r: int | None = Field(default=None, ge=1, description="LoRA rank (method: lora; >= 1). Default: 8.")
    lora_alpha: int | None = Field(default=None, ge=1, description="LoRA scaling alpha (method: lora; >= 1). "
                                   "Default: 8.")
    lora_dropout: float | None = Field(default=None, ge=0, lt=1, description="Dropout on LoRA's input (method: "
                                       "lora; 0 <= value < 1). Default: 0.")
    lora_targets: list[str] | None = Field(default=None, description="Module names LoRA adapts (method: lora). "
                                           "Default: the architecture's query and value projections (the "
                                           "paper's LoRA baseline).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps (quick "
                                  "runs; >= 1). Default: no limit.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Weights' and activations' precision; auto: bf16 on a GPU that supports it, "
        "else fp32.")
    seed: int = Field(default=42, description="Random seed of the run (transformers.set_seed): the head's and the "
                      "edit's initialisation, the row order.")
    resume: bool = Field(default=True, description="Resume a crashed training of exactly the same inputs (see "
                         "tasks.lifecycle.attempts); a finished training is never resumed.")
    init: Literal["fresh", "production"] = Field(
        default="fresh", description="Start from the identity (fresh) or from the task's current production edit "
        "(vectors and head): a cheap incremental update. Edit methods only.")
    divergence_factor: float | None = Field(
        default=5.0, gt=1, description="Stop and report 'diverged' when an epoch's mean training loss exceeds this "
        "many times the first logged loss (a finite loss that ran away); null disables the check.")
    logging_steps: int = Field(default=10, ge=1, description="Optimizer steps between logged training losses.")
    tune: TuneConfig | None = Field(default=None, description="Search the learning rate (and optionally warmup, "
                                    "weight decay, LoRA rank) with Optuna instead of training once (tasks.tuning).")

    @model_validator(mode="after")
    def _init_needs_an_edit(self) -> "TrainConfig":
        if self.init == "production" and self.method not in EDIT_METHODS:
            raise ValueError(f"init: production continues from the production edit's vectors and head, which only "
                             f"edit methods ({', '.join(EDIT_METHODS)}) have; method {self.method!r} must start fresh")
        return self

    @field_validator("tune")
    @classmethod
    def _rank_needs_lora(cls, tune: TuneConfig | None, info):
        method = info.data.get("method")
        if tune is not None and tune.lora_r is not None and method != "lora":
            raise ValueError(f"lora_r searches LoRA's rank, but the method is {method!r}; remove lora_r or set "
                             "method: lora")
        return tune

    def resolved(self, task: str) -> dict[str, Any]:
        """Hyperparameters after the preset and defaults are applied; explicit fields win."""
        defaults = dict(learning_rate=1e-3, epochs=3, batch_size=32, grad_accum=1, weight_decay=0.0,
                        warmup_ratio=0.06, warmup_steps=0, lr_scheduler="linear", max_length=256,
                        label_smoothing=0.0, lora_r=8, lora_alpha=8, lora_dropout=0.0, lora_targets=None)
        values = dict(defaults)
        if self.preset:
            values.update(preset_values(self.preset, self.method, task))
        values.update({k: v for k, v in self.model_dump().items() if v is not None and k in defaults})
        values["eval_batch_size"] = self.eval_batch_size or max(values["batch_size"], 32)
        return values

    def recipe(self, task: str) -> dict[str, Any]:
        """Everything besides data and base weights that decides what training produces.

        Hashed into the training identity (:mod:`tasks.lifecycle.identity`): preset and defaults are applied
        first, so ``{}`` and the preset's explicit values hash alike; fields that cannot change the
        result (logging, evaluation batch size, resuming) and other methods' settings are left out.
        """
        hp = self.resolved(task)
        hp.pop("eval_batch_size", None)
        if self.method != "lora":
            for key in [k for k in hp if k.startswith("lora_")]:
                hp.pop(key)
        edit: dict[str, Any] | None = None
        if self.method in EDIT_METHODS:
            edit = EditConfig(method=self.method, **self.edit).model_dump(mode="json")
        recipe = {"method": self.method, "edit": edit, **hp, "seed": self.seed, "precision": self.precision,
                  "max_steps": self.max_steps, "init": self.init, "divergence_factor": self.divergence_factor}
        if self.tune is not None:  # a searched training: the search decides the edit (untuned recipes hash as before)
            recipe["tune"] = self.tune.recipe()
        return recipe


def training_identity(data, config: TrainConfig, *, cache_dir: str | Path | None = None,
                      co_train: dict[str, Any] | None = None) -> Identity:
    """The :class:`~tasks.lifecycle.identity.Identity` of training ``config`` on ``data``: equal means the same edit.

    ``co_train``: the co-training settings when the task is co-trained
    (``tasks.training.cotrain_settings.CoTrainConfig.recipe``); they are part of the recipe, so switching co-training
    on or off, or changing them, retrains the task. The other tasks of the group are not: a task whose inputs did
    not change is not retrained because another did.
    """
    recipe = config.recipe(data.task or data.name)
    if co_train is not None:
        recipe["co_train"] = co_train
    return Identity(data_hash=data.data_hash, config_hash=config_hash(recipe),
                    base_id=base_id(config.model, config.revision, cache_dir), code_version=code_version(),
                    dependencies=dependency_versions())
