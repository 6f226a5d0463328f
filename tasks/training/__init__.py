"""Training: one task alone (:func:`train`) or K tasks' RED edits together on one base (:func:`co_train`).

Modules, by what they hold:

- ``config``: :class:`TrainConfig` (method, hyperparameters, edit, search) and :func:`training_identity`;
  ``presets``: the paper's hyperparameter tables; ``model_names``: base model names (hub ids, the packaged MiniLM);
- ``models``: the base loaded for a task and the method's trainable parameters on it;
- ``trainer``: :class:`EditTrainer` (edit-sized checkpoints, NaN guard) and its ``TrainingArguments``;
  ``guards``: divergence and stop-request callbacks; ``control``: one training per process, stop requests;
  ``errors``: :class:`TrainingError`, :class:`TrainingDiverged`, :class:`TrainingInterrupted`;
- ``loop``: :func:`train`; ``cotrain``: :func:`co_train` with ``multitask`` (its Trainer) and ``mixing``
  (its mixed batches);
- ``finish``: a finished Trainer to a :class:`TrainResult` (``result``), judged against ``floors``.
"""
from __future__ import annotations

from red.exports import lazy_exports

_EXPORTS = {
    "CoTask": "cotrain",
    "CoTrainConfig": "cotrain_settings",
    "EDIT_METHODS": "config",
    "Method": "config",
    "TrainConfig": "config",
    "TrainResult": "result",
    "TrainingDiverged": "errors",
    "TrainingError": "errors",
    "TrainingInterrupted": "errors",
    "clear_stop": "control",
    "co_train": "cotrain",
    "family": "cotrain_settings",
    "group_identity": "cotrain",
    "request_stop": "control",
    "shared_settings": "cotrain_settings",
    "stop_training_when_interrupted": "control",
    "stopped_a_training": "control",
    "train": "loop",
    "trainer_slot": "control",
    "training_identity": "config",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
