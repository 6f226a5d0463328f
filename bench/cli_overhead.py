"""CPU cost of ``redflow versions`` against a bare MLflow client script doing the same query on the same store.

Issue 27 sets the bound: a registry read command costs at most 1.1x the CPU of a bare
``MlflowClient().search_model_versions`` script. Both run as fresh processes (what a person or a cron job
runs), so the cost is mostly imports; each process's user+system CPU is read from ``os.wait4``'s rusage,
so the other load of a shared machine does not count (wall time is reported too). The two commands are run
alternately, ``--reps`` times each, after one unmeasured warm-up of each (the page cache), and the medians
and the median of the per-pair ratios are reported.

The store is a fresh SQLite store under a temporary folder with one registered model of ``--versions``
versions carrying redflow's version tags (made with the plain MLflow client: no training needed).

    python bench/cli_overhead.py [--reps 7] [--versions 3] [--json bench/results/cli_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "red-bench"

BARE = """import sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
for mv in client.search_model_versions(f"name='{sys.argv[2]}'"):
    print(mv.version, mv.aliases, sorted(mv.tags))
"""


def make_store(folder: Path, versions: int) -> str:
    """A SQLite store with ``MODEL`` at ``versions`` versions (redflow's tags), production on v1; its URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = f"""
from mlflow import MlflowClient
c = MlflowClient(tracking_uri={uri!r}, registry_uri={uri!r})
c.create_registered_model({MODEL!r})
exp = c.create_experiment("bench", artifact_location={str(folder / 'mlartifacts')!r})
for i in range({versions}):
    run = c.create_run(exp).info.run_id
    tags = {{"method": "red", "primary_metric": "accuracy", "metric.test_accuracy": str(0.8 + i / 100),
            "metric.validation_accuracy": "0.79", "redflow.gate.decision": "promoted" if i == 0 else "kept out",
            "redflow.gate.reason": "bench", "task": "bench"}}
    c.create_model_version({MODEL!r}, f"runs:/{{run}}/edit", run_id=run, tags=tags)
c.set_registered_model_alias({MODEL!r}, "production", "1")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return uri


def run_child(argv: list[str], env: dict) -> tuple[float, float]:
    """(CPU, wall) of one fresh process, CPU from the kernel's rusage of that child alone; raises if it fails."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {code}: {errors.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for var in ("MLFLOW_TRACKING_URI", "REDFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        uri = make_store(Path(tmp), args.versions)
        commands = {"bare": [sys.executable, "-c", BARE, uri, MODEL],
                    "redflow versions": [sys.executable, "-m", "flows.cli", "versions", MODEL, "--tracking-uri", uri]}
        for argv in commands.values():  # warm-up: page cache, .pyc files
            run_child(argv, env)
        cpu: dict[str, list[float]] = {k: [] for k in commands}
        wall: dict[str, list[float]] = {k: [] for k in commands}
        for rep in range(args.reps):
            order = list(commands) if rep % 2 == 0 else list(reversed(commands))
            for name in order:
                c, w = run_child(commands[name], env)
                cpu[name].append(c)
                wall[name].append(w)
    ratios = [r / b for r, b in zip(cpu["redflow versions"], cpu["bare"])]
    result = {
        "python": sys.version.split()[0], "reps": args.reps, "versions": args.versions,
        "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "wall_s_median": {k: round(statistics.median(v), 3) for k, v in wall.items()},
        "cpu_ratio_median": round(statistics.median(ratios), 3),
        "cpu_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
