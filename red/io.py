"""Edit files: safetensors tensors with JSON metadata in the header, never pickle.

One ``.safetensors`` file holds the edit vectors, any task head, and a JSON
document under the header key ``redflow``: format version, method and config,
targets and their widths, the base model's name, revision, class, dtype and weight
fingerprint (red/fingerprint.py), free-form ``extra`` (labels, task name, metrics),
``tensors_sha256`` (the tensors alone: the edit's identity in the registry) and
``sha256``, which covers the tensors *and every metadata field*: swapping two
label names, pointing the base at another folder or changing the model class is
refused like a flipped tensor bit. A JSON copy of the metadata is written beside the
file for people and the MLflow UI; it is never read back.

Reading checks everything that is later used, in this order, and raises
``EditFileError`` (naming the problem and the fix) for any file that is not a sound
one: unreadable or truncated, foreign, of another format version, modified, or with
metadata of the wrong shape or tensors that do not match it (names, shapes, dtype,
non-finite values). No malformed file gets through to a ``KeyError``/``TypeError``.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from . import bounded_json
from .config import EditConfig
from .errors import EditFileError, EditMismatchError
from .fingerprint import SAMPLE_RTOL, decode_sample, fingerprint, non_finite, sample_difference, weight_sample
from .targets import model_type

FORMAT = "redflow-edit"
FORMAT_VERSION = 2  # v2: sha256 over metadata + tensors, sign-bit fingerprint with a weight sample, base dtype


# ---- checksums --------------------------------------------------------------------------------
def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def metadata_sha256(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every metadata field but ``sha256`` (which holds ``tensors_sha256``)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                     allow_nan=False).encode()).hexdigest()


# ---- the metadata schema ---------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BaseModelRecord(_Strict):
    name: str
    revision: str | None
    model_type: str = Field(min_length=1)
    class_: str = Field(alias="class", min_length=1)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$")
    weight_sample: dict[str, str]
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None


class ExtraRecord(BaseModel):
    """``extra`` is free-form; the keys redflow reads must have the right types."""

    model_config = ConfigDict(extra="allow", strict=True)
    task: str | None = None
    task_type: Literal["classification", "regression", "causal_lm", "seq2seq"] | None = None
    label_list: list[str] | None = None
    text_columns: list[str] | None = None
    metric: str | None = None


class EditMetadata(_Strict):
    format: Literal["redflow-edit"]
    format_version: Literal[2]
    method: Literal["red", "loreft", "direft", "nodireft"]
    config: dict[str, Any]
    targets: dict[str, int]
    head: list[str]
    edit_parameters: int = Field(ge=0)
    base_model: BaseModelRecord
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    extra: ExtraRecord
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        parts.append(f"{where}: {err.get('msg')}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


# ---- writing ------------------------------------------------------------------------------------
def base_model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")


def base_dtype(model: nn.Module) -> str | None:
    """The dtype of the frozen base weights ("float32", "bfloat16"...): the precision an edit was trained in."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    dtype = (frozen or [p for p in model.parameters() if p.is_floating_point()] or [None])[0]
    return str(dtype.dtype).replace("torch.", "") if dtype is not None else None


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
    if edited.merged:
        raise EditFileError("the edit is merged into the weights; call unmerge() before saving the edit file")
    tensors = edited.edit_state()
    bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise EditFileError(f"the edit holds NaN/inf values ({bad[:3]}): training diverged. Lower the learning rate "
                            "or use fp32/bf16, and retrain; nothing was written.")
    base = edited.base_model
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": edited.edit_config.method,
        "config": edited.edit_config.model_dump(),
        "targets": {t.name: t.hidden for t in edited.targets},
        "head": list(edited.head_names),
        "edit_parameters": edited.num_edit_parameters,
        "base_model": {
            "name": base_model or base_model_name(base),
            "revision": revision or getattr(getattr(base, "config", None), "_commit_hash", None),
            "model_type": model_type(base),
            "class": type(base).__name__,
            "fingerprint": edited.base_fingerprint,
            "weight_sample": edited.base_weight_sample,
            "dtype": base_dtype(base),
        },
        "tensors_sha256": tensors_sha256(tensors),
        "extra": extra or {},
    }
    try:
        meta["sha256"] = metadata_sha256(meta)
        EditMetadata.model_validate(meta)
    except (TypeError, ValueError) as exc:  # ValidationError is a ValueError
        detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
        raise EditFileError(f"cannot write {path}: the metadata is not valid ({detail}); `extra` must be JSON "
                            "(label_list/text_columns lists of strings, task_type a known type)") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"redflow": json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash never leaves half a file under the real name
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return path


# ---- reading ------------------------------------------------------------------------------------
def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the safetensors ``__metadata__`` of a file, or EditFileError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EditFileError(f"cannot read edit file {path}: {exc}") from exc
    corrupt = (f"{path} is not a readable safetensors edit file ({{}}). It may be truncated or corrupt: "
               "re-download it or re-run the training that produced it.")
    try:
        tensors = load_safetensors(data)
    except BaseException as exc:  # noqa: BLE001 - a Rust panic in safetensors is a BaseException (pyo3)
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise EditFileError(corrupt.format(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from exc
    try:  # safetensors accepted the layout: an 8-byte little-endian length, then the JSON header
        n = int.from_bytes(data[:8], "little")
        header = bounded_json.loads(data[8:8 + n])
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise EditFileError(corrupt.format(f"header: {exc}")) from exc
    if not isinstance(metadata, dict):
        raise EditFileError(corrupt.format("the header's __metadata__ is not a mapping"))
    return tensors, metadata


def read_edit(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify an edit file: ``(tensors, metadata)``; EditFileError with the reason if it is not sound."""
    path = Path(path)
    if not path.is_file():
        raise EditFileError(f"edit file {path} does not exist")
    tensors, header = _read_file(path)
    if "redflow" not in header:
        raise EditFileError(f"{path} is a safetensors file without redflow metadata; it was not written by redflow")
    try:
        meta = bounded_json.loads(header["redflow"])
    except (TypeError, ValueError) as exc:
        raise EditFileError(f"{path}: the redflow metadata is not valid JSON ({exc}); the file was altered") from exc
    if not isinstance(meta, dict):
        raise EditFileError(f"{path}: the redflow metadata is a {type(meta).__name__}, not a mapping; the file was altered")
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int) \
            or isinstance(meta.get("format_version"), bool):
        raise EditFileError(f"{path}: unknown format {meta.get('format')!r} (expected {FORMAT!r} with an integer "
                            "format_version); it was not written by redflow or was altered")
    version = meta["format_version"]
    if version > FORMAT_VERSION:
        raise EditFileError(f"{path} uses edit format v{version}, newer than this redflow (v{FORMAT_VERSION}); "
                            "upgrade redflow")
    if version < FORMAT_VERSION:
        raise EditFileError(f"{path} uses edit format v{version}, whose checksum does not cover its metadata; this "
                            f"redflow reads v{FORMAT_VERSION} only. Retrain the edit (or load it with the redflow "
                            "that wrote it and save it again).")
    try:
        intact = meta.get("sha256") == metadata_sha256(meta) and meta.get("tensors_sha256") == tensors_sha256(tensors)
    except (TypeError, ValueError):  # e.g. NaN in the metadata: not canonical JSON
        intact = False
    if not intact:
        raise EditFileError(
            f"{path}: the tensors or metadata (labels, base model, class, config...) do not match the checksum "
            "recorded when the file was written; the file was modified or corrupted. Use the original file."
        )
    _validate(path, meta, tensors)
    return tensors, meta


def _validate(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The checksum says the file is as written; this says it is a file redflow can use."""
    try:
        EditMetadata.model_validate(meta)
        config = EditConfig(**meta["config"])
    except ValidationError as exc:
        raise EditFileError(f"{path}: malformed metadata ({_describe(exc)}); the file was not written by this "
                            "redflow. Retrain the edit.") from exc
    problems = []
    if config.method != meta["method"]:
        problems.append(f"method {meta['method']!r} but config.method {config.method!r}")
    widths = meta["targets"]
    if not widths or any(w <= 0 for w in widths.values()):
        problems.append("targets must name at least one module with a positive width")
    heads = tuple(f"head.{h}." for h in meta["head"])
    count = 0
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            problems.append(f"{name} is {t.dtype}, edit files hold float32")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"{name} holds NaN/inf values (the training diverged)")
        if name.startswith(heads):
            continue
        param = name.rpartition(".")[2]
        owner = next((tn for tn in widths if name.startswith(f"edit.{tn}.")), None)
        if owner is None:
            problems.append(f"tensor {name} belongs to no target or head listed in the metadata")
            continue
        count += t.numel()
        if meta["method"] == "red" and (param not in ("scale", "bias") or tuple(t.shape) != (widths[owner],)):
            problems.append(f"{name} has shape {tuple(t.shape)}; a RED {param or 'vector'} of {owner} is ({widths[owner]},)")
    if meta["method"] == "red":
        want = {"scale+bias": ("scale", "bias"), "scale": ("scale",), "bias": ("bias",)}[config.kind]
        missing = [f"edit.{tn}.{p}" for tn in widths for p in want if f"edit.{tn}.{p}" not in tensors]
        if missing:
            problems.append(f"missing tensors {missing[:3]}")
    for tensor_name, sample in meta["base_model"]["weight_sample"].items():
        try:
            values = decode_sample(sample)
        except ValueError as exc:
            problems.append(f"base_model.weight_sample[{tensor_name!r}] is not a weight sample: {exc}")
            break
        if not bool(torch.isfinite(values).all()):
            problems.append(f"base_model.weight_sample[{tensor_name!r}] holds NaN/inf: no base checkpoint has such "
                            "weights, so the base model could not be checked against it")
            break
    empty = [h for h in meta["head"] if not any(n.startswith(f"head.{h}.") for n in tensors)]
    if empty:
        problems.append(f"head modules {empty[:3]} have no tensors")
    if count != meta["edit_parameters"]:
        problems.append(f"edit_parameters says {meta['edit_parameters']} but the edit tensors hold {count}")
    if problems:
        raise EditFileError(f"{path}: the tensors do not match the metadata: {'; '.join(problems[:3])}. "
                            "Retrain the edit; the file was not written by this redflow.")


# ---- matching a file to a model --------------------------------------------------------------------
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
        if check_fingerprint:
            check_weights(model, meta, base_fingerprint=edited.base_fingerprint, sample=edited.base_weight_sample)


def check_weights(model: nn.Module, meta: dict[str, Any], *, base_fingerprint: str | None = None,
                  sample: dict[str, str] | None = None, where: str = "this edit") -> None:
    """Refuse base weights other than those the edit was trained on; fp32, fp16 and bf16 loads all pass.

    ``base_fingerprint``/``sample`` are the model's own (computed when the edit was attached, before any
    merge); by default they are computed now. Raises EditMismatchError saying whether the difference
    is another checkpoint, a dtype that cannot hold the weights, or weights an edit was merged into.
    """
    base = meta["base_model"]
    name = base.get("name") or "an unnamed model"
    modules = dict(model.named_modules())
    absent = [t for t in meta["targets"] if t not in modules]
    if absent:
        raise EditMismatchError(f"{where} edits modules this model does not have ({absent[:3]}); load the base "
                                f"model {name!r} it was trained on")
    names = list(meta["targets"])
    current = base_fingerprint or fingerprint(model, names)
    dtype = base_dtype(model)
    recorded_dtype = base.get("dtype")
    dtype_note = (f" (dtype alone does not change the fingerprint: the model is loaded in {dtype}, the edit was "
                  f"trained on {recorded_dtype})" if dtype and recorded_dtype and dtype != recorded_dtype else "")
    if current != base["fingerprint"]:
        raise EditMismatchError(
            f"{where} was trained on {name} (revision {base.get('revision')}, weight fingerprint {base['fingerprint']}), "
            f"but the model given has fingerprint {current}: same shapes, different weights{dtype_note}. Load the exact "
            "base checkpoint the edit was trained on (or pass check_fingerprint=False if you know what you are doing)."
        )
    overflow = non_finite(model, names)
    if overflow:
        raise EditMismatchError(
            f"the base weights hold inf/NaN in {overflow[:3]} as loaded in {dtype}: the checkpoint's values do not fit "
            f"this dtype (fp16 tops out at 65504). Load the base in float32 or bfloat16 "
            f"({'the edit was trained on ' + recorded_dtype if recorded_dtype else 'e.g. dtype=torch.float32'}).")
    diff, tensor = sample_difference(base.get("weight_sample") or {}, sample or weight_sample(model, names))
    if diff > SAMPLE_RTOL:
        raise EditMismatchError(
            f"{where} was trained on {name}: the weights have the same shapes and signs, but {tensor} differs by "
            f"{'an unknown amount' if math.isinf(diff) else f'{diff:.1%}'} (dtype rounding is < {SAMPLE_RTOL:.0%}). "
            "Were they rescaled, e.g. a checkpoint this edit was already merged into (export_merged)? Load the "
            "original base checkpoint."
        )
