"""A cheap, dtype-stable fingerprint of the base weights an edit acts on.

An edit is only meaningful on the exact weights it was trained against, so every
edit file records this fingerprint and loading checks it. Hashing all of a 7B
model would take minutes; instead we hash every parameter's name and shape plus
a fixed strided sample of its values rounded to bfloat16, which makes the same
checkpoint loaded in fp32, fp16 or bf16 agree while any retraining, another
checkpoint or another size disagrees.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

SAMPLES_PER_TENSOR = 512


@torch.no_grad()
def tensor_sample(t: torch.Tensor, n: int = SAMPLES_PER_TENSOR) -> bytes:
    flat = t.detach().reshape(-1)
    if flat.device.type == "meta":
        return b""
    step = max(1, flat.numel() // n)
    sample = flat[::step][:n]
    return sample.to(torch.bfloat16).to(torch.float32).cpu().numpy().tobytes()


def fingerprint(model: nn.Module, module_names: Iterable[str]) -> str:
    """sha256 (hex, first 16 chars) over the named modules' parameters and the input embeddings."""
    h = hashlib.sha256()
    modules = dict(model.named_modules())
    names = sorted(set(module_names))
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    items: list[tuple[str, torch.Tensor]] = []
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        items.append(("<input_embeddings>", embeddings.weight))
    for name in names:
        for pname, p in sorted(modules[name].named_parameters(recurse=True)):
            items.append((f"{name}.{pname}", p))
    for name, p in items:
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(tensor_sample(p))
    return h.hexdigest()[:16]
