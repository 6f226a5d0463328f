"""How long will `redflow bench glue --tune` take here? Measure, then estimate.

Measures the optimizer-step time of ``tasks.training.train`` on real GLUE rows (each task's own text
lengths, dynamic padding) for every method, one torch thread per training (as ``--parallel`` gives
each worker on a 2-core machine), plus the time to score the validation and test halves; then
estimates a benchmark budget from those numbers:

    runs per (task, method) = trials (on the first seed) + seeds - 1
    one run = epochs x (steps per epoch x step time + validation pass) + test pass + model load
    wall time = the sum over every run / parallel        (parallel <= cores, a machine otherwise idle)

Pruned trials stop early, so the estimate is an upper bound for that part. Reports both the CPU time
of each step (what an idle machine would take) and the wall time seen while measuring.

    python bench/glue_budget.py --glue-dir ../shared/data/glue --steps 6 --out bench/results/glue/budget.json
    python bench/glue_budget.py --render bench/results/glue/budget.json --trials 2 --epochs 1 --seeds 2 \\
        --rows sst2=10000 --parallel 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from tasks.data import DataSpec, prepare_data  # noqa: E402
from tasks.training import TrainConfig, train  # noqa: E402
from tasks.training.model_names import resolve_model  # noqa: E402

METHODS = ("red", "lora", "bitfit", "full", "loreft", "head")
TASKS = ("sst2", "mrpc", "rte")


class StepClock(TrainerCallback):
    """Times every optimizer step: ``wall`` and ``cpu`` hold one duration in seconds per step, in order."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, *args, **kwargs):
        self._w, self._c = time.perf_counter(), time.process_time()

    def on_step_end(self, *args, **kwargs):
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)


def measure(glue_dir: str, tasks: list[str], methods: list[str], model: str, steps: int, batch: int,
            max_length: int, work: Path) -> dict:
    torch.set_num_threads(1)
    out: dict = {"tasks": {}, "env": {"python": platform.python_version(), "torch": torch.__version__,
                                      "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                                      "model": model, "batch": batch, "max_length": max_length, "steps": steps}}
    path = resolve_model(model)
    for task in tasks:
        full = prepare_data(DataSpec(name=task, source="glue", path=glue_dir, task=task), seed=42,
                            cache_dir=work / "cache")
        data = prepare_data(DataSpec(name=task, source="glue", path=glue_dir, task=task,
                                     max_train_samples=batch * (steps + 1)), seed=42, cache_dir=work / "cache")
        entry = {"train_rows": len(full.train), "validation_rows": len(full.validation), "test_rows": len(full.test),
                 "methods": {}}
        for method in methods:
            clock = StepClock()
            started, cpu0 = time.perf_counter(), time.process_time()
            config = TrainConfig(model=path, method=method, max_steps=steps + 1, batch_size=batch,
                                 max_length=max_length, learning_rate=1e-3, logging_steps=1000, resume=False)
            result = train(data, config, work / task / method, callbacks=[clock])
            total_wall, total_cpu = time.perf_counter() - started, time.process_time() - cpu0
            step_wall, step_cpu = statistics.median(clock.wall[1:]), statistics.median(clock.cpu[1:])
            train_cpu = sum(clock.cpu)
            # the rest of train(): load, one validation pass during training, one more after, one test pass
            rest_cpu = total_cpu - train_cpu
            entry["methods"][method] = {"step_wall_s": step_wall, "step_cpu_s": step_cpu, "total_wall_s": total_wall,
                                        "total_cpu_s": total_cpu, "overhead_cpu_s": rest_cpu,
                                        "edit_parameters": result.edit_parameters}
            print(f"{task} {method}: step {step_cpu:.3f} s CPU ({step_wall:.3f} s wall), rest of the run "
                  f"{rest_cpu:.1f} s CPU", flush=True)
        out["tasks"][task] = entry
    return out


def estimate(measured: dict, *, rows: dict[str, int], epochs: float, trials: int, seeds: int, parallel: int,
             batch: int | None = None, clock: str = "cpu") -> dict:
    """Seconds per (task, method) and in all, from a :func:`measure` result (see the module doc)."""
    batch = batch or measured["env"]["batch"]
    key = "step_cpu_s" if clock == "cpu" else "step_wall_s"
    runs = trials + seeds - 1
    table, total = {}, 0.0
    for task, entry in measured["tasks"].items():
        n = min(rows.get(task, entry["train_rows"]), entry["train_rows"])
        steps = math.ceil(n / batch) * epochs
        for method, m in entry["methods"].items():
            # overhead_cpu_s held 2 validation passes + 1 test pass + the load; a run of E epochs has E + 1
            # validation passes (one per epoch and the best epoch's again) and one test pass
            overhead = m["overhead_cpu_s"] * (epochs + 2) / 3
            seconds = runs * (steps * m[key] + overhead)
            table[f"{task}/{method}"] = {"steps_per_run": steps, "runs": runs, "seconds": round(seconds)}
            total += seconds
    return {"per_cell": table, "cpu_seconds": round(total), "wall_seconds": round(total / max(1, parallel)),
            "wall_hours": round(total / max(1, parallel) / 3600, 2),
            "budget": {"rows": rows, "epochs": epochs, "trials": trials, "seeds": seeds, "parallel": parallel,
                       "batch": batch, "clock": clock}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default="../shared/data/glue")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method and task (after one warm-up)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--work-dir", default="runs/glue-budget")
    parser.add_argument("--out", help="write the measurement (and the estimate) as JSON")
    parser.add_argument("--render", help="measure nothing: estimate from this JSON")
    parser.add_argument("--rows", default="sst2=10000", help="training rows per task (default: the full split)")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    if args.render:
        measured = json.loads(Path(args.render).read_text())
    else:
        measured = measure(args.glue_dir, args.tasks.split(","), args.methods.split(","), args.model, args.steps,
                           args.batch, args.max_length, Path(args.work_dir))
    rows = {k: int(v) for k, _, v in (item.partition("=") for item in args.rows.split(",") if item)}
    result = estimate(measured, rows=rows, epochs=args.epochs, trials=args.trials, seeds=args.seeds,
                      parallel=args.parallel, clock=args.clock)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**measured, "estimate": result}, indent=1))
    print("| task | method | step (s, CPU) | steps per run | runs | minutes |")
    print("|---|---|---:|---:|---:|---:|")
    for cell, e in result["per_cell"].items():
        task, method = cell.split("/")
        step = measured["tasks"][task]["methods"][method]["step_cpu_s"]
        print(f"| {task} | {method} | {step:.2f} | {e['steps_per_run']:.0f} | {e['runs']} | {e['seconds'] / 60:.1f} |")
    print(f"\nestimated: {result['cpu_seconds'] / 3600:.2f} h of one core; {result['wall_hours']:.2f} h wall with "
          f"--parallel {args.parallel} ({json.dumps(result['budget'])})")


if __name__ == "__main__":
    main()
