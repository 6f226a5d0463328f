"""What an unchanged night costs as the number of tasks grows (issue 21, item 4).

For each N in ``--tasks`` the benchmark has a retrain config of N tasks, run by ``redflow retrain CONFIG`` once
(night 1: every task trains, registers and is gated) and then again with nothing changed (night 2: every task
must come out ``unchanged`` and nothing is registered), each night a fresh process, the way a scheduler runs it.
Night 1 runs once, for the largest N: the smaller configs are its first N tasks under the same config name, runs
folder and store, so that night is their night 1 too. The unchanged nights of all N's are run round-robin,
``--reps`` rounds, so a busy phase of a shared machine hits every N alike. It reports their wall time and CPU
(user+system of the process and its children, from ``os.wait4``), fits ``wall = a + b*N`` over the N's' medians
by least squares and states the goal: ``b <= 0.5`` s per task (``a`` is the fixed start-up: imports, the
temporary Prefect server, the store). The nights import a copy of the code taken at the start, so that editing
the checkout meanwhile does not change the training identity (and retrain).

To make night 1 of a hundred tasks affordable on a laptop the tasks are tiny: a random 2-layer BERT (hidden 32)
saved with MiniLM's tokenizer (as ``tests/conftest.py`` ``tiny_checkpoints``), one epoch over a few rows of one
synthetic dataset that every task shares (generated once, cached), evaluated on its test split only. Night 2
is what is measured; night 1's time is reported for context.

``--profile`` also records the largest N's unchanged night with ``py-spy`` (every thread and child process, idle
samples included so that waits show) into ``<work>/night2.pyspy.txt`` (collapsed stacks, one per line with its
sample count).

``--reuse`` measures the unchanged nights again on an earlier run's ``--work`` folder (its night 1 kept), with the
checkout's ``flows/`` and ``registry/`` (outside the training identity: nothing retrains), to measure a change of
the planning code without training every task again.

    python bench/nightly.py --tasks 3,30,100 --profile --work /tmp/nightly --json bench/results/nightly.json
    python bench/nightly.py --tasks 3,30,100 --work /tmp/nightly --reuse --json bench/results/nightly.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from bench.common import command_line, minilm_path, write_json

ROOT = Path(__file__).resolve().parents[1]

GOAL_S_PER_TASK = 0.5
CONFIG_NAME = "nightly-bench"


def tiny_bert(folder: Path) -> Path:
    """A random 2-layer BERT classifier (hidden 32) with MiniLM's real tokenizer, saved once under ``folder``."""
    target = folder / "tiny-bert"
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=37,
                                                     max_position_embeddings=128))
    tmp = folder / f".tiny-bert.{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(target)
    return target


def write_config(path: Path, n: int, base: Path, data: Path, rows: int, workers: int) -> Path:
    """A retrain config of ``n`` tasks (``t000``...) on one shared synthetic dataset: one epoch, test split only.
    Every N's config has the same name, runs folder and store: the first N tasks of the largest."""
    runs = path.parent / "runs"
    tasks = [{"name": f"t{i:03d}", "data": {"source": "synthetic", "task": "sentiment", "path": str(data),
                                             "synthetic": {"n_train": rows, "n_dev": max(8, rows // 2)}},
              "evaluate": ["test"]} for i in range(n)]
    config = {"name": CONFIG_NAME, "base_model": str(base), "runs_dir": str(runs), "experiment": "nightly-bench",
              "tracking_uri": f"sqlite:///{runs}/mlflow.db", "max_workers": workers,
              "defaults": {"method": "red", "epochs": 1, "batch_size": 16, "max_length": 32, "learning_rate": 1e-2,
                           "logging_steps": 1},
              "promotion": {"margin": 0.0, "minimum": 0.0}, "tasks": tasks}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


CODE = ("red", "tasks", "flows", "registry", "bench")
OUTSIDE_IDENTITY = ("flows", "registry", "bench")  # outside CODE_MODULES: changing them retrains nothing


def code_snapshot(work: Path, packages: tuple[str, ...] = CODE) -> Path:
    """A copy of the project's ``packages`` under ``work``, which the nights import: an edit of the checkout while
    the benchmark runs (code in ``CODE_MODULES``) would change the training identity and retrain every task."""
    target = work / "code"
    for package in packages:
        if (target / package).exists():
            shutil.rmtree(target / package)
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    return target


def child_env(code: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    for var in ("MLFLOW_TRACKING_URI", "REDFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(var, None)  # the config's own SQLite store and a temporary Prefect server, as on a fresh machine
    return env


def run_night(config: Path, code: Path, log: Path, profile: Path | None = None) -> dict[str, float]:
    """One ``redflow retrain CONFIG`` as a fresh process: its wall time and the CPU of it and its children."""
    argv = [sys.executable, "-m", "flows.cli", "retrain", str(config)]
    if profile is not None:
        argv = [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--idle", "--threads",
                "--subprocesses", "--rate", "50", "-o", str(profile), "--", *argv]
    load = os.getloadavg()
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(code), cwd=code)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code_}; its output: {log}\n{log.read_text()[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "loadavg_1m_before": round(load[0], 2)}


def store_versions(work: Path) -> int:
    """How many model versions the store holds (an unchanged night registers none)."""
    db = work / "runs" / "mlflow.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from model_versions").fetchone()[0]


def unchanged_count(log: Path) -> int:
    """Tasks the night's summary table reports ``unchanged``."""
    return sum(1 for line in log.read_text().splitlines() if line.lstrip().startswith("t") and " unchanged " in line)


def fit(points: list[tuple[int, float]]) -> dict[str, float]:
    """Least squares ``y = a + b*n`` over ``points``."""
    ns, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(ns)) < 2:
        return {"a": round(ys[0], 2), "b": float("nan")}
    mn, my = statistics.fmean(ns), statistics.fmean(ys)
    b = sum((n - mn) * (y - my) for n, y in points) / sum((n - mn) ** 2 for n in ns)
    return {"a": round(my - b * mn, 2), "b": round(b, 3)}


def measure(ns: list[int], work: Path, rows: int, workers: int, reps: int, profile: bool,
            reuse: bool = False) -> dict:
    """Night 1 of the largest config, then ``reps`` rounds of every config's unchanged night (round-robin).

    ``reuse``: ``work`` holds that night 1 already (from an earlier run with the same ``--tasks``): only the
    modules outside the training identity (:data:`OUTSIDE_IDENTITY`: the flows, the registry) are copied again from
    the checkout, so a change of the planning code is measured without retraining every task."""
    if reuse and not (store_versions(work) == ns[-1] and (work / "night1.json").is_file()):
        raise SystemExit(f"--reuse: {work} holds no finished night 1 of {ns[-1]} tasks (night1.json and "
                         f"{ns[-1]} versions in runs/mlflow.db). Fix: run once without --reuse")
    code = code_snapshot(work, OUTSIDE_IDENTITY if reuse else CODE)
    base = tiny_bert(work)
    data = work / "data" / "sentiment"  # one dataset for every task: generated once
    configs = {n: write_config(work / f"nightly-{n}.yaml", n, base, data, rows, workers) for n in ns}
    largest = configs[ns[-1]]
    if reuse:
        night1 = json.loads((work / "night1.json").read_text())
    else:
        print(f"night 1 of {ns[-1]} tasks ...", file=sys.stderr, flush=True)
        night1 = run_night(largest, code, work / "night1.log")
        if store_versions(work) != ns[-1]:
            raise RuntimeError(f"night 1 of {ns[-1]} tasks registered {store_versions(work)} versions; see "
                               f"{work / 'night1.log'}")
        (work / "night1.json").write_text(json.dumps(night1))
    nights: dict[int, list[dict]] = {n: [] for n in ns}
    for rep in range(reps):
        for n in ns:
            print(f"unchanged night of {n} tasks ({rep + 1}/{reps}) ...", file=sys.stderr, flush=True)
            log = work / f"night2-n{n}-{rep + 1}.log"
            nights[n].append(run_night(configs[n], code, log))
            unchanged = unchanged_count(log)
            if unchanged != n or store_versions(work) != ns[-1]:
                raise RuntimeError(f"the unchanged night of {n} tasks: {unchanged} reported unchanged, "
                                   f"{store_versions(work)} versions in the store (expected {ns[-1]}); see {log}")
    points = [{"tasks": n, "night2": nights[n],
               "night2_wall_s_median": round(statistics.median(r["wall_s"] for r in nights[n]), 2),
               "night2_cpu_s_median": round(statistics.median(r["cpu_s"] for r in nights[n]), 2)} for n in ns]
    out = {"night1": {"tasks": ns[-1], **night1}, "points": points}
    if profile:
        print(f"unchanged night of {ns[-1]} tasks under py-spy ...", file=sys.stderr, flush=True)
        out["profiled"] = run_night(largest, code, work / "night2-profiled.log", profile=work / "night2.pyspy.txt")
    return out


def render(result: dict) -> str:
    night1 = result["night1"]
    lines = [f"Night 1 ({night1['tasks']} tasks, every one trained and registered): {night1['wall_s']:.0f} s wall, "
             f"{night1['cpu_s']:.0f} s CPU.", "",
             "| N tasks | unchanged night, wall (each run) | CPU (each run) | load average, 1 min (each run) |",
             "|---:|---:|---:|---:|"]
    for e in result["points"]:
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in e["night2"])
        cpus = ", ".join(f"{r['cpu_s']:.1f}" for r in e["night2"])
        loads = ", ".join(f"{r['loadavg_1m_before']:.1f}" for r in e["night2"])
        lines.append(f"| {e['tasks']} | {walls} s | {cpus} s | {loads} |")
    w, c = result["fit"]["wall_s"], result["fit"]["cpu_s"]
    lines.append("")
    lines.append(f"Fit over the medians: wall = {w['a']} s + {w['b']} s x N; CPU = {c['a']} s + {c['b']} s x N "
                 f"(goal: b <= {GOAL_S_PER_TASK} s per task: {'met' if result['goal_met'] else 'NOT met'}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="3,30,100", help="Comma-separated N's (tasks per config).")
    parser.add_argument("--rows", type=int, default=32, help="Training rows of the shared synthetic dataset.")
    parser.add_argument("--workers", type=int, default=2, help="The config's max_workers (tasks at once).")
    parser.add_argument("--reps", type=int, default=2, help="Unchanged nights measured per N.")
    parser.add_argument("--work", type=Path, default=None, help="Where configs, stores and logs go (kept); "
                                                                  "default: a temporary folder, removed.")
    parser.add_argument("--reuse", action="store_true", help="--work holds night 1 already: measure the unchanged "
                        "nights again with the checkout's flows/ and registry/ (outside the training identity).")
    parser.add_argument("--profile", action="store_true", help="Record the largest N's unchanged night with py-spy.")
    parser.add_argument("--json", default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    try:
        ns = sorted({int(x) for x in args.tasks.split(",") if x.strip()})
    except ValueError:
        ns = []
    if not ns or min(ns) < 1:
        parser.error(f"--tasks {args.tasks!r}: give task counts >= 1, e.g. 3,30,100")
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work, the folder of an earlier run")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="redflow-nightly-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        measured = measure(ns, work, args.rows, args.workers, args.reps, args.profile, args.reuse)
    finally:
        if tmp is not None:
            tmp.cleanup()
    points = measured["points"]
    walls = fit([(e["tasks"], e["night2_wall_s_median"]) for e in points])
    cpus = fit([(e["tasks"], e["night2_cpu_s_median"]) for e in points])
    result = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "python": sys.version.split()[0], "cpu_cores": len(os.sched_getaffinity(0)),
              "rows": args.rows, "workers": args.workers, "reused_night1": args.reuse, **measured,
              "fit": {"wall_s": walls, "cpu_s": cpus}, "goal_s_per_task": GOAL_S_PER_TASK,
              "goal_met": bool(walls["b"] <= GOAL_S_PER_TASK)}
    print(render(result))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
