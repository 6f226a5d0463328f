"""Co-training K tasks on one MiniLM vs training them one after another: peak memory, wall time, quality.

    python bench/cotrain.py --tasks 8 --seeds 1,2 --threads 1 --out results.json --markdown
    python bench/cotrain.py --render results.json --markdown      # re-analyse a saved run

Tasks: the demo's synthetic generators (sentiment, topic, paraphrase) at different generator seeds and training
sizes (``--sizes``, cycled), each with ``--n-dev`` dev rows halved into validation and test; MiniLM, RED, the
demo preset (batch 16, 3 epochs, max length 64, learning rate 2e-2; topic 5e-3 as in configs/demo.yaml).

Scenarios, each in a fresh Python process (so each has its own peak RSS):

  one          the first task trained alone (tasks.training.train): the memory reference.
  alone:S      the K tasks trained one after another in one process, training seed S (what a retrain with
               max_workers: 1 does).
  cotrain:S    the K tasks co-trained (tasks.training.co_train, default settings: shares proportional to size,
               stratified; rows per forward pass = the tasks' batch size; rows per optimizer step = the sum of their
               batch sizes; each step's rows sorted by length before they are cut into forward passes), seed S.
  cotrain_task:S  (with --task-order) the same with micro_batches="task": each task's rows of a step kept
               together instead of sorted by length.
  parallel     the K tasks trained at once by K trainers in K threads of one process (what a retrain with
               max_workers: K does), each stopped after --parallel-steps steps: the K-copies memory figure.

Wall time: from the first model load to the last edit saved (data preparation excluded; it is the same for both).
Both settings see the same rows: per epoch every task's rows once (co-training: rows drawn in proportion to size
over ceil(sum n_k / sum b_k) steps), in the same number of forward passes of at most one batch. The alone and
cotrain runs alternate (alone:1, cotrain:1, alone:2, cotrain:2) so a slow phase of the shared machine hits both.

Peak memory: VmHWM of the scenario's process (Linux), and its growth over the process's RSS just before the first
model load (imports and prepared data: the same for every scenario).

Quality: each task's test accuracy alone and co-trained, for every seed. A task is "within the seed-to-seed
spread" when |mean co-trained - mean alone| <= the spread of the alone scores over the seeds (max - min), with a
floor of one test row (1 / test rows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("REDFLOW_PROGRESS", "0")

from bench import common  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate.data_loader import SeedableRandomSampler  # noqa: E402

from red.pretrained import load_tokenizer  # noqa: E402
from tasks.data import DataSpec, encode, prepare_data  # noqa: E402
from tasks.training import CoTask, CoTrainConfig, TrainConfig, co_train, train  # noqa: E402
from tasks.training.mixing import Mixing  # noqa: E402

GENERATORS = ("sentiment", "topic", "paraphrase")
MB = 2**20


# ---- one scenario (child process) -------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def task_specs(args) -> list[dict]:
    sizes = [int(s) for s in args.sizes.split(",")]
    specs = []
    for i in range(args.tasks):
        generator = GENERATORS[i % len(GENERATORS)]
        specs.append({"name": f"{generator}{i}", "task": generator, "n_train": sizes[i % len(sizes)],
                      "n_dev": args.n_dev, "data_seed": 100 + i,
                      "learning_rate": 5e-3 if generator == "topic" else 2e-2})
    return specs


def prepare(args, work: Path) -> list:
    out = []
    for spec in task_specs(args):
        data = DataSpec(name=spec["name"], source="synthetic", task=spec["task"], path=work / "data" / spec["name"],
                        synthetic={"n_train": spec["n_train"], "n_dev": spec["n_dev"], "seed": spec["data_seed"]})
        out.append((spec, prepare_data(data, seed=42, cache_dir=work / "cache")))
    return out


def config(args, spec: dict, seed: int, **extra):
    return TrainConfig(model=common.minilm_path(), method="red", preset="demo", learning_rate=spec["learning_rate"],
                       epochs=args.epochs, seed=seed, logging_steps=5, **extra)


def run_scenario(scenario: str, args, work: Path) -> dict:
    """Run one scenario in this process; returns timings, memory and per-task scores."""
    torch.set_num_threads(args.threads or common.available_cores())
    transformers.logging.set_verbosity_error()
    tasks = prepare(args, work)
    out_root = Path(tempfile.mkdtemp(prefix=f"{scenario.replace(':', '-')}-", dir=work))
    kind, _, seed_text = scenario.split("@")[0].partition(":")
    seed = int(seed_text or 1)
    rss_before = _status_mb("VmRSS")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cpu_started = time.process_time()
    results: dict = {}
    if kind == "one":
        spec, data = tasks[0]
        results[spec["name"]] = train(data, config(args, spec, seed), out_root / spec["name"])
    elif kind == "alone":
        for spec, data in tasks:
            results[spec["name"]] = train(data, config(args, spec, seed), out_root / spec["name"])
    elif kind in ("cotrain", "cotrain_task"):
        members = [CoTask(data, config(args, spec, seed), out_root / spec["name"]) for spec, data in tasks]
        results = co_train(members, CoTrainConfig(micro_batches="task" if kind == "cotrain_task" else "length"),
                           out_root)
    elif kind == "parallel":
        errors: list[BaseException] = []

        def one(spec, data):
            try:
                results[spec["name"]] = train(data, config(args, spec, seed, max_steps=args.parallel_steps),
                                              out_root / spec["name"])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=t) for t in tasks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    failed = {n: f"{type(r).__name__}: {r}" for n, r in results.items() if isinstance(r, BaseException)}
    if failed:
        raise RuntimeError(f"{scenario}: tasks failed: {failed}")
    return {
        "scenario": scenario, "seed": seed, "wall_s": wall, "cpu_s": cpu, "loadavg_at_start": load,
        "rss_before_mb": rss_before, "peak_rss_mb": _status_mb("VmHWM"),
        "tasks": {n: {"test_accuracy": r.test.get("accuracy"), "validation_accuracy": r.validation.get("accuracy"),
                      "best_epoch": r.best_epoch, "optimizer_steps": r.global_step, "seconds": r.seconds}
                  for n, r in results.items()},
        "sizes": {spec["name"]: {"train": len(data.train), "test": len(data.test)} for spec, data in tasks},
    }


def padded_tokens(args, work: Path, seed: int) -> dict[str, int]:
    """Token positions the training forward passes compute (rows x the longest row of their batch), per setting,
    from the same schedules the trainers use (the Trainer's epoch orders; tasks.training.mixing), and the unpadded
    count."""
    tokenizer = load_tokenizer(common.minilm_path())
    lengths = [[len(x) for x in encode(data, tokenizer, max_length=64).train["input_ids"]]
               for _, data in prepare(args, work)]
    batch, epochs = 16, int(args.epochs)
    counts = {"unpadded": epochs * sum(sum(x) for x in lengths), "alone": 0}
    for rows in lengths:
        for epoch in range(epochs):
            sampler = SeedableRandomSampler(range(len(rows)), data_seed=seed)
            sampler.set_epoch(epoch)
            order = list(sampler)
            for i in range(0, len(order), batch):
                chunk = [rows[j] for j in order[i:i + batch]]
                counts["alone"] += max(chunk) * len(chunk)
    for name, order in (("cotrain", "length"), ("cotrain_task", "task")):
        mixing = Mixing([len(x) for x in lengths], rows_per_step=batch * len(lengths), micro_batch=batch,
                        seeds=[seed] * len(lengths), order=order, lengths=lengths)
        counts[name] = sum(max(lengths[k][i] for k, i in b) * len(b)
                           for epoch in range(epochs) for b in mixing.epoch_batches(epoch))
    return counts


def child(args) -> None:
    result = run_scenario(args.child, args, Path(args.work))
    print("RESULT " + json.dumps(result))


def run_child(scenario: str, args, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", scenario, "--work", str(work),
           "--tasks", str(args.tasks), "--sizes", args.sizes, "--n-dev", str(args.n_dev), "--epochs", str(args.epochs),
           "--parallel-steps", str(args.parallel_steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scenario {scenario} failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    print(f"[{scenario}] {time.time() - started:.0f}s in all: train wall {result['wall_s']:.1f}s, peak RSS "
          f"{result['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
    return result


# ---- analysis ------------------------------------------------------------------------------------------
def analyze(result: dict) -> dict:
    runs = {r["scenario"]: r for r in result["runs"]}
    seeds = result["seeds"]
    one = runs["one"]
    analysis: dict = {"memory": {}, "time": {}, "quality": {}}

    def growth(r):
        return r["peak_rss_mb"] - r["rss_before_mb"]

    for name in sorted(runs, key=lambda n: (n != "one", n == "parallel", n)):
        if name in runs:
            r = runs[name]
            analysis["memory"][name] = {"peak_rss_mb": r["peak_rss_mb"], "growth_mb": growth(r),
                                        "peak_vs_one": r["peak_rss_mb"] / one["peak_rss_mb"],
                                        "growth_vs_one": growth(r) / growth(one)}
    def rounds(name):
        return [r for key, r in runs.items() if key.split("@")[0] == name]

    def total(name, field):
        return sum(r[field] for r in rounds(name))

    for s in seeds:
        a, c = f"alone:{s}", f"cotrain:{s}"
        row = {"alone_s": total(a, "wall_s"), "cotrain_s": total(c, "wall_s"), "rounds": len(rounds(a)),
               "ratio": total(c, "wall_s") / total(a, "wall_s"), "alone_cpu_s": total(a, "cpu_s"),
               "cotrain_cpu_s": total(c, "cpu_s"), "cpu_ratio": total(c, "cpu_s") / total(a, "cpu_s"),
               "per_round": [[x["wall_s"], y["wall_s"]] for x, y in zip(rounds(a), rounds(c))],
               "load": [r.get("loadavg_at_start") for r in rounds(a) + rounds(c)]}
        if rounds(f"cotrain_task:{s}"):
            row.update(cotrain_task_s=total(f"cotrain_task:{s}", "wall_s"),
                       task_ratio=total(f"cotrain_task:{s}", "wall_s") / total(a, "wall_s"))
        tokens = result.get("padded_tokens", {}).get(str(s))
        if tokens:
            row["tokens"] = tokens
        analysis["time"][str(s)] = row
    sizes = runs[f"alone:{seeds[0]}"]["sizes"]
    within = 0
    for task in runs[f"alone:{seeds[0]}"]["tasks"]:
        alone = [runs[f"alone:{s}"]["tasks"][task]["test_accuracy"] for s in seeds]
        co = [runs[f"cotrain:{s}"]["tasks"][task]["test_accuracy"] for s in seeds]
        spread = max(max(alone) - min(alone), 1.0 / sizes[task]["test"])
        diff = statistics.mean(co) - statistics.mean(alone)
        ok = abs(diff) <= spread + 1e-12
        within += ok
        analysis["quality"][task] = {"alone": alone, "cotrain": co, "difference": diff, "spread": spread,
                                     "within": ok, "train_rows": sizes[task]["train"], "test_rows": sizes[task]["test"]}
    cos = [runs[f"cotrain:{s}"] for s in seeds]
    repeats = [(name, r) for name, r in runs.items() if "@" in name]
    analysis["repeat_runs_identical_scores"] = all(
        r["tasks"] == {k: {**v, "seconds": r["tasks"][k]["seconds"]} for k, v in runs[name.split("@")[0]]["tasks"].items()}
        for name, r in repeats) if repeats else None
    analysis["targets"] = {
        "cotrain_peak_rss_vs_one<=1.2": max(runs[f"cotrain:{s}"]["peak_rss_mb"] for s in seeds) / one["peak_rss_mb"],
        "cotrain_rss_growth_vs_one": max(growth(c) for c in cos) / growth(one),
        "cotrain_wall_vs_sequential<=1.0": max(analysis["time"][str(s)]["ratio"] for s in seeds),
        "cotrain_cpu_time_vs_sequential": max(analysis["time"][str(s)]["cpu_ratio"] for s in seeds),
        "tasks_within_seed_spread": f"{within}/{len(analysis['quality'])}",
    }
    if "parallel" in runs:
        analysis["targets"]["parallel_peak_rss_vs_one"] = runs["parallel"]["peak_rss_mb"] / one["peak_rss_mb"]
    result["analysis"] = analysis
    return result


def render(result: dict, markdown: bool) -> str:
    a = result["analysis"]
    seeds = result["seeds"]
    lines = []
    rows = [[name, f"{m['peak_rss_mb']:.0f}", f"{m['growth_mb']:.0f}", f"{m['peak_vs_one']:.2f}",
             f"{m['growth_vs_one']:.2f}"] for name, m in a["memory"].items()]
    lines.append(common.table(["scenario", "peak RSS (MiB)", "growth over imports+data (MiB)", "peak vs one",
                               "growth vs one"], rows, markdown))
    lines.append("")
    def tokens(t, key):
        return f"{t['tokens'][key]:,}" if "tokens" in t else "—"

    def load(t):
        return ", ".join("—" if x is None else f"{x:.1f}" for x in t.get("load", []))

    rows = [[s, f"{t['alone_s']:.1f} ({t.get('alone_cpu_s', float('nan')):.1f})",
             f"{t['cotrain_s']:.1f} ({t.get('cotrain_cpu_s', float('nan')):.1f})", f"{t['ratio']:.3f}",
             f"{t['cpu_ratio']:.3f}", load(t),
             f"{t['cotrain_task_s']:.1f} ({t['task_ratio']:.3f})" if "cotrain_task_s" in t else "—",
             f"{tokens(t, 'alone')} / {tokens(t, 'cotrain')} / {tokens(t, 'cotrain_task')} / {tokens(t, 'unpadded')}"]
            for s, t in a["time"].items()]
    lines.append(common.table(["seed", f"{result['tasks']} tasks one after another: wall (CPU) s, all rounds",
                               "co-trained: wall (CPU) s, all rounds", "wall ratio", "CPU-time ratio", "load avg at start",
                               "co-trained, task order (s, ratio)",
                               "tokens computed: alone / co-trained / task order / unpadded"], rows, markdown))
    lines.append("")
    rows = []
    for task, q in a["quality"].items():
        rows.append([task, str(q["train_rows"]), " / ".join(f"{x:.3f}" for x in q["alone"]),
                     " / ".join(f"{x:.3f}" for x in q["cotrain"]), f"{q['difference']:+.3f}", f"{q['spread']:.3f}",
                     "yes" if q["within"] else "**no**"])
    lines.append(common.table(["task", "train rows", f"alone (seeds {', '.join(map(str, seeds))})", "co-trained",
                               "mean difference", "alone spread", "within"], rows, markdown))
    lines.append("")
    lines.append(common.table(["target", "value"], [[k, v if isinstance(v, str) else f"{v:.3f}"]
                                                   for k, v in a["targets"].items()], markdown))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--sizes", default="96,128,160,192", help="training rows per task, cycled over the tasks")
    ap.add_argument("--n-dev", type=int, default=200, help="dev rows per task (halved into validation and test)")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--seeds", default="1,2", help="training seeds (head init, row order)")
    ap.add_argument("--parallel-steps", type=int, default=3, help="steps per trainer in the parallel scenario")
    ap.add_argument("--no-parallel", action="store_true", help="skip the K-trainers-at-once memory scenario")
    ap.add_argument("--task-order", action="store_true", help="also co-train with micro_batches=task")
    ap.add_argument("--rounds", type=int, default=1, help="timed runs of each setting per seed (ABBA order); quality "
                    "and memory from the first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the available cores)")
    ap.add_argument("--in-process", action="store_true", help="run the scenarios in this process (smoke tests: "
                    "memory figures are then not per scenario)")
    ap.add_argument("--work", default=None, help="folder for data and outputs (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--render", metavar="JSON", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return None
    saved = common.render_saved(args, analyze, render)
    if saved is not None:
        return saved
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-cotrain-"))
    environment = common.environment(common.setup("cpu", args.threads))
    prepare(args, work)  # once, so no scenario pays for it
    scenarios = ["one"]
    for s in seeds:  # rounds in ABBA order (alone, co-trained, co-trained, alone, ...): a drifting load cancels
        pair = [f"alone:{s}", f"cotrain:{s}"] + ([f"cotrain_task:{s}"] if args.task_order else [])
        for r in range(args.rounds):
            scenarios += [f"{x}@{r + 1}" if r else x for x in (pair if r % 2 == 0 else pair[::-1])]
    if not args.no_parallel:
        scenarios.append("parallel")
    started = time.time()
    runs = [run_scenario(s, args, work) if args.in_process else run_child(s, args, work) for s in scenarios]
    result = {"command": common.command_line(), "environment": environment,
              "tasks": args.tasks, "seeds": seeds, "settings": vars(args), "tasks_spec": task_specs(args),
              "runs": runs, "padded_tokens": {str(s): padded_tokens(args, work, s) for s in seeds},
              "seconds": time.time() - started}
    result = analyze(result)
    print(render(result, args.markdown))
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
