"""A cheap fingerprint of the base weights an edit acts on, the same for fp32, fp16 and bf16 loads.

An edit is only meaningful on the exact weights it was trained against, so every
edit file records a fingerprint and loading checks it. Hashing all of a 7B model
would take minutes; instead a fixed strided sample of every parameter of the
edited modules (and of the input embeddings) is taken, in two parts:

- ``fingerprint``: sha256 (16 hex chars) of the parameters' names, shapes and the
  *sign bits* of the sample. Rounding to any float format keeps the sign (an
  underflow gives a signed zero, an overflow a signed infinity), so fp32, fp16 and
  bf16 loads of one checkpoint give exactly the same string, while another
  checkpoint, size or retraining gives another one.
  (A hash of the values themselves cannot be dtype-stable: ``bf16(fp16(x))`` differs
  from ``bf16(x)`` for about 1 value in 16 by double rounding, which is why an fp16 load
  used to be refused.)
- ``weight_sample``: a few values per tensor (bf16, base64) compared with a tolerance
  far above any dtype's rounding (``SAMPLE_RTOL``); it catches weights that keep their
  signs but not their magnitudes, e.g. an edit loaded onto a checkpoint it was already
  merged into (``W' = diag(s) W``), and overflow from loading in fp16.
"""
from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable

import torch
from torch import nn

SAMPLES_PER_TENSOR = 512      # sign bits hashed per tensor
VALUES_PER_TENSOR = 32        # values kept per tensor for the magnitude check
SAMPLE_RTOL = 0.01            # relative RMS difference allowed per tensor (dtype rounding: < 0.4%)


def _items(model: nn.Module, module_names: Iterable[str]) -> list[tuple[str, torch.Tensor]]:
    modules = dict(model.named_modules())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    items: list[tuple[str, torch.Tensor]] = []
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        items.append(("<input_embeddings>", embeddings.weight))
    for name in sorted(set(module_names)):
        for pname, p in sorted(modules[name].named_parameters(recurse=True)):
            items.append((f"{name}.{pname}", p))
    return items


@torch.no_grad()
def _sample(t: torch.Tensor, n: int) -> torch.Tensor | None:
    flat = t.detach().reshape(-1)
    if flat.device.type == "meta":
        return None
    step = max(1, flat.numel() // n)
    return flat[::step][:n].cpu()


def fingerprint(model: nn.Module, module_names: Iterable[str]) -> str:
    """sha256 (hex, first 16 chars) of names, shapes and sample sign bits; identical for any float dtype."""
    return tensors_fingerprint(_items(model, module_names))


def tensors_fingerprint(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """:func:`fingerprint` of explicit ``(name, tensor)`` pairs (e.g. a state dict's frozen weights), in order."""
    h = hashlib.sha256()
    for name, p in items:
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        sample = _sample(p, SAMPLES_PER_TENSOR)
        if sample is not None:
            h.update(torch.signbit(sample.float()).numpy().tobytes())
    return h.hexdigest()[:16]


def weight_sample(model: nn.Module, module_names: Iterable[str]) -> dict[str, str]:
    """``VALUES_PER_TENSOR`` values of each fingerprinted tensor, rounded to bf16, base64 per tensor name."""
    out: dict[str, str] = {}
    for name, p in _items(model, module_names):
        sample = _sample(p, VALUES_PER_TENSOR)
        if sample is None:
            return {}
        out[name] = base64.b64encode(sample.float().to(torch.bfloat16).view(torch.int16).numpy().tobytes()).decode()
    return out


def decode_sample(sample: str) -> torch.Tensor:
    """The bf16 values of one ``weight_sample`` entry as fp32; ValueError if it is not one."""
    try:
        raw = base64.b64decode(sample.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64 ({exc})") from exc
    if not raw or len(raw) % 2:
        raise ValueError(f"{len(raw)} bytes is no whole number of bf16 values")
    return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16).float()


def sample_difference(recorded: dict[str, str], current: dict[str, str]) -> tuple[float, str | None]:
    """The largest relative RMS difference between two ``weight_sample`` results, and the tensor it is in.

    Returns ``(inf, name)`` for a tensor that is missing, has another size, or holds inf/NaN (recorded or now).
    """
    worst, where = 0.0, None
    for name, text in recorded.items():
        if name not in current:
            return math.inf, name
        a, b = decode_sample(text), decode_sample(current[name])
        if a.shape != b.shape or not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
            return math.inf, name
        scale = float(a.pow(2).mean().sqrt()) or 1.0
        diff = float((a - b).pow(2).mean().sqrt()) / scale
        if diff > worst:
            worst, where = diff, name
    return worst, where


def non_finite(model: nn.Module, module_names: Iterable[str]) -> list[str]:
    """Names of fingerprinted tensors whose sample holds inf/NaN (e.g. fp16 overflow at load)."""
    bad = []
    for name, p in _items(model, module_names):
        sample = _sample(p, SAMPLES_PER_TENSOR)
        if sample is not None and not bool(torch.isfinite(sample.float()).all()):
            bad.append(name)
    return bad
