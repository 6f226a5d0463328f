"""A package's public names, loaded on first use (PEP 562), so that importing one light submodule is light.

``from red.config import EditConfig`` first runs ``red/__init__.py``; were that file to import the model code, every
config check would load torch and transformers (seconds of CPU before a config error can be reported). The packages
whose ``__init__`` re-exports heavy modules (``red``, ``tasks.data``, ``tasks.training``, ``tasks.evaluate``) list
their names with the submodule that holds each, and load that submodule when the name is first read.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to its submodule (relative name).

    A submodule's name loads the submodule (``red.pretrained`` after ``import red``, as when the package imported
    it eagerly); any other name raises AttributeError as a module's missing attribute does.
    """
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
