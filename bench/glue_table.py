"""The GLUE tables of docs/results.md, from the cells `redflow bench glue` writes (JSONL).

    python bench/glue_table.py runs/bench-glue/cells.jsonl     # one table per benchmark setting in the file,
                                                               # with the head-only and majority-class floors
    python bench/glue_table.py --legacy                        # the first, untuned tables (bench/results/glue/)

Run from the repo root. A cell marked `*` does not beat head-only on that task.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.glue_bench import read_jsonl, summarize, to_markdown  # noqa: E402

LEGACY = Path("bench/results/glue")



def _model_label(model: str) -> str:
    """A hub name as is; a local folder by its name (the packaged MiniLM's folder is ``.../<package>/model``)."""
    path = Path(str(model))
    if not path.is_absolute() and len(path.parts) <= 2:
        return str(model)
    return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name

def render(path: Path) -> str:
    """Every benchmark setting found in ``path``: its command, trial budget and table."""
    rows = read_jsonl(path)
    out = []
    for key in dict.fromkeys(r.get("settings") for r in rows):
        group = [r for r in rows if r.get("settings") == key]
        cells = [r for r in group if r.get("kind", "cell") == "cell"]
        if not cells:
            continue
        floors = {r["task"]: r for r in group if r.get("kind") == "floor"}
        command = next((r["command"] for r in group if r.get("kind") == "settings"), {})
        tune = command.get("tune")
        trials = [c for c in cells if c.get("trials")]
        out.append(f"Setting `{key}`: model {_model_label(command.get('model', '?'))}, epochs "
                   f"{command.get('epochs')}, max train rows {command.get('max_train_samples')}, "
                   + (f"tuned ({tune['trials']} trials, {tune['sampler']} sampler, {tune['pruner']} pruner; "
                      f"{sum(c['trials'] for c in trials)} trials run)" if tune else "not tuned")
                   + f", {sum(c.get('seconds') or 0 for c in cells) / 60:.0f} min of training.\n")
        out.append(to_markdown(summarize(cells, floors)))
        if tune:
            out.append("\nLearning rates chosen on validation (first seed's study):\n")
            out.append("| method | " + " | ".join(dict.fromkeys(c["task"] for c in cells)) + " |")
            out.append("|---|" + "---:|" * len(dict.fromkeys(c["task"] for c in cells)))
            for m in dict.fromkeys(c["method"] for c in cells):
                rates = [next((f"{c['params'].get('learning_rate', float('nan')):.2g}" for c in cells
                               if c["method"] == m and c["task"] == t), "–")
                         for t in dict.fromkeys(c["task"] for c in cells)]
                out.append(f"| {m} | " + " | ".join(rates) + " |")
        out.append("")
    return "\n".join(out)


def legacy() -> str:
    """The tables of the first results: run 1 plus a second rate for LoRA and RED, each rate as its own row,
    then the rate chosen on validation per method and task."""
    def cells(name: str, rename: str | None = None) -> list[dict]:
        found = read_jsonl(LEGACY / name)
        for c in found:
            if rename:
                c["method"] = rename
        return found

    label = {"red": "red (lr 2e-2)", "lora": "lora (lr 1e-3)", "bitfit": "bitfit (lr 2e-3)", "full": "full (lr 5e-5)",
             "loreft": "loreft r4 (lr 1e-2)"}
    run1 = cells("run1_cells.jsonl")
    for c in run1:
        c["method"] = label[c["method"]]
    every = run1 + cells("lora_lr5e-3_cells.jsonl", "lora (lr 5e-3)") + cells("red_lr5e-2_cells.jsonl",
                                                                               "red (lr 5e-2)")
    family = lambda m: m.split(" ")[0]  # noqa: E731
    best = []
    for f in dict.fromkeys(family(c["method"]) for c in every):
        for t in dict.fromkeys(c["task"] for c in every):
            options: dict[str, list[dict]] = {}
            for c in every:
                if family(c["method"]) == f and c["task"] == t:
                    options.setdefault(c["method"], []).append(c)
            pick = max(options, key=lambda m: statistics.fmean(x["validation"] for x in options[m]))
            best += [{**c, "method": f} for c in options[pick]]
    return to_markdown(summarize(every)) + "\n\n" + to_markdown(summarize(best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", type=Path, help="cells.jsonl files written by `redflow bench glue`")
    parser.add_argument("--legacy", action="store_true", help="the first, untuned tables")
    parser.add_argument("--json", action="store_true", help="print summarize()'s JSON instead of Markdown")
    args = parser.parse_args()
    if args.legacy or not args.cells:
        print(legacy())
    for path in args.cells:
        if args.json:
            rows = read_jsonl(path)
            print(json.dumps(summarize([r for r in rows if r.get("kind", "cell") == "cell"],
                                       {r["task"]: r for r in rows if r.get("kind") == "floor"}), indent=1))
        else:
            print(render(path))


if __name__ == "__main__":
    main()
