"""TrainResult: what one training produces, as plain data the registry logs to MLflow."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    task: str
    method: str                       # "red", "lora", "bitfit", "full", "head", "loreft", "direft"
    base_model: str                   # hub name or local path
    primary_metric: str               # e.g. "accuracy", "mcc", "pearson"
    edit_path: str | None             # RED/ReFT: .safetensors edit file; LoRA: adapter dir; full/bitfit: checkpoint dir
    output_dir: str
    best_epoch: int
    epochs: list[dict[str, float]] = field(default_factory=list)   # {"epoch", "train_loss", "validation_<m>"...}
    steps: list[dict[str, float]] = field(default_factory=list)    # {"step", "loss", "learning_rate"}
    validation: dict[str, float] = field(default_factory=dict)     # best epoch's validation metrics
    test: dict[str, float] = field(default_factory=dict)           # best epoch's test metrics
    trainable_parameters: int = 0     # everything that got gradients (edit + head)
    edit_parameters: int = 0          # the method's own parameters, excluding the head (the paper's count)
    params: dict[str, Any] = field(default_factory=dict)          # flat hyperparameters
    data_hash: str = ""
    base_revision: str | None = None
    base_fingerprint: str | None = None
    task_type: str = "classification"
    label_list: list[str] | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: float = 0.0           # when the training started (epoch seconds; 0: unknown): the MLflow run spans it
    global_step: int = 0              # optimizer steps the edit has seen in all (a resumed run counts earlier ones)
    steps_trained: int = 0            # optimizer steps this call actually ran (0 would mean nothing was trained)
    resumed_from: str | None = None   # the crashed training's checkpoint it continued from
    init: str = "fresh"               # "fresh", or where the starting edit came from ("production v3")
    identity: dict[str, str] = field(default_factory=dict)  # tasks.lifecycle.identity.Identity of the inputs
    recipe: dict[str, Any] = field(default_factory=dict)  # TrainConfig.recipe(): the resolved config hashed
    notes: list[str] = field(default_factory=list)  # why it trained, what was resumed (for the run summary)
    co_trained_with: list[str] = field(default_factory=list)  # the other tasks of its co-training (training.cotrain)
    floor: dict[str, float] = field(default_factory=dict)  # majority-class/chance scores of the validation split
    learned: bool | None = None       # a validation score left the floor (tasks.training.floors); None: no floor (LMs)
    tuning: dict[str, Any] = field(default_factory=dict)   # the search this result won (tasks.tuning), if any

    @property
    def score(self) -> float:
        """The test value of the primary metric (what promotion gates on)."""
        return float(self.test.get(self.primary_metric, float("nan")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TrainResult":
        return cls.from_dict(json.loads(Path(path).read_text()))
