"""Errors of the evaluation package.

Evaluation failures must be loud: a benchmark that silently scores a constant
or silently skips its data set produces numbers that look like results. Each
error names what went wrong and what to check.
"""
from __future__ import annotations


class EvalError(RuntimeError):
    """Base class of evaluation errors."""


class EvalUnavailableError(EvalError):
    """The benchmark's data cannot be loaded here (no network, hub offline, missing files)."""


class TokenizerError(EvalError):
    """The tokenizer cannot be used as it is for this evaluation (no EOS, vocabulary larger than the model...)."""


class DegenerateScoresError(EvalError):
    """The scores carry no signal: every choice got the same log-likelihood, so accuracy is chance by construction."""


class JudgeError(EvalError):
    """A judge answered something unusable (bad status, unparseable body)."""


class JudgeUnavailableError(JudgeError):
    """A judge endpoint could not be reached after retries."""
