"""red: Representation EDiting for any transformers model.

Attach learnable scaling and bias vectors to the output of each FFN
down-projection of a frozen model, train them, fold them into the weights,
save them as small safetensors files, and serve several tasks in one batch.
This package imports neither Prefect nor MLflow.
"""
from .architectures import ARCHITECTURES
from .bank import EditBank
from .bank_train import TrainableBank
from .config import EditConfig
from .errors import (EditConfigError, EditFileError, EditMismatchError, MergeError, RedError,
                     UnknownArchitectureError)
from .io import read_edit, save_edit
from .model import EditedModel, attach, load_edit
from .params import count_parameters

__all__ = [
    "ARCHITECTURES", "EditBank", "EditConfig", "EditConfigError", "EditFileError", "EditMismatchError",
    "EditedModel", "MergeError", "RedError", "TrainableBank", "UnknownArchitectureError", "attach",
    "count_parameters", "load_edit", "read_edit", "save_edit",
]
