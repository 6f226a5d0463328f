"""Every method the trainer offers completes the retrain flow: trained, registered without pickle, served.

One retrain flow with one task per method on a tiny BERT; then, per version, the pyfunc loaded from the
registry (``models:/red-<method>/1``) must predict what the trained model predicts on the test rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import probability_matrix, synthetic_task, write_retrain_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

METHODS = ("red", "loreft", "lora", "bitfit", "full")


def _trained_model(method: str, result, base: str):
    """The trained model, rebuilt from the training output with plain red/transformers/peft calls."""
    from transformers import AutoModelForSequenceClassification

    if method in ("red", "loreft"):
        from red.pretrained import load_pretrained_edit

        return load_pretrained_edit(result.edit_path, device="cpu")[0]
    if method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=2),
                                         result.edit_path)
    return AutoModelForSequenceClassification.from_pretrained(result.edit_path)  # bitfit, full: the checkpoint


def test_every_method_registers_without_pickle_and_serves_what_it_trained(tmp_path, tiny_checkpoints):
    import mlflow
    from mlflow import MlflowClient
    from transformers import AutoTokenizer

    from flows.config import load_config
    from flows.retrain import retrain
    from flows.steps import prepare_step
    from registry.tracking import setup_tracking
    from tasks.training import TrainResult

    bert = tiny_checkpoints["bert"]
    tasks = []
    for method in METHODS:
        train = {"method": method, "learning_rate": 1e-2 if method in ("red", "loreft") else 1e-3}
        if method == "loreft":
            train["edit"] = {"rank": 2, "positions": "f2+l2"}
        tasks.append({**synthetic_task(method, "sentiment", tmp_path, n_train=32, n_dev=16), "train": train})
    cfg_path = write_retrain_config(tmp_path / "retrain.yaml", bert, tmp_path / "runs", tasks)
    summary = retrain(config=str(cfg_path))
    assert {row["status"] for row in summary.values()} == {"trained"}, summary

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    client = MlflowClient()
    tokenizer = AutoTokenizer.from_pretrained(bert)
    for task in cfg.tasks:
        method = task.name
        mv = client.get_model_version(f"red-{method}", "1")
        assert mv.tags["method"] == method and mv.tags["redflow.status"] == "ready"

        # models-from-code: the version holds source, artifacts and safetensors; nothing pickled
        local = mlflow.artifacts.download_artifacts(f"models:/red-{method}/1", dst_path=str(tmp_path / "dl" / method))
        from pathlib import Path

        files = [p for p in Path(local).rglob("*") if p.is_file()]
        assert not [p.name for p in files if p.suffix in (".pkl", ".bin", ".pt", ".pth")]
        pyfunc_flavor = yaml.safe_load((Path(local) / "MLmodel").read_text())["flavors"]["python_function"]
        assert pyfunc_flavor["model_code_path"].endswith("model_code.py") and "python_model" not in pyfunc_flavor
        weights = [p for p in files if p.suffix == ".safetensors"]
        assert weights
        if method == "bitfit":  # the biases, the head and nothing else
            from safetensors import safe_open

            with safe_open(str(weights[0]), "pt") as f:
                keys = list(f.keys())
            assert keys and all(k.endswith(".bias") or k.startswith("classifier.") for k in keys)

        params = client.get_run(mv.run_id).data.params  # each run logs its own method's parameters only
        assert ("lora_r" in params) == (method == "lora") and ("edit.kind" in params) == (method == "red")
        assert ("edit.rank" in params) == (method == "loreft")

        # the registered pyfunc predicts what the trained model predicts, on the task's test rows
        result = TrainResult.load(client.download_artifacts(mv.run_id, "train_result.json"))
        test = prepare_step(cfg, task).test
        texts = list(test["sentence"])
        served = mlflow.pyfunc.load_model(f"models:/red-{method}/1").predict(pd.DataFrame({"sentence": texts}))
        model = _trained_model(method, result, bert).eval()
        enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(model(**enc).logits.float(), -1).numpy()
        np.testing.assert_allclose(probability_matrix(served, ["negative", "positive"]), expected, atol=1e-5,
                                   err_msg=method)
        accuracy = float((served["label"].map({"negative": 0, "positive": 1}) == list(test["label"])).mean())
        assert accuracy == pytest.approx(result.test["accuracy"]), method  # what the Trainer measured
