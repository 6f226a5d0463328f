"""A served ReFT edit answers overlapping requests exactly as it answers them one at a time.

``mlflow models serve`` runs each request's ``predict`` on a worker thread (``asyncio.to_thread``), so one
loaded model is called from several threads at once. ReFT's prompt positions differ per request (batch
size, lengths, padding); they are per-call state, so concurrent requests must not see each other's.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

import red
from registry.aliases import PromotionPolicy, gate_and_promote
from registry.models import register_edit
from registry.serving.server import invoke, start_model_server
from registry.tracking import log_training, setup_tracking
from conftest import probability_matrix
from test_registry import LABELS, _one_thread, fresh_runs_dir, make_result  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
WORDS = "a gripping beautifully acted film dull predictable far too long it was fine i guess moving".split()


def _reft_edit(minilm_path: str, out: Path) -> Path:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    edited = red.attach(model, red.EditConfig(method="loreft", rank=2, positions="f2+l2"))  # random start: edits
    with torch.no_grad():
        for p in edited.head_parameters().values():
            p.add_(torch.randn(p.shape) * 0.5)
    return edited.save(out / "sst2-loreft.safetensors", base_model=minilm_path,
                       extra={"text_columns": ["sentence"], "label_list": LABELS, "task_type": "classification"})


def _requests(n: int = 24) -> list[list[dict[str, str]]]:
    """Requests of 1 to 4 sentences of different lengths (so each batch pads differently)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        rows = 1 + i % 4
        out.append([{"sentence": " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (2 + (3 * i + 5 * r) % 9,),
                                                                                  generator=g))}
                    for r in range(rows)])
    return out


@pytest.mark.slow
def test_a_served_reft_edit_answers_concurrent_requests_like_sequential_ones(tmp_path, minilm_path):
    runs = fresh_runs_dir(tmp_path / "runs")
    uri = setup_tracking(None, runs)
    result = make_result(_reft_edit(minilm_path, tmp_path), 0.8)
    result.method = "loreft"
    name = "reft-serve"
    version = register_edit(result, log_training(result, experiment="serve-concurrency"), model_name=name)
    assert gate_and_promote(name, version, PromotionPolicy()).promoted
    requests = _requests()
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    expected = [model.predict(pd.DataFrame(r)) for r in requests]  # one at a time, in process
    assert len({round(float(e["probabilities"].iloc[0]["negative"]), 6) for e in expected}) > 3  # the requests really differ

    with start_model_server(f"models:/{name}@production", tracking_uri=uri, timeout=240,
                            env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                            log_path=tmp_path / "serve.log") as server:
        barrier = threading.Barrier(8)

        def ask(i):
            if i < 8:
                barrier.wait(timeout=60)
            return pd.DataFrame(invoke(server, requests[i], timeout=120))

        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(ask, range(len(requests))))
    for got, want in zip(served, expected):
        assert list(got["label"]) == list(want["label"])
        assert probability_matrix(got, LABELS) == pytest.approx(probability_matrix(want, LABELS), abs=1e-5)
        assert list(got["model"]) == list(want["model"]) and set(got["version"]) == {version}
