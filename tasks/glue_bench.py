"""The paper's Table 1 on the models and data at hand: GLUE tasks × methods × seeds.

Every (task, method, seed) cell trains with the same pipeline the flows use
(tasks.data + tasks.train), picks the best epoch on the validation half of the
official dev set and reports the test half, as the paper does. The table gives
the mean over seeds per task, the average over tasks, and each method's
trainable parameters excluding the classification head (the paper's count).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from .result import TrainResult


def run_glue_benchmark(glue_dir: str | Path, tasks: list[str], methods: list[str], model: str,
                       seeds: list[int], out_dir: str | Path, *, epochs: float | None = None,
                       max_train_samples: int | None = None, preset: str | None = "roberta-base-glue",
                       max_length: int | None = 128, overrides: dict[str, dict[str, Any]] | None = None,
                       on_result: Callable[[TrainResult], None] | None = None) -> dict[str, Any]:
    """Train every cell and return {"cells": [...], "table": {...}}; results are also written as they come."""
    from .data import DataSpec, prepare_data
    from .train import TrainConfig, train

    out_dir = Path(out_dir)
    cells = []
    for task in tasks:
        for seed in seeds:
            spec = DataSpec(name=task.lower(), source="glue", path=str(glue_dir), task=task,
                            max_train_samples=max_train_samples)
            data = prepare_data(spec, seed=seed, cache_dir=out_dir / "cache")
            for label in methods:
                method, edit = parse_method(label)
                fields: dict[str, Any] = {"model": model, "method": method, "seed": seed, "preset": preset,
                                          "resume": False, "edit": edit,
                                          **(overrides or {}).get(method, {}), **(overrides or {}).get(label, {})}
                if epochs is not None:
                    fields["epochs"] = epochs
                if max_length is not None:
                    fields["max_length"] = max_length
                started = time.time()
                if preset and method not in _preset_methods(preset):
                    fields["preset"] = None  # e.g. ReFT has no row in the paper's RoBERTa table
                result = train(data, TrainConfig(**fields), out_dir / task / label / f"seed{seed}")
                cell = {"task": data.name, "method": label, "seed": seed, "metric": result.primary_metric,
                        "test": result.score, "validation": result.validation.get(result.primary_metric),
                        "best_epoch": result.best_epoch, "edit_parameters": result.edit_parameters,
                        "trainable_parameters": result.trainable_parameters,
                        "seconds": round(time.time() - started, 1)}
                cells.append(cell)
                if on_result:
                    on_result(result)
                (out_dir / "cells.jsonl").parent.mkdir(parents=True, exist_ok=True)
                with open(out_dir / "cells.jsonl", "a") as f:
                    f.write(json.dumps(cell) + "\n")
    return {"cells": cells, "table": summarize(cells)}


def parse_method(label: str) -> tuple[str, dict[str, Any]]:
    """``red``, ``loreft-r8`` (LoReFT at rank 8), ``red-attn`` (RED on attention outputs) -> (method, edit)."""
    method, _, variant = label.partition("-")
    edit: dict[str, Any] = {}
    if variant.startswith("r") and variant[1:].isdigit():
        edit["rank"] = int(variant[1:])
    elif variant in ("attn", "ffn+attn"):
        edit["position"] = variant
    elif variant in ("scale", "bias"):
        edit["kind"] = variant
    elif variant:
        raise ValueError(f"unknown method variant {label!r}; use e.g. loreft-r8, red-attn, red-bias")
    return method, edit


def _preset_methods(preset: str) -> set[str]:
    from .presets import PRESETS

    return set(PRESETS.get(preset, {}))


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and std) over seeds per method and task, the average over tasks, parameters per method."""
    methods = list(dict.fromkeys(c["method"] for c in cells))
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    table: dict[str, Any] = {"tasks": tasks, "rows": []}
    for m in methods:
        row: dict[str, Any] = {"method": m, "scores": {}, "std": {}}
        for t in tasks:
            vals = [c["test"] * 100 for c in cells if c["method"] == m and c["task"] == t]
            if vals:
                row["scores"][t] = statistics.fmean(vals)
                row["std"][t] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        row["average"] = statistics.fmean(row["scores"].values()) if row["scores"] else float("nan")
        row["parameters"] = max(c["edit_parameters"] for c in cells if c["method"] == m)
        row["metrics"] = {t: next(c["metric"] for c in cells if c["task"] == t) for t in tasks}
        table["rows"].append(row)
    return table


def to_markdown(table: dict[str, Any]) -> str:
    """The paper's layout: one row per method, #params (excluding head), per-task score, average."""
    tasks = table["tasks"]
    metric = {t: next((r["metrics"][t] for r in table["rows"]), "") for t in tasks}
    head = "| method | #params | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | avg |"
    lines = [head, "|---|---:|" + "---:|" * (len(tasks) + 1)]
    for r in table["rows"]:
        cells = " | ".join(f"{r['scores'][t]:.1f} ± {r['std'][t]:.1f}" if t in r["scores"] else "–" for t in tasks)
        lines.append(f"| {r['method']} | {_params(r['parameters'])} | {cells} | {r['average']:.1f} |")
    return "\n".join(lines)


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
