"""Two edit files of one base model, compared layer by layer: how far apart the edits are, and in which layers.

``compare_edits(path_a, path_b)`` reads both files (``red.read_edit``: every check of a sound file) and returns
one ``LayerDiff`` per edited layer (the files' ``targets``, in the base model's order), with B - A measured as:

* RED (``scale``/``bias`` vectors per layer): ``scale_l2`` = ||s_B - s_A||_2 and ``scale_max`` = max |s_B - s_A|;
  ``bias_l2`` and ``bias_max`` the same for b (null where the edit kind has no such vector);
* every method: ``l2`` and ``max_abs`` over all of the layer's edit tensors (flattened and concatenated: for RED
  the concatenation [s, b], for LoReFT/DiReFT the layer's rotation/projection weights and biases), and
  ``cosine``: the cosine similarity of the two layers' *edit vectors*. For RED the edit vector is what the edit
  adds to the identity, [s - 1, b] concatenated (1 = the edit does nothing); for ReFT it is the concatenated
  parameters. ``cosine`` is null when either edit vector is zero (an edit that does nothing has no direction).

Two files compare only when their vectors mean the same thing: the same base model (model type, class and
weight fingerprint), the same method, the same config (but for training-only fields: dropout, head), and the
same targets with the same widths. Anything else
raises ``EditMismatchError`` (another base) or ``EditConfigError`` (another method, config or layers), naming
what differs. Task heads (``head.*``) are not compared: they are per task, not part of the edit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import EditConfigError, EditMismatchError
from .io import read_edit

EDIT_PREFIX = "edit."
TRAINING_ONLY = ("dropout", "head")  # config fields that do not change what the stored vectors mean


@dataclass(frozen=True)
class LayerDiff:
    """B - A in one edited layer (see the module docstring for each number); RED fields are None for ReFT."""

    layer: str
    parameters: int
    l2: float
    max_abs: float
    cosine: float | None
    scale_l2: float | None = None
    scale_max: float | None = None
    bias_l2: float | None = None
    bias_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _base(meta: dict[str, Any]) -> tuple:
    base = meta.get("base_model") or {}
    return base.get("model_type"), base.get("class"), base.get("fingerprint")


def check_comparable(meta_a: dict[str, Any], meta_b: dict[str, Any], *, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise unless two edit files' vectors correspond (same method, config, targets and widths, then same base;
    the method first: a fingerprint samples the edited modules' weights, so another method reads as another base)."""
    a, b = names
    for field in ("method", "config", "targets"):
        va, vb = meta_a.get(field), meta_b.get(field)
        if field == "config":
            va, vb = ({k: v for k, v in (c or {}).items() if k not in TRAINING_ONLY} for c in (va, vb))
        if va != vb:
            raise EditConfigError(
                f"{a} and {b} differ in their edit {field} ({a}: {va}; {b}: {vb}): "
                f"their vectors do not correspond layer by layer. Fix: compare two versions of one edit "
                f"configuration (same method, position, kind and layers)")
    if _base(meta_a) != _base(meta_b):
        raise EditMismatchError(
            f"{a} and {b} edit different base models ({a}: {meta_a['base_model'].get('name')} "
            f"fingerprint {meta_a['base_model'].get('fingerprint')}; {b}: {meta_b['base_model'].get('name')} "
            f"fingerprint {meta_b['base_model'].get('fingerprint')}): their vectors act on different weights and "
            f"do not compare. Fix: compare two versions trained on the same base model")


def _vector(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].detach().double().flatten() for n in names]) if names else torch.zeros(0)


def _norms(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    delta = b - a
    return float(delta.norm()), float(delta.abs().max()) if delta.numel() else 0.0


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return None
    value = float(torch.dot(a, b)) / (na * nb)
    return max(-1.0, min(1.0, value)) if math.isfinite(value) else None


def compare_tensors(tensors_a: dict[str, torch.Tensor], tensors_b: dict[str, torch.Tensor], meta: dict[str, Any]
                    ) -> list[LayerDiff]:
    """Per-layer differences of two checked, comparable edits (``check_comparable``) sharing ``meta``'s targets."""
    diffs = []
    red = meta.get("method") == "red"
    for layer in meta["targets"]:
        prefix = f"{EDIT_PREFIX}{layer}."
        names = sorted(n for n in tensors_a if n.startswith(prefix))
        missing = sorted(set(names) ^ {n for n in tensors_b if n.startswith(prefix)})
        if missing:
            raise EditConfigError(f"layer {layer}: tensors {missing} are in one edit only; the files do not "
                                  f"compare. Fix: compare two versions of one edit configuration")
        flat_a, flat_b = _vector(tensors_a, names), _vector(tensors_b, names)
        l2, max_abs = _norms(flat_a, flat_b)
        fields: dict[str, Any] = {}
        if red:
            edit_a, edit_b = [], []
            for kind, identity in (("scale", 1.0), ("bias", 0.0)):
                name = prefix + kind
                if name in tensors_a:
                    va, vb = _vector(tensors_a, [name]), _vector(tensors_b, [name])
                    fields[f"{kind}_l2"], fields[f"{kind}_max"] = _norms(va, vb)
                    edit_a.append(va - identity)
                    edit_b.append(vb - identity)
            cosine = _cosine(torch.cat(edit_a), torch.cat(edit_b)) if edit_a else None
        else:
            cosine = _cosine(flat_a, flat_b)
        diffs.append(LayerDiff(layer=layer, parameters=int(flat_a.numel()), l2=l2, max_abs=max_abs, cosine=cosine,
                               **fields))
    return diffs


def compare_edits(path_a: str | Path, path_b: str | Path) -> list[LayerDiff]:
    """One ``LayerDiff`` (B - A) per edited layer of two edit files; raises ``EditFileError`` for an unsound file,
    ``EditMismatchError``/``EditConfigError`` for files that do not compare (see the module docstring)."""
    tensors_a, meta_a = read_edit(path_a)
    tensors_b, meta_b = read_edit(path_b)
    check_comparable(meta_a, meta_b, names=(str(path_a), str(path_b)))
    return compare_tensors(tensors_a, tensors_b, meta_a)
