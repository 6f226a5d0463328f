"""GLUE: the task table and the original TSV layout (as written by GLUE's download script).

Files are read by column *name* where GLUE gives a header and by position for
CoLA, which has none; columns are renamed to the Hugging Face ``glue`` names so
that local and hub GLUE data look the same downstream. The split protocol for
the official dev sets is in :mod:`tasks.data.splits`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .sources import DataError, read_tsv

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


def task_folder(root: Path, task: GlueTask) -> Path:
    """The task's folder: ``root/<SST-2>`` for a GLUE root, or ``root`` itself if it holds train.tsv."""
    for candidate in (root / task.folder, root / task.folder.lower(), root / task.name):
        if candidate.is_dir():
            return candidate
    if (root / "train.tsv").is_file():
        return root
    if not root.exists():
        raise DataError(f"GLUE folder {root} does not exist. Fix: point `path` at the folder that holds "
                        f"{task.folder}/ (GLUE's download layout).")
    found = sorted(p.name for p in root.iterdir())[:20]
    raise DataError(f"GLUE folder {root} has no {task.folder}/ folder (found: {found}). Fix: point `path` at "
                    f"the GLUE root or at the {task.folder} folder itself.")


def glue_files(root: Path, task: GlueTask) -> dict[str, Path]:
    """The files a task reads: ``{"train": .../train.tsv, "dev": .../dev.tsv}`` (MNLI: dev_matched.tsv)."""
    folder = task_folder(root, task)
    return {"train": folder / "train.tsv", "dev": folder / task.dev_file}


def read_glue_split(path: Path, task: GlueTask) -> pd.DataFrame:
    """Read one GLUE TSV and rename its columns to ours (text columns, then ``label``)."""
    frame = read_tsv(path, header=task.header, names=list(task.names) if task.names else None)
    wanted = list(task.columns.values())
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        raise DataError(f"{path}: missing column(s) {missing} for GLUE task {task.name}; found columns {found}. "
                        f"Fix: use GLUE's original TSV files (header {wanted} among others"
                        + (", no header row" if not task.header else "") + ").")
    if frame.empty:
        raise DataError(f"{path}: no data rows. Fix: the {task.name} file is empty or truncated; "
                        f"download it again.")
    return frame[wanted].rename(columns={v: k for k, v in task.columns.items()}).reset_index(drop=True)
