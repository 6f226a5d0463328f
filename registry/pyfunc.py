"""Kept for versions registered before ``registry/serving/``: their copy of ``model_code.py`` does
``from registry.pyfunc import RedEditModel``, so this name must keep importing. New code imports
``registry.serving.pyfunc``."""
from registry.serving.pyfunc import RedEditModel  # noqa: F401
