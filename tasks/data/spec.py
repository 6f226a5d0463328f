"""What a task's data is: the spec a config names (:class:`DataSpec`) and the prepared splits (:class:`TaskData`).

Types only, so that every step of preparation (:mod:`.loading`, :mod:`.encoding`, :mod:`.prepare`) can name
them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import glue_tasks, splits
from .synthetic import SYNTHETIC_TASKS

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

Source = Literal["glue", "hub", "csv", "tsv", "json", "jsonl", "alpaca", "ultrafeedback", "synthetic"]
TaskType = Literal["classification", "regression", "causal_lm", "seq2seq"]
Metric = Literal["accuracy", "f1", "mcc", "pearson", "loss"]


class SyntheticOptions(BaseModel):
    """Size and seed of a generated task (``source: synthetic``)."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(default=300, ge=1, description="Training rows generated.")
    n_dev: int = Field(default=200, ge=2, description="Split into validation/test like a GLUE dev set.")
    seed: int = Field(default=0, description="Generation seed (the split seed is prepare_data's).")


class DataSpec(BaseModel):
    """What to train on. Unknown fields fail (``extra="forbid"``) so a typo names itself.

    Splits: GLUE (local or hub) keeps the official train split and splits the official dev
    set into validation and test by the paper's protocol (:mod:`tasks.data.splits`). Local files:
    ``path`` is one file (train) or a folder with ``train.<ext>`` and either ``dev.<ext>``
    (halved into validation and test by content hash) or any of ``validation.<ext>`` /
    ``test.<ext>``; what is missing is carved from train by a seeded hash of each row's text
    (``test_size``, ``validation_size``: fractions of all rows), so appending rows to a file
    never moves a row between splits (see :mod:`tasks.data.splits`).

    Examples::

        DataSpec(source="glue", path="../shared/data/glue", task="SST-2")
        DataSpec(source="hub", hub_name="nyu-mll/glue", hub_config="rte", task="rte")
        DataSpec(source="csv", path="reviews.csv", text_columns=["review"], label_column="stars")
        DataSpec(source="alpaca", path="alpaca_data.json", max_train_samples=10_000)
        DataSpec(source="synthetic", task="sentiment", path="data/synthetic")
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Task name in runs and registries (default: task or file).")
    source: Source = Field(description="Where the rows come from: glue (GLUE's TSV folders), hub (a Hugging Face "
                           "data set), csv/tsv/json/jsonl (a file or a folder of split files), alpaca / "
                           "ultrafeedback (instruction JSON), synthetic (a generated task).")
    path: Path | None = Field(default=None, description="File or folder (GLUE: the root or the task folder).")
    task: str | None = Field(default=None, description="GLUE task (sst2, SST-2, ...) or synthetic task name.")
    hub_name: str | None = Field(default=None, description="source hub: the data set's hub id (e.g. "
                                 "nyu-mll/glue). Its train split trains; a GLUE task's official dev split is halved into "
                                 "validation and test, otherwise its labelled validation/valid/dev and test splits "
                                 "are used and what is missing is carved from train.")
    hub_config: str | None = Field(default=None, description="source hub: the data set's configuration (e.g. "
                                   "sst2).")
    hub_revision: str | None = Field(default=None, description="Pin it: the cache key only sees the name.")
    columns: dict[str, str] | None = Field(default=None, description="Rename file columns first: {old: new}.")
    text_columns: list[str] | None = Field(default=None, description="The input column, or two for a sentence "
                                           "pair (encoded together as one input), after renaming by columns. "
                                           "Required for csv/tsv/json/jsonl and for hub data that is not a GLUE "
                                           "task; with response_column, the first one is the prompt.")
    label_column: str | None = Field(default=None, description="The column holding the target: a class (a name, "
                                     "or an index into label_list) or, for regression, a number. Default 'label'.")
    response_column: str | None = Field(default=None, description="The answer column of instruction data in a "
                                        "table: with it the task is causal_lm (or seq2seq), text_columns[0] the "
                                        "prompt.")
    label_list: list[str] | None = Field(default=None, description="Class names in index order (class i is "
                                         "label_list[i]); labels match by name, then as an index. Default: the "
                                         "distinct training labels, sorted (numerically when all are integers).")
    task_type: TaskType | None = Field(default=None, description="classification, regression, causal_lm or "
                                       "seq2seq (T5-style text-to-text). Default: the GLUE/synthetic task's own; "
                                       "causal_lm for instruction data; else classification.")
    metric: Metric | None = Field(default=None, description="The task's primary metric (test_primary, the gate's "
                                  "default). Default: the GLUE/synthetic task's own, else accuracy "
                                  "(classification), pearson (regression), loss (language models).")
    prompt_template: Literal["alpaca", "none"] = Field(
        default="alpaca", description="Instruction data: wrap instruction and input in the Alpaca prompt "
        "(alpaca), or join them as they are (none).")
    max_train_samples: int | None = Field(default=None, ge=1, description="Train on at most this many rows, drawn "
                                          "seeded without replacement (default: all).")
    max_eval_samples: int | None = Field(default=None, ge=1, description="Score on at most this many validation "
                                         "rows and as many test rows, chosen by content hash so the choice barely moves as "
                                         "rows are added (default: all).")
    validation_size: float = Field(default=0.1, description="Fraction of the rows that goes to "
                                   "validation when no validation (or dev) file is given; assigned by content hash.")
    test_size: float = Field(default=0.1, description="Fraction of the rows that goes to test when no "
                             "test (or dev) file is given; assigned by content hash.")
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions, description="source synthetic: how many "
                                        "rows to generate and with which seed.")
    split_seed: int = Field(default=42, description="Seed of the validation/test split in the retrain flow. Kept "
                            "apart from the training seed: changing how a task trains must not move rows between "
                            "train and test (the gate would score production on rows it trained on).")

    @field_validator("validation_size", "test_size")
    @classmethod
    def _fraction(cls, value: float, info) -> float:
        return splits.check_fraction(info.field_name, value)

    @field_validator("label_list", mode="before")
    @classmethod
    def _names_not_booleans(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            raise ValueError(f"label names must be strings, got {value}: YAML reads unquoted yes/no/on/off/true/false "
                             "as booleans; quote them, e.g. label_list: ['yes', 'no']")
        return value

    @field_validator("text_columns")
    @classmethod
    def _one_or_two(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not 1 <= len(value) <= 2:
            raise ValueError(f"text_columns takes one column or a pair, got {value}")
        if value is not None and len(set(value)) < len(value):
            raise ValueError(f"text_columns {value} names the column {value[0]!r} twice: a sentence pair reads two "
                             "different columns; give one column, or the pair's two")
        return value

    @field_validator("label_list", "columns")
    @classmethod
    def _distinct_names(cls, value: Any, info) -> Any:
        names = list(value.values()) if isinstance(value, dict) else list(value or [])
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated and info.field_name == "label_list":
            raise ValueError(f"label_list names {repeated} more than once: class i is label_list[i], so every name "
                             "must be distinct; remove the repeats")
        if repeated:
            raise ValueError(f"columns renames several columns to {repeated}: a table holds one column of a name; "
                             "rename each to a different name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DataSpec":
        source = self.source
        if source in ("glue", "hub") and self.task is not None:
            if source == "glue" or _is_glue_name(self.task):
                self.task = glue_tasks.canonical_task(self.task)
        if source == "glue":
            _need(self.path is not None and self.task is not None, "source 'glue' needs `path` (the GLUE folder) "
                  f"and `task` (one of {sorted(glue_tasks.GLUE_TASKS)})")
        elif source == "hub":
            _need(self.hub_name is not None, "source 'hub' needs `hub_name` (e.g. 'nyu-mll/glue') and usually "
                  "`hub_config` (e.g. 'sst2')")
        elif source == "synthetic":
            _need(self.task in SYNTHETIC_TASKS, f"source 'synthetic' needs `task`, one of {sorted(SYNTHETIC_TASKS)}"
                  f" (got {self.task!r})")
        else:
            _need(self.path is not None, f"source {source!r} needs `path` (a file, or a folder with train/dev/"
                  f"validation/test files)")
        if source in ("csv", "tsv", "json", "jsonl") or (source == "hub" and self.task not in glue_tasks.GLUE_TASKS):
            _need(self.text_columns is not None, f"source {source!r} needs `text_columns` (the input column, "
                  "or two for sentence pairs)")
        if self.response_column is not None and self.response_column in (self.text_columns or []):
            raise ValueError(f"response_column {self.response_column!r} is also in text_columns "
                             f"{self.text_columns}: the prompt (text_columns[0]) and the answer must be different "
                             "columns; name the answer column in response_column")
        target = self.label_column or "label"
        if self.response_column is None and target in (self.text_columns or []):
            raise ValueError(f"the label column {target!r} is also in text_columns {self.text_columns}: the model "
                             "would read its answer; set `label_column` to the target column and `text_columns` to the "
                             "input(s)")
        if self.task_type is not None:
            allowed = _allowed_types(self)
            _need(self.task_type in allowed, f"task_type {self.task_type!r} does not fit this source/task; "
                  f"use one of {sorted(allowed)}")
        return self

    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.task:
            return self.task
        if self.hub_name:
            return self.hub_name.split("/")[-1] + (f"_{self.hub_config}" if self.hub_config else "")
        return Path(self.path).stem if self.path else self.source  # type: ignore[arg-type]


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_glue_name(task: str) -> bool:
    try:
        glue_tasks.canonical_task(task)
        return True
    except ValueError:
        return False


def _allowed_types(spec: DataSpec) -> set[str]:
    if spec.task in glue_tasks.GLUE_TASKS and spec.source in ("glue", "hub"):
        return {glue_tasks.GLUE_TASKS[spec.task].task_type, "seq2seq"}
    if spec.source == "synthetic":
        return {SYNTHETIC_TASKS[spec.task].task_type, "seq2seq"}  # type: ignore[index]
    if spec.source in ("alpaca", "ultrafeedback"):
        return {"causal_lm", "seq2seq"}
    return {"classification", "regression", "causal_lm", "seq2seq"}


@dataclass
class TaskData:
    """Prepared, checked splits of one task and what a trainer needs to know about them.

    Classification rows hold the text columns and ``label`` (class index into ``label_list``);
    regression rows a float ``label``; instruction rows ``prompt`` and ``response``.
    """

    name: str
    task_type: str
    train: Dataset
    validation: Dataset
    test: Dataset
    text_columns: tuple[str, ...]
    label_list: list[str] | None
    metric: str
    data_hash: str
    label_column: str = "label"          # "response" for instruction data
    task: str | None = None               # canonical GLUE / synthetic task name (T5 prefixes use it)
    source: str = ""
    seed: int = 42
    cache_path: Path | None = None
    from_cache: bool = False
    origin: dict[str, str] = field(default_factory=dict)  # split -> where its rows came from

    @property
    def num_labels(self) -> int | None:
        if self.task_type == "regression":
            return 1
        return len(self.label_list) if self.label_list is not None else None

    @property
    def is_instruction(self) -> bool:
        return self.label_column == "response"

    def splits(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits().items()}

    def describe(self) -> dict[str, Any]:
        """Flat metadata (for logs, MLflow params and the cache's meta.json)."""
        return {"name": self.name, "task_type": self.task_type, "text_columns": list(self.text_columns),
                "label_list": self.label_list, "metric": self.metric, "data_hash": self.data_hash,
                "label_column": self.label_column, "task": self.task, "source": self.source, "seed": self.seed,
                "sizes": self.sizes(), "origin": self.origin}
