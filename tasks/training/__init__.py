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
from .config import EDIT_METHODS, Method, TrainConfig, training_identity
from .control import clear_stop, request_stop, stop_training_when_interrupted, trainer_slot
from .cotrain import CoTask, CoTrainConfig, co_train, family, group_identity, shared_settings
from .errors import TrainingDiverged, TrainingError, TrainingInterrupted
from .loop import train
from .result import TrainResult

__all__ = ["EDIT_METHODS", "CoTask", "CoTrainConfig", "Method", "TrainConfig", "TrainResult", "TrainingDiverged",
           "TrainingError", "TrainingInterrupted", "clear_stop", "co_train", "family", "group_identity",
           "request_stop", "shared_settings", "stop_training_when_interrupted", "train", "trainer_slot",
           "training_identity"]
