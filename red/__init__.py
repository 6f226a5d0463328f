"""red: Representation EDiting for any transformers model.

Attach learnable scaling and bias vectors to the output of each FFN
down-projection of a frozen model, train them, fold them into the weights,
save them as small safetensors files, and serve several tasks in one batch.
This package imports neither Prefect nor MLflow.
"""
from __future__ import annotations

from .exports import lazy_exports

_EXPORTS = {
    "ARCHITECTURES": "architectures",
    "EditBank": "bank",
    "EditConfig": "config",
    "EditConfigError": "errors",
    "EditFileError": "errors",
    "EditMismatchError": "errors",
    "EditedModel": "model",
    "MergeError": "errors",
    "RedError": "errors",
    "TrainableBank": "bank_train",
    "UnknownArchitectureError": "errors",
    "attach": "model",
    "count_parameters": "params",
    "load_edit": "model",
    "read_edit": "io",
    "save_edit": "io",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
