"""The ReFT position notation (``positions: f7+l7``), parsed without loading torch.

A config names the prompt tokens an intervention edits as ``f<N>+l<M>``; the config check (``red.config``) and the
layers (``positions``, ``layer``, ``model``) read it through :func:`parse_positions`.
"""
from __future__ import annotations

import re


def parse_positions(spec: str) -> tuple[int, int]:
    """Parse the ReFT position notation: ``f7+l7`` -> (7, 7), ``l1`` -> (0, 1); ValueError naming the form."""
    first = last = 0
    seen = False
    for part in spec.replace(" ", "").split("+"):
        match = re.fullmatch(r"([fl])(\d+)", part)
        if not match:
            raise ValueError(
                f"positions {spec!r} is not in the form 'f<N>+l<M>' (first N and last M prompt tokens), e.g. 'f7+l7' or 'l1'"
            )
        seen = True
        if match.group(1) == "f":
            first = int(match.group(2))
        else:
            last = int(match.group(2))
    if not seen or first + last == 0:
        raise ValueError(f"positions {spec!r} selects no token; use e.g. 'f7+l7'")
    return first, last
