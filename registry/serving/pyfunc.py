"""The MLflow pyfunc of one registered version: base model + RED edit (or a baseline), predicting on DataFrames.

A registered version stores only the edit file (kilobytes to a few MB) and a model config
(``registry.serving.version_config``) that names the base model (hub id + revision, or an absolute
local path) and the task's input columns and labels. At load time ``RedEditModel.load_context`` loads
the base model with transformers, attaches the edit with ``red.load_edit`` (which checks architecture,
widths and the base weights' fingerprint, so a wrong base checkpoint is refused instead of silently
serving garbage) and keeps it in eval mode.

Predictions (tokenized, batched and shaped by ``registry.serving.answers``, as the multi-task server's):

* every answer row starts with ``model`` and ``version``: the registered version that answered, as
  ``redflow serve`` (``registry.serving.multitask``) answers, so a client can switch between the two servers;
* classification: input columns = the task's text columns (``text``, or ``sentence1`` +
  ``sentence2``); output ``label`` (label name), ``score`` (its probability) and
  ``probabilities`` (``{label: p}``);
* regression: output ``score`` (``label`` and ``probabilities`` null);
* causal LM / seq2seq: input ``prompt``; output ``generation`` (greedy unless ``do_sample``;
  ``max_new_tokens`` is a serving param);
* a request over the ``REDFLOW_SERVE_*`` limits (rows, characters per text field) is refused whole with HTTP 413,
  and one past its deadline stops at its next batch (``registry.serving.limits``).

Which version answers (``registered_as``): a version's number exists only once it is registered, after its
model (and model config) was logged, so it cannot be written into the model. MLflow writes it beside the model
when it downloads ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (the ``registered_model_meta``
file next to ``MLmodel``; what ``mlflow models serve -m models:/...`` and ``mlflow.pyfunc.load_model`` load);
it is read from there. Where there is no such file (MLflow 3.18 and later, or a model loaded from a path), the
version registered from the model's run is asked of the registry (``version_of_run``); ``model`` is the name it was
registered under (its model config), and ``version`` null when the registry cannot say.

This module imports mlflow, pandas, numpy, torch, transformers, ``red`` and ``registry.baselines`` -
never Prefect or ``flows`` - so a model server only needs the redflow package installed (or the
copies ``register_edit(..., bundle_code=True)`` puts in the model's ``code/``).
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import yaml
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel, PythonModelContext

from red import read_edit
from red.pretrained import load_pretrained_edit
from red.utils import default_device

from ..baselines import ARTIFACT_KEYS, load_baseline
from ..reachability import server_error
from .answers import RequestError, encode, generate, logits, padded_batches, scores
from .limits import RequestLimits, request_deadline
from .version_config import CLASSIFICATION, GENERATIVE, version_settings

_logger = logging.getLogger(__name__)

_shared = threading.local()

REGISTERED_MODEL_META = "registered_model_meta"  # MLflow's ModelsArtifactRepository.REGISTERED_MODEL_META_FILE_NAME


def registered_as(artifacts: dict[str, str], config: dict[str, Any]) -> tuple[str | None, int | None]:
    """``(model, version)`` of the registered version these artifacts were downloaded as (see the module
    docstring): MLflow's ``registered_model_meta`` beside the model's ``MLmodel``, else ``(config["model"],
    None)``. Never raises: an unreadable file gives the fallback, with a warning."""
    fallback = (config.get("model") or None, None)
    for path in artifacts.values():
        for folder in Path(path).resolve().parents:
            if not (folder / "MLmodel").is_file():
                continue
            meta = folder / REGISTERED_MODEL_META
            if not meta.is_file():
                return fallback[0], version_of_run(folder, fallback[0])
            try:
                found = yaml.safe_load(meta.read_text()) or {}
                return str(found["model_name"]), int(found["model_version"])
            except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
                _logger.warning("%s is unreadable (%s); answering without a version", meta, exc)
                return fallback
    return fallback


def version_of_run(model_folder: Path, name: str | None) -> int | None:
    """The version of registered model ``name`` that was registered from the run in ``model_folder/MLmodel``, asked
    of the registry the process points at; None when there is no name or run, no such version, more than one, or
    the registry cannot be asked. MLflow 3.18 stopped writing ``registered_model_meta`` beside a downloaded
    ``models:/`` URI, so this is how a version learns its number there. An http registry is probed first
    (``registry.reachability.server_error``, once per process): a dead server costs seconds, not MLflow's minutes of
    retries."""
    try:
        run_id = (yaml.safe_load((model_folder / "MLmodel").read_text()) or {}).get("run_id")
        if not (name and run_id):
            return None
        uri = mlflow.get_registry_uri()
        if uri.startswith(("http://", "https://")) and server_error(uri.rstrip("/") + "/health"):
            return None
        found = {int(v.version) for v in MlflowClient(registry_uri=uri).search_model_versions(
            f"name = '{name}' and run_id = '{run_id}'")}
    except (OSError, yaml.YAMLError, MlflowException, ValueError, TypeError) as exc:
        _logger.warning("could not ask the registry which version of %s this is (%s); answering without one", name,
                        exc)
        return None
    return found.pop() if len(found) == 1 else None


@contextmanager
def shared_loads() -> Iterator[None]:
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
    predict() contract. Registered as models-from-code (``registry/serving/model_code.py``): no pickle."""

    def load_context(self, context: PythonModelContext) -> None:
        cfg = version_settings(context.model_config)
        self.limits = RequestLimits.resolve()  # the REDFLOW_SERVE_* variables: a bad value fails the load, naming it
        self.model_name, self.version = registered_as(dict(context.artifacts), cfg)
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
        self.tokenize_lock = threading.Lock()

    def _load_baseline(self, cfg: dict[str, Any], artifacts: dict[str, str]) -> None:
        """A registered LoRA/BitFit/full-fine-tuning version (``registry.baselines``); same predict() contract."""
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
        self.tokenize_lock = threading.Lock()

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
            raise RequestError(f"input is missing column(s) {missing}; this model expects {cols}, got "
                               f"{list(frame.columns)}")
        blank = sorted({i for c in cols for i, v in enumerate(frame[c].tolist())
                        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip()})
        if blank:  # a prediction for no text would look like an answer: refuse, naming the rows
            shown = ", ".join(str(i) for i in blank[:10]) + (" ..." if len(blank) > 10 else "")
            raise RequestError(f"row(s) {shown} have no text in {cols}: send the text to score in every row")
        return [frame[c].astype(str).tolist() for c in cols]

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Answer every row; a request over the limits is refused whole (HTTP 413), one past its deadline stops at
        its next batch (``registry.serving.limits``)."""
        with request_deadline(self.limits.timeout_s()):
            self.limits.check_frame(model_input)
            texts = self._texts(model_input)
            if self.config.get("task_type") in GENERATIVE:
                return self._generate(texts[0], params or {})
            return self._classify(texts)

    def _batches(self, texts: list[list[str]]) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        features = encode(self.tokenizer, texts, int(self.config.get("max_length", 256)), self.tokenize_lock)
        return padded_batches(self.tokenizer, features, int(self.config.get("batch_size", 16)), self.device,
                              self.tokenize_lock)

    def _classify(self, texts: list[list[str]]) -> pd.DataFrame:
        outputs = [logits(self.edited, batch) for _, batch in self._batches(texts)]
        labels = self.config.get("label_list")
        found = torch.cat(outputs) if outputs else torch.zeros(0, max(1, len(labels or [])))
        return scores(found, self.config.get("task_type"), labels).frame(self.model_name, self.version)

    def _generate(self, prompts: list[str], params: dict[str, Any]) -> pd.DataFrame:
        out: list[str] = []
        for _, batch in self._batches([prompts]):
            out += generate(self.edited, self.tokenizer, batch, params, int(self.config.get("max_new_tokens", 64)),
                            causal=self.config.get("task_type") == "causal_lm", lock=self.tokenize_lock)
        return pd.DataFrame({"model": pd.Series([self.model_name] * len(out), dtype=object),
                             "version": pd.Series([self.version] * len(out), dtype=object), "generation": out})


def load_in_process(artifact: str | Path | dict[str, str], model_config: dict[str, Any]) -> RedEditModel:
    """A loaded RedEditModel without MLflow (pre-registration smoke test, notebooks): ``artifact`` is an
    edit file, or the artifacts dict a version is logged with (``{"adapter": dir}``, ``{"bitfit": file}``...)."""
    artifacts = {k: str(v) for k, v in artifact.items()} if isinstance(artifact, dict) else {"edit": str(artifact)}
    model = RedEditModel()  # not downloaded from the registry: model from the config, version None
    model.load_context(PythonModelContext(artifacts=artifacts, model_config=dict(model_config)))
    return model
