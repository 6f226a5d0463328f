"""The GLUE tables of docs/results.md from the recorded cells (run 1 + LoRA lr 5e-3 + RED lr 5e-2).

Run from the repo root: python bench/glue_table.py
"""
import json, statistics
from pathlib import Path
from tasks.glue_bench import summarize, to_markdown
root = Path("bench/results/glue")
def cells(d, rename=None):
    out = []
    p = root / d
    for line in p.read_text().splitlines() if p.exists() else []:
        c = json.loads(line)
        if rename: c["method"] = rename
        out.append(c)
    return out
run1 = cells("run1_cells.jsonl")
label = {"red": "red (lr 2e-2)", "lora": "lora (lr 1e-3)", "bitfit": "bitfit (lr 2e-3)", "full": "full (lr 5e-5)", "loreft": "loreft r4 (lr 1e-2)"}
for c in run1: c["method"] = label[c["method"]]
allc = run1 + cells("lora_lr5e-3_cells.jsonl", "lora (lr 5e-3)") + cells("red_lr5e-2_cells.jsonl", "red (lr 5e-2)")
print(to_markdown(summarize(allc)))
# lr chosen on validation per method family and task, mean over seeds
fam = lambda m: m.split(" ")[0]
best = []
for f in dict.fromkeys(fam(c["method"]) for c in allc):
    for t in dict.fromkeys(c["task"] for c in allc):
        opts = {}
        for c in allc:
            if fam(c["method"]) == f and c["task"] == t:
                opts.setdefault(c["method"], []).append(c)
        pick = max(opts, key=lambda m: statistics.fmean(x["validation"] for x in opts[m]))
        for c in opts[pick]:
            best.append({**c, "method": f})
print()
print(to_markdown(summarize(best)))
