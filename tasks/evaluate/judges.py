"""Pairwise judges for AlpacaEval-style comparisons.

A judge compares a reference answer with the model's answer to the same
instruction and returns an AlpacaEval preference: 1.0 = reference better,
2.0 = model better, 1.5 = tie, values in between for soft preferences, NaN when
the judge's answer could not be parsed (dropped from the win rate, counted).

* ``ChatJudge``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI,
  vLLM, llama.cpp, TGI...). The two answers are shown in a random order per
  item (seeded) because LLM judges favour one position.
* ``RewardModelJudge``: a local ``AutoModelForSequenceClassification`` reward
  model scores prompt+answer; the preference follows the score difference.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx
import torch
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import JudgeError, JudgeUnavailableError

log = logging.getLogger(__name__)

REFERENCE_WINS, MODEL_WINS, TIE = 1.0, 2.0, 1.5


@runtime_checkable
class Judge(Protocol):
    """Anything with ``judge(instructions, reference_outputs, model_outputs) -> list[float]`` and a ``name``."""

    name: str

    def judge(self, instructions: Sequence[str], reference_outputs: Sequence[str],
              model_outputs: Sequence[str]) -> list[float]: ...


# ---- OpenAI-compatible chat endpoint -------------------------------------------------------
SYSTEM_PROMPT = "You are a careful, impartial judge of how well AI assistants follow instructions."
USER_PROMPT = """Compare two outputs for the instruction below. Pick the output that follows the instruction \
better: more helpful, accurate, relevant and complete. Ignore the order in which they are shown and do not favour \
longer outputs for their length alone.

## Instruction
{instruction}

## Output (a)
{output_a}

## Output (b)
{output_b}

Answer with exactly "Output (a)" or "Output (b)" and nothing else."""

_A = re.compile(r"output\s*\(?\s*a\b|^\s*\(?a\)?\s*[.!]?\s*$", re.IGNORECASE)
_B = re.compile(r"output\s*\(?\s*b\b|^\s*\(?b\)?\s*[.!]?\s*$", re.IGNORECASE)
_TIE = re.compile(r"\b(tie|draw|equally good|both are equal)\b", re.IGNORECASE)


def parse_choice(text: str) -> str | None:
    """'a', 'b', 'tie' or None from a judge's reply ("Output (a)", "(b)", "b", "It's a tie")."""
    a, b = bool(_A.search(text)), bool(_B.search(text))
    if a and not b:
        return "a"
    if b and not a:
        return "b"
    if _TIE.search(text):
        return "tie"
    return None


@dataclass
class ChatJudge:
    """An OpenAI-compatible chat-completions judge.

    ``base_url`` is the API root including ``/v1`` (e.g.
    ``https://api.openai.com/v1``, ``http://localhost:8000/v1``); the key is read
    from the environment variable named ``api_key_env`` when the request is made
    (never stored); no ``Authorization`` header is sent if it is unset, as local
    servers often need none. Timeouts, connection errors, 429 and 5xx are retried
    with exponential backoff (honouring ``Retry-After``); other 4xx fail at once.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    seed: int = 0
    concurrency: int = 4
    max_tokens: int = 16
    temperature: float = 0.0
    system_prompt: str = SYSTEM_PROMPT
    user_prompt: str = USER_PROMPT
    extra_body: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.name = self.name or f"chat:{self.model}"
        self.stats = {"requests": 0, "retries": 0, "unparsed": 0}

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict[str, str]], client: Any = None) -> str:
        """One chat completion with retries; returns the assistant's text."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, **self.extra_body}
        own = client is None
        client = client or httpx.Client(timeout=self.timeout)

        def post() -> str:
            self.stats["requests"] += 1
            try:
                resp = client.post(self.url, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code == 200:
                return self._content(resp)
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if resp.status_code in (401, 403):
                raise JudgeError(f"the judge at {self.url} refused the request ({last}); check the API key in "
                                 f"${self.api_key_env or '<no api_key_env>'}")
            if resp.status_code != 429 and resp.status_code < 500:
                raise JudgeError(f"the judge at {self.url} rejected the request for model {self.model!r}: {last}")
            raise _Transient(last, retry_after=_retry_after(resp.headers.get("retry-after")))

        def wait(state: RetryCallState) -> float:  # the server's Retry-After, else capped exponential with jitter
            self.stats["retries"] += 1
            error = state.outcome.exception()
            if isinstance(error, _Transient) and error.retry_after is not None:
                return error.retry_after
            base = wait_exponential(multiplier=self.backoff, max=self.max_backoff)(state)
            return base * (1.0 + 0.1 * random.random())

        try:
            return Retrying(stop=stop_after_attempt(self.max_retries + 1), wait=wait, reraise=True,
                            retry=retry_if_exception_type(_Transient))(post)
        except _Transient as exc:
            raise JudgeUnavailableError(
                f"the judge at {self.url} (model {self.model!r}) did not answer after {self.max_retries + 1} "
                f"attempts; last error: {exc}. Check that the server is running and reachable from this machine, "
                "that base_url ends with the API root (e.g. .../v1), and that "
                f"${self.api_key_env} holds a valid key if it needs one.") from None
        finally:
            if own:
                client.close()

    def _content(self, resp: Any) -> str:
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except Exception as exc:
            raise JudgeError(f"the judge at {self.url} returned an unexpected body: {resp.text[:300]!r}") from exc

    def compare(self, instruction: str, reference: str, output: str, *, swap: bool, client: Any = None) -> float:
        """Preference for one item. ``swap`` shows the model's output first (as "Output (a)")."""
        a, b = (output, reference) if swap else (reference, output)
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": self.user_prompt.format(instruction=instruction, output_a=a,
                                                                         output_b=b)}]
        reply = self.complete(messages, client=client)
        choice = parse_choice(reply)
        if choice is None:
            self.stats["unparsed"] += 1
            log.warning("unparseable judge reply %r", reply[:100])
            return math.nan
        if choice == "tie":
            return TIE
        model_first = swap
        picked_model = (choice == "a") == model_first
        return MODEL_WINS if picked_model else REFERENCE_WINS

    def swaps(self, n: int) -> list[bool]:
        """The seeded A/B order of each item: True puts the model's output first."""
        rng = random.Random(self.seed)
        return [rng.random() < 0.5 for _ in range(n)]

    def judge(self, instructions: Sequence[str], reference_outputs: Sequence[str],
              model_outputs: Sequence[str]) -> list[float]:
        _same_length(instructions, reference_outputs, model_outputs)
        swaps = self.swaps(len(instructions))
        with httpx.Client(timeout=self.timeout) as client:
            def one(i: int) -> float:
                return self.compare(instructions[i], reference_outputs[i], model_outputs[i], swap=swaps[i],
                                    client=client)

            if self.concurrency <= 1:
                return [one(i) for i in range(len(instructions))]
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                return list(pool.map(one, range(len(instructions))))


class _Transient(Exception):
    """A judge call that may pass on a retry (timeout, lost connection, 429, 5xx), with the server's Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ---- local reward model --------------------------------------------------------------------
@dataclass
class RewardModelJudge:
    """Preferences from a reward model's scores of (instruction, answer).

    ``mode="hard"``: 2.0 / 1.0 by the sign of the score difference, 1.5 within
    ``tie_margin``. ``mode="soft"``: 1 + sigmoid((s_model - s_ref) / temperature),
    the Bradley-Terry probability the model's answer wins. One-output heads use
    their logit as the score; multi-class heads the log-odds of the last class
    against the first (a "good vs bad" classifier). ``template`` joins the
    instruction and the answer unless ``use_chat_template`` (reward models
    trained on chats expect their template).
    """

    model: torch.nn.Module
    tokenizer: Any
    batch_size: int = 8
    max_length: int = 512
    mode: str = "hard"
    tie_margin: float = 0.0
    temperature: float = 1.0
    template: str = "{instruction}\n\n{output}"
    use_chat_template: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("hard", "soft"):
            raise ValueError("mode must be 'hard' or 'soft'")
        base = getattr(self.model, "config", None)
        self.tokenizer = copy.deepcopy(self.tokenizer)  # the pad token may be set below: not on the caller's
        self.name = self.name or f"reward:{getattr(base, '_name_or_path', '') or type(self.model).__name__}"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError("the reward model's tokenizer has neither a pad nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Decoder reward heads pool the last non-pad token, found through config.pad_token_id.
        if base is not None and getattr(base, "pad_token_id", None) is None:
            base.pad_token_id = self.tokenizer.pad_token_id

    def _text(self, instruction: str, output: str) -> str:
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}], tokenize=False)
        return self.template.format(instruction=instruction, output=output)

    @torch.no_grad()
    def score(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[float]:
        """Reward of each (instruction, output) pair."""
        _same_length(instructions, outputs)
        texts = [self._text(i, o) for i, o in zip(instructions, outputs)]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        scores: list[float] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_length)
                enc = {k: v.to(device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float()
                s = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
                scores.extend(s.cpu().tolist())
        finally:
            self.model.train(was_training)
        return scores

    def judge(self, instructions: Sequence[str], reference_outputs: Sequence[str],
              model_outputs: Sequence[str]) -> list[float]:
        _same_length(instructions, reference_outputs, model_outputs)
        ref = self.score(instructions, reference_outputs)
        mod = self.score(instructions, model_outputs)
        return [self.preference(r, m) for r, m in zip(ref, mod)]

    def preference(self, reference_score: float, model_score: float) -> float:
        diff = model_score - reference_score
        if self.mode == "soft":
            return 1.0 + 1.0 / (1.0 + math.exp(-diff / self.temperature))
        if abs(diff) <= self.tie_margin:
            return TIE
        return MODEL_WINS if diff > 0 else REFERENCE_WINS


def _same_length(*seqs: Sequence[Any]) -> None:
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"instructions and outputs differ in length: {[len(s) for s in seqs]}")
