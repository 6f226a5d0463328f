"""registry/: run logging, plots, registration, pyfunc, gate/promote/rollback, the promotion lock.

Real MLflow on a SQLite backend in a temporary folder, a real MiniLM checkpoint with a RED
edit attached and perturbed (no training), no mocks. One SQLite database per module (creating
one costs seconds); every test uses its own registered-model names.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import red
from registry.aliases import (PromotionPolicy, RollbackError, alias_history, alias_version, gate_and_promote,
                              metric_value, move_alias, production_version, rollback)
from registry.approval import ApprovalRefused, decide_approval
from registry.decisions import person
from registry.locks import LOCK_MODEL_PREFIX, LockTimeout, lock_kind, registry_lock
from registry.models import (RegistrationError, download_edit, model_name_for, record_evaluation, register_edit,
                             resolve_version)
from conftest import probability_matrix, seed_store
from registry.serving.pyfunc import load_in_process
from registry.serving.version_config import build_model_config
from registry.tracking import (GATE_TABLE, default_tracking_uri, get_or_create_experiment, log_gate_comparison,
                               log_training, registered_checksum, setup_tracking, sqlite_path)
from registry.version_tags import evaluations, gate_details
from tasks.training import TrainResult

LABELS = ["negative", "positive"]
TEXTS = ["a gripping, beautifully acted film.", "dull and far too long.", "it was fine, I guess."]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers (test_registry_server.py imports these)
# ---------------------------------------------------------------------------------------------
def build_edits(minilm_path: str, out: Path, seeds=(1, 2)) -> list[Path]:
    """RED edits (FFN scale+bias + classifier head) on MiniLM, perturbed with each seed and saved."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    edited = red.attach(model)
    paths = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in edited.edits.named_parameters():  # s = 1 + noise, b = noise
                p.copy_((1.0 if n.endswith("scale") else 0.0) + torch.randn(p.shape, generator=g) * 0.2)
            for p in edited.head_parameters().values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        paths.append(edited.save(out / f"sst2-seed{seed}.safetensors", base_model=minilm_path,
                                 extra={"text_columns": ["sentence"], "label_list": LABELS}))
    return paths


def make_result(edit_path: Path | str, score: float, *, task: str = "sst2", validation: float | None = None
                ) -> TrainResult:
    """A TrainResult as tasks.training.train would return it, written by hand."""
    tensors, meta = red.read_edit(edit_path)
    val = score + 0.01 if validation is None else validation
    return TrainResult(
        task=task, method="red", base_model=meta["base_model"]["name"], primary_metric="accuracy",
        edit_path=str(edit_path), output_dir=str(Path(edit_path).parent), best_epoch=2,
        epochs=[{"epoch": 1, "train_loss": 0.61, "validation_accuracy": val - 0.05},
                {"epoch": 2, "train_loss": 0.42, "validation_accuracy": val},
                {"epoch": 3, "train_loss": 0.40, "validation_accuracy": val - 0.01}],
        steps=[{"step": s, "loss": 0.7 / (1 + 0.05 * s), "learning_rate": 1e-3 * (1 - s / 60)} for s in range(1, 61)],
        validation={"accuracy": val}, test={"accuracy": score, "f1": score - 0.02},
        trainable_parameters=meta["edit_parameters"] + 770, edit_parameters=meta["edit_parameters"],
        params={"learning_rate": 1e-3, "epochs": 3, "batch_size": 32, "max_length": 64, "seed": 42,
                "text_columns": ["sentence"], "scheduler": {"name": "linear", "warmup_ratio": 0.06}},
        data_hash="d4t4h45h", base_revision=None, base_fingerprint=meta["base_model"]["fingerprint"],
        task_type="classification", label_list=LABELS, truncated={"train": 3}, seconds=12.5)


ROW_LABELS = [i % 2 for i in range(200)]


def same_rows(accuracy: float, seed: int = 0):
    """Per-row scores of a model that is right on ``accuracy`` of the same 200 labelled rows."""
    from tasks.evaluate.paired import RowScores

    right = int(round(accuracy * len(ROW_LABELS)))
    order = np.random.default_rng(seed).permutation(len(ROW_LABELS))
    preds = list(ROW_LABELS)
    for i in order[right:]:
        preds[i] = 1 - preds[i]
    return RowScores(metric="accuracy", kind="prediction", predictions=preds, labels=list(ROW_LABELS))


def gate(name: str, version: int, policy: PromotionPolicy, scores: dict):
    """The retrain flow's gate: the candidate and whatever is production scored on the same rows."""
    return gate_and_promote(name, version, policy, challenger=scores[version], score_champion=scores.__getitem__)


_EDITS: list[Path] = []


@pytest.fixture(scope="module")
def edits(minilm_path, tmp_path_factory) -> list[Path]:
    """Two edit files, built once per session (test_registry_server.py shares them)."""
    if not (_EDITS and all(p.is_file() for p in _EDITS)):
        _EDITS[:] = build_edits(minilm_path, tmp_path_factory.mktemp("edits"))
    return list(_EDITS)


def fresh_runs_dir(runs: Path) -> Path:
    """``runs/`` with an empty MLflow store (its schema copied, :func:`conftest.seed_store`), MLflow's tracking
    URI pointing at it."""
    seed_store(runs)
    setup_tracking(None, runs)
    return runs


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return setup_tracking(None, fresh_runs_dir(tmp_path_factory.mktemp("runs") / "runs"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny forward passes: one intra-op thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _tracking(tracking_uri):
    setup_tracking(tracking_uri)  # another module may have pointed MLflow elsewhere
    yield


def register(result: TrainResult, *, name: str | None = None, **kwargs) -> int:
    """Register ``result`` from a bare run (log_training is tested on its own; plots cost time)."""
    client = MlflowClient()
    run_id = client.create_run(get_or_create_experiment("registry-tests")).info.run_id
    return register_edit(result, run_id, model_name=name, **kwargs)


def direct_probabilities(minilm_path: str, edit_path: Path, texts: list[str], max_length: int = 64):
    """Reference predictions computed without the registry: transformers + red.load_edit."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    edited = red.load_edit(model.eval(), edit_path)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(edited(**enc).logits.float(), -1).numpy()


# ---------------------------------------------------------------------------------------------
# tracking
# ---------------------------------------------------------------------------------------------
def test_setup_tracking_defaults_to_sqlite_and_refuses_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("REDFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = setup_tracking(None, tmp_path / "runs")
    assert uri == default_tracking_uri(tmp_path / "runs") == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    assert sqlite_path(uri) == (tmp_path / "runs" / "mlflow.db").resolve()
    assert (tmp_path / "runs" / "mlartifacts").is_dir()
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert setup_tracking(str(tmp_path / "x.db")) == f"sqlite:///{(tmp_path / 'x.db').resolve()}"
    with socket.socket() as listening:  # something answers there: an http URI is taken as it is
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        assert setup_tracking(url) == url
    monkeypatch.setenv("REDFLOW_TRACKING_URI", str(tmp_path / "env.db"))
    assert setup_tracking(None, tmp_path / "runs") == f"sqlite:///{(tmp_path / 'env.db').resolve()}"
    for bad in (f"file://{tmp_path}/mlruns", str(tmp_path)):
        with pytest.raises(ValueError, match="file store"):
            setup_tracking(bad)


def test_log_training_records_params_curves_metrics_artifacts_and_plots(edits, tracking_uri):
    result = make_result(edits[0], 0.81)
    report = {"name": "sst2-shifted", "metrics": {"accuracy": 0.74, "per_class": {"negative": 0.7}},
              "n": 200, "notes": "held-out shift"}
    run_id = log_training(result, experiment="registry-tests", eval_reports=[report], config={"preset": "x"})
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["method"] == "red" and p["task"] == "sst2"
    assert p["base_model"] == run.data.tags["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # by id; the path is a tag
    assert run.data.tags["base_model_path"] == result.base_model and "lora_r" not in p and "edit.rank" not in p
    assert run.data.tags["mlflow.runName"].startswith("sst2 red 20")
    assert run.data.metrics["test_primary"] == pytest.approx(0.81)  # one name for the primary metric
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the training runs
    assert p["learning_rate"] == "0.001" and p["scheduler.warmup_ratio"] == "0.06"
    assert p["edit.kind"] == "scale+bias" and p["edit.position"] == "ffn" and p["edit.targets"] == "6"
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(0.81) and m["validation_accuracy"] == pytest.approx(0.82)
    assert m["eval/sst2-shifted/accuracy"] == pytest.approx(0.74) and m["eval/sst2-shifted/per_class/negative"] == 0.7
    assert m["edit_parameters"] == result.edit_parameters and m["truncated/train"] == 3
    loss = client.get_metric_history(run_id, "train/loss")
    assert [x.step for x in sorted(loss, key=lambda x: x.step)] == list(range(1, 61))
    per_epoch = sorted(client.get_metric_history(run_id, "epoch/validation_accuracy"), key=lambda x: x.step)
    assert [x.step for x in per_epoch] == [1, 2, 3] and per_epoch[1].value == pytest.approx(0.82)
    assert run.data.tags["task"] == "sst2" and run.data.tags["data_hash"] == "d4t4h45h"
    assert run.data.tags["code_version"].startswith("src:")
    assert run.data.tags["code_revision"].startswith(("git:", "redflow=="))

    files = {a.path for d in ("", "edit", "evaluation", "plots") for a in client.list_artifacts(run_id, d or None)}
    assert {"train_result.json", "config.json", "edit/sst2-seed1.safetensors", "edit/sst2-seed1.json",
            "evaluation/sst2-shifted.json", "evaluation/sst2-shifted.md", "plots/training_curves.png",
            "plots/edit_heatmap.png"} <= files
    local = Path(client.download_artifacts(run_id, "plots"))
    for png in ("training_curves.png", "edit_heatmap.png"):
        data = (local / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "| accuracy | 0.74 |" in (Path(client.download_artifacts(run_id, "evaluation/sst2-shifted.md"))).read_text()
    assert TrainResult.load(client.download_artifacts(run_id, "train_result.json")) == result
    # artifacts live under <runs_dir>/mlartifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(sqlite_path(tracking_uri).parent / "mlartifacts")


# ---------------------------------------------------------------------------------------------
# registration and the pyfunc
# ---------------------------------------------------------------------------------------------
def test_register_edit_tags_candidate_and_pyfunc_predicts_like_the_edit(edits, minilm_path, tmp_path):
    result = make_result(edits[0], 0.81)
    result.output_dir = str(tmp_path)  # a training of its own (the test above logged one from the edits' folder)
    result.started_at = time.time() - result.seconds  # when tasks.training started it
    run_id = log_training(result, experiment="registry-tests")
    client = MlflowClient()
    logged_end = client.get_run(run_id).info.end_time
    version = register_edit(result, run_id)  # validate=True: loads and predicts before writing anything
    name = model_name_for("sst2")
    assert (name, version) == ("red-sst2", 1)
    run = client.get_run(run_id)  # the run spans the training: its Duration in the UI is at least train_seconds
    assert run.info.start_time == int(result.started_at * 1000) and run.info.end_time == logged_end
    assert run.info.end_time - run.info.start_time >= result.seconds * 1000
    assert run.data.tags["mlflow.runName"] == "sst2 · red · v1"  # registered: the run names its version
    assert re.search(r"\bv1\b", run.data.tags["mlflow.runName"])
    mv = client.get_model_version(name, "1")
    assert "on sentence-transformers/all-MiniLM-L6-v2 (" in mv.description  # the base by its id, not a venv path
    assert "site-packages" not in mv.description and result.base_model not in mv.description
    t = mv.tags
    assert t["redflow.status"] == "ready" and t["method"] == "red" and len(t) <= 12, sorted(t)
    assert t["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and "redflow.owner" not in t  # ready
    metrics = json.loads(t["metrics"])
    assert t["primary_metric"] == "accuracy" and metrics["test_accuracy"] == pytest.approx(0.81)
    assert "validation_accuracy" in metrics and metric_value(mv, "test_accuracy") == pytest.approx(0.81)
    # the rest of what identifies it: the training run's identity.json
    document = json.loads(Path(client.download_artifacts(run_id, "identity.json")).read_text())
    assert document["base_model_path"] == result.base_model and document["run_id"] == run_id
    assert document["base_fingerprint"] == result.base_fingerprint and document["data_hash"] == "d4t4h45h"
    assert document["code_version"].startswith("src:")
    assert document["code_revision"].startswith(("git:", "redflow=="))
    assert "base_revision" in document and document["edit_sha256"] == red.read_edit(edits[0])[1]["tensors_sha256"]
    assert registered_checksum(mv) == document["edit_sha256"]
    assert int(alias_version(name, "candidate").version) == 1 and mv.run_id == run_id
    assert [e["action"] for e in alias_history(name)] == ["candidate"]
    assert resolve_version(name, "candidate") == resolve_version(name, "v1") == 1

    uri = f"models:/{name}@candidate"
    info = mlflow.models.get_model_info(uri)
    assert [c.name for c in info.signature.inputs.inputs] == ["sentence"]
    assert [c.name for c in info.signature.outputs.inputs] == ["model", "version", "label", "score", "probabilities"]
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert {p.name for p in (local / "artifacts").iterdir()} == {"sst2-seed1.safetensors", "sst2-seed1.json"}
    assert not (local / "code").exists()  # default: code comes from the installed redflow package
    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example
    assert list(example.columns) == ["sentence"] and len(example) == 2
    out = model.predict(pd.DataFrame({"sentence": TEXTS}))
    assert list(out.columns) == ["model", "version", "label", "score", "probabilities"]  # redflow serve's shape
    assert set(out["model"]) == {name} and set(out["version"]) == {1}  # resolved from models:/...@candidate
    ref = direct_probabilities(minilm_path, edits[0], TEXTS)
    assert probability_matrix(out, LABELS) == pytest.approx(ref, abs=1e-5)
    assert list(out["label"]) == [LABELS[i] for i in ref.argmax(1)]
    assert out["score"].to_numpy() == pytest.approx(ref.max(1), abs=1e-5)


def test_pyfunc_text_pairs_and_causal_lm_generation(minilm_path, tmp_path, edits):
    # sentence pairs: both columns reach the tokenizer as (text, text_pair)
    _, meta = red.read_edit(edits[1])
    cfg = build_model_config(task="mrpc", task_type="classification", meta=meta, base_model=minilm_path,
                             text_columns=["sentence1", "sentence2"], label_list=["no", "yes"], max_length=64)
    model = load_in_process(edits[1], cfg)
    pairs = pd.DataFrame({"sentence1": ["A man plays guitar.", "The cat sleeps."],
                          "sentence2": ["Someone makes music.", "A dog runs."]})
    out = model.predict(None, pairs)
    assert list(out.columns) == ["model", "version", "label", "score", "probabilities"]
    assert set(out["label"]) <= {"no", "yes"} and all(set(p) == {"no", "yes"} for p in out["probabilities"])
    assert set(out["version"]) == {None}  # loaded in process, not from the registry: no version to name
    swapped = model.predict(None, pairs.rename(columns={"sentence1": "sentence2", "sentence2": "sentence1"}))
    assert not torch.allclose(torch.tensor(out["score"].to_numpy()), torch.tensor(swapped["score"].to_numpy()))
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="missing column") as info:
        model.predict(None, pd.DataFrame({"sentence1": ["x"]}))
    assert info.value.get_http_status_code() == 400  # the request's fault, as a model server answers it
    with pytest.raises(MlflowException, match=r"row\(s\) 1, 2 have no text"):  # never a confident answer to nothing
        model.predict(None, pd.DataFrame({"sentence1": ["a", None, "c"], "sentence2": ["b", "d", " "]}))

    # causal LM: a tiny GPT-2 sharing MiniLM's tokenizer, saved as a local base model
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2,
                                                       n_positions=64, bos_token_id=101, eos_token_id=102,
                                                       pad_token_id=0))
    base.save_pretrained(tmp_path / "gpt2-tiny")
    tok.save_pretrained(tmp_path / "gpt2-tiny")
    edited = red.attach(base.eval())
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    edit = edited.save(tmp_path / "lm.safetensors", base_model=str(tmp_path / "gpt2-tiny"))
    cfg = build_model_config(task="alpaca", task_type="causal_lm", meta=red.read_edit(edit)[1], max_new_tokens=5)
    lm = load_in_process(edit, cfg)
    prompt = "the capital of france is"
    gen = lm.predict(None, pd.DataFrame({"prompt": [prompt]}), params={"max_new_tokens": 4})
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        ids = edited.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen["generation"].tolist() == tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"max_new_tokens 100000 does not fit: the model reads at most"):
        lm.predict(None, pd.DataFrame({"prompt": [prompt]}), params={"max_new_tokens": 100000})


# ---------------------------------------------------------------------------------------------
# gate, promotion, rollback, history
# ---------------------------------------------------------------------------------------------
def test_gate_minimum_margin_worse_rollback_and_history(edits):
    name = "red-gate"
    v1 = register(make_result(edits[0], 0.70), name=name)
    v2 = register(make_result(edits[1], 0.72), name=name)
    v3 = register(make_result(edits[0], 0.80), name=name)
    assert (v1, v2, v3) == (1, 2, 3) and int(alias_version(name, "candidate").version) == 3
    assert production_version(name) is None
    scores = {1: same_rows(0.70, 1), 2: same_rows(0.72, 2), 3: same_rows(0.80, 3)}

    # a first version needs the configured minimum
    d = gate(name, v1, PromotionPolicy(minimum=0.75), scores)
    assert not d.promoted and d.previous is None and "minimum" in d.reason and production_version(name) is None
    d = gate(name, v1, PromotionPolicy(minimum=0.65), scores)
    assert d.promoted and d.previous is None and d.value == pytest.approx(0.70) and production_version(name) == 1
    # better, but not by the margin: decided on the paired difference on the same rows
    d = gate(name, v2, PromotionPolicy(margin=0.05), scores)
    assert not d.promoted and d.previous == 1 and "margin" in d.reason and production_version(name) == 1
    assert d.comparison["n"] == 200 and d.comparison["difference"] == pytest.approx(0.02)
    assert d.comparison["ci_low"] < 0.02 < d.comparison["ci_high"]
    # better by the margin
    d = gate(name, v3, PromotionPolicy(margin=0.05), scores)
    assert d.promoted and d.previous == 1 and d.previous_value == pytest.approx(0.70) and production_version(name) == 3
    # one coherent sentence: the same rows; scores recorded on other rows are in the decision, not in its reason
    assert "same 200 rows" in d.reason and "recorded test scores" not in d.reason and d.stored
    assert d.outcome == "promoted" and "not significant" not in d.reason  # 0.80 vs 0.70 on 200 rows: significant
    tags = MlflowClient().get_model_version(name, "3").tags
    gated = json.loads(tags["redflow.gate"])  # one tag: the production it saw and the paired comparison
    assert gated["champion"] == "1" and gated["comparison"]["difference"] == pytest.approx(0.10)
    # worse than production: not promoted (also with margin 0)
    assert not gate(name, v2, PromotionPolicy(), scores).promoted
    # without same-row scores, production is never replaced on numbers from other test sets
    d = gate_and_promote(name, v2, PromotionPolicy())
    assert not d.promoted and "not scored on the same rows" in d.reason and "--config" in d.reason
    assert d.outcome == "kept out" and "recorded test scores, each on its own rows and so not compared" in d.reason
    # an explicit direction overrides the metric's (accuracy: higher is better)
    d = gate(name, v2, PromotionPolicy(higher_is_better=False), scores)
    assert d.promoted and d.metric == "accuracy" and production_version(name) == 2
    tags = MlflowClient().get_model_version(name, "2").tags
    assert tags["redflow.gate.decision"] == "promoted" and "lower is better" in json.loads(tags["redflow.gate"])["reason"]

    # rollback follows promotions back: 2 -> 3 -> 1, then nothing left
    assert rollback(name).version == 3 and production_version(name) == 3
    assert rollback(name, reason="bad outputs").version == 1 and production_version(name) == 1
    with pytest.raises(RollbackError, match="first"):
        rollback(name)
    rolled = MlflowClient().get_model_version(name, "3").tags
    assert rolled["redflow.gate.decision"] == "rolled back" and "bad outputs" in gate_details(rolled)["reason"]
    assert gate_details(rolled)["comparison"]  # the gate's comparison stays beside the rollback's reason
    # a rolled-back version is not re-promoted by the gate; an explicit move is recorded too
    d = gate(name, v3, PromotionPolicy(), scores)
    assert not d.promoted and "rolled back" in d.reason
    assert move_alias(name, "production", 3, reason="fixed upstream").previous == 1
    assert "redflow.rolled_back_at" not in MlflowClient().get_model_version(name, "3").tags

    history = alias_history(name)
    assert [(e["alias"], e["action"], e["version"], e["from"]) for e in history] == [
        ("candidate", "candidate", 1, None), ("candidate", "candidate", 2, 1), ("candidate", "candidate", 3, 2),
        ("production", "kept out", 1, None), ("production", "promoted", 1, None),
        ("production", "kept out", 2, 1), ("production", "promoted", 3, 1),
        ("production", "kept out", 2, 3), ("production", "kept out", 2, 3), ("production", "promoted", 2, 3),
        ("production", "rolled back", 3, 2), ("production", "rolled back", 1, 3),
        ("production", "kept out", 3, 1), ("production", "set", 3, 1)]
    assert all(e["at"] and e["by"] and e["reason"] for e in history)
    assert {e["by"] for e in history} == {person()} and re.fullmatch(r"[^:@]+@[^:@]+", person())  # no pid, thread
    assert alias_history(name, "candidate") == history[:3]
    per_version = json.loads(MlflowClient().get_model_version(name, "1").tags["redflow.alias_history"])
    assert [(e["action"], e["version"]) for e in per_version] == [
        ("candidate", 1), ("candidate", 2), ("kept out", 1), ("promoted", 1), ("promoted", 3), ("rolled back", 1),
        ("set", 3)]


def test_approval_required_keeps_a_passing_version_at_candidate_until_a_person_decides(edits, monkeypatch):
    """promotion.approval: required: the gate's yes waits for a person; approve and reject are a compare-and-set on
    the production the gate saw; a forced promotion shows as forced; a promotion inside the noise says so."""
    from registry.views import history_rows, version_rows

    name = "red-approve"
    scores = {1: same_rows(0.70, 1), 2: same_rows(0.72, 2), 3: same_rows(0.90, 3)}
    required = PromotionPolicy(approval="required")
    assert gate(name, register(make_result(edits[0], 0.70), name=name), PromotionPolicy(), scores).promoted
    register(make_result(edits[1], 0.72), name=name)
    d = gate(name, 2, required, scores)  # +0.02 on 200 rows: passes margin 0, inside the noise
    assert not d.promoted and d.outcome == "awaiting approval" and production_version(name) == 1
    assert "redflow approve red-approve 2" in d.reason and re.search(r"not significant: 95% CI -0\.\d+\.\.\+0\.\d+ "
                                                                    r"spans 0", d.reason)
    assert int(alias_version(name, "candidate").version) == 2
    rows = {r["version"]: r for r in version_rows(name)}
    assert rows[2]["decision"] == "awaiting approval" and rows[1]["decision"] == "promoted"
    with pytest.raises(ApprovalRefused, match=r"v1 is not awaiting approval \(its decision: promoted\)"):
        decide_approval(name, 1, True)

    monkeypatch.setenv("REDFLOW_USER", "alice@example.org")
    a = decide_approval(name, 2, True, "read the disagreeing rows")
    assert (a.decision, a.previous, a.by) == ("approved", 1, "alice@example.org") and production_version(name) == 2
    last = history_rows(name)[0]
    assert (last["action"], last["version"], last["from"], last["by"], last["reason"]) == (
        "approved", 2, 1, "alice@example.org", "read the disagreeing rows")
    with pytest.raises(ApprovalRefused, match="its decision: approved"):
        decide_approval(name, 2, False)

    # production moves after the gate: neither approve nor reject acts on a comparison that no longer holds
    register(make_result(edits[0], 0.90), name=name)
    assert gate(name, 3, required, scores).outcome == "awaiting approval"
    move_alias(name, "production", 1, action="forced", reason="v2 misbehaves")
    for approve in (True, False):
        with pytest.raises(ApprovalRefused, match="production moved since the gate passed red-approve v3: it was v2 "
                                                  "then and is v1 now"):
            decide_approval(name, 3, approve)
    assert production_version(name) == 1 and version_rows(name)[0]["decision"] == "awaiting approval"
    # gated again against today's production, then rejected from the Prefect UI's approve-version flow run
    assert gate(name, 3, required, scores).previous == 1
    from flows.manage import approve_version

    r = approve_version(name, 3, "reject", "not this week", approver="carol@ui",
                        tracking_uri=mlflow.get_tracking_uri())
    assert (r["decision"], r["previous"], r["by"]) == ("rejected", 1, "carol@ui")  # the form's name
    assert production_version(name) == 1
    rows = {r["version"]: r for r in version_rows(name)}
    assert [rows[v]["decision"] for v in (3, 2, 1)] == ["rejected", "approved", "forced"]
    assert rows[1]["reason"] == "v2 misbehaves" and rows[3]["reason"] == "by carol@ui: not this week"
    assert [e["action"] for e in history_rows(name)[:3]] == ["rejected", "awaiting approval", "forced"]


def test_loss_metrics_gate_lower_is_better_and_significance_can_be_required(edits):
    from tasks.evaluate.paired import RowScores

    name = "red-loss"
    v1 = register(make_result(edits[0], 0.70), name=name)
    v2 = register(make_result(edits[1], 0.72), name=name)
    tokens = [10] * 50
    scores = {1: RowScores(metric="loss", kind="nll", nll=[12.0] * 50, tokens=tokens),
              2: RowScores(metric="loss", kind="nll", nll=[39.0] * 50, tokens=tokens)}  # loss 3.9 vs 1.2
    assert gate(name, v1, PromotionPolicy(metric="loss"), scores).promoted
    d = gate(name, v2, PromotionPolicy(metric="loss"), scores)
    assert not d.promoted and "lower is better" in d.reason and d.comparison["difference"] == pytest.approx(-2.7)
    # a small, noisy gain passes margin 0 but not a significance requirement
    noisy = np.random.default_rng(0).normal(0, 3, 50)
    noisy -= noisy.mean()  # a gain of exactly 0.02 in loss, buried in per-row noise
    scores[3] = RowScores(metric="loss", kind="nll", nll=(np.array(scores[1].nll) - 0.2 + noisy).tolist(),
                          tokens=tokens)
    v3 = register(make_result(edits[1], 0.71), name=name)
    d = gate(name, v3, PromotionPolicy(metric="loss", require_significant=True), scores)
    assert not d.promoted and "not significant" in d.reason


def test_concurrent_promotions_keep_the_better_version_and_record_both(edits):
    name = "red-race"
    v1 = register(make_result(edits[0], 0.70), name=name)
    v_best = register(make_result(edits[1], 0.80), name=name)
    v_good = register(make_result(edits[0], 0.75), name=name)
    scores = {v1: same_rows(0.70, 1), v_best: same_rows(0.80, 2), v_good: same_rows(0.75, 3)}
    assert gate(name, v1, PromotionPolicy(), scores).promoted
    decisions, errors = {}, []
    barrier = threading.Barrier(2)

    def race(version):
        try:
            barrier.wait()
            decisions[version] = gate(name, version, PromotionPolicy(), scores)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(v,)) for v in (v_good, v_best)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and set(decisions) == {v_good, v_best}
    assert production_version(name) == v_best
    assert decisions[v_best].promoted
    # whichever ran second compared against the first one's outcome, never against a stale v1
    if decisions[v_good].promoted:
        assert decisions[v_best].previous == v_good
    else:
        assert decisions[v_good].previous == v_best
    gated = [e for e in alias_history(name, "production") if e["version"] in (v_good, v_best)]
    assert sorted(e["version"] for e in gated) == sorted([v_good, v_best])


@pytest.mark.parametrize("kind", ["file", "model"])
def test_registry_lock_excludes_concurrent_read_modify_write(kind):
    name = f"red-lock-{kind}"
    client = MlflowClient()
    client.create_registered_model(name, tags={"counter": "0"})
    assert lock_kind() == "file"

    errors = []

    def bump():
        try:
            for _ in range(3):
                with registry_lock(name, kind=kind, timeout=60):
                    value = int(client.get_registered_model(name).tags["counter"])
                    time.sleep(0.01)  # widen the race window
                    client.set_registered_model_tag(name, "counter", str(value + 1))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert client.get_registered_model(name).tags["counter"] == "9"
    assert not [m for m in client.search_registered_models() if m.name.startswith(LOCK_MODEL_PREFIX)]


@pytest.mark.parametrize("kind", ["file", "model"])
def test_lock_timeout_names_the_holder_and_stale_model_locks_expire(kind):
    name = f"red-held-{kind}"
    with registry_lock(name, kind=kind) as owner:
        with pytest.raises(LockTimeout, match="held by") as info:
            with registry_lock(name, kind=kind, timeout=0.3):
                pass
        assert owner.split(":")[0] in str(info.value)
    if kind == "model":  # a holder that died: its lock model expires and is broken
        MlflowClient().create_registered_model(LOCK_MODEL_PREFIX + name, tags={
            "redflow.lock.owner": "ghost:1:1:dead", "redflow.lock.expires": str(time.time() - 1)})
        with registry_lock(name, kind=kind, timeout=5) as owner:
            assert not owner.startswith("ghost")


# ---------------------------------------------------------------------------------------------
# failure safety and evaluations
# ---------------------------------------------------------------------------------------------
def test_failed_registration_leaves_no_version_and_no_alias(edits):
    name = "red-fail"
    client = MlflowClient()
    v1 = register(make_result(edits[0], 0.70), name=name)
    # another flow holds the promotion lock too long: the candidate alias cannot be set *after* the
    # version was created, so the version is deleted again
    with registry_lock(name):
        with pytest.raises(RegistrationError, match="deleted") as info:
            register(make_result(edits[1], 0.90), name=name, lock_timeout=0.5)
    assert isinstance(info.value.__cause__, LockTimeout)
    # a tag MLflow refuses fails atomically, when the version is created
    with pytest.raises(RegistrationError, match="not created"):
        register(make_result(edits[1], 0.90), name=name, tags={"k" * 300: "v"})
    versions = client.search_model_versions(f"name='{name}'")
    assert [int(v.version) for v in versions] == [v1]
    assert int(alias_version(name, "candidate").version) == v1
    assert [e["version"] for e in alias_history(name)] == [v1]
    # the training run is left as it was
    assert client.get_run(versions[0].run_id).info.status == "FINISHED"

    # a version that never finished registering (a crash mid-way) is never promoted
    half = client.create_model_version(name, source=versions[0].source, tags={"redflow.status": "registering",
                                                                              "metric.test_accuracy": "0.99",
                                                                              "primary_metric": "accuracy"})
    d = gate_and_promote(name, half.version, PromotionPolicy())
    assert not d.promoted and "registering" in d.reason and production_version(name) is None
    # an edit file that is not a sound one is refused before anything is written
    bad = make_result(edits[0], 0.9)
    bad.edit_path = str(Path(edits[0]).with_name("missing.safetensors"))
    with pytest.raises(RegistrationError, match="safetensors"):
        register_edit(bad, versions[0].run_id, model_name=name)


def test_the_gate_comparison_is_logged_on_the_challengers_run_with_the_rows_where_they_disagree():
    from tasks.evaluate.paired import paired_bootstrap

    client = MlflowClient()
    run_id = client.create_run(get_or_create_experiment("registry-tests")).info.run_id
    challenger, champion = same_rows(0.80, seed=1), same_rows(0.70, seed=2)
    comparison = paired_bootstrap(challenger, champion, higher=True).to_dict()
    texts = {"sentence": [f"row {i}" for i in range(len(ROW_LABELS))]}
    differ = log_gate_comparison(run_id, comparison, challenger, champion, texts=texts, label_names=LABELS)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["gate/challenger"] == pytest.approx(0.80) and metrics["gate/champion"] == pytest.approx(0.70)
    assert metrics["gate/difference"] == pytest.approx(0.10) and metrics["gate/rows"] == len(ROW_LABELS)
    assert metrics["gate/ci_low"] < 0.10 < metrics["gate/ci_high"]
    table = json.loads(Path(client.download_artifacts(run_id, GATE_TABLE)).read_text())
    assert table["columns"] == ["row", "sentence", "label", "challenger", "champion"]
    expected = [i for i in range(len(ROW_LABELS)) if challenger.predictions[i] != champion.predictions[i]]
    assert differ == len(table["data"]) == len(expected) > 0
    assert [r[0] for r in table["data"]] == expected
    first = expected[0]
    assert table["data"][0] == [first, f"row {first}", LABELS[ROW_LABELS[first]],
                                LABELS[int(challenger.predictions[first])], LABELS[int(champion.predictions[first])]]


def test_record_evaluation_and_download_edit(edits, tmp_path):
    from tasks.evaluate.report import EvalReport

    name = "red-eval"
    v1 = register(make_result(edits[0], 0.70), name=name)
    gate_and_promote(name, v1, PromotionPolicy())
    # the flows' re-evaluation: download the production edit, evaluate it, record the report on the version
    path = download_edit(name, "production", tmp_path / "dl")
    assert path.read_bytes() == Path(edits[0]).read_bytes() and path.with_suffix(".json").is_file()
    report = EvalReport(name="sst2/contrast", kind="classification", metrics={"accuracy": 0.66, "f1": 0.6},
                        primary="accuracy", model=str(path))
    run_id = record_evaluation(name, "production", report)
    client = MlflowClient()
    tags = client.get_model_version(name, str(v1)).tags
    recorded = evaluations(tags)["sst2-contrast"]  # one tag, redflow.evaluations, whatever the reports
    assert recorded["metrics"]["accuracy"] == pytest.approx(0.66)
    assert recorded["run_id"] == run_id and recorded["at"] and not [k for k in tags if k.startswith("eval.")]
    run = client.get_run(run_id)
    assert run.data.metrics["accuracy"] == pytest.approx(0.66) and run.data.tags["model_version"] == str(v1)
    assert run.info.status == "FINISHED" and run.data.tags["redflow.run_kind"] == "evaluation"
    training = client.get_experiment(client.get_run(client.get_model_version(name, str(v1)).run_id).info.experiment_id)
    assert client.get_experiment(run.info.experiment_id).name == f"{training.name}-evaluations"  # not among trainings
    assert run.info.experiment_id != training.experiment_id
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {
        "evaluation/sst2-contrast.json", "evaluation/sst2-contrast.md"}
    assert Path(client.download_artifacts(run_id, "evaluation/sst2-contrast.md")).read_text() == report.to_markdown()
    record_evaluation(name, v1, {"name": "weekly", "accuracy": 0.7, "n": 500})  # a plain dict works too
    both = evaluations(client.get_model_version(name, str(v1)).tags)
    assert both["weekly"]["metrics"]["n"] == 500 and both["sst2-contrast"]["run_id"] == run_id


def test_versions_registered_by_an_older_redflow_are_read_from_their_one_tag_per_field_layout():
    from registry.version_tags import version_metrics, with_evaluation

    old = {"primary_metric": "accuracy", "score": "0.8", "metric.validation_accuracy": "0.75",
           "redflow.gate.decision": "promoted", "redflow.gate.reason": "better", "redflow.gate.at": "2026-01-01",
           "redflow.gate.champion": "2", "redflow.gate.metric": "accuracy", "redflow.gate.rows": "108",
           "redflow.gate.challenger_score": "0.8", "redflow.gate.champion_score": "0.7",
           "redflow.gate.difference": "0.1", "redflow.gate.ci": "[0.02, 0.18]",
           "eval.weekly.accuracy": "0.7", "eval.weekly.run_id": "r1", "eval.weekly.at": "2026-01-02"}
    assert version_metrics(old) == {"test_accuracy": 0.8, "validation_accuracy": 0.75}
    details = gate_details(old)
    assert details["reason"] == "better" and details["champion"] == "2" and details["at"] == "2026-01-01"
    assert details["comparison"] == {"challenger": 0.8, "champion": 0.7, "difference": 0.1, "ci_low": 0.02,
                                     "ci_high": 0.18, "n": 108}
    assert evaluations(old) == {"weekly": {"metrics": {"accuracy": 0.7}, "run_id": "r1", "at": "2026-01-02"}}
    # a new evaluation of such a version joins the old ones in the one tag; the tag stays within MLflow's limit
    tag = with_evaluation(old, "contrast", "r2", "2026-01-03", {"accuracy": 0.6})
    assert set(evaluations({"redflow.evaluations": tag})) == {"contrast"}  # old eval.* entries stay as they are
    assert set(evaluations({**old, "redflow.evaluations": tag})) == {"weekly", "contrast"}  # and both are read
    many: dict = {}
    for i in range(300):
        many["redflow.evaluations"] = with_evaluation(many, f"report{i}", f"run{i}", f"2026-01-{i:04d}",
                                                      {f"metric{j}": 0.5 for j in range(20)})
    assert len(many["redflow.evaluations"]) <= 5000
    kept = evaluations(many)
    assert kept["report299"]["metrics"]["metric0"] == 0.5 and kept["report299"]["run_id"] == "run299"
    assert "report0" not in kept or "metrics" not in kept["report0"]  # the oldest lose their metrics first


def test_a_version_left_registering_by_a_dead_process_is_removed_by_the_next_registration(edits):
    import subprocess
    import sys

    name = "red-crashed"
    client = MlflowClient()
    v1 = register(make_result(edits[0], 0.70), name=name)
    source = client.get_model_version(name, str(v1)).source
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    half = client.create_model_version(name, source=source, tags={
        "redflow.status": "registering", "redflow.owner": f"{socket.gethostname()}:{dead.pid}",
        "primary_metric": "accuracy"})
    alive = client.create_model_version(name, source=source, tags={  # another live registration: left alone
        "redflow.status": "registering", "redflow.owner": f"{socket.gethostname()}:{os.getpid()}"})
    v4 = register(make_result(edits[1], 0.72), name=name)
    versions = {int(v.version) for v in client.search_model_versions(f"name='{name}'")}
    assert int(half.version) not in versions and int(alive.version) in versions and v4 in versions
    from registry.models import latest_version

    assert int(latest_version(name).version) == v4  # never a half-registered one
    assert latest_version("red-no-such-model") is None


def test_log_training_is_one_run_per_training_whatever_the_retries(edits):
    result = make_result(edits[0], 0.7)
    first = log_training(result, experiment="retry-tests")
    assert log_training(result, experiment="retry-tests") == first  # a retried register step
    client = MlflowClient()
    exp = client.get_experiment_by_name("retry-tests").experiment_id
    assert len(client.search_runs([exp])) == 1
    # a run left half-logged by a failed try is replaced, not kept beside the new one
    client.set_terminated(first, "FAILED")
    second = log_training(result, experiment="retry-tests")
    runs = client.search_runs([exp])
    assert second != first and [r.info.run_id for r in runs] == [second]


def test_months_of_alias_history_fit_a_sql_stores_limits_and_rollback_still_finds_its_way(edits):
    """SQL-backed MLflow stores hold 5,000 characters per registered-model tag and description: the history is
    one tag per entry, the description shows what fits, and nothing is lost."""
    name = "red-months"
    v1 = register(make_result(edits[0], 0.70), name=name)
    v2 = register(make_result(edits[1], 0.72), name=name)
    for night in range(40):  # forty moves with long reasons, back and forth
        move_alias(name, "production", v1 if night % 2 else v2, reason=f"night {night}: " + "x" * 3000)
    model = MlflowClient().get_registered_model(name)
    assert max(len(v) for v in model.tags.values()) <= 5000
    assert len(model.description) <= 5000 and "older entries" in model.description
    history = alias_history(name, "production")
    assert len(history) == 40 and history[-1]["reason"].startswith("night 39")
    assert production_version(name) == v1
    assert rollback(name).version == v2  # found through the whole history


def test_a_training_run_left_running_by_a_dead_process_is_closed_as_failed(edits):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient()
    exp = get_or_create_experiment("orphans")
    import socket

    orphan = client.create_run(exp, tags={"redflow.run_kind": "train",
                                          "redflow.owner": f"{socket.gethostname()}:{dead.pid}"}).info.run_id
    live = client.create_run(exp, tags={"redflow.run_kind": "train",
                                        "redflow.owner": f"{socket.gethostname()}:{os.getpid()}"}).info.run_id
    log_training(make_result(edits[0], 0.7), experiment="orphans")
    assert client.get_run(orphan).info.status == "FAILED" and client.get_run(orphan).data.tags["redflow.orphaned"]
    assert client.get_run(live).info.status == "RUNNING"
