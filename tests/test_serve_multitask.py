"""One server, many tasks: the multi-task pyfunc under a real ``mlflow models serve`` (as a registered serving
bundle) and under ``redflow serve``, against a real MLflow registry on SQLite.

Three task models like the demo's (2, 4 and 2 labels; the last reads a sentence pair; the 4-label task
truncates at 16 tokens, the others at 64) with perturbed MiniLM RED edits. Every served row must equal
what that task's own pyfunc answers; production moves (promotion, rollback) reach the server while a
client keeps sending, with no failed request and no request answered by two versions of a task; a
version whose checksum does not match is refused and the old one keeps serving; bad requests get 400s
that name the row, the task and the column; concurrent requests equal sequential ones; ReFT edits and
unknown models are refused when the server starts.
"""
from __future__ import annotations

import io
import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bench.task_edits import TaskSpec, demo_specs, register_task, task_edits
from flows.cli import app
from registry.aliases import move_alias, rollback
from registry.serving.server import free_port, invoke, start_model_server, start_server_process
from registry.store import setup_tracking
from test_registry import fresh_runs_dir

REPO = Path(__file__).resolve().parents[1]
SPECS = {s.name: s for s in demo_specs(max_lengths=(64, 16, 64))}
MODELS = {name: f"red-{name}" for name in SPECS}
SENTENCES = ["a gripping, beautifully acted film that stays with you long after the credits roll and the lights "
             "come up in the theatre.", "dull.", "the match went to penalties and the home side won it at the end "
             "of a long and tiring night for everyone in the stadium", "new phone chip doubles battery life",
             "fresh pasta with basil", "the train to the coast was late again"]
SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
              "TRANSFORMERS_VERBOSITY": "error"}
runner = CliRunner()


def _rows(task: str, n: int, offset: int = 0, name: str | None = None) -> list[dict]:
    """``n`` request rows of ``task`` (named ``name``: the task or its registered model)."""
    rows = []
    for i in range(n):
        a, b = SENTENCES[(offset + i) % len(SENTENCES)], SENTENCES[(offset + 2 * i + 1) % len(SENTENCES)]
        texts = {"sentence1": a, "sentence2": b} if task == "paraphrase" else {"sentence": a}
        rows.append({"task": name or task, **texts})
    return rows


class Expected:
    """Each version's own answers: its single-task pyfunc (``models:/<name>/<version>``) in this process."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int], object] = {}

    def __call__(self, model: str, version: int, rows: list[dict]) -> pd.DataFrame:
        if (model, version) not in self._models:
            self._models[(model, version)] = mlflow.pyfunc.load_model(f"models:/{model}/{version}")
        columns = list(SPECS[model.removeprefix("red-")].columns)
        return self._models[(model, version)].predict(pd.DataFrame(rows)[columns])


def assert_answers(served: list[dict], rows: list[dict], expected: Expected) -> None:
    """Every served row names its model and version and equals that version's own answer for the row."""
    assert len(served) == len(rows)
    for row, got in zip(rows, served):
        assert got["task"] == row["task"]
        want = expected(got["model"], got["version"], [row]).iloc[0]
        assert got["model"] == MODELS[row["task"].removeprefix("red-")]
        assert got["label"] == want["label"]
        probs = want["probabilities"]
        assert (want["model"], want["version"]) == (got["model"], got["version"])  # both servers name the version
        assert set(got["probabilities"]) == set(probs)
        for label, p in probs.items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm_path):
    """Three task models in production at v1; red-sentiment v2 and red-topic v2 registered, not promoted;
    red-topic v2's registered checksum does not match its edit file (as if the stored file were swapped)."""
    root = tmp_path_factory.mktemp("serve")
    uri = setup_tracking(None, fresh_runs_dir(root / "runs"))
    specs = [SPECS["sentiment"], SPECS["topic"], SPECS["paraphrase"], SPECS["sentiment"], SPECS["topic"]]
    paths = task_edits(minilm_path, root / "edits", specs, seeds=[1, 2, 3, 4, 5])
    versions = [register_task(p, s, MODELS[s.name], validate=False) for s, p in zip(specs, paths)]
    assert versions == [1, 1, 1, 2, 2]
    for name in MODELS.values():
        move_alias(name, "production", 1)
    MlflowClient().set_model_version_tag("red-topic", "2", "edit_sha256", "0" * 64)
    return {"uri": uri, "root": root}


@pytest.fixture(autouse=True)
def _tracking(store):
    setup_tracking(store["uri"])


@pytest.fixture(scope="module")
def expected(store) -> Expected:
    return Expected()


def _post(server, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + "/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _error(server, rows) -> str:
    status, body = _post(server, json.dumps({"dataframe_records": rows}).encode(), "application/json")
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
    return body["message"].split("Error: ", 1)[-1]


@pytest.mark.slow
def test_a_bundle_under_mlflow_models_serve_answers_every_row_as_its_tasks_own_pyfunc(store, expected, tmp_path):
    out = runner.invoke(app, ["bundle", "serving", "--models", "red-sentiment,red-topic,red-paraphrase",
                              "--poll-interval", "0", "--tracking-uri", store["uri"]], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert '"uri": "models:/serving@production"' in out.output
    mixed = _rows("sentiment", 3) + _rows("topic", 4, 1, name="red-topic") + _rows("paraphrase", 2, 2)
    mixed = [mixed[i] for i in (0, 3, 7, 1, 4, 8, 2, 5, 6)]  # tasks interleaved
    limits = {"REDFLOW_SERVE_MAX_ROWS": "20", "REDFLOW_SERVE_MAX_TEXT_CHARS": "1000"}  # the bundle has none set
    with start_model_server("models:/serving@production", tracking_uri=store["uri"], env={**SERVER_ENV, **limits},
                            timeout=240, log_path=tmp_path / "serve.log") as server:
        assert_answers(invoke(server, mixed), mixed, expected)                              # dataframe_records
        assert_answers(invoke(server, frame=pd.DataFrame(mixed)), mixed, expected)          # dataframe_split
        status, body = _post(server, pd.DataFrame(mixed).to_csv(index=False).encode(), "text/csv")
        assert status == 200
        assert_answers(body["predictions"], mixed, expected)                                # CSV
        assert {(r["model"], r["version"]) for r in body["predictions"]} == {(m, 1) for m in MODELS.values()}

        # bad input: 400 naming the row, the task, the column, and what is served
        served = "paraphrase = red-paraphrase v1 (sentence1, sentence2); sentiment = red-sentiment v1 (sentence)"
        message = _error(server, [{"task": "sentiment", "sentence": "fine"}, {"task": "weather", "sentence": "rain"}])
        assert "row 1: unknown task 'weather'" in message and served in message
        message = _error(server, [{"task": "paraphrase", "sentence1": "a cat"}])
        assert "row 0 (task 'paraphrase'): column 'sentence2' missing" in message
        message = _error(server, [{"task": "topic", "sentence": "goal"}, {"task": "sentiment", "sentence": "  "}])
        assert "row 1 (task 'sentiment'): empty or missing 'sentence'" in message and "nothing was predicted" in message
        message = _error(server, [{"sentence": "no task"}])
        assert "the input has no 'task' column" in message
        # over the limits (issue 21): 413 naming the limit and the variable that raises it
        status, body = _post(server, json.dumps({"dataframe_records": _rows("sentiment", 21)}).encode(),
                             "application/json")
        assert status == 413 and body["error_code"] == "REQUEST_LIMIT_EXCEEDED", body
        assert "the request has 21 rows" in body["message"] and "max_rows = 20" in body["message"]
        assert "REDFLOW_SERVE_MAX_ROWS" in body["message"]
        status, body = _post(server, json.dumps({"dataframe_records": [{"task": "sentiment", "sentence": "x" * 1001}]}
                                                ).encode(), "application/json")
        assert status == 413 and "holds 1,001 characters" in body["message"], body
        assert "max_text_chars = 1,000" in body["message"] and "REDFLOW_SERVE_MAX_TEXT_CHARS" in body["message"]

        # many clients at once get what one client gets
        requests = [_rows(task, 1 + i % 5, i) + _rows(other, 1 + (i * 3) % 4, i + 1)
                    for i, (task, other) in enumerate([("sentiment", "topic"), ("topic", "paraphrase"),
                                                       ("paraphrase", "sentiment")] * 8)]
        sequential = [invoke(server, r) for r in requests]
        barrier = threading.Barrier(8)

        def ask(i):
            if i < 8:
                barrier.wait(timeout=60)
            return invoke(server, requests[i])

        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(ask, range(len(requests))))
    for got, want in zip(concurrent, sequential):
        assert [(r["model"], r["version"], r["label"]) for r in got] == [(r["model"], r["version"], r["label"])
                                                                          for r in want]
        for g, w in zip(got, want):
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
    assert_answers(sequential[1], requests[1], expected)


def _stream(server, rows, answers: list, errors: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            answers.append(invoke(server, rows, timeout=60))
        except Exception as exc:  # noqa: BLE001 - recorded: the test requires none
            errors.append(exc)


def _versions(answer: list[dict], model: str) -> set[int]:
    return {r["version"] for r in answer if r["model"] == model}


def _until(predicate, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_redflow_serve_follows_promotion_and_rollback_under_load_without_a_failed_request(store, expected, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "serve", "--models", "red-*", "--poll-interval", "0.5",
               "--tracking-uri", store["uri"], "--port", str(port)]
    rows = _rows("sentiment", 2) + _rows("topic", 2, 2) + _rows("paraphrase", 2, 4)
    answers: list = []
    errors: list = []
    stop = threading.Event()
    with start_server_process(command, host="127.0.0.1", port=port, health_path="/ping", env=SERVER_ENV,
                              timeout=240, log_path=tmp_path / "redflow-serve.log", cwd=REPO) as server:
        client = threading.Thread(target=_stream, args=(server, rows, answers, errors, stop))
        client.start()
        try:
            assert _until(lambda: len(answers) >= 2)
            move_alias("red-sentiment", "production", 2, reason="test promotion")
            assert _until(lambda: answers and _versions(answers[-1], "red-sentiment") == {2}), server.log()
            rollback("red-sentiment", reason="test rollback")
            assert _until(lambda: _versions(answers[-1], "red-sentiment") == {1}), server.log()
            move_alias("red-topic", "production", 2, reason="a version whose checksum does not match")
            with urllib.request.urlopen(urllib.request.Request(server.url + "/reload", method="POST")) as response:
                reloaded = json.loads(response.read())
            seen = len(answers)
            assert _until(lambda: len(answers) >= seen + 2)
        finally:
            stop.set()
            client.join(timeout=120)
        with urllib.request.urlopen(server.url + "/tasks") as response:
            status = json.loads(response.read())
    assert not errors, errors[:3]
    sentiment = [_versions(a, "red-sentiment") for a in answers]
    assert all(len(v) == 1 for v in sentiment)                    # no request answered by two versions
    order = [v.pop() for v in sentiment]
    changes = [order[0]] + [b for a, b in zip(order, order[1:]) if a != b]
    assert changes == [1, 2, 1]                                    # v1, promoted to v2, rolled back to v1
    assert {v for a in answers for v in _versions(a, "red-topic")} == {1}   # the refused v2 never served
    refused = {(r["model"], r["version"]): r["reason"] for r in status["refused"]}
    assert "differs from the edit_sha256 it was registered with" in refused[("red-topic", 2)]
    assert [t["version"] for t in reloaded["tasks"] if t["model"] == "red-topic"] == [1]
    for answer in (answers[0], answers[len(answers) // 2], answers[-1]):
        assert_answers(answer, rows, expected)
    move_alias("red-topic", "production", 1, reason="back to the good version")


def test_serve_refuses_unknown_models_reft_edits_and_bad_settings_before_listening(store, minilm_path, tmp_path):
    from test_serve_concurrency import _reft_edit
    from test_registry import make_result
    from registry.models import register_edit
    from registry.tracking import get_or_create_experiment

    from registry.serving.server import free_port

    def serve(*args):
        port = [] if "--port" in args else ["--port", str(free_port())]  # 5001 may be taken on a shared machine
        return runner.invoke(app, ["serve", *args, *port, "--tracking-uri", store["uri"]], terminal_width=200)

    out = serve("--models", "red-sentiment,red-nope")
    assert out.exit_code == 2 and "no registered model 'red-nope'" in out.output
    out = serve("--models", "blue-*")
    assert out.exit_code == 2 and "no redflow task model matching 'blue-*' has a 'production' version" in out.output
    out = serve()
    assert out.exit_code == 2 and "needs `models`" in out.output
    out = serve("--models", "red-*", "--batch-size", "0")
    assert out.exit_code == 2 and "batch_size" in out.output
    out = serve("--models", "red-*", "--max-rows", "0")
    assert out.exit_code == 2 and "max_rows" in out.output
    out = runner.invoke(app, ["serve", "--models", "red-*", "--port", str(free_port()), "--tracking-uri", store["uri"]],
                        env={"REDFLOW_SERVE_MAX_BODY_MB": "lots"}, terminal_width=200)
    assert out.exit_code == 2 and "REDFLOW_SERVE_MAX_BODY_MB='lots' is not a number above 0" in out.output
    config = tmp_path / "serving.yaml"
    config.write_text("models: ['red-*']\npoll_interval: -1\n")
    out = serve(str(config))
    assert out.exit_code == 2 and "poll_interval" in out.output and "greater than or equal to 0" in out.output
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = serve("--models", "red-*", "--port", str(busy.getsockname()[1]))
    assert out.exit_code == 2 and "cannot listen on 127.0.0.1" in out.output

    result = make_result(_reft_edit(minilm_path, tmp_path), 0.8)
    result.method = "loreft"
    run_id = MlflowClient().create_run(get_or_create_experiment("serve-tests")).info.run_id
    version = register_edit(result, run_id, model_name="reft-sentiment", validate=False)
    move_alias("reft-sentiment", "production", version)
    out = serve("--models", "reft-sentiment")
    assert out.exit_code == 2, out.output
    assert "reft-sentiment v1 is a loreft (ReFT) edit" in out.output
    assert "mlflow models serve -m models:/reft-sentiment/1" in out.output and "MLFLOW_TRACKING_URI=" in out.output
    out = serve("--models", "reft-*")  # a pattern whose only model cannot serve: nothing to serve
    assert out.exit_code == 2 and "no task can be served: reft-sentiment v1: reft-sentiment v1 is a loreft" in out.output
    # one model under a pattern that cannot serve does not keep the others down at start-up: refused, as while running
    from registry.serving.multitask import load_multitask

    model = load_multitask({"models": ["red-*", "reft-*"], "tracking_uri": store["uri"], "poll_interval": 0})
    try:
        status = model.status()
        assert [r["model"] for r in status["refused"]] == ["reft-sentiment"]
        assert "red-sentiment" in {t["model"] for t in status["tasks"]}
    finally:
        model.close()


def test_classification_regression_and_generation_tasks_share_one_model(store, tiny_checkpoints, tmp_path):
    """Any label count and regression in one bank on one base; generation on a causal LM base in its own passes;
    each row as its own task's pyfunc answers it."""
    from registry.serving.multitask import load_multitask

    specs = {"cls3": TaskSpec("cls3", ("red", "green", "blue"), ("text",), 32),
             "reg": TaskSpec("reg", None, ("text",), 32),
             "gen": TaskSpec("gen", None, ("prompt",), 32, generation=True)}
    bases = {"cls3": tiny_checkpoints["bert"], "reg": tiny_checkpoints["bert"], "gen": tiny_checkpoints["gpt2"]}
    for i, (name, spec) in enumerate(specs.items()):
        path = task_edits(bases[name], tmp_path, [spec], [10 + i])[0]
        move_alias(f"mixed-{name}", "production", register_task(path, spec, f"mixed-{name}", validate=False))
    rows = [{"task": "gen", "prompt": "the cat sat"}, {"task": "cls3", "text": "a red apple"},
            {"task": "reg", "text": "how similar"}, {"task": "mixed-gen", "prompt": "once upon a time there"},
            {"task": "cls3", "text": "the sky at noon is clear and wide"}, {"task": "reg", "text": "a b c d e"}]
    model = load_multitask({"models": ["mixed-*"], "poll_interval": 0})
    try:
        served = model.predict(None, pd.DataFrame(rows), params={"max_new_tokens": 4}).to_dict("records")
        bases_served = model.status()["bases"]
        for bad, message in [(100000, r"max_new_tokens 100000 does not fit: the model reads at most 256 positions "
                                       r"and the longest prompt of this batch takes \d+; ask for at most \d+"),
                             (-1, "max_new_tokens must be at least 1, got -1"), ("many", "a whole number")]:
            with pytest.raises(MlflowException, match=message):  # HTTP 400 on a server, not a stack trace
                model.predict(None, pd.DataFrame(rows), params={"max_new_tokens": bad})
    finally:
        model.close()
    from registry.serving.serving_config import ServingConfigError

    with pytest.raises(ServingConfigError, match=r"max_new_tokens 100000 does not fit .*reads at most 256 positions"):
        load_multitask({"models": ["mixed-*"], "poll_interval": 0, "max_new_tokens": 100000})  # refused at start-up
    assert sorted(len(b["tasks"]) for b in bases_served) == [1, 2]  # bert: cls3 + reg in one bank; gpt2: gen
    for name, spec in specs.items():
        mine = [i for i, r in enumerate(rows) if r["task"].removeprefix("mixed-") == name]
        frame = pd.DataFrame([rows[i] for i in mine])[list(spec.columns)]
        own = mlflow.pyfunc.load_model(f"models:/mixed-{name}/1").predict(frame, params={"max_new_tokens": 4})
        for i, (_, want) in zip(mine, own.iterrows()):
            got = served[i]
            assert (got["model"], got["version"]) == (f"mixed-{name}", 1)
            if name == "gen":
                assert got["generation"] == want["generation"] and got["label"] is None
            elif name == "reg":
                assert got["score"] == pytest.approx(want["score"], abs=1e-5) and got["probabilities"] is None
            else:
                assert got["label"] == want["label"]
                assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


def test_a_poll_reads_every_served_models_alias_in_one_registry_call(store):
    """K served models cost one registry search per poll, not K reads (issue 21: alias moves picked up within the
    poll interval + 1 s at K = 128); a registry that cannot list its models is read name by name."""
    from collections import Counter

    from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND

    from registry.serving.served_tasks import wanted_versions
    from registry.serving.serving_config import serving_config

    calls: Counter = Counter()

    class Counting(MlflowClient):
        searchable = True

        def search_registered_models(self, *args, **kwargs):
            calls["search"] += 1
            if not self.searchable:
                raise MlflowException("search is not offered here", error_code=ENDPOINT_NOT_FOUND)
            return super().search_registered_models(*args, **kwargs)

        def get_registered_model(self, *args, **kwargs):
            calls["get"] += 1
            return super().get_registered_model(*args, **kwargs)

    client = Counting(store["uri"])
    want = {n: int(MlflowClient().get_registered_model(n).aliases["production"]) for n in MODELS.values()}
    named = serving_config({"models": ["red-sentiment", "red-topic", "red-paraphrase"]})
    assert wanted_versions(serving_config({"models": ["red-sentiment", "red-*"]}), client) == want
    assert wanted_versions(named, client) == want
    assert calls == {"search": 2}  # one per poll, whatever the number of models; no per-model read
    client.searchable = False
    calls.clear()
    assert wanted_versions(named, client) == want
    assert calls == {"search": 1, "get": 3}
    with pytest.raises(MlflowException, match="not offered"):  # a pattern needs the listing: no guess
        wanted_versions(serving_config({"models": ["red-*"]}), client)


def test_a_poll_that_finds_no_alias_moved_lists_nothing_and_one_that_does_swaps(store):
    """On a local SQLite registry the poller reads the alias rows (a millisecond) and lists the models through
    MLflow only when they moved (issue 21: the listing cost requests 10-15 % at 128 models)."""
    from registry.serving.multitask import load_multitask

    model = load_multitask({"models": ["red-sentiment", "red-paraphrase"], "tracking_uri": store["uri"],
                            "poll_interval": 0})
    searches = []
    search = model.client.search_registered_models
    model.client.search_registered_models = lambda *a, **k: searches.append(1) or search(*a, **k)
    try:
        assert model.poll() is not None and len(searches) == 1  # the poller's first check lists
        assert model.poll() is None and model.poll() is None and len(searches) == 1  # nothing moved: no listing
        move_alias("red-sentiment", "production", 2, reason="test: a move the poller must see")
        try:
            assert model.poll()["changed"] == [{"model": "red-sentiment", "from": 1, "to": 2}] and len(searches) == 2
            assert {t["model"]: t["version"] for t in model.status()["tasks"]}["red-sentiment"] == 2
        finally:
            move_alias("red-sentiment", "production", 1, reason="test: back")
        assert model.poll()["changed"] == [{"model": "red-sentiment", "from": 2, "to": 1}]
    finally:
        model.close()


def test_rows_route_by_task_or_model_name_and_a_shared_task_name_must_name_the_model():
    from registry.serving.routing import RequestError, route
    from registry.serving.served_tasks import ServedTask

    def task(model, name, columns=("sentence",)):
        return ServedTask(model=model, version=1, task=name, task_type="classification", text_columns=columns,
                          label_list=("a", "b"), max_length=8, edit_path="", edit_sha256="", base_model="",
                          base_revision=None, model_class=None, dtype=None)

    red, reft, topic = task("red-sst2", "sst2"), task("other-sst2", "sst2"), task("red-topic", "topic")
    lookup = {"red-sst2": red, "other-sst2": reft, "red-topic": topic, "topic": topic}
    rows = route(pd.DataFrame({"task": ["red-sst2", "topic", " other-sst2 "], "sentence": ["x", 7, "z"]}), lookup,
                 [red, reft, topic], {"sst2": ["other-sst2", "red-sst2"]})
    assert [t.model for t in rows.tasks] == ["red-sst2", "red-topic", "other-sst2"]
    assert rows.texts == [("x",), ("7",), ("z",)]          # a number read from CSV is text
    with pytest.raises(RequestError, match=r"row 0: task 'sst2' is served by other-sst2, red-sst2; name the model"):
        route(pd.DataFrame({"task": ["sst2"], "sentence": ["x"]}), lookup, [red, reft, topic],
              {"sst2": ["other-sst2", "red-sst2"]})
    with pytest.raises(RequestError, match=r"rows 0, 1: no task"):
        route(pd.DataFrame({"task": [None, ""], "sentence": ["x", "y"]}), lookup, [red])
    assert len(route(pd.DataFrame([]), lookup, [red])) == 0   # an empty request gets an empty answer
