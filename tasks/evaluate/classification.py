"""Evaluate a sequence classifier (plain, attached or merged edit) on an encoded split.

Flows call this on ``EncodedData.validation``/``test`` after loading an edit,
so the number logged to the registry is computed the same way for every
method (RED, LoRA, full fine-tuning) and never inside a Trainer.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .metrics import glue_metrics, is_regression, logits_to_predictions, metric_names, metric_set, primary_metric
from .report import EvalReport


@torch.no_grad()
def predict_classification(model: torch.nn.Module, rows: Iterable[Mapping[str, Any]] | Any, *,
                           batch_size: int = 32, pad_token_id: int | None = None,
                           regression: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over encoded rows (input_ids, attention_mask, labels[, token_type_ids]).

    Rows are padded on the right per batch (classification heads pool the
    first token or, for decoders, the last non-pad one, found through
    ``config.pad_token_id``, which is why the pad id must match the model's).
    Returns (predictions, labels).
    """
    was_training = model.training
    model.eval()
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    device = _device(model)
    all_logits: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    try:
        for batch in _batches(rows, batch_size):
            inputs = _pad(batch, pad_token_id, device)
            labels = inputs.pop("labels", None)
            logits = model(**inputs).logits
            all_logits.append(logits.float().cpu().numpy())
            if labels is not None:
                all_labels.append(labels.cpu().numpy())
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("no rows to evaluate")
    logits = np.concatenate(all_logits)
    labels = np.concatenate(all_labels) if all_labels else np.array([])
    return logits_to_predictions(logits, regression=regression), labels


def evaluate_classification(model: torch.nn.Module, rows: Iterable[Mapping[str, Any]] | Any, task: str, *,
                            batch_size: int = 32, pad_token_id: int | None = None, name: str | None = None,
                            model_name: str = "", primary: str | None = None) -> EvalReport:
    """GLUE metrics of ``model`` on encoded ``rows`` (a datasets.Dataset or a list of dicts) for ``task``.

    ``task`` is a GLUE task ('sst2', 'cola', 'stsb'...: its whole metric set is reported) or a
    metric name ('accuracy', 'mcc', 'pearson', 'f1'). ``primary`` (e.g. ``TaskData.metric``)
    overrides the task's primary metric (the paper's: MCC for CoLA, Pearson for STS-B, accuracy
    otherwise) and is reported too.
    """
    primary = metric_names(primary)[0] if primary else primary_metric(task)
    names = metric_set(task, primary)
    regression = all(is_regression(m) for m in names)
    preds, labels = predict_classification(model, rows, batch_size=batch_size, pad_token_id=pad_token_id,
                                           regression=regression)
    if labels.size == 0:
        raise ValueError("the rows have no 'labels' column: cannot score (GLUE test splits are unlabelled)")
    metrics = glue_metrics(names, preds, labels)
    details: dict[str, Any] = {"n": int(len(labels)), "metric_set": list(names)}
    if not regression:
        classes, counts = np.unique(preds, return_counts=True)
        details["predicted_class_counts"] = {str(int(c)): int(n) for c, n in zip(classes, counts)}
    return EvalReport(name=name or task, kind="classification", metrics=metrics, primary=primary,
                      model=model_name, details=details)


# ---- helpers ------------------------------------------------------------------------------
_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def _batches(rows: Any, batch_size: int) -> Iterable[list[Mapping[str, Any]]]:
    if hasattr(rows, "select_columns") and hasattr(rows, "__len__"):  # datasets.Dataset: slice, keep needed columns
        keep = [k for k in _KEYS if k in rows.column_names]
        rows = rows.select_columns(keep)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            yield [{k: chunk[k][i] for k in chunk} for i in range(len(chunk["input_ids"]))]
        return
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pad(batch: Sequence[Mapping[str, Any]], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(row["input_ids"]) for row in batch)
    out: dict[str, torch.Tensor] = {}
    for key in _KEYS:
        if key not in batch[0]:
            continue
        if key == "labels":
            out[key] = torch.as_tensor(np.asarray([row[key] for row in batch]))
            continue
        fill = pad_token_id if key == "input_ids" else 0
        padded = [list(row[key]) + [fill] * (width - len(row[key])) for row in batch]
        out[key] = torch.tensor(padded, dtype=torch.long, device=device)
    if "attention_mask" not in out:
        lengths = torch.tensor([len(row["input_ids"]) for row in batch], device=device)
        out["attention_mask"] = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return out


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
