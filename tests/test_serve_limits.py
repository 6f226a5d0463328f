"""Bounded requests (issue 21, item 3), at the level of the plain functions both servers call: the limits and where
they come from, the row count ``/invocations`` refuses before MLflow parses, the body limit read from Content-Length
or while reading (driven as ASGI, without a server), tokenization that takes the tokenizer's lock per chunk, and a
deadline that stops a request at its next batch. The same limits against a real ``redflow serve`` are in
``tests/test_fuzz_surfaces.py`` (100k rows and 50 MB beside small requests), and under ``mlflow models serve`` in
``tests/test_serve_multitask.py`` (the bundle).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pandas as pd
import pytest
from transformers import AutoTokenizer

from registry.serving.answers import ENCODE_CHUNK, encode, padded_batches
from registry.serving.limits import (DeadlineExceeded, LimitsError, RequestLimits, RequestTooLarge, check_deadline,
                                     request_deadline)
from registry.serving.request_guard import BadRequest, BoundedBody, check_body
from registry.serving.serving_config import ServingConfigError, serving_config


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


# --------------------------------------------------------------------------------------------- the limits
def test_a_limit_comes_from_the_config_else_its_variable_else_the_default_and_a_bad_value_is_named():
    env = {"REDFLOW_SERVE_MAX_ROWS": "50", "REDFLOW_SERVE_MAX_TEXT_CHARS": "300", "REDFLOW_SERVE_MAX_BODY_MB": " "}
    limits = RequestLimits.resolve({"max_rows": 7, "max_text_chars": None}, env=env)
    assert (limits.max_rows, limits.max_text_chars, limits.max_body_mb) == (7, 300, 20.0)
    assert limits.max_body_bytes == 20_000_000 and RequestLimits.resolve(env={}) == RequestLimits()
    for name, raw in [("REDFLOW_SERVE_MAX_ROWS", "1.5"), ("REDFLOW_SERVE_MAX_BODY_MB", "-1"),
                      ("REDFLOW_SERVE_REQUEST_TIMEOUT", "soon"), ("REDFLOW_SERVE_MAX_TEXT_CHARS", "inf")]:
        with pytest.raises(LimitsError, match=f"{name}='{raw}' is not a .*number above 0. Fix: set it to e.g."):
            RequestLimits.resolve(env={name: raw})
    cfg = serving_config({"models": ["red-*"], "max_rows": 3})
    assert cfg.request_limits().max_rows == 3
    with pytest.raises(ServingConfigError, match="max_body_mb"):
        serving_config({"models": ["red-*"], "max_body_mb": 0})


def test_the_deadline_is_the_smaller_of_redflows_and_mlflows_timeout(monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60")
    assert RequestLimits().timeout_s() == 60 and RequestLimits(request_timeout=5).timeout_s() == 5
    assert RequestLimits(request_timeout=600).timeout_s() == 60
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "a minute")
    with pytest.raises(LimitsError, match="MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT='a minute'"):
        RequestLimits().timeout_s()


def test_rows_and_text_fields_over_the_limits_are_refused_with_413_naming_the_limit_and_how_to_raise_it():
    limits = RequestLimits(max_rows=3, max_text_chars=10)
    limits.check_frame(pd.DataFrame({"task": ["a"] * 3, "sentence": ["x" * 10] * 3, "n": [10**9] * 3}))
    with pytest.raises(RequestTooLarge) as exc:
        limits.check_frame(pd.DataFrame({"task": ["a"] * 4, "sentence": ["x"] * 4}))
    assert exc.value.get_http_status_code() == 413
    assert "the request has 4 rows" in exc.value.message and "max_rows = 3" in exc.value.message
    assert "--max-rows" in exc.value.message and "REDFLOW_SERVE_MAX_ROWS" in exc.value.message
    with pytest.raises(RequestTooLarge, match=r"row 1's 'sentence' holds 11 characters; .* max_text_chars = 10 .*"
                                              "REDFLOW_SERVE_MAX_TEXT_CHARS"):
        limits.check_frame([{"task": "a", "sentence": "short"}, {"task": "a", "sentence": "x" * 11}])


@pytest.mark.parametrize("layout", ["dataframe_records", "dataframe_split", "instances", "inputs", "csv"])
def test_invocations_counts_rows_in_every_layout_before_mlflow_parses_them(layout):
    rows = [{"task": "sentiment", "sentence": f"film {i}"} for i in range(5)]
    frame = pd.DataFrame(rows)
    body = {"dataframe_records": {"dataframe_records": rows},
            "dataframe_split": {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))},
            "instances": {"instances": rows}, "inputs": {"inputs": frame.to_dict(orient="list")},
            "csv": None}[layout]
    data, kind = ((frame.to_csv(index=False).encode(), "text/csv") if body is None
                  else (json.dumps(body).encode(), "application/json"))
    check_body(data, kind, RequestLimits(max_rows=5))
    with pytest.raises(BadRequest) as exc:
        check_body(data, kind, RequestLimits(max_rows=4))
    assert exc.value.status == 413 and "the request has 5 rows" in exc.value.message
    assert json.loads(exc.value.body())["error_code"] == "REQUEST_LIMIT_EXCEEDED"


# --------------------------------------------------------------------------------------------- the body limit
def _drive(limits: RequestLimits, chunks: list[bytes], headers: dict[str, str]) -> tuple[list[dict], int, bytes | None]:
    """Run ``BoundedBody`` over an app that reads the whole body: ``(messages sent, chunks read, body the app saw)``."""
    read, seen = [0], [None]

    async def receive():
        read[0] += 1
        i = read[0] - 1
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    async def app(scope, receive, send):
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        seen[0] = b"".join(parts)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/invocations", "method": "POST",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(BoundedBody(app, limits)(scope, receive, send))
    return sent, read[0], seen[0]


def test_a_body_over_the_limit_is_refused_from_its_content_length_or_as_soon_as_reading_passes_it():
    limits = RequestLimits(max_body_mb=1)
    mb = b"x" * 1_000_000
    sent, read, seen = _drive(limits, [mb] * 50, {"Content-Length": str(50_000_000)})
    assert (sent[0]["status"], read, seen) == (413, 0, None)              # not a byte read
    answer = json.loads(sent[1]["body"])
    assert answer["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "50,000,000 bytes (its Content-Length)" in answer["message"] and "max_body_mb = 1 MB" in answer["message"]
    assert "--max-body-mb" in answer["message"] and "REDFLOW_SERVE_MAX_BODY_MB" in answer["message"]
    sent, read, seen = _drive(limits, [b"x" * 300_000] * 170, {})        # chunked, 51 MB: stops at the 4th chunk
    assert (sent[0]["status"], read, seen) == (413, 4, None)
    assert "more than 1,000,000 bytes" in json.loads(sent[1]["body"])["message"]
    sent, read, seen = _drive(limits, [b"a" * 400_000, b"b" * 400_000, b"c"], {})  # under it: the app reads it whole
    assert sent[0]["status"] == 200 and seen == b"a" * 400_000 + b"b" * 400_000 + b"c"


# --------------------------------------------------------------------------------------------- tokens and the deadline
class CountingLock:
    """A lock that counts how often it is taken."""

    def __init__(self) -> None:
        self.lock, self.taken = threading.Lock(), 0

    def __enter__(self):
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_tokenizing_takes_the_lock_per_chunk_and_answers_as_one_call_would(tokenizer):
    first = [f"sentence number {i} " + "word " * (i % 40) for i in range(3 * ENCODE_CHUNK + 5)]
    second = [f"its pair {i}" for i in range(len(first))]
    lock = CountingLock()
    features = encode(tokenizer, [first, second], 24, lock)
    assert lock.taken == 4                                      # never the whole request under one hold
    whole = tokenizer(first, second, truncation=True, max_length=24)
    assert [f["input_ids"] for f in features] == whole["input_ids"]
    assert [f["token_type_ids"] for f in features] == whole["token_type_ids"]


def test_a_request_past_its_deadline_stops_at_its_next_batch(tokenizer):
    features = encode(tokenizer, [[f"text {i}" for i in range(40)]], 16, threading.Lock())
    computed = []
    with request_deadline(0.5):
        batches = padded_batches(tokenizer, features, 8, "cpu", threading.Lock())
        computed.append(next(batches)[0])
        time.sleep(0.6)                                         # the first forward pass ran past the deadline
        with pytest.raises(DeadlineExceeded) as exc:
            computed.append(next(batches)[0])
    assert computed == [list(range(8))]                         # batch 2 of 5 never computed
    assert exc.value.get_http_status_code() == 504
    assert "past its 0.5 s deadline and was stopped after 8 of 40 rows" in exc.value.message
    assert "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT" in exc.value.message and "--request-timeout" in exc.value.message
    check_deadline()                                            # outside the block: no deadline
    with request_deadline(60), request_deadline(0.0):           # an inner, shorter deadline wins
        time.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            encode(tokenizer, [["a", "b"]], 16, threading.Lock())
