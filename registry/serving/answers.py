"""The one path from request texts to answers, shared by both servers (one task's pyfunc and the multi-task one).

* ``encode``: token ids of each row, truncated at its task's ``max_length`` (no padding yet);
* ``padded_batches``: ``batch_size`` rows at a time, padded and on the model's device, in request order;
* ``scores``: a classification or regression task's answers from its logits (label, score, probabilities);
* ``generate``: a generation task's answers (greedy unless ``do_sample``), after ``max_new_tokens`` is checked.

A tokenizer is used under the caller's lock: a fast tokenizer keeps its truncation length in shared state,
and requests run on many threads at once (MLflow's scoring server answers each on a worker thread). The lock is
held for one chunk of ``ENCODE_CHUNK`` rows (or one batch) at a time, never for a whole request, so a large
request does not keep the small ones beside it waiting; and between chunks and batches the request's deadline is
checked (``registry.serving.limits``): past it, the request stops instead of computing for a client that MLflow
already answered with a 504.

``max_new_tokens`` comes from the request (MLflow's ``params``); unchecked, ``100000`` ran past a GPT-2's
1,024 positions into an ``IndexError`` answered as a stack trace, and ``-1`` into a transformers error.
Every refusal here is a ``RequestError``: HTTP 400, the request's fault, with a message that says what to send.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .limits import check_deadline
from .version_config import REGRESSION


class RequestError(MlflowException):
    """A request the server refuses (HTTP 400, MLflow's ``INVALID_PARAMETER_VALUE``): the message names the
    rows, columns or parameter at fault and what to send instead."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


# ---------------------------------------------------------------------------------------------
# tokens and batches
# ---------------------------------------------------------------------------------------------
ENCODE_CHUNK = 64
"""Rows tokenized per hold of the tokenizer's lock (a row's tokens do not depend on its neighbours: no padding)."""


def encode(tokenizer: Any, columns: Sequence[Sequence[str]], max_length: int,
           lock: threading.Lock) -> list[dict[str, Any]]:
    """Token ids of each row: ``columns`` holds one list of texts per text column (1, or 2 for a pair task),
    all of one length n; returns n feature dicts (``input_ids``, ``attention_mask``...), truncated at
    ``max_length`` and not padded. ``lock`` is held per ``ENCODE_CHUNK`` rows; the deadline is checked before
    each chunk."""
    n = len(columns[0])
    features: list[dict[str, Any]] = []
    for start in range(0, n, ENCODE_CHUNK):
        check_deadline(start, n)
        chunk = [list(c[start:start + ENCODE_CHUNK]) for c in columns]
        with lock:
            enc = tokenizer(*chunk, truncation=True, max_length=int(max_length))
        features += [{k: v[j] for k, v in enc.items()} for j in range(len(chunk[0]))]
    return features


def padded_batches(tokenizer: Any, features: list[dict[str, Any]], batch_size: int, device: Any,
                   lock: threading.Lock) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``(positions, batch)`` of ``batch_size`` rows at a time, in order: ``positions`` index ``features``;
    ``batch`` is padded (on the tokenizer's padding side) and on ``device``. The deadline is checked before each
    batch: a request past it stops here (``limits.DeadlineExceeded``)."""
    for start in range(0, len(features), batch_size):
        check_deadline(start, len(features))
        positions = list(range(start, min(start + batch_size, len(features))))
        with lock:
            batch = tokenizer.pad([features[p] for p in positions], return_tensors="pt")
        yield positions, {k: v.to(device) for k, v in batch.items()}


def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits for ``batch`` as float32 on the CPU, shape ``[rows, outputs]``."""
    with torch.inference_mode():
        return model(**batch).logits.float().cpu()


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------
ANSWER_COLUMNS = ("model", "version", "label", "score", "probabilities")
"""A classification or regression answer's columns, both servers (the multi-task one adds ``task`` first)."""

@dataclass(frozen=True)
class Scores:
    """The answers of n rows of one classification or regression task.

    ``score``: float64 ``[n]`` (regression: the predicted value; classification: the predicted label's
    probability); ``label``: the predicted label names (None for regression); ``probabilities``: float64
    ``[n, labels]`` (None for regression).
    """

    labels: tuple[str, ...]
    score: np.ndarray
    label: list[str] | None = None
    probabilities: np.ndarray | None = None

    def frame(self, model: str | None = None, version: int | None = None) -> pd.DataFrame:
        """One task's pyfunc answer, in the multi-task server's shape less its ``task`` column: ``model`` and
        ``version`` (the registered version that answered; null where unknown), ``label``, ``score`` and
        ``probabilities`` (``{label: p}``); a regression row's ``label`` and ``probabilities`` are null."""
        n = len(self.score)
        records = self.records()
        return pd.DataFrame({"model": pd.Series([model] * n, dtype=object),
                             "version": pd.Series([version] * n, dtype=object),
                             "label": pd.Series([r.get("label") for r in records], dtype=object),
                             "score": pd.Series(self.score, dtype=np.float64),
                             "probabilities": pd.Series([r.get("probabilities") for r in records], dtype=object)},
                            columns=list(ANSWER_COLUMNS))

    def records(self) -> list[dict[str, Any]]:
        """The multi-task answer of each row: ``{"score"}`` (regression), else ``{"label", "score",
        "probabilities": {label: p}}``."""
        if self.label is None:
            return [{"score": float(s)} for s in self.score]
        return [{"label": label, "score": float(s), "probabilities": {k: float(p) for k, p in zip(self.labels, row)}}
                for label, s, row in zip(self.label, self.score, self.probabilities)]


def scores(logits: torch.Tensor, task_type: str, labels: Sequence[str] | None) -> Scores:
    """The answers for ``logits`` (``[n, outputs]``) of a ``task_type`` task: regression reads output 0;
    classification takes the softmax over the task's labels (``LABEL_<j>`` where none are given)."""
    n = logits.shape[0]
    if task_type == REGRESSION:
        return Scores(labels=(), score=logits[:, 0].numpy().astype(np.float64))
    names = tuple(labels) if labels else tuple(f"LABEL_{j}" for j in range(logits.shape[-1]))
    probs = torch.softmax(logits, dim=-1).numpy().astype(np.float64)
    best = probs.argmax(axis=1) if n else np.zeros(0, dtype=int)
    return Scores(labels=names, score=probs[np.arange(n), best] if n else np.zeros(0),
                  label=[names[j] for j in best], probabilities=probs)


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def position_limit(config: Any) -> int | None:
    """The most positions the model reads (learned position embeddings), or None (relative/rotary: no table)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_new_tokens(params: dict[str, Any], default: int, config: Any, prompt_tokens: int, *, causal: bool) -> int:
    """The request's ``max_new_tokens`` (else ``default``), checked.

    A causal model's prompt and answer share its positions: ``prompt_tokens + max_new_tokens`` must fit
    ``position_limit(config)``. Raises ``RequestError`` (HTTP 400), naming the value and the largest one that fits.
    """
    raw = params.get("max_new_tokens")
    value = default if raw is None else raw
    try:
        n = int(value)
        if isinstance(value, bool) or n != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(f"max_new_tokens must be a whole number of tokens, got {raw!r}") from None
    if n < 1:
        raise RequestError(f"max_new_tokens must be at least 1, got {n}")
    limit = position_limit(config)
    if limit is not None:
        room = limit - (prompt_tokens if causal else 0)
        if n > room:
            taken = f" and the longest prompt of this batch takes {prompt_tokens}" if causal else ""
            raise RequestError(f"max_new_tokens {n} does not fit: the model reads at most {limit} positions{taken}; "
                               f"ask for at most {max(room, 0)}")
    return n


def generate(model: Any, tokenizer: Any, batch: dict[str, torch.Tensor], params: dict[str, Any], default: int, *,
             causal: bool, lock: threading.Lock) -> list[str]:
    """The generations for one padded ``batch`` of prompts: ``max_new_tokens`` from ``params`` (else ``default``)
    checked against the model's positions, greedy unless ``params["do_sample"]``; a causal model's answer is
    what follows the prompt."""
    prompt = batch["input_ids"].shape[1]
    max_new = max_new_tokens(params, default, model.config, prompt, causal=causal)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new, do_sample=bool(params.get("do_sample", False)),
                             pad_token_id=tokenizer.pad_token_id)
    if causal:
        out = out[:, prompt:]
    with lock:
        return tokenizer.batch_decode(out, skip_special_tokens=True)
