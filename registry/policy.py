"""When a version may become ``production``: the gate's policy, read from a config without loading MLflow.

:mod:`registry.aliases` applies it (``gate_and_promote``); a retrain config's ``promotion:`` block builds it
(``flows.config.Promotion.policy``), so it lives apart from the MLflow client code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tasks.evaluate.direction import higher_is_better

APPROVALS = ("none", "required")


@dataclass(frozen=True)
class PromotionPolicy:
    """When a version may become ``production``.

    ``metric``: what to compare (default: the task's primary metric; an evaluation suite's metric
    such as ``arc/acc_norm`` or ``alpaca/lc_win_rate`` works too). ``margin``: the improvement
    over the current production needed on the same rows (>= margin, and strictly better when
    margin is 0: a tie does not replace production). ``minimum``: a floor every promoted version
    must reach - in particular the first one, which has nothing to beat (None: no floor).
    ``higher_is_better``: None reads the direction off the metric's name (losses and
    perplexities are lower-is-better; see ``tasks.evaluate.direction``). ``require_significant``:
    also require the lower end of the ``confidence`` bootstrap interval of the improvement to
    be above 0. ``approval``: ``none`` (a version that passes the gate goes to production) or ``required``
    (it stays at ``candidate``, awaiting approval, until a person runs ``redflow approve`` or ``redflow reject``).
    """

    metric: str | None = None
    margin: float = 0.0
    minimum: float | None = None
    higher_is_better: bool | None = None
    require_significant: bool = False
    confidence: float = 0.95
    approval: str = "none"

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        if self.minimum is not None and not math.isfinite(float(self.minimum)):
            raise ValueError(f"minimum must be finite or None, got {self.minimum!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if self.approval not in APPROVALS:
            raise ValueError(f"approval must be one of {', '.join(APPROVALS)}, got {self.approval!r}")

    @property
    def needs_approval(self) -> bool:
        return self.approval == "required"

    def metric_name(self, primary_metric: str | None) -> str:
        name = self.metric or primary_metric
        if not name:
            raise ValueError("the policy names no metric and the version records no primary metric")
        return name[len("test_"):] if name.startswith("test_") else name

    def higher(self, metric: str) -> bool:
        return higher_is_better(metric) if self.higher_is_better is None else self.higher_is_better

    def meets_minimum(self, value: float, metric: str) -> bool:
        if self.minimum is None:
            return True
        return value >= self.minimum if self.higher(metric) else value <= self.minimum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PromotionPolicy":
        return cls(**(data or {}))
