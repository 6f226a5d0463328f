"""registry/ against real MLflow processes: a tracking server (REST registry, proxied artifacts, the
lock-model promotion lock) and ``mlflow models serve`` on ``models:/red-<task>@production``."""
from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from registry.aliases import PromotionPolicy, alias_history, gate_and_promote, production_version
from registry.locks import LOCK_MODEL_PREFIX, lock_kind
from registry.models import register_edit
from registry.serving.server import (ServerStartError, free_port, invoke, start_model_server, start_server_process,
                             start_tracking_server)
from registry.tracking import get_or_create_experiment, log_training, setup_tracking
from conftest import probability_matrix
from test_registry import (LABELS, TEXTS, _one_thread, direct_probabilities, edits,  # noqa: F401 (fixtures)
                           fresh_runs_dir, make_result, same_rows)


def _bare_run(experiment: str) -> str:
    return MlflowClient().create_run(get_or_create_experiment(experiment)).info.run_id


def test_registration_and_concurrent_promotion_through_a_real_tracking_server(tmp_path, edits, minilm_path):
    runs = fresh_runs_dir(tmp_path / "runs")
    name = "red-remote"
    with start_tracking_server(runs, timeout=120) as server:
        uri = setup_tracking(server.url)
        assert uri.startswith("http://127.0.0.1:") and lock_kind(uri) == "model"
        v1 = register_edit(make_result(edits[0], 0.75), _bare_run("server-tests"), model_name=name)
        v2 = register_edit(make_result(edits[1], 0.80), _bare_run("server-tests"), model_name=name, validate=False,
                           bundle_code=True)  # red/ and registry/ copied into the model
        client = MlflowClient()
        mv = client.get_model_version(name, str(v1))
        assert mv.tags["redflow.status"] == "ready" and int(client.get_model_version_by_alias(name, "candidate").version) == v2
        assert client.get_run(mv.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert any((runs / "mlartifacts").rglob("sst2-seed1.safetensors"))  # uploaded through the server

        # both gate at once, with no production yet: whichever order, the better one ends up in production
        scores = {v1: same_rows(0.75, 1), v2: same_rows(0.80, 2)}
        decisions, errors = {}, []
        barrier = threading.Barrier(2)

        def gate(version):
            try:
                barrier.wait()
                decisions[version] = gate_and_promote(name, version, PromotionPolicy(minimum=0.5),
                                                      challenger=scores[version], score_champion=scores.__getitem__)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=gate, args=(v,)) for v in (v1, v2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and production_version(name) == v2 and decisions[v2].promoted
        assert decisions[v1].previous == (None if decisions[v1].promoted else v2)
        assert sorted(e["version"] for e in alias_history(name, "production")) == [v1, v2]
        assert not [m for m in client.search_registered_models() if m.name.startswith(LOCK_MODEL_PREFIX)]

        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@production", dst_path=str(tmp_path / "m")))
        assert (local / "code" / "red" / "io.py").is_file() and (local / "code" / "registry" / "pyfunc.py").is_file()
        model = mlflow.pyfunc.load_model(f"models:/{name}@production")
        out = model.predict(pd.DataFrame({"sentence": TEXTS}))
        ref = direct_probabilities(minilm_path, edits[1], TEXTS)
        assert probability_matrix(out, LABELS) == pytest.approx(ref, abs=1e-5)
    assert not server.running


def test_server_that_exits_or_never_answers_raises_a_clear_error(tmp_path):
    import sys

    port = free_port()
    with pytest.raises(ServerStartError, match=r"exited with code 3[\s\S]*boom"):
        start_server_process([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], host="127.0.0.1",
                             port=port, log_path=tmp_path / "exit.log", timeout=30)
    with pytest.raises(ServerStartError, match=r"did not answer http://127.0.0.1:\d+/health within 1s") as info:
        start_server_process([sys.executable, "-c", "import time; time.sleep(60)"], host="127.0.0.1", port=port,
                             log_path=tmp_path / "hang.log", timeout=1)
    assert "it was stopped" in str(info.value)


@pytest.mark.slow
def test_models_serve_production_answers_like_the_in_process_model(tmp_path, edits):
    runs = fresh_runs_dir(tmp_path / "runs")
    uri = setup_tracking(None, runs)
    name = "red-serve"
    result = make_result(edits[1], 0.8)
    version = register_edit(result, log_training(result, experiment="serve-tests"), model_name=name)
    assert gate_and_promote(name, version, PromotionPolicy()).promoted
    frame = pd.DataFrame({"sentence": TEXTS})
    expected = mlflow.pyfunc.load_model(f"models:/{name}@production").predict(frame)

    with start_model_server(f"models:/{name}@production", tracking_uri=uri, timeout=240,
                            env={"OMP_NUM_THREADS": "1"}, log_path=tmp_path / "serve.log") as server:
        split = pd.DataFrame(invoke(server, frame=frame))
        records = pd.DataFrame(invoke(server, [{"sentence": t} for t in TEXTS]))
    assert not server.running
    for served in (split, records):
        assert list(served["label"]) == list(expected["label"])
        assert list(served.columns) == ["model", "version", "label", "score", "probabilities"]
        assert set(served["model"]) == {name} and set(served["version"]) == {version}
        assert served["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-6)
        assert probability_matrix(served, LABELS) == pytest.approx(probability_matrix(expected, LABELS), abs=1e-6)
