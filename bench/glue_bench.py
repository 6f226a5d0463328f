"""The paper's Table 1 on the models and data at hand: GLUE tasks × methods × seeds, with two floors.

Every (task, method, seed) cell trains with the same pipeline the flows use (tasks.data +
tasks.training), picks the best epoch on the validation half of the official dev set and reports the
test half, as the paper does. Beside the methods the table reports two floors per task, so a
reader can tell learning from label frequencies:

- **majority class**: the test score of always answering the training split's most frequent label;
- **head only**: the frozen base with only the task head trained (method ``head``), tuned and seeded
  like every method. A cell that does not beat it is marked: the method added nothing of its own.

With ``tune`` every method (head included) gets the same Optuna trial budget (``tasks.tuning.study``) on the
first seed; the best trial's values, chosen on validation, are then trained with every other seed.
All seeds share one validation/test split of the dev set (the first seed's), so no seed's test rows
ever chose a learning rate. Cells go to ``<out_dir>/cells.jsonl`` as they finish, and a rerun of the
same command skips the cells already there and resumes an unfinished study, so a long run survives
a crash. ``summarize``/``to_markdown`` turn the cells into the paper's layout.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
import transformers

from tasks.data import DataSpec, prepare_data
from tasks.evaluate.metrics import metric_set
from tasks.training import TrainConfig, TrainResult, train, training_identity
from tasks.training.floors import majority_label, majority_scores
from tasks.training.presets import PRESETS, preset_values
from tasks.tuning.study import (best_result, discard_artifacts, enqueue_first, open_study, run_study, run_trial,
                                storage_url, study_name, trials_table)
from tasks.tuning.trials import trial_config

HEAD = "head"
CELLS = "cells.jsonl"


def run_glue_benchmark(glue_dir: str | Path, tasks: list[str], methods: list[str], model: str,
                       seeds: list[int], out_dir: str | Path, *, epochs: float | None = None,
                       max_train_samples: int | None = None, preset: str | None = "roberta-base-glue",
                       max_length: int | None = 128, overrides: dict[str, dict[str, Any]] | None = None,
                       on_result: Callable[[TrainResult], None] | None = None, tune=None, parallel: int = 1,
                       head_floor: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every cell (skipping those ``<out_dir>/cells.jsonl`` already holds for the same settings) and
    return ``{"cells", "floors", "table", "settings"}``.

    ``tune`` (a :class:`tasks.tuning.space.TuneConfig`) searches each method's hyperparameters on the first seed;
    ``parallel`` trials (and seed runs) at once, each in its own process when above 1. ``head_floor`` adds
    the ``head`` method (the head-only floor) when ``methods`` lacks it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(methods) + ([HEAD] if head_floor and HEAD not in methods else [])
    settings = {"glue_dir": str(Path(glue_dir).resolve()), "model": model, "epochs": epochs,
                "max_train_samples": max_train_samples, "preset": preset, "max_length": max_length,
                "overrides": overrides or {}, "tune": tune.recipe() if tune is not None else None,
                "split": "first seed" if tune is not None else "per seed"}
    key = _settings_key(settings)
    book = CellBook(out_dir / CELLS, key, settings)
    say = progress or (lambda text: None)
    with _pool(parallel) as pool:
        for task in tasks:
            spec = DataSpec(name=task.lower(), source="glue", path=str(glue_dir), task=task,
                            max_train_samples=max_train_samples)
            fields = functools.partial(_fields, model=model, preset=preset, epochs=epochs, max_length=max_length,
                                       overrides=overrides or {})
            if tune is None:
                for seed in seeds:
                    data = prepare_data(spec, seed=seed, cache_dir=out_dir / "cache")
                    book.floor(data, seed)
                    for label in labels:
                        if book.has(data.name, label, seed):
                            continue
                        config = _config(fields(label, task), seed)
                        started = time.time()
                        result = _train_job(data, config, out_dir / task / label / f"seed{seed}")
                        book.add(_cell(result, label, seed, time.time() - started))
                        say(f"{data.name} {label} seed {seed}: test {result.primary_metric} {result.score:.4f}")
                        if on_result:
                            on_result(result)
                continue
            data = prepare_data(spec, seed=seeds[0], cache_dir=out_dir / "cache")
            book.floor(data, seeds[0])
            jobs = []
            for label in labels:
                todo = [s for s in seeds if not book.has(data.name, label, s)]
                if not todo:
                    continue
                config = _config(fields(label, task), seeds[0])
                first = book.get(data.name, label, seeds[0])
                if first is None:
                    first = _tuned_cell(data, config, label, tune, key, out_dir, pool, parallel, say)
                    book.add(first)
                for seed in todo:
                    if seed != seeds[0]:
                        cfg = trial_config(config, first["params"]).model_copy(update={"seed": seed})
                        folder = out_dir / task / label / f"seed{seed}"
                        jobs.append((label, seed, pool.submit(_train_job, data, cfg, folder, discard=True)))
            for label, seed, future in jobs:
                result = future.result()
                book.add(_cell(result, label, seed, result.seconds, params=book.get(data.name, label,
                                                                                     seeds[0])["params"]))
                say(f"{data.name} {label} seed {seed}: test {result.primary_metric} {result.score:.4f}")
                if on_result:
                    on_result(result)
    cells = book.cells()
    floors = book.floors()
    return {"cells": cells, "floors": floors, "table": summarize(cells, floors), "settings": settings}


# ---- one cell ------------------------------------------------------------------------------------
def _fields(label: str, task: str, *, model: str, preset: str | None, epochs, max_length,
            overrides) -> dict[str, Any]:
    method, edit = parse_method(label)
    fields: dict[str, Any] = {"model": model, "method": method, "preset": preset, "resume": False, "edit": edit}
    if preset and method not in _preset_methods(preset):
        # e.g. ReFT and head have no row in the paper's RoBERTa table: they borrow RED's row for the task (its
        # epochs, batch, length, schedule and rate), so every method of a table gets the same training budget
        fields["preset"] = None
        if "red" in _preset_methods(preset):
            fields.update(preset_values(preset, "red", task))
    fields.update({**overrides.get(method, {}), **overrides.get(label, {})})
    if epochs is not None:
        fields["epochs"] = epochs
    if max_length is not None:
        fields["max_length"] = max_length
    return fields


def _config(fields: dict[str, Any], seed: int):
    return TrainConfig(**fields, seed=seed)


def _train_job(data, config, folder: Path, discard: bool = False) -> TrainResult:
    """One plain training (a seed run); with ``discard`` only its records are kept on disk."""
    result = train(data, config, folder)
    if discard:
        discard_artifacts(folder)
    return result


def _trial_job(data, config, ref, run_key: str, cache_dir: str, number: int, params: dict[str, Any]):
    return run_trial(data, config, ref, number, params, run_key=run_key, cache_dir=cache_dir)


def _tuned_cell(data, config, label: str, tune, key: str, out_dir: Path, pool, parallel: int,
                say: Callable[[str], None]) -> dict[str, Any]:
    """Run (or resume) the label's study on the first seed; its best trial is that seed's cell."""
    tuned = config.model_copy(update={"tune": tune})
    hp = tuned.resolved(data.task or data.name)
    space = tune.space(hp, config.method)
    metric = data.metric
    identity = training_identity(data, tuned, cache_dir=out_dir / "cache" / "base").to_dict()
    identity.pop("code_version")  # a commit between a crash and its resume does not restart the study
    name = study_name(f"bench.{data.name}.{label}", {**identity, "settings": key})
    opened = open_study(storage_url(out_dir), name, tune, space, direction="maximize", metric=metric,
                        folder=out_dir / data.name / label / "tune", reuse_finished=True)
    try:
        enqueue_first(opened, [(v, f"first_trials[{i}]") for i, v in enumerate(tune.first_trials)]
                      + ([(tune.configured(hp, space), "the configured values")] if tune.start_at_config else []))
        for note in opened.notes:
            say(f"{data.name} {label}: {note}")
        job = functools.partial(_trial_job, data, config, opened.ref, f"bench-{label}",
                                str(out_dir / "cache" / "base"))

        def told(number: int, outcome) -> None:
            state = "failed" if isinstance(outcome, BaseException) else outcome.state
            value = getattr(outcome, "value", None)
            say(f"{data.name} {label} trial {number} {getattr(outcome, 'params', '')}: {state}"
                + (f" validation {value:.4f}" if value is not None else ""))

        run_study(opened, submit=pool.submit_trial(job), as_completed=pool.as_completed, outcome=pool.outcome,
                  parallel=parallel, on_told=told)
        best, result = best_result(opened)
        rows = trials_table(opened.study)
        for row in rows:
            output = opened.study.trials[row["number"]].user_attrs.get("output_dir")
            if output:
                discard_artifacts(output)
        opened.finish()
    finally:
        opened.close()
    cell = _cell(result, label, config.seed, sum(r["seconds"] or 0 for r in rows), params=dict(best.params))
    cell.update(trials=len([r for r in rows if not r["crashed"]]), trial=best.number, study=opened.study.study_name,
                trial_states={s: sum(1 for r in rows if r["state"] == s) for s in ("complete", "pruned", "fail")})
    return cell


def _cell(result: TrainResult, label: str, seed: int, seconds: float, params: dict | None = None) -> dict[str, Any]:
    return {"kind": "cell", "task": result.task, "method": label, "seed": seed, "metric": result.primary_metric,
            "test": result.score, "validation": result.validation.get(result.primary_metric),
            "best_epoch": result.best_epoch, "edit_parameters": result.edit_parameters,
            "trainable_parameters": result.trainable_parameters, "learned": result.learned,
            "params": params or {k: result.params.get(k) for k in ("learning_rate",)},
            "seconds": round(float(seconds), 1)}


class CellBook:
    """The cells of one benchmark setting in a JSONL file: appended as they finish, read back to resume."""

    def __init__(self, path: Path, key: str, settings: dict[str, Any]):
        self.path, self.key = path, key
        self._cells: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._floors: dict[str, dict[str, Any]] = {}
        seen_settings = False
        for row in read_jsonl(path):
            if row.get("settings") != key:
                continue
            if row.get("kind") == "floor":
                self._floors[row["task"]] = row
            elif row.get("kind") == "cell":
                self._cells[(row["task"], row["method"], int(row["seed"]))] = row
            elif row.get("kind") == "settings":
                seen_settings = True
        if not seen_settings:
            self._append({"kind": "settings", "command": settings})

    def _append(self, row: dict[str, Any]) -> None:
        row = {**row, "settings": self.key}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def has(self, task: str, method: str, seed: int) -> bool:
        return (task, method, seed) in self._cells

    def get(self, task: str, method: str, seed: int) -> dict[str, Any] | None:
        return self._cells.get((task, method, seed))

    def add(self, cell: dict[str, Any]) -> None:
        self._cells[(cell["task"], cell["method"], int(cell["seed"]))] = {**cell, "settings": self.key}
        self._append(cell)

    def floor(self, data, seed: int) -> None:
        """The majority-class floor of ``data``'s test half (answering the training majority), once per task."""
        if data.name in self._floors:
            return
        label = data.label_column
        scores = majority_scores(list(data.test[label]), metric_set(data.task, data.metric),
                                 predict=majority_label(data.train[label]), task_type=data.task_type)
        row = {"kind": "floor", "floor": "majority", "task": data.name, "metric": data.metric, "seed": seed,
               "test": (scores or {}).get(data.metric), "scores": scores}
        self._floors[data.name] = {**row, "settings": self.key}
        self._append(row)

    def cells(self) -> list[dict[str, Any]]:
        return list(self._cells.values())

    def floors(self) -> dict[str, dict[str, Any]]:
        return dict(self._floors)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a last line cut off by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- where trials and seed runs run -------------------------------------------------------------------
class _Pool:
    """A concurrent.futures executor and the three calls tasks.tuning.study.run_study needs around it."""

    def __init__(self, executor):
        self.executor = executor

    def submit(self, fn, *args, **kwargs):
        return self.executor.submit(fn, *args, **kwargs)

    def submit_trial(self, job):
        return lambda number, params: self.executor.submit(job, number, params)

    @staticmethod
    def as_completed(futures):
        return as_completed(futures)

    @staticmethod
    def outcome(future):
        error = future.exception()
        return error if error is not None else future.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.executor.shutdown(wait=True, cancel_futures=True)


def _worker_init(threads: int, verbosity: int) -> None:
    """A worker process: its share of the cores, and the parent's transformers verbosity (spawned processes
    start from the library defaults)."""
    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity(verbosity)


def _pool(parallel: int) -> _Pool:
    """One in-process thread for ``parallel`` 1; else ``parallel`` worker processes (own torch RNG and
    accelerate state each, the cores shared out between them)."""
    if parallel <= 1:
        return _Pool(ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench"))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return _Pool(ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init,
                                     initargs=(threads, transformers.utils.logging.get_verbosity())))


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
    return set(PRESETS.get(preset, {}))


# ---- the table ------------------------------------------------------------------------------------------
def summarize(cells: list[dict[str, Any]], floors: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Mean (and std) over seeds per method and task, the average over tasks, parameters per method; the
    head-only row and the majority-class floor apart; ``marks``: the tasks where a method's mean does not beat
    head-only's; ``below_majority``: those where it does not beat the majority class; ``did_not_learn``: those
    where no seed's training left the floor of its validation labels (``TrainResult.learned`` False)."""
    floors = floors or {}
    methods = list(dict.fromkeys(c["method"] for c in cells))
    tasks = list(dict.fromkeys([c["task"] for c in cells] + list(floors)))
    table: dict[str, Any] = {"tasks": tasks, "rows": [], "floors": {}, "marks": {}, "below_majority": {},
                             "did_not_learn": {}}
    rows = {}
    for m in methods:
        row: dict[str, Any] = {"method": m, "scores": {}, "std": {}, "seeds": {}}
        for t in tasks:
            vals = [c["test"] * 100 for c in cells if c["method"] == m and c["task"] == t]
            if vals:
                row["scores"][t] = statistics.fmean(vals)
                row["std"][t] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
                row["seeds"][t] = len(vals)
        row["average"] = statistics.fmean(row["scores"].values()) if row["scores"] else float("nan")
        table["did_not_learn"][m] = [t for t in tasks if all(
            c.get("learned") is False for c in cells if c["method"] == m and c["task"] == t) and t in row["scores"]]
        row["parameters"] = max(c["edit_parameters"] for c in cells if c["method"] == m)
        row["metrics"] = {t: next((c["metric"] for c in cells if c["task"] == t), floors.get(t, {}).get("metric"))
                          for t in tasks}
        rows[m] = row
    head = rows.pop(HEAD, None)
    table["rows"] = list(rows.values())
    if head is not None:
        table["floors"]["head only"] = head
        for r in table["rows"]:
            table["marks"][r["method"]] = [t for t in tasks if t in r["scores"] and t in head["scores"]
                                           and r["scores"][t] <= head["scores"][t]]
    if floors:
        scores = {t: f["test"] * 100 for t, f in floors.items() if f.get("test") is not None}
        table["floors"]["majority class"] = {"method": "majority class", "scores": scores, "std": {},
                                             "average": statistics.fmean(scores.values()) if scores else float("nan"),
                                             "parameters": 0, "metrics": {t: f["metric"] for t, f in floors.items()}}
        table["below_majority"] = {r["method"]: [t for t in tasks if t in r["scores"] and t in scores
                                                 and r["scores"][t] <= scores[t]] for r in table["rows"]}
    return table


def to_markdown(table: dict[str, Any]) -> str:
    """The paper's layout: one row per method, #params (excluding head), per-task score, average; then the
    floors. A score marked ``*`` does not beat head-only on that task, one marked ``†`` not the majority class,
    one marked ``‡`` did not learn (no seed's validation score left the floor: a baseline that silently fails)."""
    tasks = table["tasks"]
    every = table["rows"] + list(table.get("floors", {}).values())
    metric = {t: next((r["metrics"].get(t) for r in every if r["metrics"].get(t)), "") for t in tasks}
    head = "| method | #params | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | avg |"
    lines = [head, "|---|---:|" + "---:|" * (len(tasks) + 1)]
    marks, below, stuck = table.get("marks", {}), table.get("below_majority", {}), table.get("did_not_learn", {})
    for r in table["rows"]:
        lines.append(_line(r, tasks, marks.get(r["method"], []), below.get(r["method"], []),
                           stuck=stuck.get(r["method"], [])))
    for name, r in table.get("floors", {}).items():
        lines.append(_line({**r, "method": f"*{name} (floor)*"}, tasks, [], [], params=name != "majority class"))
    total = sum(len(r["scores"]) for r in table["rows"])
    legend = []
    if any(marks.values()):
        legend.append(f"`*` does not beat head-only on that task ({sum(len(v) for v in marks.values())} of {total} "
                      "cells)")
    if any(below.values()):
        legend.append(f"`†` does not beat the majority class ({sum(len(v) for v in below.values())} of {total})")
    if any(stuck.values()):
        legend.append(f"`‡` did not learn: no seed's validation score left the floor "
                      f"({sum(len(v) for v in stuck.values())} of {total})")
    return "\n".join(lines + (["", "; ".join(legend) + "."] if legend else []))


def _line(r: dict[str, Any], tasks: list[str], marked: list[str], below: list[str], params: bool = True,
          stuck: list[str] = ()) -> str:
    def cell(t: str) -> str:
        if t not in r["scores"]:
            return "–"
        std = r.get("std", {}).get(t)
        text = f"{r['scores'][t]:.1f}" + (f" ± {std:.1f}" if std is not None else "")
        return text + (" *" if t in marked else "") + (" †" if t in below else "") + (" ‡" if t in stuck else "")

    count = _params(r["parameters"]) if params else "–"
    return f"| {r['method']} | {count} | " + " | ".join(cell(t) for t in tasks) + f" | {r['average']:.1f} |"


def _params(n: int) -> str:
    return "0" if n == 0 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
