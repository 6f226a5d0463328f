"""``redflow diff``: two versions' edits compared per layer (red/compare.py), where their predictions disagree
(registry/edit_diff.py, through the gate's scoring path), the CLI table and JSON, and the plot and table a night
logs on a new version's run against production."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from conftest import synthetic_task, tiny_model, write_retrain_config

import red
from flows.cli import app
from red.compare import compare_edits
from red.errors import EditConfigError, EditMismatchError
from registry.aliases import PromotionPolicy, gate_and_promote
from registry.edit_diff import DIFF_PLOT, DIFF_TABLE, EditDiffError, diff_versions, log_production_diff
from registry.models import register_edit
from registry.tracking import log_training, setup_tracking
from test_registry import LABELS, _one_thread, edits, fresh_runs_dir, make_result  # noqa: F401 (fixtures)


def _edit(path: Path, seed: int, *, model=None, scale: float = 0.2, **config) -> Path:
    """A RED (or ReFT, ``method=...``) edit on a tiny BERT, its vectors set from ``seed``."""
    edited = red.attach(model or tiny_model("bert"), **config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in edited.edits.named_parameters():
            p.copy_((1.0 if n.endswith("scale") else 0.0) + torch.randn(p.shape, generator=g) * scale)
    return edited.save(path, base_model="tiny-bert")


def test_red_layers_norms_and_cosine_of_the_edit_vectors(tmp_path):
    a, b = _edit(tmp_path / "a.safetensors", 1), _edit(tmp_path / "b.safetensors", 2)
    ta, meta = red.read_edit(a)
    tb, _ = red.read_edit(b)
    diffs = compare_edits(a, b)
    assert [d.layer for d in diffs] == list(meta["targets"]) and len(diffs) == 2
    for d in diffs:
        s_a, s_b = ta[f"edit.{d.layer}.scale"].double(), tb[f"edit.{d.layer}.scale"].double()
        b_a, b_b = ta[f"edit.{d.layer}.bias"].double(), tb[f"edit.{d.layer}.bias"].double()
        assert d.scale_l2 == pytest.approx(float((s_b - s_a).norm())) and d.scale_l2 > 0
        assert d.scale_max == pytest.approx(float((s_b - s_a).abs().max()))
        assert d.bias_l2 == pytest.approx(float((b_b - b_a).norm()))
        assert d.bias_max == pytest.approx(float((b_b - b_a).abs().max()))
        assert d.l2 == pytest.approx(float(torch.cat([b_b - b_a, s_b - s_a]).norm()))
        va, vb = torch.cat([s_a - 1, b_a]), torch.cat([s_b - 1, b_b])  # the edit vectors: what each adds
        assert d.cosine == pytest.approx(float(va @ vb / (va.norm() * vb.norm())))
        assert d.parameters == s_a.numel() * 2

    same = compare_edits(a, a)
    assert all(d.l2 == 0 and d.max_abs == 0 and d.cosine == pytest.approx(1.0) for d in same)
    # an edit that does nothing (s = 1, b = 0) has no direction: no cosine, not a made-up 0 or 1
    idle = _edit(tmp_path / "idle.safetensors", 3, scale=0.0)
    assert all(d.cosine is None and d.l2 > 0 for d in compare_edits(a, idle))


def test_reft_layers_compare_their_parameters_generically(tmp_path):
    a = _edit(tmp_path / "a.safetensors", 1, method="loreft")
    b = _edit(tmp_path / "b.safetensors", 2, method="loreft")
    ta, meta = red.read_edit(a)
    tb, _ = red.read_edit(b)
    diffs = compare_edits(a, b)
    assert [d.layer for d in diffs] == list(meta["targets"])
    for d in diffs:
        names = sorted(n for n in ta if n.startswith(f"edit.{d.layer}."))
        fa = torch.cat([ta[n].double().flatten() for n in names])
        fb = torch.cat([tb[n].double().flatten() for n in names])
        assert d.scale_l2 is None and d.bias_l2 is None
        assert d.l2 == pytest.approx(float((fb - fa).norm())) and d.parameters == fa.numel()
        assert d.cosine == pytest.approx(float(fa @ fb / (fa.norm() * fb.norm())))


def test_edits_of_other_bases_or_configurations_are_refused(tmp_path):
    a = _edit(tmp_path / "a.safetensors", 1)
    other = _edit(tmp_path / "other.safetensors", 1, model=tiny_model("bert", seed=7))  # same shapes, other weights
    with pytest.raises(EditMismatchError, match="different base models.*Fix: compare two versions trained on"):
        compare_edits(a, other)
    scale_only = _edit(tmp_path / "scale.safetensors", 1, kind="scale")
    with pytest.raises(EditConfigError, match="differ in their edit config.*Fix"):
        compare_edits(a, scale_only)
    reft = _edit(tmp_path / "reft.safetensors", 1, method="loreft")
    with pytest.raises(EditConfigError, match="differ in their edit"):
        compare_edits(a, reft)


@pytest.fixture(scope="module")
def store(tmp_path_factory, edits, minilm_path, tiny_checkpoints):
    """red-sst2 v1 (production) and v2 from two MiniLM edits, and a retrain config whose task 'sst2' registers
    red-sst2 on the synthetic sentiment rows (the same 'sentence' column and labels)."""
    root = tmp_path_factory.mktemp("diff")
    runs = fresh_runs_dir(root / "runs")
    setup_tracking(None, runs)
    versions = []
    for i, path in enumerate(edits):
        result = make_result(path, 0.8 + i / 100)
        versions.append(register_edit(result, log_training(result, experiment="diff-tests")))
        if i == 0:
            assert gate_and_promote("red-sst2", versions[0], PromotionPolicy()).promoted
    config = write_retrain_config(root / "retrain.yaml", minilm_path, runs, [synthetic_task("sst2", "sentiment", root)])
    return {"runs": runs, "config": config, "versions": versions, "edits": edits, "tiny": tiny_checkpoints["bert"]}


def test_diff_versions_by_alias_matches_the_files_and_refuses_non_edits(store, tmp_path):
    found = diff_versions("red-sst2", "production", "v2")
    assert (found.a, found.b, found.method) == (1, 2, "red")
    assert [d.to_dict() for d in found.layers] == [d.to_dict() for d in compare_edits(*store["edits"])]
    assert len(found.layers) == 6  # MiniLM's six FFN outputs

    # a version that is not an edit (a fully fine-tuned checkpoint) has nothing per layer to compare
    checkpoint = store["tiny"]
    full = dataclasses.replace(make_result(store["edits"][0], 0.5, task="full-sst2"), method="full",
                               edit_path=checkpoint, output_dir=checkpoint, base_model=checkpoint,
                               base_fingerprint=None)
    v = register_edit(full, log_training(full, experiment="diff-tests"), model_name="red-sst2")
    with pytest.raises(EditDiffError, match=f"red-sst2 v{v} is a fully fine-tuned checkpoint.*no per-layer edit"):
        diff_versions("red-sst2", 1, v)
    result = CliRunner().invoke(app, ["diff", "red-sst2", "1", str(v), "--runs-dir", str(store["runs"])])
    assert result.exit_code == 2 and "fully fine-tuned checkpoint" in result.output
    client = MlflowClient()
    client.delete_model_version("red-sst2", str(v))  # the next tests see v1 and v2 only


def test_cli_table_json_and_the_rows_where_the_versions_disagree(store):
    runner = CliRunner()
    table = runner.invoke(app, ["diff", "red-sst2", "production", "2", "--runs-dir", str(store["runs"])])
    assert table.exit_code == 0, table.output
    lines = [line for line in table.stdout.splitlines() if ".output.dense" in line]
    assert len(lines) == 6 and all(len(line.split()) == 7 for line in lines)  # layer, params, 4 norms, cosine
    assert "‖Δs‖₂" in table.stdout and "pass --config" in table.stderr

    shown = runner.invoke(app, ["diff", "red-sst2", "1", "2", "--config", str(store["config"]), "--rows", "3",
                                "--json"])
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.stdout)  # the only thing on stdout
    assert [row["layer"] for row in found["layers"]] == [d.layer for d in compare_edits(*store["edits"])]
    # the disagreements, checked against both versions as they serve, on the task's test rows
    from flows.config import load_config
    from flows.steps import prepare_step

    cfg = load_config(store["config"])
    test = prepare_step(cfg, cfg.tasks[0]).test
    frame = pd.DataFrame({"sentence": list(test["sentence"])})
    served = [mlflow.pyfunc.load_model(f"models:/red-sst2/{v}").predict(frame)["label"].tolist() for v in (1, 2)]
    differ = [i for i, (x, y) in enumerate(zip(*served)) if x != y]
    disagreements = found["disagreements"]
    assert disagreements["total"] == len(test) and disagreements["count"] == len(differ) > 0
    assert [r["row"] for r in disagreements["rows"]] == differ[:3]
    for row in disagreements["rows"]:
        assert (row["a"], row["b"]) == (served[0][row["row"]], served[1][row["row"]])
        assert row["sentence"] == test[row["row"]]["sentence"] and row["label"] in LABELS


def test_a_night_logs_the_new_version_against_production_and_never_fails_on_it(store, caplog):
    client = MlflowClient()
    run_id = client.get_model_version("red-sst2", "2").run_id
    assert log_production_diff("red-sst2", 2, 1, run_id)
    logged = {f.path for f in client.list_artifacts(run_id, "edit_diff")}
    assert logged == {DIFF_TABLE, DIFF_PLOT}
    table = json.loads(Path(client.download_artifacts(run_id, DIFF_TABLE)).read_text())
    assert len(table["data"]) == 6 and "scale_l2" in table["columns"] and "cosine" in table["columns"]
    assert not log_production_diff("red-sst2", 1, 1, run_id)  # production itself: nothing to compare
    with caplog.at_level("WARNING"):
        assert not log_production_diff("red-sst2", 2, 99, run_id)  # a diff that cannot be computed: a warning
    assert "could not compare the edit with production v99" in caplog.text
