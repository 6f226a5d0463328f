"""Training step time and peak memory on MiniLM: RED vs LoRA vs full fine-tuning vs the backprop floor.

    python bench/step_time.py --batch 32 --seq 128 --steps 20 --warmup 3 \
        --methods red,lora,full,floor,floor_emb,red_ops [--rss] --out results.json [--markdown]
    python bench/step_time.py --render results.json --markdown     # re-analyse saved raw times

One training step = zero_grad + forward (with labels) + backward + optimizer step (AdamW).

Methods (all in train mode, same batch, same base weights):
  red        red.attach(model): scale+bias vectors on every layer's FFN output (encoder.layer.N.output.dense),
             base frozen, classifier head trained.
  lora       PEFT LoRA r=8, alpha=8 on query/value, classifier in modules_to_save (trained).
  full       every parameter trained.
  floor      backprop floor at RED's first edit point: frozen model, no parameter trained; a forward hook on
             encoder.layer.0.output.dense makes that output require grad, so backward runs through every layer
             above it (and nothing below), with no parameter gradients and no optimizer step.
  floor_emb  the floor as "gradients required only at the input embeddings": frozen model,
             model.enable_input_require_grads() (hook on the word-embedding output), so backward also runs through
             all of layer 0 and the embedding LayerNorm.
  red_ops    not a model: just the ops RED adds to `floor` (addcmul forward+backward per edited layer, AdamW on
             the vectors), i.e. the expected RED - floor gap.

Timing: all methods are built up front and timed round-robin (see bench/common.py); medians of the
timed steps, per-step paired ratios (wall and process CPU time) and their 95% CIs are reported.

Peak memory (one extra, untimed step per method after the timing loop):
  cuda: torch.cuda.max_memory_allocated() over the step (reset just before), includes everything live.
  cpu:  the torch profiler with profile_memory=True records every CPU allocator allocation and free during
        the step with a running "Total Allocated" counter (bytes allocated since profiling started and not yet
        freed); its maximum is the step's transient peak (activations, gradients, temporaries, and on the
        first step the optimizer state). Tensors live before the step (parameters, buffers, optimizer state;
        gradients are set to None first) are added from their sizes: peak = static + step peak. These are
        tensor bytes requested from the allocator, not process RSS.
  --rss (cpu, cross-check): each method alone in a fresh subprocess; peak RSS (VmHWM, reset after the model is
        built) minus RSS before the first step, over --rss-steps steps.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

# bench.common first: it sets the offline environment (HF_HUB_OFFLINE...) that transformers reads on import
from bench import common  # noqa: E402

import red  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

ALL_METHODS = ("red", "lora", "full", "floor", "floor_emb", "red_ops", "loreft_r4", "loreft_r8", "floor_block")
MB = 2**20


class Method:
    """A model plus what one training step needs."""

    def __init__(self, name: str, model: torch.nn.Module, params: list[torch.nn.Parameter], note: str):
        self.name = name
        self.model = model
        self.params = params
        self.note = note
        self.optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        self.zero_grad()
        out = self.model(**batch)
        out.loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        return out.loss.detach()

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)


class RedOps(Method):
    """Not a model: only the work RED adds to the floor -- addcmul(b, h, s) forward and backward (grads for
    h, s and b) on a (batch, seq, hidden) tensor, once per edited layer. Its time is the expected RED-floor gap."""

    def __init__(self, batch: int, seq: int, hidden: int, layers: int, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.h = torch.randn(batch, seq, hidden, generator=g).to(device).requires_grad_(True)
        self.grad_out = torch.randn(batch, seq, hidden, generator=g).to(device)
        scale = [torch.nn.Parameter(torch.ones(hidden, device=device)) for _ in range(layers)]
        bias = [torch.nn.Parameter(torch.zeros(hidden, device=device)) for _ in range(layers)]
        self.pairs = list(zip(scale, bias))
        super().__init__("red_ops", torch.nn.Module(), scale + bias,
                         f"addcmul fwd+bwd x{layers} on ({batch}, {seq}, {hidden}) + AdamW on the vectors")

    def step(self, batch):
        self.zero_grad()
        self.h.grad = None
        outs = [torch.addcmul(b, self.h, s) for s, b in self.pairs]
        torch.autograd.backward(outs, [self.grad_out] * len(outs))
        self.optimizer.step()
        return None


def _require_grad_hook(module, args, output):
    return output.requires_grad_(True)


def build(name: str, device: torch.device, lora_dropout: float, batch: int = 0, seq: int = 0) -> Method:
    model = common.load_minilm(device)
    if name == "red_ops":
        layers = len(red.attach(model).targets)
        return RedOps(batch, seq, model.config.hidden_size, layers, device)
    model.train()
    if name == "red":
        edited = red.attach(model, red.EditConfig())
        edited.train()
        params = edited.edit_parameters() + list(edited.head_parameters().values())
        return Method(name, edited, params, f"RED scale+bias on {len(edited.targets)} FFN outputs + classifier")
    if name.startswith("loreft_r"):
        rank = int(name.rsplit("_r", 1)[1])
        edited = red.attach(model, red.EditConfig(method="loreft", rank=rank, positions="f7+l7"))
        edited.train()
        params = edited.edit_parameters() + list(edited.head_parameters().values())
        return Method(name, edited, params, f"LoReFT rank {rank}, f7+l7, on {len(edited.targets)} block outputs + classifier")
    if name == "lora":
        cfg = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=lora_dropout,
                         target_modules=["query", "value"], modules_to_save=["classifier"])
        peft_model = get_peft_model(model, cfg)
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        return Method(name, peft_model, params, f"LoRA r=8 q,v (dropout {lora_dropout}) + classifier")
    if name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return Method(name, model, list(model.parameters()), "all parameters")
    if name in ("floor", "floor_emb", "floor_block"):
        for p in model.parameters():
            p.requires_grad_(False)
        if name == "floor_block":  # ReFT's first edit point: layer 0's block output (the residual stream)
            model.get_submodule("bert.encoder.layer.0").register_forward_hook(_require_grad_hook)
            note = "frozen; grad required at layer 0's block output (ReFT's first edit point)"
        elif name == "floor":
            model.get_submodule("bert.encoder.layer.0.output.dense").register_forward_hook(_require_grad_hook)
            note = "frozen; grad required at layer 0 FFN output (RED's first edit point)"
        else:
            model.enable_input_require_grads()
            note = "frozen; grad required at the input (word) embeddings"
        return Method(name, model, [], note)
    raise SystemExit(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")


# ---- memory --------------------------------------------------------------------------------
def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def static_bytes(method: Method) -> int:
    tensors = list(method.model.parameters()) + list(method.model.buffers())
    if method.optimizer is not None:
        for state in method.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return _tensor_bytes(tensors)


def peak_memory(method: Method, batch: dict[str, torch.Tensor], device: torch.device) -> dict:
    method.zero_grad()
    gc.collect()
    static = static_bytes(method)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        method.step(batch)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"static_mb": static / MB, "step_peak_mb": (peak - before) / MB, "peak_mb": peak / MB,
                "how": "torch.cuda.max_memory_allocated (everything allocated on the GPU)"}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        method.step(batch)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = [e["args"] for e in sorted(events, key=lambda e: e.get("ts", 0))
           if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    # The allocator's counter is process-wide and survives profiling sessions: take it relative to its
    # value just before the step's first allocation.
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"] if mem else 0
    step_peak = max(a["Total Allocated"] for a in mem) - start if mem else 0
    return {"static_mb": static / MB, "step_peak_mb": step_peak / MB, "peak_mb": (static + step_peak) / MB,
            "how": "torch.profiler(profile_memory=True) max 'Total Allocated' + static tensor bytes"}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(args) -> None:
    """One method in this fresh process: RSS before the first step and the peak RSS (VmHWM) over the steps.

    The peak is reset just before the steps (``echo 5 > /proc/self/clear_refs``), so the model-loading peak
    does not count. Linux only.
    """
    device = common.setup(args.device, args.threads)
    batch = common.make_batch(args.batch, args.seq, device)
    method = build(args.methods, device, args.lora_dropout)
    common._BASE_CACHE.clear()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS") * 1024
    for _ in range(max(1, args.steps)):
        method.step(batch)
    peak = _status_kb("VmHWM") * 1024
    print(json.dumps({"rss_before_mb": before / MB, "peak_rss_mb": peak / MB, "step_rss_mb": (peak - before) / MB}))


def rss_per_method(methods: list[str], args) -> dict:
    """Peak-RSS growth of the training steps, each method in a fresh subprocess (a cross-check of the profiler)."""
    out = {}
    for name in methods:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", "--methods", name,
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.rss_steps), "--warmup", "0",
               "--device", args.device, "--lora-dropout", str(args.lora_dropout)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[rss] {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


# ---- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    ap.add_argument("--methods", default="red,lora,full,floor,floor_emb,red_ops")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the available cores)")
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    ap.add_argument("--rss", action="store_true",
                    help="also measure peak-RSS growth of --rss-steps steps per method, each in a fresh subprocess (CPU)")
    ap.add_argument("--rss-steps", type=int, default=3)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="write all raw times and summaries as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="measure nothing: re-analyse and print a results JSON written by --out")
    args = ap.parse_args(argv)

    if args.rss_child:
        rss_child(args)
        return {}
    saved = common.render_saved(args, analyze, render)
    if saved is not None:
        return saved
    device = common.setup(args.device, args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    env = common.environment(device)
    print(f"# {common.command_line()}", file=sys.stderr)
    print(f"# {env}", file=sys.stderr)

    batch = common.make_batch(args.batch, args.seq, device)
    built = {name: build(name, device, args.lora_dropout, args.batch, args.seq) for name in methods}
    fns = {name: (lambda m=m: m.step(batch)) for name, m in built.items()}
    times, cpu_times = common.interleaved(fns, args.steps, args.warmup, device)

    memory = {}
    if not args.no_memory:
        for name, m in built.items():
            if name == "red_ops":
                continue
            for other in built.values():  # nothing of another method's step stays allocated
                other.zero_grad()
            memory[name] = peak_memory(m, batch, device)

    rss = rss_per_method([m for m in methods if m != "red_ops"], args) if args.rss and device.type == "cpu" else {}

    result = {"benchmark": "step_time", "command": common.command_line(), "args": vars(args), "env": env,
              "methods": {}}
    for name, m in built.items():
        entry = {"note": m.note, "trainable_parameters": m.trainable, "times_s": times[name],
                 "cpu_times_s": cpu_times[name]}
        if name in memory:
            entry["memory"] = memory[name]
        if name in rss:
            entry["rss"] = rss[name]
        result["methods"][name] = entry
    analyze(result)
    print(render(result, args.markdown))
    common.write_json(args.out, result)
    return result


def analyze(result: dict) -> dict:
    """Summaries, paired ratios and target verdicts from the raw per-step times (re-runnable on a JSON file)."""
    res = result["methods"]
    for name, e in res.items():
        e["time_s"] = common.summary(e["times_s"])
        if e.get("cpu_times_s"):
            e["cpu_time_s"] = common.summary(e["cpu_times_s"])
        for ref in ("lora", "floor", "floor_emb"):
            if ref in res and ref != name:
                e[f"ratio_vs_{ref}"] = common.ratio_summary(e["times_s"], res[ref]["times_s"])
                if e.get("cpu_times_s") and res[ref].get("cpu_times_s"):
                    e[f"cpu_ratio_vs_{ref}"] = common.ratio_summary(e["cpu_times_s"], res[ref]["cpu_times_s"])
    targets = result["targets"] = {}
    if "red" in res:
        r = res["red"]
        for ref, limit in (("lora", 0.95), ("floor", 1.05)):
            if f"ratio_vs_{ref}" in r:
                targets[f"red_time_vs_{ref}<={limit}"] = common.time_target(
                    r[f"ratio_vs_{ref}"], limit, r.get(f"cpu_ratio_vs_{ref}"))
        if "memory" in r and "memory" in res.get("lora", {}):
            v = r["memory"]["peak_mb"] / res["lora"]["memory"]["peak_mb"]
            targets["red_peak_memory_vs_lora<=1.0"] = {"value": v, "limit": 1.0, "verdict": common.verdict(v, 1.0)}
        if "rss" in r and "rss" in res.get("lora", {}):
            v = r["rss"]["step_rss_mb"] / res["lora"]["rss"]["step_rss_mb"]
            targets["red_rss_growth_vs_lora<=1.0 (cross-check)"] = {"value": v, "limit": 1.0,
                                                                    "verdict": common.verdict(v, 1.0)}
    return result


def _ratio_cell(entry: dict, ref: str) -> str:
    q = entry.get(f"ratio_vs_{ref}")
    return "—" if q is None else f"{q['median']:.3f} [{q['p25']:.3f}–{q['p75']:.3f}]"


def render(result: dict, markdown: bool) -> str:
    headers = ["method", "trainable params", "step time median (s)", "IQR (s)", "min–max (s)",
               "vs lora (paired median [IQR])", "vs floor", "vs floor_emb", "peak mem (MiB)", "step peak (MiB)",
               "RSS growth (MiB)"]
    rows = []
    for name, e in result["methods"].items():
        t = e["time_s"]
        mem = e.get("memory", {})
        rows.append([
            name, f"{e['trainable_parameters']:,}", f"{t['median']:.3f}", f"{t['p25']:.3f}–{t['p75']:.3f}",
            f"{t['min']:.3f}–{t['max']:.3f}",
            *[("1" if name == ref else _ratio_cell(e, ref)) for ref in ("lora", "floor", "floor_emb")],
            f"{mem['peak_mb']:.0f}" if mem else "—", f"{mem['step_peak_mb']:.0f}" if mem else "—",
            f"{e['rss']['step_rss_mb']:.0f}" if "rss" in e else "—",
        ])
    out = [common.table(headers, rows, markdown)]
    if result["targets"]:
        out += ["", common.targets_table(result["targets"], markdown)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
