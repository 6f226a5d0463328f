"""What each input surface is fuzzed with, and what it must answer: the strategies and properties shared by
``tests/test_fuzz_surfaces.py`` (bounded, pinned examples) and ``bench/fuzz.py`` (N seconds a surface, counted).

A property returns quietly when the surface answered well (a valid result, or the project's own error with a
message) and raises anything else: the fuzzers count those by :func:`signature`.

* config: YAML texts (mutations of ``configs/demo.yaml``, random lines, raw bytes) -> ``load_config`` returns a
  ``RetrainConfig`` or raises ``ConfigError``;
* data: a table or JSON file and a data spec -> ``prepare_data`` returns data or raises ``DataError`` (a spec that
  does not validate is refused by ``DataSpec`` first, as the config loader refuses it);
* edit: an edit file with flipped bytes, a mutated (re-signed) metadata field or a damaged header ->
  ``read_edit`` reads it or raises ``EditFileError``; a changed file never reads;
* server: an HTTP body and Content-Type for ``POST /invocations`` of a real ``redflow serve`` -> 2xx with one answer
  per row, or 4xx with a short message and no traceback; never 5xx.
"""
from __future__ import annotations

import json
import math
import struct
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, GPT2Config

import red
from bench.fuzz_serve import post
from flows.config import ConfigError, RetrainConfig, load_config
from red.io import metadata_sha256, tensors_sha256
from tasks.data import DataError, DataSpec, prepare_data

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = (REPO / "configs" / "demo.yaml").read_text()
PROJECT_PACKAGES = ("red", "tasks", "registry", "flows", "bench")


def signature(exc: BaseException) -> str:
    """``Type @ file:line`` of the innermost frame in the project's own code (where a cause is fixed)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename
            and Path(f.filename).resolve().is_relative_to(REPO) and Path(f.filename).parts[-2] != "tests"]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    at = f"{Path(where.filename).resolve().relative_to(REPO) if ours else Path(where.filename).name}:{where.lineno}" \
        if where else "?"
    return f"{type(exc).__name__} @ {at}"


class Unanswered(AssertionError):
    """A surface answered in a way its property forbids (not an exception it raised: an answer it gave)."""


# --------------------------------------------------------------------------------------------- config
_SCALARS = ["", "null", "~", "1", "-1", "0", "1e400", "-.inf", ".nan", "nan", "1e-3", "true", "maybe", "!!bool maybe",
            "!!int x", "!!timestamp 2020-13-45", "[ffn]", "{}", "[]", "{a: 1}", "'a{4294967296}'", "\"\\ud800\"",
            "2001-01-01", "0x1F", "&a 1", "*a", "!!python/object:os.system ls", "|", ">", "'", "\"", "{", "[", ":",
            "-", "? x", "%YAML 1.1", "---", "...", "@", "`", "\t", "a" * 600, "(" * 1200 + ")" * 1200]
_KEYS = ["1", "null", "true", "base_model", "tasks", "defaults", "edit", "learning_rate", "epochs", "batch_size",
         "max_length", "target_modules", "name", "data", "promotion", "margin", "preset", "method", "x", "<<"]


@st.composite
def config_texts(draw: Any) -> bytes:
    """A config file's bytes: the demo config with lines replaced, keys added, a value swapped, nesting, or noise."""
    lines = DEMO_CONFIG.splitlines()
    kind = draw(st.sampled_from(["value", "line", "insert", "nest", "bytes", "text"]))
    if kind == "value":
        i = draw(st.sampled_from([i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]))
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {draw(st.sampled_from(_SCALARS) | st.text(max_size=20))}"
    elif kind == "line":
        lines[draw(st.integers(0, len(lines) - 1))] = draw(st.text(max_size=40))
    elif kind == "insert":
        indent = draw(st.sampled_from(["", "  ", "    "]))
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, f"{indent}{draw(st.sampled_from(_KEYS))}: {draw(st.sampled_from(_SCALARS))}")
    elif kind == "nest":
        depth = draw(st.sampled_from([5, 40, 1000, 3000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        lines.append(f"{draw(st.sampled_from(['defaults', 'x', 'tasks']))}: {opener * depth}1{closer * depth}")
    elif kind == "bytes":
        raw = bytearray("\n".join(lines).encode())
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    else:
        return draw(st.text(alphabet=st.sampled_from(list("abc:-[]{}!&*'\"#\n \t|>?,%@1.0")), max_size=200)).encode(
            "utf-8", "surrogatepass")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def check_config(text: bytes) -> None:
    """``load_config`` of ``text`` returns a ``RetrainConfig`` or raises ``ConfigError`` naming the file."""
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as tmp:
        path = Path(tmp) / "retrain.yaml"
        path.write_bytes(text)
        try:
            config = load_config(path)
        except ConfigError as exc:
            if str(path) not in str(exc) or "Traceback" in str(exc):
                raise Unanswered(f"ConfigError without the file's name: {str(exc)[:200]}") from exc
            return
        if not isinstance(config, RetrainConfig):
            raise Unanswered(f"load_config returned a {type(config).__name__}")


# --------------------------------------------------------------------------------------------- data
_CELLS = st.one_of(st.text(max_size=12), st.sampled_from(["", "0", "1", "inf", "-inf", "nan", "1e400", "NaN", "null",
                                                          "positive", "1" + "0" * 309, "\"", ",", "\n", "\ud800"]))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10)
    | st.sampled_from([10**309, "\ud800", "x" * 50]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "label", "a"]), inner, max_size=3),
    max_leaves=5)
_COLUMNS = st.sampled_from(["text", "label", "other", "answer", "x"])


@st.composite
def data_cases(draw: Any) -> tuple[str, bytes, dict[str, Any]]:
    """``(file name, file bytes, spec fields)``: a CSV/TSV or JSON/JSONL file around a valid table, and a spec."""
    fmt = draw(st.sampled_from(["csv", "tsv", "json", "jsonl"]))
    n = draw(st.integers(0, 24))
    rows = [{"text": f"row {i} {'good' if i % 2 else 'bad'} words", "label": i % 2, "other": f"o{i}",
             "answer": f"a{i}"} for i in range(n)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # damaged cells
        if rows:
            row = draw(st.sampled_from(rows))
            row[draw(_COLUMNS)] = draw(_JSON_VALUES if fmt.startswith("json") else _CELLS)
    if fmt.startswith("json"):
        if fmt == "json":
            body = json.dumps(rows, ensure_ascii=draw(st.booleans()))
        else:
            body = "".join(json.dumps(r, ensure_ascii=draw(st.booleans())) + "\n" for r in rows)
        if draw(st.integers(0, 3)) == 0:
            extra = draw(st.sampled_from(["[" * 1000 + "]" * 1000, '{"text": "x", "label": 1' + "0" * 5000 + "}",
                                          '{"text": "\\ud800", "label": 1}', '{"text": "x", "label": 1e400}', "{", "7",
                                          '{"text": ["a"], "label": {"b": 1}}']))
            body = body + ("\n" if fmt == "jsonl" else "") + extra if fmt == "jsonl" else draw(
                st.sampled_from([body[:-1] + ", " + extra + "]" if body.endswith("]") else body, extra]))
        raw = body.encode("utf-8", "surrogatepass")
    else:
        sep = "," if fmt == "csv" else "\t"
        header = draw(st.sampled_from([["text", "label", "other", "answer"]] * 3 + [["text", "text", "label"],
                                       ["label", "other"], ["text", "label", "other", "answer", "other"]]))
        lines = [sep.join(header)] + [sep.join(str(r.get(c, "")) for c in header) for r in rows]
        raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # a few raw byte flips
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 3))):
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        raw = bytes(raw)
    spec: dict[str, Any] = {"source": fmt, "text_columns": draw(st.sampled_from([["text"]] * 4 + [
        ["text", "other"], ["text", "text"], ["missing"]]))}
    if draw(st.booleans()):
        spec["task_type"] = draw(st.sampled_from(["classification", "regression", "causal_lm"]))
    if draw(st.integers(0, 3)) == 0:
        spec["response_column"] = draw(st.sampled_from(["answer", "text", "other"]))
    if draw(st.integers(0, 3)) == 0:
        spec["columns"] = {draw(_COLUMNS): draw(_COLUMNS)}
    if draw(st.integers(0, 3)) == 0:
        spec["label_list"] = draw(st.lists(st.sampled_from(["0", "1", "2", "pos"]), min_size=1, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        spec["label_column"] = draw(_COLUMNS)
    return f"train.{fmt}", raw, spec


def check_data(case: tuple[str, bytes, dict[str, Any]]) -> None:
    """``prepare_data`` returns splits or raises ``DataError``; a spec ``DataSpec`` refuses is a ValidationError."""
    name, raw, fields = case
    with tempfile.TemporaryDirectory(prefix="fuzz-data-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(raw)
        try:
            spec = DataSpec.model_validate({**fields, "path": str(path)})
        except ValidationError:
            return
        try:
            data = prepare_data(spec)
        except DataError as exc:
            if "Traceback" in str(exc) or len(str(exc)) < 20:
                raise Unanswered(f"DataError without a message: {str(exc)[:200]}") from exc
            return
        labels = data.train["label"] if "label" in data.train.column_names else []
        if data.task_type == "regression" and not all(math.isfinite(v) for v in labels):
            raise Unanswered("a regression label that is not finite was accepted")


# --------------------------------------------------------------------------------------------- edit
@st.composite
def edit_damage(draw: Any) -> tuple[str, Any, Any]:
    """One change to an edit file: ``("flip", bit)``, ``("meta", field path index, new JSON value)`` (re-signed),
    ``("header", offset, byte)`` (inside the safetensors header) or ``("deep", depth)`` (nested metadata)."""
    kind = draw(st.sampled_from(["flip", "meta", "header", "deep"]))
    if kind == "flip":
        return kind, draw(st.integers(0, 2**40)), None
    if kind == "meta":
        return kind, draw(st.integers(0, 10**6)), draw(_JSON_VALUES)
    if kind == "header":
        return kind, draw(st.integers(0, 2**20)), draw(st.integers(0, 255))
    return kind, draw(st.sampled_from([10, 100, 1000, 5000])), None


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, prefix + (i,))
    return found


def check_edit(original: Path, damage: tuple[str, Any, Any]) -> None:
    """A damaged edit file never reads: ``read_edit`` raises ``EditFileError`` naming the file. A metadata change
    that is re-signed may read (it is a valid file then)."""
    kind, where, value = damage
    raw = bytearray(original.read_bytes())
    with tempfile.TemporaryDirectory(prefix="fuzz-edit-") as tmp:
        out = Path(tmp) / "damaged.safetensors"
        signed = False
        if kind == "flip":
            bit = where % (len(raw) * 8)
            raw[bit // 8] ^= 1 << (bit % 8)
            out.write_bytes(bytes(raw))
        elif kind == "header":
            (size,) = struct.unpack("<Q", raw[:8])
            offset = 8 + where % size
            if raw[offset] == value:
                return
            raw[offset] = value
            out.write_bytes(bytes(raw))
        else:
            tensors = load_file(str(original))
            with safe_open(str(original), framework="pt") as f:
                meta = json.loads(f.metadata()["redflow"])
            if kind == "meta":
                paths = [p for p in _paths(meta) if p and p[0] not in ("sha256", "tensors_sha256")]
                path = paths[where % len(paths)]
                parent = meta
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = value
                try:  # a writer cannot sign NaN/inf (not JSON): such a file goes out unsigned and must be refused
                    meta["sha256"] = metadata_sha256({**meta, "tensors_sha256": tensors_sha256(tensors)})
                    meta["tensors_sha256"] = tensors_sha256(tensors)
                    signed = True
                except ValueError:
                    pass
                text = json.dumps(meta)
            else:
                text = json.dumps(meta)[:-1] + ', "deep": ' + "[" * where + "]" * where + "}"
            save_file(tensors, str(out), metadata={"redflow": text})
        try:
            red.read_edit(out)
        except red.EditFileError as exc:
            if str(out) not in str(exc):
                raise Unanswered(f"EditFileError without the file's name: {str(exc)[:200]}") from exc
            return
        if not signed:
            raise Unanswered(f"a changed edit file ({kind}) was read")


# --------------------------------------------------------------------------------------------- server
_REQUEST_ROWS = st.lists(st.fixed_dictionaries(
    {"task": st.sampled_from(["sentiment", "paraphrase", "red-sentiment", "weather", "", None, 1, ["x"]])},
    optional={"sentence": st.text(max_size=30) | st.none() | st.integers(), "sentence1": st.text(max_size=20),
              "sentence2": st.text(max_size=20) | st.just(" ")}), max_size=4)
_CONTENT_TYPES = ["application/json", "text/csv", "application/json; charset=utf-8", "application/json; charset=latin-1",
                  "application/json; x=1", "text/plain", "", None, "application/x-parquet", "text/csv; charset=utf-8"]


@st.composite
def http_bodies(draw: Any) -> tuple[bytes, str | None]:
    """``(body, Content-Type or None)`` for ``POST /invocations``: valid and damaged JSON in MLflow's formats, CSV,
    raw bytes, deep nesting, odd column names."""
    rows = draw(_REQUEST_ROWS)
    kind = draw(st.sampled_from(["records", "split", "csv", "inputs", "json", "deep", "bytes", "params"]))
    content_type = "text/csv" if kind == "csv" else "application/json"
    if draw(st.integers(0, 5)) == 0:
        content_type = draw(st.sampled_from(_CONTENT_TYPES))
    if kind == "records":
        body = json.dumps({"dataframe_records": rows}).encode()
    elif kind == "split":
        columns = draw(st.lists(st.sampled_from(["task", "sentence", "sentence1", "sentence2"]) | st.just(["task"])
                                | st.integers(), max_size=4))
        data = [[r.get(c) if isinstance(c, str) else "x" for c in columns] for r in rows]
        body = json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()
    elif kind == "csv":
        header = draw(st.sampled_from(["task,sentence", "task,sentence,sentence", "task,task,sentence", "sentence",
                                       "task,sentence1,sentence2", "", "\"task", "task,sentence\r"]))
        lines = [header] + [",".join(str(r.get(c.strip('"\r'), "")) for c in header.split(",")) for r in rows]
        lines += draw(st.lists(st.sampled_from(['"unclosed,x', "a,b,c,d,e", "\x00", "sentiment,\"ok\"", "\ud800"]),
                               max_size=2))
        body = "\n".join(lines).encode("utf-8", "surrogatepass")
    elif kind == "inputs":
        body = json.dumps({draw(st.sampled_from(["inputs", "instances"])): rows if draw(st.booleans()) else
                           {"task": [r.get("task") for r in rows], "sentence": [r.get("sentence") for r in rows]}}
                          ).encode()
    elif kind == "json":
        body = json.dumps(draw(_JSON_VALUES), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    elif kind == "deep":
        depth = draw(st.sampled_from([10, 70, 1000, 5000]))
        body = b'{"dataframe_records": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "bytes":
        body = draw(st.binary(max_size=60))
    else:
        params = draw(st.sampled_from([{"max_new_tokens": -1}, {"max_new_tokens": "x"}, [1], "x", {"a": [1]}, None]))
        body = json.dumps({"dataframe_records": rows, "params": params}).encode()
    return body, content_type


def check_http(server: Any, case: tuple[bytes, str | None]) -> None:
    """2xx: a JSON object with a ``predictions`` list; 4xx: a body with no traceback, no ``stack_trace`` and no
    site-packages path; never 5xx."""
    body, content_type = case
    status, _, text = post(server, "/invocations", body, {"Content-Type": content_type} if content_type else {})
    if status >= 500:
        raise Unanswered(f"HTTP {status}: {text[:300]}")
    if status >= 400:
        if "Traceback" in text or "site-packages" in text or "stack_trace" in text:
            raise Unanswered(f"HTTP {status} with a traceback: {text[:300]}")
        return
    answer = json.loads(text)
    if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
        raise Unanswered(f"HTTP {status} without predictions: {text[:300]}")


def make_edit_file(folder: Path) -> Path:
    """A RED edit of a tiny random GPT-2 classifier, saved in ``folder`` (what the edit surface damages)."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=2, bos_token_id=0,
                   eos_token_id=0))
    edited = red.attach(model, red.EditConfig())
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(0.1)
    return edited.save(Path(folder) / "edit", base_model="tiny-gpt2",
                       extra={"task_type": "classification", "label_list": ["neg", "pos"], "text_columns": ["text"]})
