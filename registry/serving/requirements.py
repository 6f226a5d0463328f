"""The pip requirements every redflow pyfunc (one task's version, a serving bundle) is logged with.

Named explicitly: MLflow's own inference would load the model to find them. Each is pinned to the version
installed where the model is logged (``mlflow==3.1.0``...), or left unpinned when it is not installed.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVING_DISTRIBUTIONS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pydantic", "pandas", "numpy")


def pip_requirements() -> list[str]:
    """``["mlflow==<installed>", "torch==<installed>", ...]`` for ``SERVING_DISTRIBUTIONS``, in that order."""
    reqs = []
    for dist in SERVING_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs
