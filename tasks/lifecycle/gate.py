"""Champion and challenger in one label space before they are compared, and a warm start in tonight's order.

A classifier predicts class *ids*; an id means something only through the ``label_list`` the model was
trained with. Reorder ``label_list`` in a task's data spec (or let an inferred label set gain a class)
and id 0 no longer names the same class: a champion scored by ids against tonight's label ids gets
``1 - accuracy`` on a binary task, and an untrained candidate then "beats" it significantly. The same
holds for ``init: production``: the old head's rows are in the old order.

So every cross-version use of a head goes through the label names:

- :func:`label_mapping` maps the champion's class ids through its own ``label_list`` to names, then to
  tonight's ids; :func:`in_label_space` applies it to the champion's per-row predictions;
- :func:`align_head` permutes a production edit's head rows (classifier weight rows, bias entries) into
  tonight's order before a warm start;
- a name without a counterpart, or a changed count, is :class:`LabelSpaceMismatch`: there is no honest
  comparison (the gate does not promote on a cross-space score) and no honest warm start (refused).

Pure functions on names and tensors; ``registry`` reads a version's labels (its serving config) and the
flows pass them in. Regression and language-model tasks have no label list and are left alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tasks.evaluate.paired import RowScores

PROMOTE_FIX = ("Fix: look at both label lists (the version's and the data spec's `label_list`) and, if the new "
               "version should serve, promote it without the gate: `redflow promote <model> <version> --force`.")
WARM_START_FIX = ("Fix: set `init: fresh` for this task (train a new head), or restore the old label order in the "
                  "data spec's `label_list`.")
HEAD_MODULES = ("classifier", "out_proj", "score")  # the output projection of a sequence-classification head


class LabelSpaceMismatch(ValueError):
    """Two label lists that are not one set of names: class ids of one cannot be read in the other.

    ``champion_labels``: the labels the older model (production) was trained with; ``tonight_labels``:
    tonight's data's. ``unmatched`` / ``new``: the champion's names tonight lacks, and tonight's names the
    champion lacks.
    """

    def __init__(self, champion_labels: Sequence[str], tonight_labels: Sequence[str], fix: str = PROMOTE_FIX,
                 role: str = "the champion"):
        self.champion_labels = [str(x) for x in champion_labels]
        self.tonight_labels = [str(x) for x in tonight_labels]
        self.unmatched = [x for x in self.champion_labels if x not in self.tonight_labels]
        self.new = [x for x in self.tonight_labels if x not in self.champion_labels]
        self.role = role
        super().__init__(f"{self.describe()}. {fix}")

    def describe(self) -> str:
        """What differs, without the fix (the gate words its own fix, naming the model and version)."""
        parts = []
        if self.unmatched:
            parts.append(f"{self.role}'s {self.unmatched} have no counterpart tonight")
        if self.new:
            parts.append(f"tonight's {self.new} have no counterpart in {self.role}'s labels")
        if len(self.champion_labels) != len(self.tonight_labels):
            parts.append(f"the label count changed from {len(self.champion_labels)} to {len(self.tonight_labels)}")
        if not parts:  # same names, same count: a name is repeated in one of the lists
            parts.append("a label name is repeated")
        return (f"{self.role} was trained on labels {self.champion_labels}, tonight's data has "
                f"{self.tonight_labels}: {'; '.join(parts)}")


def label_mapping(champion_labels: Sequence[str], tonight_labels: Sequence[str]) -> list[int]:
    """``mapping[i]``: tonight's class id of the champion's class id ``i`` (matched by name).

    Raises :class:`LabelSpaceMismatch` when the two lists are not one set of distinct names (a name
    without a counterpart, a changed count, a repeated name): a class id then has no meaning tonight.
    """
    champion = [str(x) for x in champion_labels]
    tonight = [str(x) for x in tonight_labels]
    if len(champion) != len(tonight) or len(set(champion)) != len(champion) or set(champion) != set(tonight):
        raise LabelSpaceMismatch(champion, tonight)
    index = {name: i for i, name in enumerate(tonight)}
    return [index[name] for name in champion]


def in_label_space(rows: "RowScores", champion_labels: Sequence[str] | None,
                   tonight_labels: Sequence[str] | None) -> "RowScores":
    """The champion's per-row predictions as tonight's class ids (labels untouched: they are tonight's).

    Nothing to map without label lists (regression, language models) or for a row kind other than
    predictions. A champion without recorded labels is refused like a mismatch: its ids cannot be read.
    """
    if tonight_labels is None or rows.kind != "prediction":
        return rows
    mapping = label_mapping(champion_labels if champion_labels is not None else [], tonight_labels)
    if mapping == list(range(len(mapping))):
        return rows
    return replace(rows, predictions=[float(mapping[int(p)]) for p in rows.predictions])


class LabelledState(dict):
    """Edit-file tensors (``edit.*``/``head.*``) that remember the ``label_list`` their head was trained with.

    A plain ``dict`` keeps working wherever an ``init_state`` is accepted (nothing is checked then); the
    production edit of ``init: production`` comes as this, so the head can be put in tonight's order.
    """

    def __init__(self, tensors: dict[str, Any], label_list: Sequence[str] | None):
        super().__init__(tensors)
        self.label_list = [str(x) for x in label_list] if label_list is not None else None


def align_head(state: dict[str, "torch.Tensor"], tonight_labels: Sequence[str] | None,
               note: str = "production") -> dict[str, "torch.Tensor"]:
    """``state`` with its classification head's rows in tonight's label order (a warm start's starting point).

    The output projection's weight rows and bias entries (``head.<...>.{classifier,out_proj,score}.*``) are
    permuted by label name; the edit vectors and any hidden head layer are unchanged. A plain dict (labels
    unknown) or a task without labels is returned as is. Raises :class:`LabelSpaceMismatch` (naming both
    lists, fix: ``init: fresh`` or the old order) when the names are not tonight's set, and ``ValueError``
    for a reordered head whose output layer it cannot find.
    """
    produced = getattr(state, "label_list", None)
    if tonight_labels is None or produced is None:
        return state
    try:
        mapping = label_mapping(produced, tonight_labels)
    except LabelSpaceMismatch:
        raise LabelSpaceMismatch(produced, tonight_labels, fix=WARM_START_FIX, role=note) from None
    if mapping == list(range(len(mapping))):
        return state
    order = [0] * len(mapping)  # tonight's row j comes from production's row order[j]
    for old, new in enumerate(mapping):
        order[new] = old
    rows = [k for k, t in state.items() if _is_output_row(k, t, len(mapping))]
    if not rows:
        raise ValueError(f"cannot put {note}'s head (labels {list(produced)}) in tonight's order "
                         f"{list(tonight_labels)}: it has no output layer named {'/'.join(HEAD_MODULES)} with "
                         f"{len(mapping)} rows to reorder. {WARM_START_FIX}")
    aligned = LabelledState(state, [str(x) for x in tonight_labels])
    for key in rows:
        aligned[key] = state[key][order].clone()
    return aligned


def _is_output_row(key: str, tensor: Any, n: int) -> bool:
    """Whether ``key`` is the head's output projection (one row or entry per class)."""
    parts = key.split(".")
    return (key.startswith("head.") and len(parts) >= 3 and parts[-2] in HEAD_MODULES
            and parts[-1] in ("weight", "bias") and tensor.ndim >= 1 and int(tensor.shape[0]) == n)


__all__ = ["LabelSpaceMismatch", "LabelledState", "align_head", "in_label_space", "label_mapping"]
