"""JSON parsing with a nesting limit: deep input is an error with a reason, never a RecursionError.

Python's ``json`` recurses once per nested ``[``/``{``; ~1,000 levels raise RecursionError (a crash, not an
answer) and each surface that reads JSON from outside (edit-file metadata, data files, HTTP bodies) must
answer with its own error instead. No real document redflow reads nests deeper than a few levels, so the
limit is low and checked before parsing, by one linear scan that skips string literals (regular expressions drop
the strings and everything but brackets; Python walks the brackets only).
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64


# a string literal (an unterminated one runs to the end), and a run of characters that are no bracket: what the
# depth scan drops before it walks the brackets left, so its Python loop sees a few characters per record
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``text``, ignoring brackets inside string literals. O(len)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", errors="replace")
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ValueError (not RecursionError) when ``text`` nests deeper than ``max_depth``.

    ValueError is what every caller already handles for malformed JSON (``json.JSONDecodeError`` and the
    reader's 4,300-digit integer limit are ValueErrors too).
    """
    deepest = json_depth(text)
    if deepest > max_depth:
        raise ValueError(f"JSON nested {deepest} levels deep (the limit is {max_depth})")
    try:
        return json.loads(text)
    except RecursionError as exc:  # a scan mismatch cannot happen for valid JSON; belt and braces
        raise ValueError(f"JSON nested too deeply to parse (the limit is {max_depth})") from exc
