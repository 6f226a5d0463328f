"""Hyperparameter search for one task, with Optuna.

- :mod:`tasks.tuning.space`: the ``tune:`` block (:class:`~tasks.tuning.space.TuneConfig`): what to search, the
  budgets, the sampler and the pruner;
- :mod:`tasks.tuning.trials`: the TrainConfig one trial trains (``trial_config``);
- :mod:`tasks.tuning.study`: running a study (storage, the ask-and-tell loop, one trial with pruning, resuming).

Nothing is re-exported here: :mod:`tasks.training.config` imports :mod:`tasks.tuning.space` (a TrainConfig holds
a TuneConfig), and a package that loaded its trials or study on import would load training from inside it.
"""
