"""A fuzz of the edit-file reader: whatever a file holds, reading (and attaching) it either works or raises
redflow's own error with a message, never a raw KeyError/TypeError/ValidationError from deep inside.

Three kinds of damage, ~200 examples each (bounded: no deadline, a few seconds in all):
- one flipped bit anywhere in the file: always refused as EditFileError (the checksum covers every byte
  that is read: tensors and metadata);
- one metadata field replaced by any JSON value or deleted, *with the checksum recomputed* (a buggy or
  hostile writer): EditFileError from ``read_edit``, or a file that reads and then attaches or is
  refused with a RedError;
- one tensor replaced (NaN, another shape or dtype, a new name) or dropped, re-signed: EditFileError
  (a head tensor dropped, renamed or reshaped, which only the model can tell, is refused by ``load_edit``:
  EditMismatchError).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import red
from red import EditConfig, attach, load_edit, read_edit
from red.io import metadata_sha256, tensors_sha256

from conftest import tiny_model

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def edit_file(tmp_path_factory) -> Path:
    edited = attach(tiny_model("gpt2", head="cls"), EditConfig())
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(0.1)
    return edited.save(tmp_path_factory.mktemp("fuzz") / "edit", base_model="tiny-gpt2",
                       extra={"task_type": "classification", "label_list": ["neg", "pos"], "text_columns": ["text"]})


def _parts(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return load_file(str(path)), json.loads(f.metadata()["redflow"])


def _write(tensors: dict[str, torch.Tensor], meta: dict, *, sign: bool = True) -> Path:
    if sign:
        meta["tensors_sha256"] = tensors_sha256(tensors)
        meta["sha256"] = metadata_sha256(meta)
    out = Path(tempfile.mkdtemp()) / "mutated.safetensors"
    save_file(tensors, str(out), metadata={"redflow": json.dumps(meta)})
    return out


def _read_or_refuse(path: Path) -> bool:
    """True if the file reads; a refusal must be an EditFileError that names the file."""
    try:
        read_edit(path)
    except red.EditFileError as exc:
        assert str(path) in str(exc) and len(str(exc)) > 40
        return False
    return True


def _paths(value, prefix=()):
    """Every key/index path in a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
DELETE = object()


@FUZZ
@given(data=st.data())
def test_any_flipped_bit_is_refused(edit_file, data):
    raw = bytearray(edit_file.read_bytes())
    position = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[position // 8] ^= 1 << (position % 8)
    out = Path(tempfile.mkdtemp()) / "flipped.safetensors"
    out.write_bytes(bytes(raw))
    assert not _read_or_refuse(out)


@FUZZ
@given(data=st.data())
def test_any_metadata_field_mutation_is_refused_or_harmless(edit_file, data):
    tensors, meta = _parts(edit_file)
    paths = [p for p in _paths(meta) if p and p[0] not in ("sha256", "tensors_sha256")]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(st.one_of(st.just(DELETE), JSON))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    out = _write(tensors, meta)
    if _read_or_refuse(out):  # a mutation that keeps the file valid (e.g. a new `extra` value) must still load
        try:
            load_edit(tiny_model("gpt2", head="cls"), out)
        except red.RedError as exc:
            assert len(str(exc)) > 40


@FUZZ
@given(data=st.data())
def test_any_tensor_mutation_is_refused(edit_file, data):
    tensors, meta = _parts(edit_file)
    name = data.draw(st.sampled_from(sorted(tensors)))
    kind = data.draw(st.sampled_from(["nan", "inf", "shape", "dtype", "rename", "drop", "extra"]))
    t = tensors[name]
    if kind in ("nan", "inf"):
        t = t.clone()
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = float(kind)
        tensors[name] = t
    elif kind == "shape":
        tensors[name] = torch.zeros(t.numel() + data.draw(st.integers(1, 5)))
    elif kind == "dtype":
        tensors[name] = t.to(data.draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
    elif kind == "rename":
        tensors[name + data.draw(st.sampled_from(["x", ".scale", "_"]))] = tensors.pop(name)
    elif kind == "drop":
        tensors.pop(name)
    else:
        tensors["edit.transformer.h.9.mlp.c_proj.scale"] = torch.ones(32)
    if not tensors:
        tensors["x"] = torch.zeros(1)
    out = _write(tensors, meta)
    if _read_or_refuse(out):  # a head tensor's presence and shape need the model to be seen: attaching refuses it
        assert kind in ("drop", "shape", "rename") and name.startswith("head.")
        with pytest.raises(red.EditMismatchError, match="missing|shape"):
            load_edit(tiny_model("gpt2", head="cls"), out)


# ---- the causes the issue-28 fuzz found, pinned -------------------------------------------------------------
def test_metadata_nested_a_thousand_deep_is_refused_before_parsing(edit_file):
    """Python's JSON reader recurses per level: 1,000+ levels were a RecursionError, now EditFileError."""
    tensors, meta = _parts(edit_file)
    out = Path(tempfile.mkdtemp()) / "deep.safetensors"
    save_file(tensors, str(out), metadata={"redflow": json.dumps(meta)[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"})
    with pytest.raises(red.EditFileError, match="nested 5001 levels deep"):
        read_edit(out)


def test_a_zero_dim_tensor_is_refused_as_a_mismatch_not_a_torch_error(edit_file):
    """The checksum used ``view(uint8)``, which torch refuses on a 0-dim tensor (a RuntimeError)."""
    tensors, meta = _parts(edit_file)
    tensors["edit.scalar"] = torch.tensor(1.0)
    assert not _read_or_refuse(_write(tensors, meta))


def test_a_re_signed_all_nan_weight_sample_is_refused(edit_file):
    """NaN compares false with every bound, so a NaN sample used to pass the weight-magnitude check."""
    import base64

    tensors, meta = _parts(edit_file)
    name = next(iter(meta["base_model"]["weight_sample"]))
    n = len(base64.b64decode(meta["base_model"]["weight_sample"][name])) // 2
    nan = torch.full((n,), float("nan"), dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    meta["base_model"]["weight_sample"][name] = base64.b64encode(nan).decode()
    out = _write(tensors, meta)
    with pytest.raises(red.EditFileError, match="NaN/inf"):
        read_edit(out)
    from red.fingerprint import sample_difference  # the comparison itself also reads NaN as "unknown amount"
    assert sample_difference(meta["base_model"]["weight_sample"], meta["base_model"]["weight_sample"])[0] == float("inf")
