"""The baseline methods as registered artifacts, and how the pyfunc loads them (no pickle anywhere).

What ``tasks.training`` leaves for a method that is not an edit, and what a version stores:

* ``lora``: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, the task
  head as PEFT's ``modules_to_save``) -> artifact ``adapter``; served as ``PeftModel.from_pretrained``
  on the recorded base model.
* ``bitfit``: a full checkpoint folder, of which only the biases and the task head were trained ->
  artifact ``bitfit``, one ``.safetensors`` file with those tensors (plus any weight the base lacks)
  and a JSON header (format, base model, a fingerprint of the frozen weights). Served by loading the
  base model and copying the tensors in; a base whose frozen weights differ is refused.
* ``full``: a full checkpoint folder (``model.safetensors``, config, tokenizer) -> artifact
  ``checkpoint``; served as is.

This module imports torch, transformers, safetensors (and peft for LoRA) - never Prefect or ``tasks``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from red.fingerprint import tensors_fingerprint
from red.pretrained import from_pretrained, model_class_for
from red.targets import task_head_modules

BITFIT_FORMAT = "redflow-bitfit"
BITFIT_FORMAT_VERSION = 1
ARTIFACT_KEYS = {"lora": "adapter", "bitfit": "bitfit", "full": "checkpoint"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class BaselineArtifactError(ValueError):
    """A baseline method's training output cannot be registered or served; the message says why."""


def artifact_sha256(path: str | Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update((f.name if f == path else f.relative_to(path).as_posix()).encode())
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def refuse_pickle(folder: str | Path) -> None:
    """A folder to register must hold no pickle-format weights (``*.bin``/``*.pt``...): safetensors only."""
    found = sorted(p.name for p in Path(folder).rglob("*") if p.suffix in _PICKLE_SUFFIXES)
    if found:
        raise BaselineArtifactError(f"{folder} holds pickle-format files {found}; redflow registers safetensors only. "
                                    "Fix: save with save_pretrained(..., safe_serialization=True)")


def _checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaselineArtifactError(f"{folder} holds no .safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def is_bitfit_trained(name: str, heads: list[str]) -> bool:
    """What BitFit trains (tasks.training.models.prepare_model): every bias, plus the task head modules ``heads``
    (``red.targets.task_head_modules`` of the task model)."""
    return name.endswith(".bias") or name.split(".", 1)[0] in heads


def frozen_fingerprint(tensors: dict[str, torch.Tensor], names: list[str]) -> str:
    """``red.fingerprint``'s dtype-stable fingerprint of the frozen weights ``names`` (sorted) of a state dict."""
    return tensors_fingerprint((name, tensors[name]) for name in sorted(names))


def save_bitfit(checkpoint: str | Path, path: str | Path, *, base_model: str, revision: str | None = None,
                task_type: str = "classification", label_list: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write the BitFit-trained tensors of a full ``checkpoint`` folder to ``path``: every bias, the task head,
    and any weight the base checkpoint lacks (initialised at random when it loads, so the trained copy must
    travel). The header records the base model and a fingerprint of the other (frozen) weights as the base
    loads them, so serving on another base is refused.
    """
    checkpoint, path = Path(checkpoint), Path(path)
    refuse_pickle(checkpoint)
    tensors = _checkpoint_tensors(checkpoint)
    base, info = _auto_model(base_model, task_type, label_list, revision, output_loading_info=True)
    absent = set(info.get("missing_keys") or []) | {k for k, *_ in info.get("mismatched_keys") or []}
    heads = task_head_modules(base)
    trained = {k: v.contiguous() for k, v in tensors.items() if is_bitfit_trained(k, heads) or k in absent}
    if not any(k.endswith(".bias") for k in trained):
        raise BaselineArtifactError(f"{checkpoint}: no bias tensors found; is this a BitFit checkpoint?")
    state = base.state_dict()
    frozen = sorted(k for k in state if k not in trained)
    meta = {"format": BITFIT_FORMAT, "format_version": BITFIT_FORMAT_VERSION,
            "base_model": {"name": base_model, "revision": revision,
                           "frozen_fingerprint": frozen_fingerprint(state, frozen), "frozen_tensors": frozen},
            "extra": extra or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(trained, str(tmp), metadata={"redflow": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_bitfit(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("redflow", "{}"))
    if meta.get("format") != BITFIT_FORMAT:
        raise BaselineArtifactError(f"{path} is not a redflow BitFit file (format {meta.get('format')!r})")
    return load_file(str(path)), meta


def _auto_model(name: str, task_type: str, label_list: list[str] | None, revision: str | None = None, **kwargs: Any):
    cls, head_kwargs = model_class_for(task_type, label_list=label_list,
                                       num_labels=len(label_list) if label_list else None)
    if revision and not Path(name).exists():
        kwargs["revision"] = revision
    return from_pretrained(cls, name, **head_kwargs, **kwargs)


def _tokenizer(name: str, revision: str | None = None):
    local = Path(name).exists()
    tok = AutoTokenizer.from_pretrained(name, **({"revision": revision} if revision and not local else {}))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_baseline(method: str, artifact: str | Path, *, base_model: str | None, revision: str | None,
                  task_type: str, label_list: list[str] | None, device: str):
    """``(model, tokenizer)`` for a registered ``lora``/``bitfit``/``full`` artifact, in eval mode on ``device``."""
    artifact = Path(artifact)
    if method == "full":
        refuse_pickle(artifact)
        model, tok = _auto_model(str(artifact), task_type, label_list), _tokenizer(str(artifact))
    elif method == "lora":
        refuse_pickle(artifact)
        if not base_model:
            raise BaselineArtifactError("a LoRA adapter needs its base model; the serving config names none")
        model = from_pretrained(PeftModel, _auto_model(base_model, task_type, label_list, revision), str(artifact))
        tok = _tokenizer(str(artifact) if (artifact / "tokenizer_config.json").is_file() else base_model, revision)
    elif method == "bitfit":
        tensors, meta = read_bitfit(artifact)
        base = base_model or meta["base_model"]["name"]
        model = _auto_model(base, task_type, label_list, revision)
        state = model.state_dict()
        frozen = meta["base_model"]["frozen_tensors"]
        absent = sorted((set(tensors) | set(frozen)) - set(state))
        recorded = meta["base_model"]["frozen_fingerprint"]
        if absent or frozen_fingerprint(state, frozen) != recorded:
            raise BaselineArtifactError(
                f"{artifact} was trained on {meta['base_model']['name']} (frozen-weight fingerprint {recorded}); "
                f"the base model {base} differs ({'no ' + str(absent[:4]) if absent else 'other weights'}). "
                "Fix: serve it with the exact base checkpoint it was trained on")
        model.load_state_dict(tensors, strict=False)
        tok = _tokenizer(base, revision)
    else:
        raise BaselineArtifactError(f"unknown baseline method {method!r}; expected one of {sorted(ARTIFACT_KEYS)}")
    if getattr(model.config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok
