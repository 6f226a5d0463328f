"""Tokenization of prepared splits, with an honest count of what was cut off.

Silent truncation is how a long-document task quietly becomes a "first 128
tokens" task; ``encode`` therefore counts, per split, the rows that did not
fit ``max_length``, returns the counts (``EncodedData.truncated``, logged to
MLflow by the trainer) and logs a warning.

Rows are not padded (a collator pads per batch) and stay in the order of the
prepared split, so row ``i`` of ``encoded.test`` is row ``i`` of ``data.test``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import datasets
from datasets import Dataset

if TYPE_CHECKING:  # pragma: no cover
    from .spec import TaskData

log = logging.getLogger("tasks.data")

IGNORE_INDEX = -100  # label of tokens that do not count in the loss (the prompt of instruction data)
_CHUNK = 1000


@dataclass
class EncodedData:
    """Model-ready splits: ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` if the tokenizer
    makes them) and ``labels``; ``truncated`` counts, per split, the rows cut at ``max_length``."""

    train: Dataset
    validation: Dataset
    test: Dataset
    truncated: dict[str, int] = field(default_factory=dict)
    max_length: int = 0
    task_type: str = ""

    def splits(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def encode(data: "TaskData", tokenizer: Any, max_length: int = 256, max_target_length: int | None = None,
           splits: Sequence[str] = ("train", "validation", "test")) -> EncodedData:
    """Tokenize every split of ``data`` for its task type.

    * classification / regression: the text column, or the pair, as one input; ``labels`` is the
      class index (int) or the score (float);
    * causal_lm: ``prompt + response + eos``; prompt tokens get label -100 so only the answer is
      learned; when too long the response is cut first (but keeps at least a quarter of
      ``max_length``), then the prompt loses its *beginning* so the "### Response:" cue stays;
    * seq2seq: the input text and ``labels`` from the target (the response, or for labelled data
      T5's text-to-text form: ``"sst2 sentence: ..."`` -> ``"positive"``); ``max_target_length``
      (default ``max_length``) caps the target.

    ``splits`` limits the work to some splits (scoring needs only ``test``); the others come back empty.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    target_length = max_target_length or max_length
    out: dict[str, Any] = {}
    truncated: dict[str, int] = {}
    for split, rows in data.splits().items():
        columns: dict[str, list] = {}
        count = 0
        if split not in splits:
            rows = rows.select([])
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            encoded, n = _encode_chunk(data, chunk, tokenizer, max_length, target_length)
            count += n
            for key, values in encoded.items():
                columns.setdefault(key, []).extend(values)
        if not columns:
            columns = {"input_ids": [], "attention_mask": [], "labels": []}
        out[split] = datasets.Dataset.from_dict(columns)
        truncated[split] = count
        if count:
            log.warning("%s: %d of %d %s rows are longer than max_length=%d and were truncated",
                        data.name, count, len(rows), split, max_length)
    return EncodedData(**out, truncated=truncated, max_length=max_length, task_type=data.task_type)


def _encode_chunk(data: "TaskData", chunk: dict[str, list], tokenizer: Any, max_length: int,
                  target_length: int) -> tuple[dict[str, list], int]:
    if data.is_instruction:
        prompts, responses = chunk["prompt"], chunk["response"]
        if data.task_type == "seq2seq":
            return _seq2seq(tokenizer, prompts, responses, max_length, target_length)
        return _causal(tokenizer, prompts, responses, max_length)
    texts = [chunk[c] for c in data.text_columns]
    if data.task_type == "seq2seq":
        sources = [_t5_source(data, [t[i] for t in texts]) for i in range(len(texts[0]))]
        targets = [_t5_target(data, label) for label in chunk["label"]]
        return _seq2seq(tokenizer, sources, targets, max_length, target_length)
    encoded, long = _capped(tokenizer, texts[0], texts[1] if len(texts) > 1 else None, max_length)
    cast = float if data.task_type == "regression" else int
    encoded["labels"] = [cast(v) for v in chunk["label"]]
    return encoded, len(long)


def _capped(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None, max_length: int,
            target: bool = False) -> tuple[dict[str, list], list[int]]:
    """Tokenize without truncation, then re-tokenize only the rows that are too long, truncated.

    Returns the encodings (as plain lists) and the positions of the truncated rows. With
    ``target`` the texts are tokenized as targets (``text_target=``, for seq2seq labels).
    """
    def call(a: list[str], b: list[str] | None, **kw: Any) -> Any:
        return tokenizer(text_target=a, **kw) if target else tokenizer(a, b, **kw)

    full = call(list(first), list(second) if second is not None else None, truncation=False, verbose=False)
    encoded = {k: list(v) for k, v in full.items()}
    long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_length]
    if long:
        cut = call([first[i] for i in long], [second[i] for i in long] if second is not None else None,
                   truncation=True, max_length=max_length, verbose=False)
        for key in encoded:
            for j, i in enumerate(long):
                encoded[key][i] = cut[key][j]
    return encoded, long


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer itself starts sequences with it (Llama), else [] (GPT-2, BERT)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _causal(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int
            ) -> tuple[dict[str, list], int]:
    eos = tokenizer.eos_token_id if getattr(tokenizer, "eos_token_id", None) is not None else getattr(
        tokenizer, "sep_token_id", None)
    if eos is None:
        raise ValueError("causal_lm encoding needs a tokenizer with an eos (or sep) token to end each answer.")
    prefix = _bos_prefix(tokenizer)
    prompt_ids = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False, verbose=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    truncated = 0
    for p, r in zip(prompt_ids, response_ids):
        prompt, answer = prefix + list(p), list(r) + [eos]
        if len(prompt) + len(answer) > max_length:
            truncated += 1
            keep = max(max_length - len(prompt), min(len(answer), max(1, max_length // 4)))
            answer = answer[:keep]
            room = max_length - len(answer)
            if len(prompt) > room:
                body = room - len(prefix)
                prompt = prefix[:room] if body <= 0 else prefix + list(p)[-body:]
        ids = prompt + answer
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append([IGNORE_INDEX] * len(prompt) + answer)
    return out, truncated


def _seq2seq(tokenizer: Any, sources: list[str], targets: list[str], max_length: int, target_length: int
             ) -> tuple[dict[str, list], int]:
    encoded, long_sources = _capped(tokenizer, sources, None, max_length)
    labels, long_targets = _capped(tokenizer, targets, None, target_length, target=True)
    encoded["labels"] = labels["input_ids"]
    return encoded, len(set(long_sources) | set(long_targets))


def _t5_source(data: "TaskData", texts: list[str]) -> str:
    """T5's text-to-text input: ``"rte sentence1: ... sentence2: ..."``."""
    prefix = data.task or data.name
    return " ".join([prefix] + [f"{column}: {text}" for column, text in zip(data.text_columns, texts)])


def _t5_target(data: "TaskData", label: Any) -> str:
    """The label as text: its class name, or a score rounded to T5's 0.2 grid (STS-B)."""
    if data.label_list is not None:
        return data.label_list[int(label)]
    return f"{round(float(label) * 5) / 5:.1f}"
