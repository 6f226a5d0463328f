"""GLUE's task table (folders, columns, labels, metric) and its task names, read without loading pandas or datasets.

A config names a GLUE task (``task: SST-2``); :class:`~tasks.data.spec.DataSpec` checks the name and the retrain
config reads the task type from :data:`GLUE_TASKS` before any data is read. Reading the files is
:mod:`tasks.data.glue`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its files are and how to read them.

    ``columns`` maps our column name (the Hugging Face ``glue`` name) to the
    column in GLUE's TSV files; ``header`` is False for CoLA, whose files have
    none (then ``names`` lists the positional columns).
    """

    name: str
    folder: str
    columns: dict[str, str]            # ours -> TSV header name, text columns first, "label" last
    label_list: tuple[str, ...] | None  # None: regression
    metric: str
    dev_file: str = "dev.tsv"
    header: bool = True
    names: tuple[str, ...] | None = None
    label_range: tuple[float, float] | None = None  # regression only

    @property
    def text_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c != "label")

    @property
    def task_type(self) -> str:
        return "classification" if self.label_list is not None else "regression"


GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("sst2", "SST-2", {"sentence": "sentence", "label": "label"}, ("negative", "positive"), "accuracy"),
    GlueTask("cola", "CoLA", {"sentence": "sentence", "label": "label"}, ("unacceptable", "acceptable"), "mcc",
             header=False, names=("source", "label", "original_label", "sentence")),
    GlueTask("mrpc", "MRPC", {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
             ("not_equivalent", "equivalent"), "accuracy"),
    GlueTask("rte", "RTE", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
             ("entailment", "not_entailment"), "accuracy"),
    GlueTask("stsb", "STS-B", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
             None, "pearson", label_range=(0.0, 5.0)),
    GlueTask("qnli", "QNLI", {"question": "question", "sentence": "sentence", "label": "label"},
             ("entailment", "not_entailment"), "accuracy"),
    GlueTask("qqp", "QQP", {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
             ("not_duplicate", "duplicate"), "accuracy"),
    GlueTask("mnli", "MNLI", {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
             ("entailment", "neutral", "contradiction"), "accuracy", dev_file="dev_matched.tsv"),
]}

_ALIASES = {"sts": "stsb", "mnlim": "mnli", "mnlimatched": "mnli"}


def canonical_task(task: str) -> str:
    """``"SST-2"``, ``"sst_2"``, ``"sst2"`` -> ``"sst2"``; unknown names fail listing the known ones."""
    key = "".join(ch for ch in task.lower() if ch.isalnum())
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)} "
                         f"(case, '-' and '_' do not matter).")
    return key
