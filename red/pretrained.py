"""Load an edit together with the base model it was trained on, from the edit file alone.

An edit file records its base model (hub name and revision, or a local folder), the
model class and, for classification edits, the label names. This is the one place that
turns that record back into a ready model, for evaluation, serving and the CLI.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .io import load_edit, read_edit

log = logging.getLogger(__name__)


def model_class_for(task_type: str, *, label_list: list[str] | None = None, num_labels: int | None = None
                    ) -> tuple[type, dict[str, Any]]:
    """The Auto class for a task type and the ``from_pretrained`` kwargs that shape its head.

    A checkpoint's own head may have another label count (the trained head comes from the edit
    or from training), hence ``ignore_mismatched_sizes``.
    """
    import transformers

    if task_type in ("classification", "regression"):
        kwargs: dict[str, Any] = {"ignore_mismatched_sizes": True}
        if task_type == "regression":
            kwargs.update(num_labels=1, problem_type="regression")
        elif num_labels:
            kwargs["num_labels"] = num_labels
        if label_list and task_type == "classification":
            kwargs.update(id2label=dict(enumerate(label_list)), label2id={l: i for i, l in enumerate(label_list)})
        return transformers.AutoModelForSequenceClassification, kwargs
    if task_type == "seq2seq":
        return transformers.AutoModelForSeq2SeqLM, {}
    return transformers.AutoModelForCausalLM, {}


def load_pretrained_edit(edit_path: str | Path, *, base_model: str | None = None, revision: str | None = None,
                         device: str | None = None, dtype: torch.dtype | None = None, task_type: str | None = None,
                         label_list: list[str] | None = None, model_class: str | None = None):
    """Return ``(edited_model, tokenizer, meta)`` for an edit file.

    ``base_model`` overrides the recorded base (e.g. the same checkpoint at another local path);
    the weight fingerprint check still guarantees it is the same model. ``task_type``,
    ``label_list`` and ``model_class`` override what the file records (a serving config's view).
    """
    import transformers

    tensors, meta = read_edit(edit_path)
    base = meta["base_model"]
    extra = meta.get("extra") or {}
    name = base_model or base.get("name")
    if not name:
        raise ValueError(f"{edit_path} records no base model; pass base_model=")
    local = Path(name).exists()
    revision = None if local else (revision or base.get("revision"))
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, **({"revision": revision} if revision else {}))
    task_type = task_type or extra.get("task_type", "classification")
    labels = label_list or extra.get("label_list")
    cls, head_kwargs = model_class_for(task_type, label_list=labels, num_labels=len(labels) if labels else None)
    cls = getattr(transformers, model_class or base.get("class") or "", None) or cls
    kwargs.update(head_kwargs)
    model, info = cls.from_pretrained(name, output_loading_info=True, **kwargs)
    head = {k[len("head."):] for k in tensors if k.startswith("head.")}
    uncovered = sorted(set(info.get("missing_keys") or []) - head)
    if uncovered:  # weights neither in the checkpoint nor in the edit: outputs would be random
        log.warning("weights missing from %s and not in the edit file (randomly initialised): %s", name, uncovered[:8])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    edited = load_edit(model, edit_path)
    edited.eval()
    return edited, tokenizer, meta
