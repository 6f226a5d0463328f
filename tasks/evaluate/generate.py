"""Batched greedy answers from an (edited) model for an instruction set.

Decoding follows the RED paper's AlpacaEval setting: greedy, repetition
penalty 1.1, no repeated 5-grams. Decoder-only models are padded on the left
so every row's prompt ends where generation starts (right padding would make
the model continue after pad tokens); prompts are sorted by length so batches
waste little padding, and answers come back in the input order.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .guards import special_token_layout, unwrap_model

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PAPER_DECODING: dict[str, Any] = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.1,
                                  "no_repeat_ngram_size": 5}


def format_prompt(instruction: str, tokenizer: Any, template: str | Callable[[str], str] | None = "alpaca") -> str:
    """The prompt for one instruction.

    ``template``: "alpaca" (the Stanford Alpaca no-input prompt, the same text
    as ``tasks.data.sources.ALPACA_PROMPT_NO_INPUT`` used in training), "chat" (the
    tokenizer's chat template with one user turn), "raw"/"none" (the
    instruction as is), a format string with ``{instruction}``, or a callable.
    Pass the ``DataSpec.prompt_template`` the edit was trained with.
    """
    if callable(template):
        return template(instruction)
    if template in (None, "raw", "none"):
        return instruction
    if template == "alpaca":
        return ALPACA_TEMPLATE.format(instruction=instruction)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' but the tokenizer has no chat_template")
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    if "{instruction}" not in template:
        raise ValueError("a template string must contain '{instruction}'")
    return template.format(instruction=instruction)


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer: Any, instructions: Sequence[str], *,
                     template: str | Callable[[str], str] | None = "alpaca", max_new_tokens: int = 256,
                     batch_size: int = 8, max_prompt_tokens: int | None = None,
                     **generate_kwargs: Any) -> list[str]:
    """Greedy answers (paper decoding, overridable through ``generate_kwargs``), in the order of ``instructions``."""
    base = unwrap_model(model)
    is_seq2seq = bool(getattr(getattr(base, "config", None), "is_encoder_decoder", False))
    tok = copy.deepcopy(tokenizer)  # padding side and pad token are changed: never on the caller's tokenizer
    tok.padding_side = "right" if is_seq2seq else "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token: cannot pad a batch for generation")
        tok.pad_token = tok.eos_token
    kwargs = dict(PAPER_DECODING)
    kwargs.update(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    if tok.eos_token_id is not None:
        kwargs["eos_token_id"] = tok.eos_token_id
    kwargs.update(generate_kwargs)

    prompts = [format_prompt(i, tok, template) for i in instructions]
    # Chat templates already contain the BOS text. A decoder must not see an encoder tokenizer's trailing [SEP]
    # before it starts answering; a seq2seq encoder expects its trailing </s>.
    add_special = template != "chat" and (is_seq2seq or not _appends_suffix(tok))
    lengths = [len(tok(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    answers: list[str] = [""] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=add_special, truncation=max_prompt_tokens is not None,
                      max_length=max_prompt_tokens)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out = model.generate(**enc, **kwargs)
            new_tokens = out if is_seq2seq else out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new_tokens):
                answers[i] = tok.decode(row, skip_special_tokens=True).strip()
    finally:
        base.train(was_training)
    return answers


def _appends_suffix(tokenizer: Any) -> bool:
    return special_token_layout(tokenizer)[1]
