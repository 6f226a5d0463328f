"""ReFT's side of EditedModel (red/model.py): which blocks see the prompt, the shared position hook, generation.

RED's edits need nothing beyond their hooks; a ReFT edit needs to know, on every pass,
where each row's prompt is. EditedModel calls :func:`install_position_hook` once when it
attaches ReFT layers, :func:`prompt_generation` around ``generate()`` and
:func:`remove_position_hook` on ``detach()``. :func:`given_prompt` is for callers that score a
continuation after a context (tasks/evaluate/lm_eval_suite.py), and
:func:`count_reft_parameters` counts an intervention's parameters from the architecture alone.
The functions take the EditedModel as ``edited`` (duck-typed: ``base_model``, ``edit_config``,
``edits``), so this module never imports red/model.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ...config import EditConfig
from ...errors import EditConfigError
from ...targets import Target, find_targets
from .layer import ReftEdit
from .notation import parse_positions
from .positions import PromptPositions


def prompt_module(model: nn.Module) -> nn.Module:
    """The module that receives the prompt: the encoder of an encoder-decoder, else the model."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return model.get_encoder()
    return model


def prompt_targets(model: nn.Module, targets: list[Target]) -> list[Target]:
    """Keep the blocks that see the prompt: an encoder-decoder's decoder blocks see only output tokens."""
    encoder = prompt_module(model)
    if encoder is model:
        return targets
    prefix = next(name for name, module in model.named_modules() if module is encoder)
    kept = [t for t in targets if t.name.startswith(prefix + ".")]
    if not kept:
        raise EditConfigError(
            f"ReFT edits the prompt, which only the encoder ({prefix!r}) sees, but no selected target is in it: "
            f"{[t.name for t in targets][:4]}"
        )
    return kept


def count_reft_parameters(model: nn.Module, config: EditConfig) -> int:
    """ReFT's edit parameters from the architecture alone (a meta-device model will do; see red/params.py).

    Per intervention 2·r·d + r (R or P, W and b); two per block with separate prefix/suffix weights.
    """
    first, last = parse_positions(config.positions)
    per_block = 1 if config.share_weights or not (first and last) else 2
    targets = prompt_targets(model, find_targets(model, config))
    return sum(per_block * (2 * config.rank * t.hidden + config.rank) for t in targets)


def _labels_mark_prompt(model: nn.Module) -> bool:
    """Causal LMs train on prompt+response with prompt labels -100; other heads' labels say nothing about it."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def install_position_hook(edited) -> PromptPositions:
    """Give every ReFT edit of ``edited`` one shared PromptPositions, fed by a pre-hook on the prompt module."""
    first, last = parse_positions(edited.edit_config.positions)
    state = PromptPositions(first, last, labels_mark_prompt=_labels_mark_prompt(edited.base_model))
    state.install(prompt_module(edited.base_model))
    for edit in edited.edits.values():
        edit.positions = state
    edited.prompt_positions = state
    return state


def remove_position_hook(edited) -> None:
    state = getattr(edited, "prompt_positions", None)
    if state is not None:
        state.remove()
    for edit in edited.edits.values():
        if isinstance(edit, ReftEdit):
            edit.positions = None
    edited.__dict__.pop("prompt_positions", None)


@contextmanager
def prompt_generation(edited, attention_mask: torch.Tensor | None = None) -> Iterator[None]:
    """Used by EditedModel.generate: edit the prompt positions of the first pass, never generated tokens."""
    state = getattr(edited, "prompt_positions", None)
    if state is None:
        yield
        return
    with state.generating(attention_mask):
        yield


@contextmanager
def given_prompt(edited, prompt: torch.Tensor) -> Iterator[None]:
    """Passes of ``edited`` in this block (this thread) take ``prompt`` (B, L) bool as each row's prompt.

    Used to score a continuation after a context: the context is the prompt, so the
    edit lands on the first/last tokens of the context, as in ``generate()``.
    """
    state = getattr(edited, "prompt_positions", None)
    if state is None:
        raise EditConfigError("given_prompt needs a ReFT-edited model (red.attach with method loreft/direft/nodireft)")
    with state.given_prompt(prompt):
        yield
