"""How large a request may be and how long it may compute: the limits both servers keep, and the request deadline.

Why: unbounded, one client's request of 100,000 rows or 50 MB held the server for everyone (MLflow buffers and parses
the whole body; the request was tokenized under one lock), and MLflow's request timeout answers 504 but leaves the
request's ``predict`` thread computing on. So:

==============================  ==========================================  ==============================  ========
limit                           serving config field / ``redflow serve``    environment variable            default
==============================  ==========================================  ==============================  ========
rows per request                ``max_rows`` / ``--max-rows``               ``REDFLOW_SERVE_MAX_ROWS``      10,000
request body (MB, 10^6 bytes)   ``max_body_mb`` / ``--max-body-mb``         ``REDFLOW_SERVE_MAX_BODY_MB``   20
characters per text field       ``max_text_chars`` / ``--max-text-chars``   ``REDFLOW_SERVE_MAX_TEXT_CHARS`` 100,000
seconds per request             ``request_timeout`` / ``--request-timeout`` ``REDFLOW_SERVE_REQUEST_TIMEOUT`` MLflow's
==============================  ==========================================  ==============================  ========

A limit set in the serving config (or by a ``redflow serve`` option) wins over its environment variable; the single-task
pyfunc has no serving config and reads the environment only. The deadline is the smaller of redflow's
``request_timeout`` and MLflow's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (60 s unless set), counted from when the
request's body was read (``redflow serve``, as MLflow's timeout) or from when ``predict`` began (``mlflow models
serve``): past it MLflow has answered 504 already, so the request stops at its next batch (``check_deadline``,
called per tokenized chunk and per forward pass) instead of computing for nobody.

A request over a limit is refused whole, with HTTP 413 (``RequestTooLarge``) naming the limit and how to raise it; a
request stopped at its deadline raises ``DeadlineExceeded`` (HTTP 504).
"""
from __future__ import annotations

import contextvars
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, REQUEST_LIMIT_EXCEEDED

_log = logging.getLogger(__name__)

ENV = {"max_rows": "REDFLOW_SERVE_MAX_ROWS", "max_body_mb": "REDFLOW_SERVE_MAX_BODY_MB",
       "max_text_chars": "REDFLOW_SERVE_MAX_TEXT_CHARS", "request_timeout": "REDFLOW_SERVE_REQUEST_TIMEOUT"}
OPTION = {"max_rows": "--max-rows", "max_body_mb": "--max-body-mb", "max_text_chars": "--max-text-chars",
          "request_timeout": "--request-timeout"}
ENV_EXAMPLE = {ENV["max_rows"]: "10000", ENV["max_body_mb"]: "20", ENV["max_text_chars"]: "100000",
               ENV["request_timeout"]: "60"}
MLFLOW_TIMEOUT = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name


class LimitsError(ValueError):
    """A limit set to something that is not a positive number: names the setting and the fix."""


class RequestTooLarge(MlflowException):
    """A request over a limit: HTTP 413; the message names the limit, the request's size and how to raise it."""

    def __init__(self, message: str):
        super().__init__(message, error_code=REQUEST_LIMIT_EXCEEDED)

    def get_http_status_code(self) -> int:
        return 413


class DeadlineExceeded(MlflowException):
    """A request stopped at its deadline (HTTP 504, as MLflow's own timeout answers)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=DEADLINE_EXCEEDED)


def how_to_raise(field: str) -> str:
    """Where a limit is raised: the ``redflow serve`` option, the serving config field, the environment variable."""
    return (f"raise it with `redflow serve {OPTION[field]}`, `{field}` in the serving config, or {ENV[field]} "
            "(the variable alone for `mlflow models serve`)")


@dataclass(frozen=True)
class RequestLimits:
    """The limits one server keeps (see the module docstring); ``request_timeout`` None: MLflow's timeout only."""

    max_rows: int = 10_000
    max_body_mb: float = 20.0
    max_text_chars: int = 100_000
    request_timeout: float | None = None

    @classmethod
    def resolve(cls, values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "RequestLimits":
        """Each limit from ``values`` (a serving config's fields; None = not set), else its environment variable,
        else the default. ``LimitsError`` naming the variable for a value that is not a positive number."""
        env = os.environ if env is None else env
        chosen: dict[str, Any] = {}
        for f in fields(cls):
            value = (values or {}).get(f.name)
            if value is None and env.get(ENV[f.name], "").strip():
                value = _positive(env[ENV[f.name]], ENV[f.name], whole=f.name in ("max_rows", "max_text_chars"))
            if value is not None:
                chosen[f.name] = value
        return cls(**chosen)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    def timeout_s(self) -> float:
        """Seconds a request may compute: the smaller of redflow's ``request_timeout`` and MLflow's timeout."""
        try:
            mlflow_s = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        except ValueError:
            raise LimitsError(f"{MLFLOW_TIMEOUT}={os.environ.get(MLFLOW_TIMEOUT)!r} is not a whole number of "
                              "seconds. Fix: set it to e.g. 60, or unset it") from None
        return min(self.request_timeout, mlflow_s) if self.request_timeout else mlflow_s

    def check_rows(self, rows: int) -> None:
        """``RequestTooLarge`` for a request of more than ``max_rows`` rows."""
        if rows > self.max_rows:
            raise RequestTooLarge(f"the request has {rows:,} rows; this server answers at most max_rows = "
                                  f"{self.max_rows:,} per request. Fix: split it into requests of at most "
                                  f"{self.max_rows:,} rows, or {how_to_raise('max_rows')}.")

    def body_refusal(self, size: int, *, declared: bool) -> str:
        """The message refusing a body of ``size`` bytes (as its Content-Length says, or as read so far)."""
        said = f"{size:,} bytes (its Content-Length)" if declared else f"more than {self.max_body_bytes:,} bytes"
        return (f"the request body is {said}; this server reads at most max_body_mb = {self.max_body_mb:g} MB "
                f"({self.max_body_bytes:,} bytes). Fix: send fewer rows per request, or {how_to_raise('max_body_mb')}.")

    def check_frame(self, frame: Any) -> None:
        """``RequestTooLarge`` for a request (MLflow's parsed input) of more than ``max_rows`` rows or with a text
        field of more than ``max_text_chars`` characters (the first such cell is named)."""
        if not isinstance(frame, pd.DataFrame):
            try:
                frame = pd.DataFrame(frame)
            except (ValueError, TypeError):
                return  # not a table: the model's own checks refuse it, naming the formats
        self.check_rows(len(frame))
        for column in frame.columns:
            if not (pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column])):
                continue  # numbers, booleans, times: no text to measure
            lengths = frame[column].map(lambda v: len(v) if isinstance(v, str) else 0)
            if len(lengths) and int(lengths.max()) > self.max_text_chars:
                row = int(lengths.to_numpy().argmax())
                raise RequestTooLarge(f"row {row}'s {str(column)!r} holds {int(lengths.iloc[row]):,} characters; "
                                      f"this server reads at most max_text_chars = {self.max_text_chars:,} per text "
                                      f"field. Fix: shorten the text (a task reads only its first max_length tokens "
                                      f"anyway), or {how_to_raise('max_text_chars')}.")


def _positive(raw: str, name: str, *, whole: bool) -> float | int:
    try:
        value = float(raw)
        if whole and value != int(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        kind = "a whole number above 0" if whole else "a number above 0"
        raise LimitsError(f"{name}={raw!r} is not {kind}. Fix: set it to e.g. {ENV_EXAMPLE[name]}, or unset it "
                          "for the default")
    return int(value) if whole else value



# ---------------------------------------------------------------------------------------------
# the deadline
# ---------------------------------------------------------------------------------------------
_deadline: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("redflow_deadline",
                                                                                       default=None)
"""``(monotonic time past which the request stops, its timeout in seconds)`` of the request this context serves:
set where the request arrives (``redflow serve``) or where ``predict`` begins; ``asyncio.to_thread`` copies it into
the thread that runs ``predict``."""


@contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Within this block, ``check_deadline`` stops the request ``seconds`` from now, or at the deadline already set
    for it (where it arrived), whichever comes first."""
    outer = _deadline.get()
    mine = (time.monotonic() + seconds, seconds)
    token = _deadline.set(mine if outer is None or mine[0] < outer[0] else outer)
    try:
        yield
    finally:
        _deadline.reset(token)


def check_deadline(done: int = 0, total: int | None = None) -> None:
    """``DeadlineExceeded`` when the request this thread computes is past its deadline; ``done`` of ``total``
    (rows) say how far it got. Cheap: called per tokenized chunk and per forward pass."""
    current = _deadline.get()
    if current is None or time.monotonic() <= current[0]:
        return
    seconds = current[1]
    where = f" after {done:,} of {total:,} rows" if total is not None else ""
    _log.warning("a request ran past its %g s deadline and was stopped%s", seconds, where)
    raise DeadlineExceeded(f"the request ran past its {seconds:g} s deadline and was stopped{where}; nothing is "
                           f"answered. Fix: send fewer rows per request, or raise the deadline: {MLFLOW_TIMEOUT} "
                           f"and {how_to_raise('request_timeout')} (the smaller of the two applies).")
