"""Checks that keep evaluation scores honest.

Three pitfalls make lm-eval report plausible but meaningless numbers:

* an encoder (BERT-like) tokenizer appends ``[SEP]`` to every encoding. lm-eval
  scores a continuation as ``encode(context + continuation)[len(encode(context)):]``,
  so with a suffix token the scored part of a one-token answer is just
  ``[SEP]``: every choice gets the same log-likelihood and accuracy is chance.
  The cure is ``add_bos_token=False`` (lm-eval then encodes with
  ``add_special_tokens=False``);
* a tokenizer without EOS: lm-eval uses EOS as the end-of-text stop and as the
  prefix of empty contexts;
* a vocabulary larger than the model's embedding table (index errors, or
  device asserts on GPU, halfway through a run).

The same log-likelihood for all choices is also checked after the run, whatever
its cause.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from red import EditedModel

from .errors import DegenerateScoresError, TokenizerError

log = logging.getLogger(__name__)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model to hand to lm-eval or ``generate``.

    A ``red.EditedModel`` keeps its edits as forward hooks on the base model's
    modules (or folded into its weights once merged), so the base model *is*
    the edited model; it is also a real ``PreTrainedModel``, which lm-eval's
    HFLM expects (config, device, tie_weights, generate). ReFT edits also hook
    the wrapper's inputs, so those stay wrapped.
    """
    if isinstance(model, EditedModel):
        if model.edit_config.is_reft:
            return model
        return model.base_model
    return model


def describe_model(model: torch.nn.Module) -> str:
    """A short name for reports: the checkpoint name plus what edit is attached."""
    base = unwrap_model(model)
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or type(base).__name__
    if isinstance(model, EditedModel):
        state = "merged" if model.merged else "attached"
        return f"{name} + {model.edit_config.method} ({state}, {model.num_edit_parameters} params)"
    return name


@dataclass
class TokenizerReport:
    """What was checked and changed on the tokenizer; goes into the report's details."""

    adds_suffix_token: bool
    adds_prefix_token: bool
    add_bos_token: bool | None
    eos_token: str | None
    pad_token: str | None
    pad_is_eos: bool
    vocab: int
    model_vocab: int | None
    changes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def special_token_layout(tokenizer: Any) -> tuple[bool, bool]:
    """(adds a prefix token, adds a suffix token) when encoding with special tokens."""
    text = "hello world"
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = tokenizer(text, add_special_tokens=True)["input_ids"]
    if plain == special:
        return False, False
    n = len(plain)
    for start in range(len(special) - n + 1):
        if special[start:start + n] == plain:
            return start > 0, start + n < len(special)
    return True, True


def model_vocab_size(model: torch.nn.Module) -> int | None:
    base = unwrap_model(model)
    try:
        return int(base.get_input_embeddings().num_embeddings)
    except Exception:
        return getattr(getattr(base, "config", None), "vocab_size", None)


def prepare_tokenizer(tokenizer: Any, model: torch.nn.Module, *, backend: str = "causal",
                      add_bos_token: bool | None = None) -> tuple[Any, bool | None, TokenizerReport]:
    """A copy of ``tokenizer`` fit for lm-eval with ``model``, the ``add_bos_token`` to pass, and a report.

    Never mutates the caller's tokenizer. Raises ``TokenizerError`` when no EOS
    can be found, when the caller forces special tokens that would break
    scoring, or when token ids would exceed the model's embedding table.
    """
    tok = copy.deepcopy(tokenizer)
    changes: list[str] = []
    prefix, suffix = special_token_layout(tok)
    if backend == "causal" and suffix:
        if add_bos_token:
            raise TokenizerError(
                f"{type(tok).__name__} appends a special token to every encoding (e.g. [SEP]); with "
                "add_bos_token=True lm-eval would score that token instead of the answer and every choice would "
                "get the same log-likelihood. Use add_bos_token=False (the default here for such tokenizers)."
            )
        if add_bos_token is None:
            add_bos_token = False
            changes.append("add_bos_token=False: the tokenizer appends a suffix token (encoder-style tokenizer)")
    if tok.eos_token is None:
        base = unwrap_model(model)
        eos_id = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        eos_id = eos_id if eos_id is not None else getattr(getattr(base, "config", None), "eos_token_id", None)
        if isinstance(eos_id, (list, tuple)):
            eos_id = eos_id[0] if eos_id else None
        if getattr(tok, "sep_token", None) is not None:
            tok.eos_token = tok.sep_token
            changes.append(f"eos_token={tok.sep_token!r} (the tokenizer had none; using its separator)")
        elif eos_id is not None and eos_id < len(tok):
            tok.eos_token = tok.convert_ids_to_tokens(int(eos_id))
            changes.append(f"eos_token={tok.eos_token!r} (the tokenizer had none; using the model's eos_token_id)")
        else:
            raise TokenizerError(
                f"{type(tok).__name__} has no EOS token and neither a separator nor a model eos_token_id to use: "
                "lm-eval needs one as end-of-text for generation and as prefix for empty contexts. "
                "Set tokenizer.eos_token before evaluating."
            )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        changes.append(f"pad_token={tok.eos_token!r} (the tokenizer had none; padding is masked or sliced off)")
    vocab = len(tok)
    model_vocab = model_vocab_size(model)
    if model_vocab is not None and vocab > model_vocab:
        raise TokenizerError(
            f"the tokenizer has {vocab} tokens but the model's embedding table only {model_vocab} rows: token ids "
            f">= {model_vocab} would index past it. Use the tokenizer the model was trained with, or resize the "
            "embeddings (model.resize_token_embeddings) before training."
        )
    pad_is_eos = tok.pad_token_id == tok.eos_token_id
    if pad_is_eos:
        # Harmless for lm-eval (log-likelihood slices padding off, generation passes attention masks),
        # but worth seeing next to a surprising generation score.
        log.info("pad token == eos token (%r): relying on attention masks", tok.eos_token)
    for change in changes:
        log.info("tokenizer for lm-eval: %s", change)
    report = TokenizerReport(
        adds_suffix_token=suffix, adds_prefix_token=prefix, add_bos_token=add_bos_token,
        eos_token=tok.eos_token, pad_token=tok.pad_token, pad_is_eos=pad_is_eos, vocab=vocab,
        model_vocab=model_vocab, changes=changes,
    )
    return tok, add_bos_token, report


def check_generative(model: torch.nn.Module) -> None:
    """lm-eval scores text with a language-model head; an encoder/classifier head gives noise."""
    base = unwrap_model(model)
    can = getattr(base, "can_generate", None)
    if callable(can) and not can():
        raise TypeError(
            f"{type(base).__name__} has no generative language-model head, so lm-eval's log-likelihoods would be "
            "meaningless. Evaluate a *ForCausalLM / *ForConditionalGeneration model here, and classifiers with "
            "tasks.evaluate.evaluate_classification."
        )


def choice_loglikelihoods(sample: Mapping[str, Any]) -> list[float] | None:
    """The per-choice log-likelihoods of one logged lm-eval sample of a multiple-choice task, if any."""
    resps = sample.get("filtered_resps") or sample.get("resps")
    if not isinstance(resps, Sequence) or len(resps) < 2:
        return None
    values: list[float] = []
    for resp in resps:
        while isinstance(resp, (list, tuple)) and resp and isinstance(resp[0], (list, tuple)):
            resp = resp[0]
        head = resp[0] if isinstance(resp, (list, tuple)) and resp else resp
        if isinstance(head, str) or head is None:
            return None
        try:
            values.append(float(head))
        except (TypeError, ValueError):
            return None
    return values


def degenerate_fraction(samples: Sequence[Mapping[str, Any]], atol: float = 1e-6) -> tuple[float, int]:
    """Fraction of multiple-choice samples whose choices all got the same log-likelihood, and how many were checked."""
    checked = same = 0
    for sample in samples:
        lls = choice_loglikelihoods(sample)
        if lls is None:
            continue
        checked += 1
        if np.ptp(np.asarray(lls)) <= atol:
            same += 1
    return (same / checked if checked else 0.0), checked


def check_degenerate(samples_by_task: Mapping[str, Sequence[Mapping[str, Any]]], *, policy: str = "raise",
                     threshold: float = 0.5) -> dict[str, float]:
    """Flag tasks where at least ``threshold`` of the questions got identical log-likelihoods for all choices.

    A real model almost never assigns exactly the same log-likelihood to
    different answers; when it does for many questions, the scored tokens
    are not the answers (tokenizer special tokens, truncation) and the accuracy
    is chance by construction. ``policy`` is "raise", "warn" or "ignore".
    Returns {task: fraction} of the multiple-choice tasks checked.
    """
    fractions: dict[str, float] = {}
    bad: list[str] = []
    for task, samples in samples_by_task.items():
        frac, checked = degenerate_fraction(samples)
        if not checked:
            continue
        fractions[task] = frac
        if frac >= threshold:
            bad.append(f"{task}: {frac:.0%} of {checked} questions")
    if bad and policy != "ignore":
        message = (
            "identical log-likelihoods for every choice (" + "; ".join(bad) + "). The scored tokens are probably "
            "not the answers: check that the tokenizer adds no suffix token inside lm-eval (add_bos_token=False "
            "for BERT-like tokenizers), that contexts are not truncated away (max_length), and that the model "
            "is not returning constant logits."
        )
        if policy == "raise":
            raise DegenerateScoresError(message)
        log.warning(message)
    return fractions
