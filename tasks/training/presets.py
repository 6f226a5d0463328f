"""Hyperparameter presets from the RED paper's appendix tables (see ../shared/paper/red-facts.md).

A preset is selected by name and task; any field set explicitly in a TrainConfig
overrides it. Task order in the paper's tables: MNLI SST-2 MRPC CoLA QNLI QQP RTE STS-B.
"""
from __future__ import annotations

from typing import Any

GLUE_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")


def _per_task(values) -> dict[str, Any]:
    return dict(zip(GLUE_ORDER, values))


def _glue(common: dict, per_task: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    """Expand per-task columns into {task: {field: value}}."""
    out = {}
    for i, task in enumerate(GLUE_ORDER):
        row = dict(common)
        for key, values in per_task.items():
            row[key] = values[i]
        out[task] = row
    return out


_RB_EPOCHS = (20, 40, 40, 40, 20, 20, 40, 40)
_RL_EPOCHS = (10, 10, 20, 20, 10, 10, 20, 10)

PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    # preset -> method -> task -> hyperparameters
    "roberta-base-glue": {
        "red": _glue(dict(batch_size=32, lr_scheduler="linear", warmup_ratio=0.06, max_length=256, weight_decay=0.0),
                     {"epochs": _RB_EPOCHS, "learning_rate": (1e-3, 1e-3, 5e-3, 5e-3, 3e-3, 1e-3, 8e-3, 3e-3)}),
        "lora": _glue(dict(batch_size=32, lr_scheduler="linear", warmup_ratio=0.06, max_length=256, lora_r=8, lora_alpha=8),
                      {"epochs": _RB_EPOCHS, "learning_rate": (5e-4, 5e-4, 4e-4, 4e-4, 4e-4, 5e-4, 5e-4, 4e-4)}),
        "bitfit": _glue(dict(batch_size=32, lr_scheduler="linear", warmup_ratio=0.06, max_length=256, learning_rate=1e-4),
                        {"epochs": _RB_EPOCHS}),
        "full": _glue(dict(batch_size=32, lr_scheduler="linear", warmup_ratio=0.06, max_length=256, learning_rate=1e-5,
                           weight_decay=1e-4), {"epochs": _RB_EPOCHS}),
    },
    "roberta-large-glue": {
        "red": _glue(dict(batch_size=32, lr_scheduler="linear", max_length=256),
                     {"epochs": _RL_EPOCHS, "learning_rate": (1e-3, 1e-3, 2e-3, 1e-3, 1e-3, 1e-3, 5e-3, 5e-3),
                      "weight_decay": (0, 0, 0, 0, 0, 0, 1e-4, 0),
                      "warmup_ratio": (0.06, 0.06, 0.0, 0.06, 0.06, 0.06, 0.01, 0.06)}),
        "lora": _glue(dict(batch_size=32, lr_scheduler="linear", warmup_ratio=0.06, max_length=256, lora_r=8, lora_alpha=16),
                      {"epochs": _RL_EPOCHS, "learning_rate": (3e-4, 4e-4, 3e-4, 2e-4, 2e-4, 3e-4, 4e-4, 2e-4)}),
        "full": _glue(dict(lr_scheduler="linear", max_length=256, weight_decay=0.1),
                      {"epochs": _RL_EPOCHS, "batch_size": (16, 32, 32, 32, 16, 16, 16, 32),
                       "learning_rate": (2e-5, 2e-5, 2e-5, 2e-5, 2e-5, 1e-5, 1e-5, 2e-5)}),
    },
    "t5-base-glue": {
        "red": _glue(dict(batch_size=32, lr_scheduler="linear", max_length=256),
                     {"epochs": (10, 10, 20, 60, 10, 10, 30, 50),
                      "learning_rate": (5e-2, 3e-2, 1e-1, 4e-2, 2e-2, 5e-3, 7e-2, 4e-2),
                      "warmup_ratio": (0.01, 0.06, 0.01, 0.01, 0.0, 0.01, 0.01, 0.06)}),
    },
    "gpt2-medium-e2e": {
        "red": {"e2e": dict(batch_size=10, lr_scheduler="linear", warmup_steps=500, learning_rate=6e-2,
                            weight_decay=1e-4, epochs=5)},
        "lora": {"e2e": dict(batch_size=10, lr_scheduler="linear", warmup_steps=500, learning_rate=2e-4,
                             weight_decay=0.01, label_smoothing=0.1, epochs=5, lora_r=8, lora_alpha=32,
                             lora_targets=["c_attn"])},
    },
    "gpt2-large-e2e": {
        "red": {"e2e": dict(batch_size=10, lr_scheduler="linear", warmup_steps=500, learning_rate=5e-5, epochs=10)},
    },
    "llama2-ultrafeedback": {
        "red": {"*": dict(lr_scheduler="cosine", warmup_ratio=0.1, batch_size=2, grad_accum=64, max_length=768,
                          learning_rate=1e-3, epochs=10)},
        "lora": {"*": dict(lr_scheduler="cosine", warmup_ratio=0.1, batch_size=2, grad_accum=64, max_length=768,
                           learning_rate=3e-4, epochs=3, lora_r=16, lora_alpha=16, lora_dropout=0.1,
                           lora_targets=["q_proj", "v_proj"])},
        "full": {"*": dict(lr_scheduler="cosine", warmup_ratio=0.1, batch_size=2, grad_accum=64, max_length=768,
                           learning_rate=2e-5, epochs=3)},
    },
    # Small and quick, for the offline demo with the packaged MiniLM on CPU.
    "demo": {
        "red": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                          learning_rate=2e-2, epochs=3)},
        "lora": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                           learning_rate=5e-4, epochs=3, lora_r=8, lora_alpha=8)},
        "bitfit": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                             learning_rate=1e-3, epochs=3)},
        "full": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                           learning_rate=5e-5, epochs=3)},
        "loreft": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                             learning_rate=5e-3, epochs=3)},
        "direft": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                             learning_rate=5e-3, epochs=3)},
        "nodireft": {"*": dict(batch_size=16, lr_scheduler="linear", warmup_ratio=0.06, max_length=64,
                               learning_rate=5e-3, epochs=3)},
    },
}


def preset_values(preset: str, method: str, task: str) -> dict[str, Any]:
    """The hyperparameters a preset gives one (method, task); a clear error when it has none.

    ``task`` is the data's GLUE task (``TaskData.task``, e.g. "mrpc" for a task the config calls
    "mrpc-nightly"); training passes the task's own name only for data that is no GLUE task.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    by_method = PRESETS[preset]
    if method not in by_method:
        raise ValueError(f"preset {preset!r} has no values for method {method!r} "
                         f"(it has: {', '.join(sorted(by_method))}); set the hyperparameters explicitly")
    by_task = by_method[method]
    key = task.lower().replace("-", "").replace("_", "")
    if key in by_task:
        return dict(by_task[key])
    if "*" in by_task:
        return dict(by_task["*"])
    raise ValueError(f"preset {preset!r}/{method} has no values for task {task!r} (it has: {', '.join(by_task)}); "
                     "pick a preset for this task or set the hyperparameters explicitly")
