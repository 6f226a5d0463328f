"""What ``POST /invocations`` checks before MLflow's scoring server parses the body, and how its refusals read.

MLflow's request parsing answers some malformed bodies with an HTTP 500 (no Content-Type: ``None.split``; JSON
nested ~5,000 deep: RecursionError; a list where a column name goes: pandas cannot even print the frame) and
others with a 400 whose JSON carries a Python ``stack_trace``, the whole body echoed back, or the frame's repr
(malformed CSV, invalid JSON, a refused row). A client can act on none of that. So, for ``/invocations`` only:

* ``check_body`` refuses, with one paragraph naming the problem and the fix, a missing Content-Type, JSON that does
  not parse or nests deeper than :data:`red.bounded_json.MAX_DEPTH`, column names that are not strings or repeat,
  and CSV that pandas cannot read; what passes goes to MLflow unchanged;
* ``plain_refusal`` rewrites every 4xx JSON answer MLflow gives to its one-paragraph message: no ``stack_trace``,
  no echoed body or frame (the full detail goes to the server log);
* ``BoundedBody`` (ASGI middleware, outermost) refuses a body over ``max_body_mb`` with HTTP 413 before MLflow
  buffers it: from its Content-Length before a byte is read, else (chunked) as soon as the bytes read pass the limit,
  so a 50 MB body is never held; once the body is read it starts the request's deadline (``registry.serving.limits``),
  where MLflow's own request timeout starts too;
* ``check_body`` refuses a JSON or CSV request of more than ``max_rows`` rows (413) once it has parsed it, before
  MLflow builds a DataFrame of it.
"""
from __future__ import annotations

import io
import json
import logging
from collections import Counter
from typing import Any

import pandas as pd
from red import bounded_json

from .limits import RequestLimits, RequestTooLarge, request_deadline

log = logging.getLogger(__name__)

FORMATS = ("application/json (dataframe_records, dataframe_split, inputs or instances), text/csv with a header row, "
           "or application/x-parquet")
_PREDICT_PREFIX = "Failed to predict data '"


class BadRequest(Exception):
    """A body refused before MLflow reads it: ``status`` (400, or 415 for the media type) and a one-paragraph
    ``message`` naming the problem and the fix."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status

    def body(self) -> bytes:
        code = {413: "REQUEST_LIMIT_EXCEEDED", 415: "UNSUPPORTED_MEDIA_TYPE"}.get(self.status, "BAD_REQUEST")
        return json.dumps({"error_code": code, "message": self.message}).encode()


def check_body(body: bytes, content_type: str | None, limits: RequestLimits | None = None) -> None:
    """``BadRequest`` for a body MLflow would answer with a 500 or a traceback, or (status 413) of more rows than
    ``limits`` allow; None when it may go on."""
    if not content_type or not content_type.strip():
        raise BadRequest(f"the request has no Content-Type header. Fix: send one of {FORMATS}.", status=415)
    mime = content_type.split(";")[0].strip().lower()
    rows = _check_json(body) if mime == "application/json" else _check_csv(body) if mime == "text/csv" else None
    if limits is not None and rows is not None:
        try:
            limits.check_rows(rows)
        except RequestTooLarge as exc:
            raise BadRequest(exc.message, status=413) from None


def _rows(parsed: Any) -> int | None:
    """How many rows a parsed JSON request holds (MLflow's four layouts), or None if it is none of them."""
    if not isinstance(parsed, dict):
        return len(parsed) if isinstance(parsed, list) else None
    for key in ("dataframe_records", "instances", "inputs"):
        value = parsed.get(key)
        if isinstance(value, list):
            return len(value)
        if isinstance(value, dict):  # columns: the longest one
            return max((len(v) for v in value.values() if isinstance(v, list)), default=None)
    split = parsed.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return len(split["data"])
    return None


def _check_json(body: bytes) -> int | None:
    try:
        parsed = bounded_json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the JSON body is not UTF-8 text (byte {exc.start}). Fix: encode the body as UTF-8.") \
            from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. Fix: send "
                         '{"dataframe_records": [{"task": ..., "sentence": ...}, ...]} or another of ' f"{FORMATS}.") \
            from None
    except ValueError as exc:  # nested past the limit, an integer of more than 4,300 digits
        reason = "a number with more than 4,300 digits" if "integer string conversion" in str(exc) else str(exc)
        raise BadRequest(f"the JSON body cannot be read: {reason}. Fix: send a table of texts: one object per row "
                         "(dataframe_records) or columns and rows (dataframe_split).") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("dataframe_split"), dict):
        columns = parsed["dataframe_split"].get("columns")
        if columns is not None:
            _check_columns(columns)
    return _rows(parsed)


def _check_columns(columns: Any) -> None:
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        shown = [c for c in columns if not isinstance(c, str)][:3] if isinstance(columns, list) else columns
        raise BadRequest(f"dataframe_split's columns must be a list of column names (strings); got {_clip(shown)}. "
                         'Fix: e.g. "columns": ["task", "sentence"].')
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)  # linear: a body may name 100,000 columns
    if repeated:
        raise BadRequest(f"dataframe_split names the column(s) {_clip(repeated)} more than once. Fix: give each "
                         "column once: a row has one task and one text per text column.")


def _check_csv(body: bytes) -> int:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV body is not UTF-8 text (byte {exc.start}). Fix: encode the body as UTF-8.") \
            from None
    try:
        return len(pd.read_csv(io.StringIO(text)))
    except Exception as exc:  # noqa: BLE001 - every reader failure is the body's: say what pandas said, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadRequest(f"the CSV body cannot be read: {_clip(first, 200)}. Fix: a header row (task and the text "
                         "columns), then one row per line with as many fields as the header; quote fields that "
                         "hold commas or line breaks.") from None


def plain_refusal(body: bytes) -> bytes:
    """A 4xx JSON answer of MLflow's as one paragraph: its message less the echoed frame or body, no stack trace."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or not isinstance(answer.get("message"), str):
        return body
    trace = answer.pop("stack_trace", None)
    if trace:
        log.warning("refused request; MLflow's trace, kept out of the answer:\n%s", trace)
    message = answer["message"]
    if message.startswith(_PREDICT_PREFIX) and "\nError: " in message:  # MLflow prepends the frame's repr
        message = message.split("\nError: ", 1)[1]
    answer["message"] = " ".join(message.split("\nInput:", 1)[0].split())
    return json.dumps(answer).encode()


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


class BoundedBody:
    """ASGI middleware for ``POST /invocations``: refuses a body over ``limits.max_body_mb`` with HTTP 413 before
    MLflow reads it (from Content-Length before reading; while reading when there is none), hands the rest on
    whole, and starts the request's deadline once its body is read (see the module docstring)."""

    def __init__(self, app: Any, limits: RequestLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/invocations" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, self.limits.body_refusal(int(declared), declared=True))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, self.limits.body_refusal(size, declared=False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        with request_deadline(self.limits.timeout_s()):
            await self.app(scope, replay, send)


async def _refuse(send: Any, message: str) -> None:
    """A 413 answer; the connection is closed after it (the rest of the body is never read)."""
    payload = BadRequest(message, status=413).body()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
