"""Export an edited model as a plain transformers checkpoint with the edit folded in.

The subtle part: RED adds a bias to layers that may have none (Llama
``down_proj``, T5 ``wo``). ``save_pretrained`` writes the new ``.bias`` tensor,
but ``from_pretrained`` builds the layer from the config without a bias and
silently drops it. So we switch the architecture's config flag on (Llama's
``mlp_bias``), give every layer the flag adds a bias to a zero bias, and check
that the saved keys are exactly what the config will build; where no flag
exists the export refuses instead of writing a wrong model.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .architectures import lookup
from .errors import MergeError
from .targets import model_type


def export_merged(edited, out_dir: str | Path, tokenizer=None) -> Path:
    """Merge, save with ``save_pretrained`` (safetensors), and unmerge again (if it was not merged before).

    The checkpoint is the same whether ``edited`` is merged already or not: a layer whose bias
    came from ``merge()`` counts as bias-less in the base architecture either way.
    """
    out_dir = Path(out_dir)
    base = edited.base_model
    was_merged = edited.merged
    added = []  # targets whose layer gets a bias the base architecture does not have
    modules = dict(base.named_modules())
    for t, edit in edited.edit_items():
        if getattr(edit, "bias", None) is None:
            continue
        if getattr(modules[t.name], "bias", None) is None or getattr(edit, "bias_added", False):
            added.append(t)
    config = copy.deepcopy(base.config)
    if added:
        arch = lookup(model_type(base))
        flags = {t.position: (arch.bias_flags.get(t.position) if arch else None) for t in added}
        missing = sorted(pos for pos, flag in flags.items() if flag is None)
        if missing:
            raise MergeError(
                f"the edited layers ({added[0].name}, ...) have no bias in {model_type(base)!r} and its config has no "
                "switch to add one, so a merged checkpoint would silently lose RED's bias vector on reload. "
                "Serve the edit attached (load_edit on the base model), or train with kind='scale', which merges "
                "without a bias."
            )
        for flag in set(flags.values()):
            setattr(config, flag, True)
    edited.merge()
    try:
        state = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
        if added:
            state = _fill_flagged_biases(base, config, state)
        out_dir.mkdir(parents=True, exist_ok=True)
        base.save_pretrained(out_dir, state_dict=state)
        config.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    finally:
        if not was_merged:
            edited.unmerge()
    return out_dir


def _fill_flagged_biases(base, config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give zero biases to every layer the config flag adds one to, and check the keys match exactly."""
    with torch.device("meta"):
        reference = type(base)(config)
    expected = reference.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            if not key.endswith(".bias"):
                raise MergeError(f"merged checkpoint lacks {key}; cannot export")
            like = next(iter(state.values()))
            state[key] = torch.zeros(tensor.shape, dtype=like.dtype, device=like.device)
    extra = sorted(set(state) - set(expected))
    if extra:
        raise MergeError(f"merged checkpoint has keys the config cannot load ({extra[:3]}); cannot export safely")
    return state
