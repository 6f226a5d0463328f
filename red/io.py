"""Edit files: safetensors tensors with JSON metadata in the header, never pickle.

One ``.safetensors`` file holds the edit vectors, any task head, and a JSON
document under the header key ``redflow``: format version, method and config,
targets and their widths, the base model's name, revision and weight
fingerprint, a sha256 of the tensors (so a tampered or bit-rotted file is
refused), and free-form ``extra`` (labels, task name, metrics). A JSON copy of
the metadata is written beside it for people and the MLflow UI.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import EditConfig
from .errors import EditFileError, EditMismatchError
from .targets import model_type

FORMAT = "redflow-edit"
FORMAT_VERSION = 1


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def base_model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")


def save_edit(
    edited,
    path: str | Path,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``edited``'s edit (and head) to ``path`` (``.safetensors`` is appended if missing)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if edited.merged:
        raise EditFileError("the edit is merged into the weights; call unmerge() before saving the edit file")
    tensors = edited.edit_state()
    base = edited.base_model
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": edited.edit_config.method,
        "config": edited.edit_config.model_dump(),
        "targets": {t.name: t.hidden for t in edited.targets},
        "head": edited.head_names,
        "edit_parameters": edited.num_edit_parameters,
        "base_model": {
            "name": base_model or base_model_name(base),
            "revision": revision or getattr(getattr(base, "config", None), "_commit_hash", None),
            "model_type": model_type(base),
            "class": type(base).__name__,
            "fingerprint": edited.base_fingerprint,
        },
        "tensors_sha256": tensors_sha256(tensors),
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"redflow": json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash never leaves half a file under the real name
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return path


def read_edit(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify an edit file; raise EditFileError with the reason if it is not a sound one."""
    path = Path(path)
    if not path.is_file():
        raise EditFileError(f"edit file {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EditFileError(
            f"{path} is not a readable safetensors edit file ({exc}). It may be truncated or corrupt: "
            "re-download it or re-run the training that produced it."
        ) from exc
    if "redflow" not in header:
        raise EditFileError(f"{path} is a safetensors file without redflow metadata; it was not written by redflow")
    try:
        meta = json.loads(header["redflow"])
    except json.JSONDecodeError as exc:
        raise EditFileError(f"{path}: the redflow metadata is not valid JSON ({exc}); the file was altered") from exc
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise EditFileError(f"{path}: unknown format {meta.get('format')!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise EditFileError(
            f"{path} uses edit format v{meta['format_version']}, newer than this redflow (v{FORMAT_VERSION}); upgrade redflow"
        )
    if tensors_sha256(tensors) != meta.get("tensors_sha256"):
        raise EditFileError(
            f"{path}: the tensors do not match the checksum recorded when the file was written; "
            "the file was modified or corrupted. Use the original file."
        )
    return tensors, meta


def check_compatible(model: nn.Module, meta: dict[str, Any], edited=None, *, check_fingerprint: bool = True) -> None:
    """Refuse an edit trained for another base model, naming what differs and what to do."""
    base = meta["base_model"]
    name = base.get("name") or "an unnamed model"
    mtype = model_type(model)
    if base["model_type"] != mtype:
        raise EditMismatchError(
            f"this edit was trained on {name} ({base['model_type']}); the model given is a {mtype}. "
            f"Load the base model {name!r} and attach the edit to it."
        )
    if edited is not None:
        widths = {t.name: t.hidden for t in edited.targets}
        if widths != meta["targets"]:
            diff = sorted(set(widths.items()) ^ set(meta["targets"].items()))[:4]
            raise EditMismatchError(
                f"this edit was trained on {name} with targets/widths that differ from this model's ({diff}). "
                f"Load the base model {name!r} (revision {base.get('revision')}) and attach the edit to it."
            )
        if check_fingerprint and edited.base_fingerprint != base["fingerprint"]:
            raise EditMismatchError(
                f"this edit was trained on {name} (revision {base.get('revision')}, weight fingerprint "
                f"{base['fingerprint']}), but the model given has fingerprint {edited.base_fingerprint}: same shape, "
                "different weights. Load the exact base checkpoint the edit was trained on "
                "(or pass check_fingerprint=False if you know what you are doing)."
            )


def load_edit(model: nn.Module, path: str | Path, *, check_fingerprint: bool = True):
    """Attach the edit stored at ``path`` to ``model`` (frozen) and return the EditedModel."""
    from .model import EditedModel

    tensors, meta = read_edit(path)
    check_compatible(model, meta)
    config = EditConfig(**meta["config"])
    edited = EditedModel(model, config)
    try:
        check_compatible(model, meta, edited, check_fingerprint=check_fingerprint)
        edited.load_edit_state(tensors)
    except Exception:
        edited.detach()
        raise
    edited.edit_metadata = meta
    return edited
