"""GLUE files: the original TSV layout (as written by GLUE's download script); the task table is in
:mod:`tasks.data.glue_tasks`.

Files are read by column *name* where GLUE gives a header and by position for
CoLA, which has none; columns are renamed to the Hugging Face ``glue`` names so
that local and hub GLUE data look the same downstream. The split protocol for
the official dev sets is in :mod:`tasks.data.splits`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .glue_tasks import GlueTask
from .sources import DataError, read_tsv


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
