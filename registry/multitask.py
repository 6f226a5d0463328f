"""Kept for serving bundles registered before ``registry/serving/``: their copy of ``bundle_code.py`` does
``from registry.multitask import MultiTaskModel``, so this name must keep importing. New code imports
``registry.serving.multitask``."""
from registry.serving.multitask import MultiTaskModel  # noqa: F401
