"""Inference cost of RED on MiniLM: base vs attached vs merged, and an EditBank of K tasks vs one task.

    python bench/inference.py --batch 32 --seq 128 --steps 20 --warmup 3 --tasks 8 \
        --methods base,attached,merged,bank1,bankK,addcmul --out results/inference.json [--markdown]

Every variant is a forward pass (eval mode, torch.no_grad) of the same batch through its own copy of the
same base weights; all variants are timed round-robin in one run (see bench/common.py).

  base      the plain model.
  attached  red.load_edit(base, edit_0): the edit applied by forward hooks (one addcmul per edited layer).
  merged    the same edit folded into the weights with .merge() (the hooks stay registered but return early).
  bank1     red.EditBank(base, [edit_0]), every row task 0.
  bankK     red.EditBank(base, [edit_0 .. edit_{K-1}]), rows assigned round-robin to the K tasks (a mixed batch).
  addcmul   not a model: only the elementwise op RED adds, addcmul(b, h, s) on a (batch, seq, hidden) tensor,
            once per edited layer -- the floor of the attached overhead.

Edit files are made by attaching RED to a copy of the base, perturbing the vectors and the classifier
randomly (scale 1 + 0.1 N(0,1), bias 0.1 N(0,1)) and saving with edited.save(path).
Before timing, the logits of attached, merged and bank1 are checked against each other (and bankK's rows
against single-task runs) so the benchmark cannot silently time a broken path.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# bench.common first: it sets the offline environment (HF_HUB_OFFLINE...) that transformers reads on import
from bench import common  # noqa: E402

import red  # noqa: E402

ALL = ("base", "attached", "merged", "bank1", "bankK", "addcmul")


@torch.no_grad()
def make_edit_files(device: torch.device, k: int, out_dir: Path) -> list[Path]:
    paths = []
    for i in range(k):
        edited = red.attach(common.load_minilm(device), red.EditConfig())
        g = torch.Generator().manual_seed(1000 + i)
        for edit in edited.edits.values():
            edit.scale.copy_(1 + 0.1 * torch.randn(edit.scale.shape, generator=g))
            edit.bias.copy_(0.1 * torch.randn(edit.bias.shape, generator=g))
        for p in edited.head_parameters().values():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.device))
        paths.append(edited.save(out_dir / f"task{i}.safetensors", base_model=common.MINILM,
                                 extra={"benchmark": "random edit"}))
        edited.detach()
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed forward passes per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=8, help="K, the number of tasks in the mixed batch")
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the available cores)")
    ap.add_argument("--edits-dir", default=None, help="where to write the random edit files (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write all raw times and summaries as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="measure nothing: re-analyse and print a results JSON written by --out")
    return ap.parse_args(argv)


def chosen_methods(text: str) -> list[str]:
    """``--methods a,b``: the variants to time, in order (``SystemExit`` naming an unknown one)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(methods) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(ALL)}")
    return methods


@contextlib.contextmanager
def edits_folder(path: str | None) -> Iterator[Path]:
    """``--edits-dir`` when given (kept), else a temporary folder removed afterwards."""
    if path:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def load_variants(methods: list[str], device: torch.device, paths: list[Path], k: int) -> dict[str, torch.nn.Module]:
    """Each model variant asked for (the ``addcmul`` op is not a model), on its own copy of the base weights."""
    models: dict[str, torch.nn.Module] = {}
    if "base" in methods:
        models["base"] = common.load_minilm(device).eval()
    if "attached" in methods:
        models["attached"] = red.load_edit(common.load_minilm(device), paths[0]).eval()
    if "merged" in methods:
        models["merged"] = red.load_edit(common.load_minilm(device), paths[0]).merge().eval()
    if "bank1" in methods:
        models["bank1"] = red.EditBank(common.load_minilm(device), [paths[0]]).eval()
    if "bankK" in methods:
        models["bankK"] = red.EditBank(common.load_minilm(device), paths[:k]).eval()
    return models


def addcmul_op(device: torch.device, batch: int, seq: int) -> tuple[int, Callable[[], None]]:
    """The number of layers RED edits, and a function doing only RED's elementwise op, ``addcmul(b, h, s)`` on a
    random (batch, seq, hidden) tensor, once per edited layer."""
    n_layers = len(red.attach(common.load_minilm(device)).targets)
    hidden = common.load_minilm(device).config.hidden_size
    h = torch.randn(batch, seq, hidden, device=device)
    s = torch.randn(hidden, device=device)
    b = torch.randn(hidden, device=device)

    def run_addcmul():
        for _ in range(n_layers):
            torch.addcmul(b, h, s)
    return n_layers, run_addcmul


def measure(args: argparse.Namespace, methods: list[str], device: torch.device, paths: list[Path]) -> dict:
    """Load the variants, check that they agree, then time them round-robin: ``edited_layers``, ``checks`` and
    ``methods`` ({name: {"times_s": [...], "cpu_times_s": [...]}}, one entry per timed pass)."""
    k = args.tasks
    batch = common.make_batch(args.batch, args.seq, device)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    ids_mixed = torch.arange(args.batch) % k
    task_ids = {"bank1": torch.zeros(args.batch, dtype=torch.long), "bankK": ids_mixed}
    models = load_variants(methods, device, paths, k)
    n_layers, run_addcmul = addcmul_op(device, args.batch, args.seq)

    def forward(name):
        if name in task_ids:
            return models[name](**inputs, task_ids=task_ids[name]).logits
        return models[name](**inputs).logits

    checks = consistency(models, forward, inputs, ids_mixed, paths, k, device)
    passes = {n: run_addcmul if n == "addcmul" else functools.partial(forward, n) for n in methods}
    with torch.no_grad():
        times, cpu_times = common.interleaved(passes, args.steps, args.warmup, device)
    return {"edited_layers": n_layers, "checks": checks,
            "methods": {n: {"times_s": times[n], "cpu_times_s": cpu_times[n]} for n in methods}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    saved = common.render_saved(args, analyze, render)
    if saved is not None:
        return saved
    device = common.setup(args.device, args.threads)
    methods = chosen_methods(args.methods)
    env = common.environment(device)
    print(f"# {common.command_line()}", file=sys.stderr)
    print(f"# {env}", file=sys.stderr)
    with edits_folder(args.edits_dir) as edits_dir:
        paths = make_edit_files(device, max(args.tasks, 1), edits_dir)
        measured = measure(args, methods, device, paths)
        result = {"benchmark": "inference", "command": common.command_line(), "args": vars(args), "env": env,
                  **measured}
        analyze(result)
        print(render(result, args.markdown))
        common.write_json(args.out, result)
    return result


def analyze(result: dict) -> dict:
    """Summaries, paired ratios and target verdicts from the raw per-pass times (re-runnable on a JSON file)."""
    res = result["methods"]
    batch, k = result["args"]["batch"], result["args"]["tasks"]
    for name, e in res.items():
        e["time_s"] = t = common.summary(e["times_s"])
        e["rows_per_s"] = batch / t["median"]
        e["tokens_per_s"] = batch * result["args"]["seq"] / t["median"]
        if e.get("cpu_times_s"):
            e["cpu_time_s"] = common.summary(e["cpu_times_s"])
        for ref in ("base", "bank1"):
            if ref in res and ref != name:
                e[f"ratio_vs_{ref}"] = common.ratio_summary(e["times_s"], res[ref]["times_s"])
                if e.get("cpu_times_s") and res[ref].get("cpu_times_s"):
                    e[f"cpu_ratio_vs_{ref}"] = common.ratio_summary(e["cpu_times_s"], res[ref]["cpu_times_s"])
    targets = result["targets"] = {}
    for name, limit in (("merged", 1.01), ("attached", 1.05)):
        if "ratio_vs_base" in res.get(name, {}):
            targets[f"{name}_time_vs_base<={limit}"] = common.time_target(
                res[name]["ratio_vs_base"], limit, res[name].get("cpu_ratio_vs_base"))
    if "ratio_vs_bank1" in res.get("bankK", {}):
        # throughput ratio = bank1 time / bankK time, per repetition
        one, mixed = res["bank1"], res["bankK"]
        q = common.ratio_summary(one["times_s"], mixed["times_s"])
        cpu = (common.ratio_summary(one["cpu_times_s"], mixed["cpu_times_s"])
               if one.get("cpu_times_s") and mixed.get("cpu_times_s") else None)
        targets[f"bank{k}_throughput_vs_bank1>=0.9"] = common.time_target(q, 0.9, cpu, direction=">=")
    return result


@torch.no_grad()
def consistency(models, forward, inputs, ids_mixed, paths, k, device) -> dict:
    """Max |logit difference| between paths that must agree."""
    out = {n: forward(n).float() for n in models}
    checks = {}
    if "attached" in out and "merged" in out:
        checks["attached_vs_merged"] = (out["attached"] - out["merged"]).abs().max().item()
    if "attached" in out and "bank1" in out:
        checks["attached_vs_bank1"] = (out["attached"] - out["bank1"]).abs().max().item()
    if "bankK" in out:
        worst = 0.0
        for task in range(min(k, 2)):  # two tasks are enough to catch a routing error
            single = red.load_edit(common.load_minilm(device), paths[task]).eval()
            rows = (ids_mixed == task).nonzero(as_tuple=True)[0]
            ref = single(**{kk: v[rows] for kk, v in inputs.items()}).logits.float()
            worst = max(worst, (out["bankK"][rows.to(out["bankK"].device)] - ref).abs().max().item())
            single.detach()
        checks["bankK_rows_vs_single_task"] = worst
    for name, v in checks.items():
        if not v < 1e-3:
            raise SystemExit(f"consistency check failed: {name} max |diff| = {v}")
    return checks


def render(result: dict, markdown: bool) -> str:
    headers = ["variant", "forward median (ms)", "IQR (ms)", "min–max (ms)", "rows/s",
               "vs base (paired median [IQR])", "vs bank1 (paired median [IQR])"]
    rows = []
    for name, e in result["methods"].items():
        t = e["time_s"]
        cells = []
        for ref in ("base", "bank1"):
            q = e.get(f"ratio_vs_{ref}")
            cells.append("1" if name == ref else (f"{q['median']:.3f} [{q['p25']:.3f}–{q['p75']:.3f}]" if q else "—"))
        label = name if name != "bankK" else f"bank{result['args']['tasks']} (mixed)"
        ms = {key: 1000 * v for key, v in t.items() if isinstance(v, float)}
        rows.append([label, f"{ms['median']:.1f}", f"{ms['p25']:.1f}–{ms['p75']:.1f}", f"{ms['min']:.1f}–{ms['max']:.1f}",
                     f"{e['rows_per_s']:.1f}" if name != "addcmul" else "—", *cells])
    out = [common.table(headers, rows, markdown)]
    if result["targets"]:
        out += ["", common.targets_table(result["targets"], markdown)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
