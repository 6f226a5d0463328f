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
    cls = getattr(transformers, model_class or base.get("class") or "", None)
    task_type = task_type or extra.get("task_type", "classification")
    if task_type in ("classification", "regression"):
        cls = cls or transformers.AutoModelForSequenceClassification
        labels = label_list or extra.get("label_list")
        if task_type == "regression":
            kwargs.update(num_labels=1, problem_type="regression")
        elif labels:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={l: i for i, l in enumerate(labels)})
        kwargs["ignore_mismatched_sizes"] = True  # the head comes from the edit file
    elif task_type == "seq2seq":
        cls = cls or transformers.AutoModelForSeq2SeqLM
    else:
        cls = cls or transformers.AutoModelForCausalLM
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
