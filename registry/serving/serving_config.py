"""The serving config of a multi-task server: which registered models, which alias, how often to look.

One small document, the same whether it comes from ``redflow serve`` flags, a YAML file, or a version
of a serving *bundle* (a registered model whose versions are serving configs, ``registry.serving.bundle``)::

    models: ["red-*"]          # registered model names and/or glob patterns (fnmatch); or "a,b,c"
    alias: production          # the alias followed for every model
    poll_interval: 30          # seconds between registry checks; 0 = load once, never follow
    batch_size: 16             # rows per forward pass (the single-task pyfunc's default)
    max_new_tokens: 64         # generation tasks: default for requests that do not say
    device: auto               # auto = cuda when available, else cpu
    tracking_uri: null         # default: the server's MLFLOW_TRACKING_URI (what `mlflow models serve` is given)
    max_rows: null             # request limits (``registry.serving.limits``); null: the REDFLOW_SERVE_* variable,
    max_body_mb: null          #   else the default (10,000 rows, 20 MB, 100,000 characters per text field,
    max_text_chars: null       #   MLflow's request timeout); a request over one is refused with HTTP 413
    request_timeout: null

A name is followed exactly (it must exist and carry the alias when the server starts); a pattern
matches every redflow task model (tag ``redflow.managed``) whose name fits it, including models
registered after the server started. Invalid values raise ``ServingConfigError`` (a ``ValueError``)
naming the field and the fix.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .limits import ENV as LIMIT_FIELDS, LimitsError, RequestLimits

GLOB_CHARS = "*?["


class ServingConfigError(ValueError):
    """A serving config that cannot be served: the message names the field (or model) and the fix."""


class ServingConfig(BaseModel):
    """What a multi-task server serves (see the module docstring for each field)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    alias: str = Field(default="production", min_length=1)
    poll_interval: float = Field(default=30.0, ge=0)
    batch_size: int = Field(default=16, ge=1, le=4096)
    max_new_tokens: int = Field(default=64, ge=1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    tracking_uri: str | None = None
    max_rows: int | None = Field(default=None, ge=1)
    max_body_mb: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_text_chars: int | None = Field(default=None, ge=1)
    request_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            value = [str(v).strip() for v in value if str(v).strip()]
        return value

    @property
    def names(self) -> list[str]:
        """The models named exactly."""
        return [m for m in self.models if not is_pattern(m)]

    @property
    def patterns(self) -> list[str]:
        """The glob patterns."""
        return [m for m in self.models if is_pattern(m)]

    def matches(self, name: str) -> bool:
        return name in self.names or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def request_limits(self) -> RequestLimits:
        """The limits this server keeps: these fields, else the ``REDFLOW_SERVE_*`` variables, else the defaults."""
        try:
            return RequestLimits.resolve(self.model_dump(include=set(LIMIT_FIELDS)))
        except LimitsError as exc:
            raise ServingConfigError(str(exc)) from exc


def is_pattern(name: str) -> bool:
    return any(c in name for c in GLOB_CHARS)


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'config'}: {e.get('msg')}"
                     for e in exc.errors()[:3])


def serving_config(data: ServingConfig | dict[str, Any] | None = None, **overrides: Any) -> ServingConfig:
    """A validated ``ServingConfig`` from a dict (a bundle's ``model_config``, a YAML document) and overrides
    that are not None (command-line flags win over the file)."""
    if isinstance(data, ServingConfig):
        data = data.model_dump()
    merged = {**(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
    if "serving" in merged and isinstance(merged["serving"], dict) and len(merged) == 1:
        merged = dict(merged["serving"])
    if not merged.get("models"):
        raise ServingConfigError("a serving config needs `models`: registered model names or patterns, e.g. "
                                 "--models 'red-*' or --models red-sentiment,red-topic")
    try:
        return ServingConfig(**merged)
    except ValidationError as exc:
        raise ServingConfigError(f"invalid serving config ({_describe(exc)}). Fix: see `redflow serve --help` "
                                 "for the fields and their ranges") from exc


def load_serving_config(path: str | Path, **overrides: Any) -> ServingConfig:
    """Read a YAML serving config (see the module docstring); flags in ``overrides`` win."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ServingConfigError(f"cannot read serving config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ServingConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ServingConfigError(f"{path} must hold a mapping (models: ..., alias: ...), not {type(data).__name__}")
    return serving_config(data or {}, **overrides)
