"""The MLflow pyfunc of a registered edit: base model + RED edit, predicting on DataFrames.

A registered version stores only the edit file (kilobytes to a few MB) and a model config that
names the base model (hub id + revision, or an absolute local path) and the task's input
columns and labels. At load time ``RedEditModel.load_context`` loads the base model with
transformers, attaches the edit with ``red.load_edit`` (which checks architecture, widths and
the base weights' fingerprint, so a wrong base checkpoint is refused instead of silently
serving garbage) and keeps it in eval mode.

Predictions:

* classification: input columns = the task's text columns (``text``, or ``sentence1`` +
  ``sentence2``); output ``label`` (label name), ``score`` (its probability) and
  ``prob_<label>`` per class;
* regression: output ``score``;
* causal LM / seq2seq: input ``prompt``; output ``generation`` (greedy unless ``do_sample``;
  ``max_new_tokens`` is a serving param).

This module imports mlflow, pandas, numpy and (lazily) torch, transformers and ``red`` - never
Prefect, matplotlib or ``tasks`` - so a model server only needs the redflow package installed
(or the copies ``register_edit(..., bundle_code=True)`` puts in the model's ``code/``).
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from red.utils import default_device

from .generation import max_new_tokens

_logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
REGRESSION = "regression"
GENERATIVE = ("causal_lm", "seq2seq")
DEFAULT_TEXTS = ["a gripping, beautifully acted film that stays with you.", "dull, predictable and far too long."]
DEFAULT_PAIRS = [("A man is playing a guitar on stage.", "Someone is performing music."),
                 ("The cat is asleep on the sofa.", "A dog runs across the park.")]
DEFAULT_PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Write one sentence about autumn."]


# ---------------------------------------------------------------------------------------------
# model config, signature, input example (computed at registration time, no model loaded)
# ---------------------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """The pyfunc's ``model_config``: everything ``load_context``/``predict`` need besides the edit file.

    ``dtype``: the dtype the base model is served in; "auto" is the precision the edit was trained in
    (recorded in the edit file), "float32"/"bfloat16"/"float16" override it.

    Returned nested as ``{"serving": {...}}``: MLflow also logs a model config as run params
    (flattened with ``/``), and the prefix keeps them from colliding with the training params.
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


def serving_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """The flat serving settings inside a ``model_config`` (also accepts the flat form)."""
    cfg = dict(model_config or {})
    return dict(cfg.get("serving") or cfg)


def model_signature(config: dict[str, Any]) -> ModelSignature:
    config = serving_config(config)
    inputs = Schema([ColSpec("string", c) for c in config["text_columns"]])
    task_type = config["task_type"]
    if task_type in GENERATIVE:
        outputs = Schema([ColSpec("string", "generation")])
        params = ParamSchema([ParamSpec("max_new_tokens", "long", int(config.get("max_new_tokens", 64))),
                              ParamSpec("do_sample", "boolean", False)])
        return ModelSignature(inputs=inputs, outputs=outputs, params=params)
    if task_type == REGRESSION:
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", "score")]))
    cols = [ColSpec("string", "label"), ColSpec("double", "score")]
    cols += [ColSpec("double", f"prob_{label}") for label in config["label_list"]]
    return ModelSignature(inputs=inputs, outputs=Schema(cols))


def default_input_example(config: dict[str, Any]) -> pd.DataFrame:
    config = serving_config(config)
    cols = config["text_columns"]
    if config["task_type"] in GENERATIVE:
        return pd.DataFrame({cols[0]: DEFAULT_PROMPTS})
    if len(cols) == 2:
        return pd.DataFrame({cols[0]: [a for a, _ in DEFAULT_PAIRS], cols[1]: [b for _, b in DEFAULT_PAIRS]})
    return pd.DataFrame({cols[0]: DEFAULT_TEXTS})


# ---------------------------------------------------------------------------------------------
# the pyfunc
# ---------------------------------------------------------------------------------------------
_shared = threading.local()


@contextmanager
def shared_loads():
    """Within this block (this thread only), loads of the same base model + edit content share one
    loaded model. ``register_edit`` smoke-tests the model and MLflow then validates the logged
    input example by loading it again: with this, the base model is loaded once per registration,
    and the cache is dropped (memory freed) when the block ends."""
    outer = getattr(_shared, "cache", None)
    if outer is None:
        _shared.cache = {}
    try:
        yield
    finally:
        if outer is None:
            _shared.cache = None


class RedEditModel(PythonModel):
    """Base model + RED/ReFT edit as an MLflow pyfunc (artifact ``edit`` = the .safetensors file); also serves
    the baselines (artifact ``adapter``, ``bitfit`` or ``checkpoint``: ``registry.baselines``) with the same
    predict() contract. Registered as models-from-code (``registry/model_code.py``): no pickle."""

    def load_context(self, context: PythonModelContext) -> None:

        from red import read_edit
        from red.pretrained import load_pretrained_edit

        cfg = serving_config(context.model_config)
        if "edit" not in context.artifacts:  # LoRA adapter, BitFit tensors or a full checkpoint
            self._load_baseline(cfg, dict(context.artifacts))
            return
        edit_path = context.artifacts["edit"]
        _, meta = read_edit(edit_path)
        task_type = cfg.get("task_type", CLASSIFICATION)
        device = cfg.get("device", "auto")
        if device == "auto":
            device = default_device()
        cache = getattr(_shared, "cache", None)
        key = (cfg.get("base_model"), cfg.get("base_revision"), cfg.get("model_class"), task_type,
               str(cfg.get("label_list")), meta.get("tensors_sha256"), device, cfg.get("dtype", "auto"))
        if cache is not None and key in cache:
            self.edited, tokenizer = cache[key]
        else:
            self.edited, tokenizer, meta = load_pretrained_edit(
                edit_path, base_model=cfg.get("base_model") or None, revision=cfg.get("base_revision"),
                device=device, task_type=task_type, label_list=cfg.get("label_list"),
                model_class=cfg.get("model_class"), dtype=cfg.get("dtype", "auto"))
            if cache is not None:
                cache[key] = (self.edited, tokenizer)
        if task_type == "causal_lm":
            tokenizer.padding_side = "left"  # generation continues after the prompt
        self.tokenizer = tokenizer
        self.config = cfg
        self.device = device
        self.meta = meta

    def _load_baseline(self, cfg: dict[str, Any], artifacts: dict[str, str]) -> None:
        """A registered LoRA/BitFit/full-fine-tuning version (``registry.baselines``); same predict() contract."""

        from .baselines import ARTIFACT_KEYS, load_baseline

        method = cfg.get("method") or next((m for m, key in ARTIFACT_KEYS.items() if key in artifacts), "")
        key = ARTIFACT_KEYS.get(method)
        if key not in artifacts:
            raise ValueError(f"this model's artifacts {sorted(artifacts)} hold no edit and no {method!r} artifact")
        task_type = cfg.get("task_type", CLASSIFICATION)
        device = cfg.get("device", "auto")
        if device == "auto":
            device = default_device()
        cache = getattr(_shared, "cache", None)
        cache_key = (method, cfg.get("base_model"), cfg.get("base_revision"), task_type, str(cfg.get("label_list")),
                     cfg.get("artifact_sha256") or artifacts[key], device)
        if cache is not None and cache_key in cache:
            self.edited, tokenizer = cache[cache_key]
        else:
            self.edited, tokenizer = load_baseline(
                method, artifacts[key], base_model=cfg.get("base_model") or None, revision=cfg.get("base_revision"),
                task_type=task_type, label_list=cfg.get("label_list"), device=device)
            if cache is not None:
                cache[cache_key] = (self.edited, tokenizer)
        if task_type == "causal_lm":
            tokenizer.padding_side = "left"
        self.tokenizer, self.config, self.device, self.meta = tokenizer, cfg, device, {}

    # -----------------------------------------------------------------------------------------
    def _texts(self, frame: pd.DataFrame) -> list[list[str]]:
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        cols = self.config["text_columns"]
        missing = [c for c in cols if c not in frame.columns]
        if missing and len(cols) == 1 and frame.shape[1] == 1:
            frame = frame.set_axis(cols, axis=1)  # a single unnamed column is the text
            missing = []
        if missing:
            raise _bad_input(f"input is missing column(s) {missing}; this model expects {cols}, got "
                             f"{list(frame.columns)}")
        blank = sorted({i for c in cols for i, v in enumerate(frame[c].tolist())
                        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip()})
        if blank:  # a prediction for no text would look like an answer: refuse, naming the rows
            shown = ", ".join(str(i) for i in blank[:10]) + (" ..." if len(blank) > 10 else "")
            raise _bad_input(f"row(s) {shown} have no text in {cols}: send the text to score in every row")
        return [frame[c].astype(str).tolist() for c in cols]

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = self._texts(model_input)
        if self.config.get("task_type") in GENERATIVE:
            return self._generate(texts[0], params or {})
        return self._classify(texts)

    def _classify(self, texts: list[list[str]]) -> pd.DataFrame:
        import torch

        n = len(texts[0])
        bs = int(self.config.get("batch_size", 16))
        outputs = []
        for i in range(0, n, bs):
            chunk = [t[i:i + bs] for t in texts]
            enc = self.tokenizer(*chunk, padding=True, truncation=True,
                                 max_length=int(self.config.get("max_length", 256)), return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                outputs.append(self.edited(**enc).logits.float().cpu())
        logits = torch.cat(outputs) if outputs else torch.zeros(0, max(1, len(self.config.get("label_list") or [])))
        if self.config.get("task_type") == REGRESSION:
            return pd.DataFrame({"score": logits[:, 0].numpy().astype(np.float64)})
        labels = self.config["label_list"]
        probs = torch.softmax(logits, dim=-1).numpy().astype(np.float64)
        best = probs.argmax(axis=1) if n else np.zeros(0, dtype=int)
        frame = pd.DataFrame({"label": [labels[j] for j in best],
                              "score": probs[np.arange(n), best] if n else np.zeros(0)})
        for j, label in enumerate(labels):
            frame[f"prob_{label}"] = probs[:, j]
        return frame

    def _generate(self, prompts: list[str], params: dict[str, Any]) -> pd.DataFrame:
        import torch

        do_sample = bool(params.get("do_sample", False))
        bs = int(self.config.get("batch_size", 16))
        out: list[str] = []
        for i in range(0, len(prompts), bs):
            enc = self.tokenizer(prompts[i:i + bs], padding=True, truncation=True,
                                 max_length=int(self.config.get("max_length", 256)), return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            max_new = max_new_tokens(params, int(self.config.get("max_new_tokens", 64)), self.edited.config,
                                     enc["input_ids"].shape[1], causal=self.config.get("task_type") == "causal_lm")
            with torch.inference_mode():
                ids = self.edited.generate(**enc, max_new_tokens=max_new, do_sample=do_sample,
                                           pad_token_id=self.tokenizer.pad_token_id)
            if self.config.get("task_type") == "causal_lm":
                ids = ids[:, enc["input_ids"].shape[1]:]
            out += self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return pd.DataFrame({"generation": out})


def _bad_input(message: str) -> Exception:
    """An error MLflow's scoring server answers with HTTP 400 (the request's fault), not 500."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load_in_process(artifact: str | Path | dict[str, str], model_config: dict[str, Any]) -> RedEditModel:
    """A loaded RedEditModel without MLflow (pre-registration smoke test, notebooks): ``artifact`` is an
    edit file, or the artifacts dict a version is logged with (``{"adapter": dir}``, ``{"bitfit": file}``...)."""
    artifacts = {k: str(v) for k, v in artifact.items()} if isinstance(artifact, dict) else {"edit": str(artifact)}
    model = RedEditModel()
    model.load_context(PythonModelContext(artifacts=artifacts, model_config=dict(model_config)))
    return model
