"""Task edits without training, for serving benchmarks and tests: perturbed RED edits, registered.

``task_edits`` writes one RED edit (FFN scale+bias, and a classifier or regression head; none for a
generation task on a causal LM) per task spec on a base checkpoint (MiniLM in the benchmark),
each perturbed with its own seed (``s = 1 + 0.2 n``, ``b = 0.2 n``, head ``0.5 n``, ``n ~ N(0, 1)``), so
every task answers differently, the way separately trained tasks do; the label counts and text columns
are the spec's (the demo's tasks: 2 labels on ``sentence``, 4 on ``sentence``, 2 on ``sentence1`` +
``sentence2``). ``register_task`` registers such an edit as a version of a task model through
``registry.models.register_edit``, as a retrain would (a hand-written ``TrainResult``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

import red
from red.pretrained import load_base_model
from registry.models import register_edit
from registry.tracking import get_or_create_experiment
from tasks.training import TrainResult

DEMO_TASKS = (("sentiment", ("negative", "positive"), ("sentence",)),
              ("topic", ("sports", "tech", "food", "travel"), ("sentence",)),
              ("paraphrase", ("not_equivalent", "equivalent"), ("sentence1", "sentence2")))


@dataclass(frozen=True)
class TaskSpec:
    """A task to make an edit for: its name, labels (None: regression), text columns and max length;
    ``generation=True``: a causal-LM task reading ``prompt``."""

    name: str
    labels: tuple[str, ...] | None = ("negative", "positive")
    columns: tuple[str, ...] = ("sentence",)
    max_length: int = 64
    generation: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def task_type(self) -> str:
        return "causal_lm" if self.generation else "classification" if self.labels else "regression"

    @property
    def metric(self) -> str:
        return "loss" if self.generation else "accuracy" if self.labels else "pearson"


def demo_specs(max_lengths: tuple[int, ...] = (64, 32, 64)) -> list[TaskSpec]:
    """The demo's three tasks (2, 4 and 2 labels; the last a sentence pair)."""
    return [TaskSpec(name, labels, columns, length) for (name, labels, columns), length in zip(DEMO_TASKS, max_lengths)]


def task_edits(base_path: str, out: Path, specs: list[TaskSpec], seeds: list[int]) -> list[Path]:
    """One perturbed RED edit per ``(spec, seed)`` pair on ``base_path``, saved as ``out/<name>-s<seed>.safetensors``."""
    models: dict[tuple, object] = {}
    paths = []
    for spec, seed in zip(specs, seeds):
        key = (spec.task_type, len(spec.labels) if spec.labels else 1)
        if key not in models:
            model, _ = load_base_model(base_path, spec.task_type, label_list=list(spec.labels) if spec.labels else None)
            models[key] = red.attach(model)
        edited = models[key]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in edited.edits.named_parameters():
                p.copy_((1.0 if n.endswith("scale") else 0.0) + torch.randn(p.shape, generator=g) * 0.2)
            for p in edited.head_parameters().values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        extra = {"task": spec.name, "task_type": spec.task_type, "text_columns": list(spec.columns), **spec.extra}
        if spec.labels:
            extra["label_list"] = list(spec.labels)
        paths.append(edited.save(Path(out) / f"{spec.name}-s{seed}.safetensors", base_model=base_path, extra=extra))
    return paths


def register_task(edit_path: Path, spec: TaskSpec, model_name: str, *, score: float = 0.8,
                  experiment: str = "serving-tasks", validate: bool = True) -> int:
    """Register ``edit_path`` as a new version of ``model_name`` (alias ``candidate``); returns the version."""
    _, meta = red.read_edit(edit_path)
    metric = spec.metric
    result = TrainResult(
        task=spec.name, method="red", base_model=meta["base_model"]["name"], primary_metric=metric,
        edit_path=str(edit_path), output_dir=str(Path(edit_path).parent), best_epoch=1,
        validation={metric: score}, test={metric: score}, edit_parameters=meta["edit_parameters"],
        params={"max_length": spec.max_length, "text_columns": list(spec.columns)},
        base_fingerprint=meta["base_model"]["fingerprint"], task_type=spec.task_type,
        label_list=list(spec.labels) if spec.labels else None)
    client = MlflowClient()
    run_id = client.create_run(get_or_create_experiment(experiment, client)).info.run_id
    return register_edit(result, run_id, model_name=model_name, validate=validate)
