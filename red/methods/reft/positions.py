"""Which token positions a ReFT intervention acts on, per row, whatever the padding.

ReFT edits the residual stream only at the first ``f`` and last ``l`` tokens of
the *prompt* (``positions="f7+l7"``, read by :func:`.notation.parse_positions`). Those indices differ per row: left
padding shifts them right, a shorter prompt moves the suffix left, and in a
causal-LM training row the prompt ends where the labelled response begins. So
they are computed from the inputs of each forward pass, never assumed:

- real tokens come from the 2D ``attention_mask`` (no mask: every token is real);
- in a causal-LM training batch the prompt is the real tokens before the first
  real token whose label is not ``-100`` (the convention of tasks/data/prepare.py: prompt
  labels are ``-100``); a row without that split (no labels, classification
  labels, or plain language modelling with ``labels = input_ids``) is all prompt;
- a prompt shorter than ``f + l`` is split so that no token is edited twice:
  the suffix keeps ``min(l, max(n - f, n // 2))`` tokens and the prefix takes
  the rest (up to ``f``). Like pyreft this clips both sides to about half the
  prompt, but it leaves no unedited gap in the middle of an odd-length prompt.

:class:`PromptPositions` turns one forward pass's inputs into a :class:`Window`
of local indices that every ReFT layer of that pass reads (kept per thread, so
concurrent callers never see each other's positions). Inside
:meth:`PromptPositions.generating` the prompt positions are pinned at the first
pass, so later decoding passes edit only those absolute positions: with a KV
cache a decoding pass covers only new tokens and is left alone; without a cache
it recomputes the prompt, which is edited exactly as in the first pass.
"""
from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100


# ---- pure functions (the specification, tested directly) ---------------------------------
def prompt_mask(attention_mask: torch.Tensor | None, batch: int, length: int,
                labels: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
    """(batch, length) bool: True at the real prompt tokens of each row."""
    if attention_mask is None:
        real = torch.ones(batch, length, dtype=torch.bool, device=device)
    else:
        real = attention_mask.to(torch.bool)
    if labels is not None and tuple(labels.shape) == tuple(real.shape):
        labelled = (labels != IGNORE_INDEX).to(real.device) & real
        prompt = real & (labelled.long().cumsum(1) == 0)
        # Plain language modelling (labels = input_ids): no prompt/response split, the whole row is prompt.
        no_split = ~prompt.any(1, keepdim=True)
        real = torch.where(no_split, real, prompt)
    return real


def split_first_last(prompt: torch.Tensor, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the first ``first`` and last ``last`` prompt tokens per row; disjoint by construction.

    ``prompt`` need not be contiguous: tokens are ranked among the prompt tokens of their row.
    """
    n = prompt.sum(1, keepdim=True)                    # (B, 1) prompt length per row
    rank = prompt.long().cumsum(1) - 1                 # rank of each token among its row's prompt tokens
    want_first = torch.full_like(n, first)
    want_last = torch.full_like(n, last)
    if first and last:
        last_n = torch.minimum(want_last, torch.maximum(n - first, n // 2))
    else:
        last_n = torch.minimum(want_last, n)
    first_n = torch.minimum(want_first, n - last_n)
    first_sel = prompt & (rank < first_n)
    last_sel = prompt & (rank >= n - last_n)
    return first_sel, last_sel


def to_indices(selected: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``k`` selected positions per row, in order: (B, k') long indices and a (B, k') validity mask.

    Rows with fewer selections are filled with unselected indices marked invalid, so
    a batch keeps one rectangular shape (gather/scatter) without a Python loop.
    """
    k = min(k, selected.shape[1])
    order = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)[:, :k]
    return order, selected.gather(1, order)


# ---- per-pass state ----------------------------------------------------------------------
@dataclass(frozen=True)
class Spans:
    """Absolute positions (in the full sequence, cache included) of the prefix and suffix edits."""

    first: torch.Tensor        # (B, f') long
    first_valid: torch.Tensor  # (B, f') bool
    last: torch.Tensor         # (B, l') long
    last_valid: torch.Tensor   # (B, l') bool

    def repeat_rows(self, times: int) -> "Spans":
        """Rows repeated as generate() expands a batch for beams or several return sequences."""
        return Spans(*(t.repeat_interleave(times, dim=0) for t in
                       (self.first, self.first_valid, self.last, self.last_valid)))


@dataclass(frozen=True)
class Window:
    """Where to edit the hidden states of the current pass: local indices into its ``length`` tokens."""

    batch: int
    length: int
    first: torch.Tensor
    first_valid: torch.Tensor
    last: torch.Tensor
    last_valid: torch.Tensor
    any_first: bool
    any_last: bool

    @classmethod
    def of(cls, spans: Spans, past: int, batch: int, length: int) -> "Window":
        def local(idx: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pos = idx - past
            inside = valid & (pos >= 0) & (pos < length)
            return pos.clamp(0, max(length - 1, 0)), inside

        first, first_valid = local(spans.first, spans.first_valid)
        last, last_valid = local(spans.last, spans.last_valid)
        # One host sync per pass (not per layer) to skip the layers' work on decoding steps.
        flags = torch.stack([first_valid.any(), last_valid.any()]).tolist()
        return cls(batch, length, first, first_valid, last, last_valid, bool(flags[0]), bool(flags[1]))


def spans_for(prompt: torch.Tensor, first: int, last: int) -> Spans:
    first_sel, last_sel = split_first_last(prompt, first, last)
    return Spans(*to_indices(first_sel, first), *to_indices(last_sel, last))


class _PassState(threading.local):
    """What one thread's forward passes need: each thread sees its own copy (see PromptPositions)."""

    def __init__(self) -> None:
        self.window: Window | None = None
        self.generating = False
        self.generate_mask: torch.Tensor | None = None
        self.pinned: Spans | None = None
        self.prompt: torch.Tensor | None = None


class PromptPositions:
    """Shared by all ReFT layers of one EditedModel: computes each pass's Window in a forward pre-hook.

    The hook sits on the module that receives the prompt's ``attention_mask``: the
    model itself, or the encoder of an encoder-decoder (generate() calls the encoder
    directly).

    Thread safety: a forward pass runs from start to end on the thread that called it,
    so the Window of a pass (and the pinned positions of a ``generate()`` call) is kept
    per thread (``threading.local``), never in state that another caller could
    overwrite: a model server or a thread pool may call one model from many threads at
    once and every call computes exactly what it would alone. The last Window of a
    thread is kept after its pass so that gradient checkpointing, which re-runs the
    blocks during backward, edits the same positions; when autograd re-runs them on
    one of its own worker threads (CUDA), the Window of the last pass that recorded a
    graph is used (training is one caller per model).
    """

    def __init__(self, first: int, last: int, labels_mark_prompt: bool):
        self.first = first
        self.last = last
        self.labels_mark_prompt = labels_mark_prompt
        self._state = _PassState()
        self._backward_window: Window | None = None
        self._handle = None
        self._params: list[str] = []

    @property
    def current(self) -> Window | None:
        """The Window of this thread's last pass."""
        return self._state.window

    # ---- hook management ------------------------------------------------------------------
    def install(self, module: nn.Module) -> None:
        self.remove()
        self._params = [n for n in inspect.signature(module.forward).parameters]
        self._handle = module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._state.window = None
        self._backward_window = None

    # ---- generation -----------------------------------------------------------------------
    @contextmanager
    def generating(self, attention_mask: torch.Tensor | None = None) -> Iterator[None]:
        """Pin the prompt positions at the first pass of a generate() call (see module docstring)."""
        state = self._state
        saved = (state.generating, state.generate_mask, state.pinned)
        state.generating = True
        state.generate_mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 else None
        state.pinned = None
        try:
            yield
        finally:
            state.generating, state.generate_mask, state.pinned = saved

    @contextmanager
    def given_prompt(self, prompt: torch.Tensor) -> Iterator[None]:
        """In this block (this thread), passes take ``prompt`` (B, L) bool as the prompt tokens of each row.

        For scoring a continuation after a context (lm-eval's log-likelihood requests):
        the prompt is the context, so ReFT edits the first and last tokens of the
        context, as ``generate()`` would, and never the scored tokens or padding.
        """
        if not (isinstance(prompt, torch.Tensor) and prompt.ndim == 2):
            raise ValueError("given_prompt needs a (batch, length) boolean tensor")
        state = self._state
        saved, state.prompt = state.prompt, prompt.to(torch.bool)
        try:
            yield
        finally:
            state.prompt = saved

    # ---- the pre-hook -----------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        state = self._state
        inputs = dict(zip(self._params, args))
        inputs.update(kwargs)
        tokens = inputs.get("input_ids")
        if tokens is None:
            tokens = inputs.get("inputs_embeds")
        if tokens is None:
            state.window = None
            return
        batch, length = int(tokens.shape[0]), int(tokens.shape[1])
        mask = inputs.get("attention_mask")
        if not (isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[0] == batch
                and mask.shape[1] >= length):
            mask = None
        past = self._past_length(mask, length, inputs)
        if state.generating:
            spans = self._pinned_spans(mask, batch, length, tokens.device)
        elif state.prompt is not None:
            if tuple(state.prompt.shape) != (batch, past + length):
                raise RuntimeError(f"given_prompt has shape {tuple(state.prompt.shape)} but the pass has {batch} rows "
                                   f"of {past + length} tokens")
            spans = spans_for(state.prompt.to(tokens.device), self.first, self.last)
        else:
            labels = inputs.get("labels") if self.labels_mark_prompt else None
            full = mask.shape[1] if mask is not None else length
            spans = spans_for(prompt_mask(mask, batch, full, labels, tokens.device), self.first, self.last)
            if past > 0:
                # A continuation over a cache outside generate(): the prompt was edited when it
                # was encoded; these tokens are not prompt tokens, so nothing is edited.
                spans = Spans(spans.first, torch.zeros_like(spans.first_valid),
                              spans.last, torch.zeros_like(spans.last_valid))
        window = Window.of(spans, past, batch, length)
        state.window = window
        if torch.is_grad_enabled():
            self._backward_window = window

    @staticmethod
    def _past_length(mask: torch.Tensor | None, length: int, inputs: dict[str, Any]) -> int:
        """How many earlier tokens (KV cache) precede this pass's tokens."""
        if mask is not None:
            return int(mask.shape[1]) - length
        cache = inputs.get("cache", inputs.get("past_key_values"))
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        return 0

    def _pinned_spans(self, mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> Spans:
        state = self._state
        if state.pinned is None:
            if mask is None and state.generate_mask is not None:
                mask = state.generate_mask.to(device)
                if batch % mask.shape[0]:
                    raise RuntimeError(f"generate() batch {batch} is not a multiple of its attention_mask's {mask.shape[0]}")
                mask = mask.repeat_interleave(batch // mask.shape[0], dim=0)
            full = mask.shape[1] if mask is not None else length
            state.pinned = spans_for(prompt_mask(mask, batch, full, None, device), self.first, self.last)
        spans = state.pinned
        if spans.first.shape[0] != batch:
            if batch % spans.first.shape[0]:
                raise RuntimeError(f"the batch changed from {spans.first.shape[0]} to {batch} rows during generate()")
            spans = spans.repeat_rows(batch // spans.first.shape[0])
        return spans

    # ---- read by the ReFT layers ------------------------------------------------------------
    def window(self, hidden: torch.Tensor, where: str) -> Window:
        window = self._state.window
        if window is None:
            window = self._backward_window  # autograd re-running checkpointed blocks on its own thread
        if window is None:
            raise RuntimeError(
                f"ReFT layer {where} ran without prompt positions: call the EditedModel (or its base "
                "model / encoder) with input_ids or inputs_embeds, not an inner submodule"
            )
        if (window.batch, window.length) != tuple(hidden.shape[:2]):
            raise RuntimeError(
                f"ReFT layer {where} sees hidden states of shape {tuple(hidden.shape)} but the positions were "
                f"computed for {window.batch} rows of {window.length} tokens (unpadded/packed attention is "
                "not supported: use a 2D attention_mask with padding)"
            )
        return window
