"""Load a base model for a task, and an edit together with its base model, from the edit file alone.

One loader for training, evaluation, serving and the registration check, so that all of
them build the same model:

- ``load_tokenizer`` gives a tokenizer without a pad token one (EOS, else UNK), and
  ``set_pad_token`` writes that id into the model's config, which decoder classification
  heads (GPT-2, Llama, ...) need to find each row's last token in a padded batch;
- ``load_base_model`` loads the task's class in the requested dtype and reports which
  parameters transformers initialised fresh (missing from the checkpoint, or reshaped for
  another label count): those belong to the task, so training trains and saves them with
  the edit, and loading an edit refuses a model where any of them would stay random;
- ``load_pretrained_edit`` turns an edit file's record (base model name and revision, class,
  labels, training dtype) back into a ready model.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from .errors import EditMismatchError
from .io import read_edit
from .model import load_edit
from .utils import default_device

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def model_class_for(task_type: str, *, label_list: list[str] | None = None, num_labels: int | None = None
                    ) -> tuple[type, dict[str, Any]]:
    """The Auto class for a task type and the ``from_pretrained`` kwargs that shape its head.

    A checkpoint's own head may have another label count (the trained head comes from the edit
    or from training), hence ``ignore_mismatched_sizes``.
    """
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


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bfloat16"`` or ``"bf16"`` -> torch.bfloat16; None/"auto" -> None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def set_pad_token(tokenizer: Any, model: nn.Module | None = None) -> Any:
    """Give ``tokenizer`` a pad token (its EOS, else UNK) if it has none, and tell ``model``'s config its id.

    The config keeps a pad id it already has. Returns the tokenizer.
    """
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = getattr(model, "config", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if config is not None and pad_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_id
        generation = getattr(model, "generation_config", None)
        if generation is not None and getattr(generation, "pad_token_id", None) is None:
            generation.pad_token_id = pad_id
    return tokenizer


def load_tokenizer(name: str, *, revision: str | None = None) -> Any:
    """The base model's tokenizer, with a pad token (``set_pad_token``)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, **({"revision": revision} if revision else {}))
    check_vocabulary(tokenizer, name)
    return set_pad_token(tokenizer)


def check_vocabulary(tokenizer: Any, name: str) -> None:
    """Refuse a tokenizer with no real vocabulary (only special tokens).

    transformers builds one from the model config alone when a folder has weights but no tokenizer files;
    every word then becomes ``[UNK]`` and a training "works" while learning from nothing.

    Raises:
        ValueError: naming the folder and the fix (save the tokenizer beside the weights).
    """
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    try:
        vocabulary = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return
    if vocabulary and len(set(vocabulary) - special) == 0:
        raise ValueError(f"the tokenizer of {name!r} has no vocabulary, only special tokens "
                         f"({sorted(vocabulary)[:8]}), so every word would be unknown. The folder has the model's "
                         "weights but not its tokenizer files: save them beside the weights "
                         "(tokenizer.save_pretrained(folder)), or train from the hub name.")


def fresh_modules(model: nn.Module, keys: list[str]) -> list[str]:
    """The largest modules all of whose parameters are in ``keys`` (transformers' missing/mismatched keys).

    ``["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]``
    -> ``["bert.pooler", "classifier"]`` (never the whole model).
    """
    params = {name for name, _ in model.named_parameters()}
    fresh = {k for k in keys if k in params}
    for key in keys:  # a key under a prefix this class does not use (checkpoint saved by another class)
        if key not in params:
            fresh.update(p for p in params if p.endswith("." + key))
    modules = dict(model.named_modules())
    owners: list[str] = []
    for key in sorted(fresh):
        owner = key.rpartition(".")[0]
        while owner:
            parent = owner.rpartition(".")[0]
            if not parent or not all(f"{parent}.{n}" in fresh for n, _ in modules[parent].named_parameters()):
                break
            owner = parent
        if owner and owner not in owners and not any(owner.startswith(o + ".") for o in owners):
            owners = [o for o in owners if not o.startswith(owner + ".")] + [owner]
    return owners


_LOADING = threading.RLock()


def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls.from_pretrained(*args, **kwargs)``, one load at a time in this process.

    transformers 5 loads inside ``no_init_weights()``/``no_tie_weights()``, which replace
    ``PreTrainedModel.init_weights``/``tie_weights`` on the class and put back what they found. Two threads
    loading at once can put back the *replacement*: from then on no model in the process ties its weights
    (a tied GPT-2/T5 reports ``lm_head`` as missing) or initialises fresh heads. Servers, the threads task
    runner and tuning trials load from several threads, so every load in redflow goes through here.
    """
    with _LOADING:
        return cls.from_pretrained(*args, **kwargs)


def load_base_model(name: str, task_type: str, *, revision: str | None = None, dtype: torch.dtype | str | None = None,
                    label_list: list[str] | None = None, num_labels: int | None = None,
                    model_class: str | None = None, tokenizer: Any = None) -> tuple[nn.Module, list[str]]:
    """``(model, fresh)``: the base model for a task type, and the modules transformers initialised fresh.

    ``model_class`` names a transformers class (an edit file's record) instead of the Auto class;
    ``tokenizer`` (if given) gets a pad token and the model its id (``set_pad_token``).
    Raises OSError/ValueError from transformers for a missing checkpoint.
    """
    cls, kwargs = model_class_for(task_type, label_list=label_list, num_labels=num_labels)
    if model_class:
        named = getattr(transformers, model_class, None)
        if named is None:
            raise EditMismatchError(f"this transformers has no model class {model_class!r}; install the transformers "
                                    "version the edit was trained with")
        cls = named
    if revision:
        kwargs["revision"] = revision
    if as_dtype(dtype) is not None:
        kwargs["dtype"] = as_dtype(dtype)
    model, info = from_pretrained(cls, name, output_loading_info=True, **kwargs)
    fresh = list(info.get("missing_keys") or []) + [k[0] if isinstance(k, (tuple, list)) else k
                                                     for k in info.get("mismatched_keys") or []]
    if tokenizer is not None:
        set_pad_token(tokenizer, model)
    return model, fresh_modules(model, fresh)


def _check_config(name: str, revision: str | None, recorded_type: str) -> None:
    """Refuse a base checkpoint of another architecture before transformers tries to load it."""
    config = transformers.AutoConfig.from_pretrained(name, **({"revision": revision} if revision else {}))
    if config.model_type != recorded_type:
        raise EditMismatchError(f"the edit was trained on a {recorded_type} model but {name} is a {config.model_type}; "
                                "pass the base checkpoint it was trained on")


def load_pretrained_edit(edit_path: str | Path, *, base_model: str | None = None, revision: str | None = None,
                         device: str | None = None, dtype: torch.dtype | str | None = None,
                         task_type: str | None = None, label_list: list[str] | None = None,
                         model_class: str | None = None):
    """Return ``(edited_model, tokenizer, meta)`` for an edit file.

    ``base_model`` overrides the recorded base (e.g. the same checkpoint at another local path);
    the weight fingerprint check still guarantees it is the same model. ``dtype`` defaults to
    the precision the edit was trained in (the file's ``base_model.dtype``); pass another
    (``torch.float32``, ``"bf16"``...) to serve in it. ``task_type``, ``label_list`` and
    ``model_class`` override what the file records (a serving config's view). Raises
    EditMismatchError when the base is another architecture, or when loading it leaves
    weights randomly initialised that the edit does not hold.
    """
    tensors, meta = read_edit(edit_path)
    base = meta["base_model"]
    extra = meta.get("extra") or {}
    name = base_model or base.get("name")
    if not name:
        raise ValueError(f"{edit_path} records no base model; pass base_model=")
    local = Path(name).exists()
    revision = None if local else (revision or base.get("revision"))
    _check_config(name, revision, base["model_type"])
    tokenizer = load_tokenizer(name, revision=revision)
    task_type = task_type or extra.get("task_type") or "classification"
    labels = label_list or extra.get("label_list")
    model, fresh = load_base_model(
        name, task_type, revision=revision, dtype=as_dtype(dtype) or as_dtype(base.get("dtype")),
        label_list=labels, num_labels=len(labels) if labels else None,
        model_class=model_class or base.get("class"), tokenizer=tokenizer)
    uncovered = [m for m in fresh for p, _ in model.get_submodule(m).named_parameters()
                 if f"head.{m}.{p}" not in tensors]
    if uncovered:
        raise EditMismatchError(
            f"loading {name} for {task_type} initialises {sorted(set(uncovered))[:4]} randomly and the edit file does not hold them, "
            "so predictions would be random. Retrain the edit with this redflow (which trains and saves them), or "
            "pass the task type / labels it was trained with.")
    device = device or default_device()
    model.to(device).eval()
    edited = load_edit(model, edit_path)
    edited.eval()
    return edited, tokenizer, meta
