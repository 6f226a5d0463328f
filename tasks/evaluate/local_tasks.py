"""Local lm-eval task folders, so multiple-choice benchmarks run without the hub.

lm-eval's built-in ``arc_easy``/``arc_challenge`` read ``allenai/ai2_arc`` from
the Hugging Face hub. The original ARC JSONL files (AI2's release) hold the
same questions in a nested layout; converting them to the hub layout lets the
generated YAML use *exactly* the prompt, target and choices of the built-in
task, so local scores are comparable with published ones.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

# The built-in lm-eval ARC task (lm_eval/tasks/arc/arc_easy.yaml), minus the dataset source.
ARC_PROMPT = "Question: {{question}}\nAnswer:"
ARC_TARGET = "{{choices.label.index(answerKey)}}"
ARC_CHOICES = "{{choices.text}}"
_SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class LocalTask:
    """A generated task folder: pass ``folder`` (or its parent) as ``include_path`` and ``name`` as the task."""

    name: str
    folder: Path
    yaml_path: Path
    splits: dict[str, int]
    eval_split: str
    skipped: dict[str, list[str]] = field(default_factory=dict)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({exc})") from exc
    return rows


def arc_to_hub_layout(row: Mapping[str, Any]) -> dict[str, Any]:
    """Original ARC row -> the ``allenai/ai2_arc`` layout (question, choices{text,label}, answerKey).

    Rows already in the hub layout pass through. Labels stay as given: some
    ARC questions use digits ('1'..'4') instead of letters, and the target is
    the *index* of ``answerKey`` among the labels, so both work.
    """
    question = row["question"]
    if isinstance(question, Mapping):
        stem = question["stem"]
        choices = question["choices"]
        text = [str(c["text"]) for c in choices]
        label = [str(c["label"]) for c in choices]
    else:
        stem = question
        text = [str(t) for t in row["choices"]["text"]]
        label = [str(lb) for lb in row["choices"]["label"]]
    return {
        "id": str(row.get("id", "")),
        "question": str(stem),
        "choices": {"text": text, "label": label},
        "answerKey": str(row["answerKey"]).strip(),
    }


def _usable_rows(rows: Iterable[Mapping[str, Any]], limit: int | None) -> tuple[list[dict[str, Any]], list[str]]:
    """``rows`` in the hub layout, up to ``limit`` of them, and the ids (else the question's start) of the rows
    skipped: those whose answerKey is not among their labels, or with fewer than two choices."""
    kept, bad = [], []
    for row in rows:
        doc = arc_to_hub_layout(row)
        if doc["answerKey"] not in doc["choices"]["label"] or len(doc["choices"]["text"]) < 2:
            bad.append(doc["id"] or doc["question"][:40])
            continue
        kept.append(doc)
        if limit is not None and len(kept) >= limit:
            break
    return kept, bad


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8 as is (the layout `read_jsonl` and lm-eval's json loader read)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)


def _arc_task_config(name: str, files: dict[str, str], eval_split: str, fewshot: str | None,
                    num_fewshot: int | None) -> dict[str, Any]:
    """The lm-eval task YAML (as a dict) of a local ARC task: the built-in ARC task's prompt, target, choices and
    metrics over the JSONL ``files`` ({split: path}), evaluated on ``eval_split``, few-shot examples from
    ``fewshot`` (None: zero-shot only)."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        f"{'test' if eval_split == 'test' else 'validation' if eval_split == 'validation' else 'training'}_split":
            eval_split,
        "doc_to_text": ARC_PROMPT,
        "doc_to_target": ARC_TARGET,
        "doc_to_choice": ARC_CHOICES,
        "should_decontaminate": True,
        "doc_to_decontamination_query": ARC_PROMPT,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "source": "redflow tasks.evaluate.write_arc_task"},
    }
    if fewshot is not None:
        config["fewshot_split"] = fewshot
        if fewshot == "train":
            config["training_split"] = "train"
        elif fewshot == "validation" and eval_split != "validation":
            config["validation_split"] = "validation"
    if num_fewshot is not None:
        config["num_fewshot"] = num_fewshot
    return config


def write_arc_task(splits: Mapping[str, str | Path | Iterable[Mapping[str, Any]]], out_dir: str | Path,
                   name: str = "arc_local", *, limit: int | None = None, num_fewshot: int | None = None,
                   eval_split: str | None = None) -> LocalTask:
    """Write an lm-eval task folder (``<name>.yaml`` + ``data/<split>.jsonl``) from ARC JSONL files or rows.

    ``splits`` maps split names ('train', 'validation', 'test') to a JSONL
    path or an iterable of rows. The evaluated split is ``eval_split`` or the
    last of test/validation/train given; few-shot examples come from the
    earliest other split (train, else validation), never from the evaluated
    one. Rows whose answerKey is not among their labels are skipped and
    listed in ``LocalTask.skipped``. ``limit`` keeps the first rows of each
    split (quick runs). The YAML holds absolute data paths.
    """
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '-', '.'")
    unknown = set(splits) - set(_SPLIT_ORDER)
    if unknown or not splits:
        raise ValueError(f"splits must be among {_SPLIT_ORDER}, got {sorted(splits)}")
    folder = Path(out_dir).resolve() / name
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    counts: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    for split in _SPLIT_ORDER:
        if split not in splits:
            continue
        source = splits[split]
        rows = read_jsonl(source) if isinstance(source, (str, Path)) else list(source)
        kept, bad = _usable_rows(rows, limit)
        if bad:
            skipped[split] = bad
            log.warning("%s/%s: skipped %d rows whose answerKey is not one of their labels", name, split, len(bad))
        if not kept:
            raise ValueError(f"split {split!r} of {name} has no usable rows")
        path = data_dir / f"{split}.jsonl"
        _write_jsonl(path, kept)
        counts[split] = len(kept)
        files[split] = str(path)

    given = [s for s in _SPLIT_ORDER if s in files]
    eval_split = eval_split or given[-1]
    if eval_split not in files:
        raise ValueError(f"eval_split {eval_split!r} is not among the written splits {given}")
    fewshot = next((s for s in given if s != eval_split), None)

    yaml_path = folder / f"{name}.yaml"
    config = _arc_task_config(name, files, eval_split, fewshot, num_fewshot)
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return LocalTask(name=name, folder=folder, yaml_path=yaml_path, splits=counts, eval_split=eval_split,
                     skipped=skipped)
