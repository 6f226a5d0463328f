"""The ``model_config`` of one registered version, its signature and its input example (no model loaded).

``register_edit`` computes them when it logs a version: the config names the base model (hub id +
revision, or an absolute local path), the task's input columns and labels, and the serving settings
(max length, batch size, ``max_new_tokens``, dtype); ``RedEditModel`` (``registry.serving.pyfunc``) reads
them back when the version loads, and the multi-task server (``registry.serving.served_tasks``) when it
checks a version. The config is stored nested as ``{"serving": {...}}``; ``version_settings`` reads either form.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Map

CLASSIFICATION = "classification"
REGRESSION = "regression"
GENERATIVE = ("causal_lm", "seq2seq")
DEFAULT_TEXTS = ["a gripping, beautifully acted film that stays with you.", "dull, predictable and far too long."]
DEFAULT_PAIRS = [("A man is playing a guitar on stage.", "Someone is performing music."),
                 ("The cat is asleep on the sofa.", "A dog runs across the park.")]
DEFAULT_PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Write one sentence about autumn."]


def head_num_labels(tensors: dict[str, Any]) -> int | None:
    """Rows of the edit file's classification head (``head.*classifier|out_proj|score.weight``)."""
    cands = [(k, t) for k, t in tensors.items() if k.startswith("head.") and k.endswith(".weight") and t.ndim == 2]
    if not cands:
        return None
    preferred = [c for c in cands if re.search(r"(classifier|out_proj|score)\.weight$", c[0])]
    return int((preferred or cands)[-1][1].shape[0])


def _resolve_base(name: str) -> str:
    """Absolute path for a local checkpoint folder (so a server started elsewhere finds it), else the hub id."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name and path.exists() else name


def build_model_config(
    *,
    task: str,
    task_type: str,
    meta: dict[str, Any],
    tensors: dict[str, Any] | None = None,
    base_model: str | None = None,
    base_revision: str | None = None,
    text_columns: list[str] | tuple[str, ...] | None = None,
    label_list: list[str] | None = None,
    max_length: int = 256,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    dtype: str = "auto",
    method: str | None = None,
    artifact_sha256: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The pyfunc's ``model_config``: everything ``load_context``/``predict`` need besides the edit file.

    ``dtype``: the dtype the base model is served in; "auto" is the precision the edit was trained in
    (recorded in the edit file), "float32"/"bfloat16"/"float16" override it.

    Returned nested as ``{"serving": {...}}``: MLflow also logs a model config as run params
    (flattened with ``/``), and the prefix keeps them from colliding with the training params.

    ``model``: the registered model the version is logged for; its answers name it (``model`` column) when
    it is loaded from a path rather than ``models:/`` (``registry.serving.pyfunc.registered_as``).
    """
    extra = meta.get("extra") or {}
    base = meta.get("base_model") or {}
    if task_type in GENERATIVE:
        columns = list(text_columns or extra.get("text_columns") or ["prompt"])[:1]
    else:
        columns = list(text_columns or extra.get("text_columns") or ["text"])
    if not 1 <= len(columns) <= 2:
        raise ValueError(f"a task has 1 or 2 text columns, got {columns}")
    labels = None
    if task_type == CLASSIFICATION:
        labels = label_list or extra.get("label_list") or extra.get("labels")
        if not labels:
            n = head_num_labels(tensors or {}) or 2
            labels = [f"LABEL_{i}" for i in range(n)]
        labels = [str(x) for x in labels]
    return {"serving": {
        "model": model,
        "task": task,
        "task_type": task_type,
        "text_columns": columns,
        "label_list": labels,
        "base_model": _resolve_base(base_model or base.get("name") or ""),
        "base_revision": base_revision or base.get("revision"),
        "model_class": base.get("class"),
        "max_length": int(max_length),
        "batch_size": int(batch_size),
        "max_new_tokens": int(max_new_tokens),
        "device": "auto",
        "dtype": dtype,
        "method": method or meta.get("method"),
        "artifact_sha256": artifact_sha256 or meta.get("tensors_sha256"),
    }}


def version_settings(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """The flat serving settings inside a ``model_config`` (also accepts the flat form)."""
    cfg = dict(model_config or {})
    return dict(cfg.get("serving") or cfg)


def model_signature(config: dict[str, Any]) -> ModelSignature:
    """The version's signature: its text columns in; ``generation`` (with the ``max_new_tokens``/``do_sample``
    params), or ``label`` + ``score`` + ``probabilities`` out (a regression's ``label`` and ``probabilities``
    null), each after ``model`` and ``version`` (null when loaded from a path): ``redflow serve``'s shape."""
    config = version_settings(config)
    inputs = Schema([ColSpec("string", c) for c in config["text_columns"]])
    task_type = config["task_type"]
    served_by = [ColSpec("string", "model", required=False), ColSpec("long", "version", required=False)]
    if task_type in GENERATIVE:
        outputs = Schema([*served_by, ColSpec("string", "generation")])
        params = ParamSchema([ParamSpec("max_new_tokens", "long", int(config.get("max_new_tokens", 64))),
                              ParamSpec("do_sample", "boolean", False)])
        return ModelSignature(inputs=inputs, outputs=outputs, params=params)
    regression = task_type == REGRESSION
    return ModelSignature(inputs=inputs, outputs=Schema([
        *served_by, ColSpec("string", "label", required=not regression), ColSpec("double", "score"),
        ColSpec(Map(DataType.double), "probabilities", required=not regression)]))


def default_input_example(config: dict[str, Any]) -> pd.DataFrame:
    """Two rows in the version's text columns (texts, text pairs or prompts): what registration predicts on."""
    config = version_settings(config)
    cols = config["text_columns"]
    if config["task_type"] in GENERATIVE:
        return pd.DataFrame({cols[0]: DEFAULT_PROMPTS})
    if len(cols) == 2:
        return pd.DataFrame({cols[0]: [a for a, _ in DEFAULT_PAIRS], cols[1]: [b for _, b in DEFAULT_PAIRS]})
    return pd.DataFrame({cols[0]: DEFAULT_TEXTS})
