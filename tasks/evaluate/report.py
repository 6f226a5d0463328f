"""One report per evaluation: a plain dataclass, JSON on disk, a markdown table for humans.

The registry logs ``metrics`` (flat ``str -> float``: MLflow metric keys use
``/`` as separator, never ``,`` which lm-eval uses) and attaches the JSON and
markdown files as artifacts; nothing here imports MLflow.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EvalReport:
    """Result of one evaluation run.

    ``kind`` is "classification", "lm-eval" or "alpaca". ``metrics`` holds every
    number worth logging; ``primary`` names the headline one (a key of
    ``metrics``). ``stderr`` holds standard errors for some metric keys.
    ``details`` keeps what explains the numbers (task configs, sample counts,
    tokenizer diagnostics, file paths) and must stay JSON-serialisable.
    """

    name: str
    kind: str
    metrics: dict[str, float]
    primary: str | None = None
    stderr: dict[str, float] = field(default_factory=dict)
    model: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        self.stderr = {str(k): float(v) for k, v in self.stderr.items()}
        if self.primary is not None and self.primary not in self.metrics:
            raise KeyError(f"primary metric {self.primary!r} is not among the metrics {sorted(self.metrics)}")

    @property
    def value(self) -> float | None:
        """The headline number (``metrics[primary]``), or None without a primary metric."""
        return self.metrics[self.primary] if self.primary else None

    # ---- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalReport":
        data = dict(data)
        for key in ("metrics", "stderr"):
            data[key] = {k: (math.nan if v is None else v) for k, v in (data.get(key) or {}).items()}
        return cls(**data)

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "EvalReport":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_markdown(self) -> str:
        """A table of every metric (primary first, in bold) with its standard error where known."""
        lines = [f"### {self.name} ({self.kind})", ""]
        if self.model:
            lines += [f"model: `{self.model}`", ""]
        lines += ["| metric | value | ± stderr |", "|---|---:|---:|"]
        keys = list(self.metrics)
        if self.primary:
            keys.remove(self.primary)
            keys.insert(0, self.primary)
        for key in keys:
            value = _fmt(self.metrics[key], count=key == "n" or key.startswith("n_"))
            err = _fmt(self.stderr[key]) if key in self.stderr else ""
            name = f"**{key}**" if key == self.primary else key
            lines.append(f"| {name} | {value} | {err} |")
        return "\n".join(lines) + "\n"

    def to_markdown_file(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown())
        return path


def _fmt(value: float, count: bool = False) -> str:
    if math.isnan(value):
        return "nan"
    if count and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); tuples become lists; unknown objects become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _json_safe(obj.item())
    return str(obj)
