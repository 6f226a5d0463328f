"""Edit configuration: which method, where, and which kind of vectors.

A small pydantic model so that a typo in a YAML config fails with the field's
name instead of silently training the default.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .methods.reft.notation import parse_positions

Method = Literal["red", "loreft", "direft", "nodireft"]
MAX_PATTERN = 512  # characters in one target_modules regular expression


class EditConfig(BaseModel):
    """How an edit attaches to a frozen base model.

    RED (``method="red"``) learns ``h2 = s * h1 + b`` on the output of the FFN
    down-projection (``position="ffn"``), the attention output projection
    (``"attn"``) or both. ``kind`` selects the paper's ablations: scaling and
    bias (default), scaling only, bias only.

    ReFT methods (``loreft``, ``direft``, ``nodireft``; see red/methods/reft/) intervene on the residual stream
    (block outputs) at the prompt positions named by ``positions``
    (``"f7+l7"``: first 7 and last 7 prompt tokens) with a rank-``rank``
    subspace.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(default="red", description="The edit method; in a retrain config it is the task's "
                           "train.method (set it there only).")
    position: Literal["ffn", "attn", "ffn+attn"] = Field(
        default="ffn", description="RED: where h <- s * h + b is applied: the output of each FFN down-projection "
        "(ffn), of the attention output projection (attn), or both.")
    kind: Literal["scale+bias", "scale", "bias"] = Field(
        default="scale+bias", description="RED: which vectors are learned: scaling and bias (the paper's RED), "
        "scaling only, or bias only (its ablations).")
    layers: list[int] | None = Field(default=None, description="Layer indices to edit (default: all).")
    exclude_layers: list[int] = Field(default_factory=list, description="Layer indices to leave alone.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Explicit regular expressions over module names; overrides the architecture table.",
    )
    head: list[str] | Literal["auto", "none"] = Field(
        default="auto",
        description="Extra modules trained and saved with the edit (a task head). 'auto' picks the "
        "classification head of *ForSequenceClassification models.",
    )
    # ReFT family
    rank: int = Field(default=4, ge=1, description="ReFT: rank of the subspace each intervention edits.")
    positions: str = Field(default="f7+l7", description="ReFT: the prompt tokens intervened on, 'f<N>+l<M>': the "
                           "first N and last M prompt tokens ('l1': the last one only).")
    share_weights: bool = Field(default=False, description="ReFT: one intervention for prefix and suffix positions.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="ReFT: dropout on the rank-r edit signal "
                           "during training (0 <= value < 1).")

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: str) -> str:
        parse_positions(value)
        return value

    @field_validator("target_modules")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            if len(pattern) > MAX_PATTERN:  # bounded: a long pattern's nested groups recurse in the compiler
                raise ValueError(f"target_modules pattern {pattern[:40]!r}... is {len(pattern)} characters; the limit "
                                 f"is {MAX_PATTERN} (module names are short: match them, not the whole model)")
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
                raise ValueError(f"target_modules pattern {pattern!r} is not a valid regular expression: {exc}")
        return value

    @model_validator(mode="after")
    def _layers(self) -> "EditConfig":
        if self.layers is not None and not self.layers:
            raise ValueError("layers=[] selects nothing; leave it out to edit every layer")
        if any(i < 0 for i in (self.layers or []) + self.exclude_layers):
            raise ValueError("layer indices are 0-based and must not be negative")
        return self

    @property
    def is_reft(self) -> bool:
        return self.method in ("loreft", "direft", "nodireft")

    def wants_layer(self, index: int | None) -> bool:
        if index is None:
            return self.layers is None
        if self.layers is not None and index not in self.layers:
            return False
        return index not in self.exclude_layers
