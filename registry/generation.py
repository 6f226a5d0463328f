"""How many tokens a generation request may ask for (both servers: one task's pyfunc and the multi-task one).

``max_new_tokens`` comes from the request (MLflow's ``params``); unchecked, ``100000`` ran past a GPT-2's
1,024 positions into an ``IndexError`` answered as a stack trace, and ``-1`` into a transformers error.
"""
from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


def position_limit(config: Any) -> int | None:
    """The most positions the model reads (learned position embeddings), or None (relative/rotary: no table)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_new_tokens(params: dict[str, Any], default: int, config: Any, prompt_tokens: int, *, causal: bool) -> int:
    """The request's ``max_new_tokens`` (else ``default``), checked.

    A causal model's prompt and answer share its positions: ``prompt_tokens + max_new_tokens`` must fit
    ``position_limit(config)``. Raises an ``MlflowException`` that the scoring server answers with HTTP 400,
    naming the value and the largest one that fits.
    """
    raw = params.get("max_new_tokens")
    value = default if raw is None else raw
    try:
        n = int(value)
        if isinstance(value, bool) or n != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise MlflowException(f"max_new_tokens must be a whole number of tokens, got {raw!r}",
                              error_code=INVALID_PARAMETER_VALUE) from None
    if n < 1:
        raise MlflowException(f"max_new_tokens must be at least 1, got {n}", error_code=INVALID_PARAMETER_VALUE)
    limit = position_limit(config)
    if limit is not None:
        room = limit - (prompt_tokens if causal else 0)
        if n > room:
            taken = f" and the longest prompt of this batch takes {prompt_tokens}" if causal else ""
            raise MlflowException(f"max_new_tokens {n} does not fit: the model reads at most {limit} positions{taken}; "
                                  f"ask for at most {max(room, 0)}", error_code=INVALID_PARAMETER_VALUE)
    return n
