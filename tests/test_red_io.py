"""Edit files: safetensors + metadata round trip, and refusals that name the problem and the fix."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import red
from red import EditConfig, attach, load_edit, read_edit


def _trained_like(model, seed=0, **cfg):
    edited = attach(model, EditConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return edited


def _batch():
    return {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}


def test_round_trip_restores_outputs_and_metadata(make_tiny, tmp_path):
    edited = _trained_like(make_tiny("roberta", head="cls"), kind="scale+bias", position="ffn+attn")
    with torch.no_grad():
        edited.base_model.classifier.out_proj.weight.add_(1.0)  # the trained head travels with the edit
        expected = edited(**_batch()).logits
    path = edited.save(tmp_path / "task", base_model="tiny-roberta", revision="abc", extra={"labels": ["neg", "pos"]})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    tensors, meta = read_edit(path)
    assert meta["method"] == "red" and meta["config"]["position"] == "ffn+attn"
    assert meta["base_model"]["name"] == "tiny-roberta" and meta["base_model"]["revision"] == "abc"
    assert meta["extra"] == {"labels": ["neg", "pos"]}
    assert any(k.startswith("head.classifier.") for k in tensors)
    fresh = make_tiny("roberta", head="cls")  # same seed: same base weights, fresh head
    loaded = load_edit(fresh, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_batch()).logits, expected, atol=0, rtol=0)


def test_file_holds_no_pickle(make_tiny, tmp_path):
    path = _trained_like(make_tiny("gpt2")).save(tmp_path / "e.safetensors")
    head = path.read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    json.loads(path.read_bytes()[8:8 + header_len])  # safetensors: an 8-byte length then a JSON header, then raw data


def test_refuses_other_base_weights(make_tiny, tmp_path):
    path = _trained_like(make_tiny("gpt2", seed=0)).save(tmp_path / "e")
    with pytest.raises(red.EditMismatchError, match="fingerprint"):
        load_edit(make_tiny("gpt2", seed=1), path)


def test_refuses_other_architecture_and_shape(make_tiny, tmp_path):
    path = _trained_like(make_tiny("gpt2")).save(tmp_path / "e")
    with pytest.raises(red.EditMismatchError, match="gpt2.*llama|Load the base model"):
        load_edit(make_tiny("llama"), path)
    from transformers import GPT2Config, GPT2LMHeadModel

    wider = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=48, n_layer=2, n_head=4, n_positions=64))
    with pytest.raises(red.EditMismatchError, match="widths"):
        load_edit(wider, path)


def test_refused_load_leaves_model_untouched(make_tiny, tmp_path):
    path = _trained_like(make_tiny("gpt2", seed=0)).save(tmp_path / "e")
    other = make_tiny("gpt2", seed=1)
    before = other(**_batch()).logits
    with pytest.raises(red.EditMismatchError):
        load_edit(other, path)
    torch.testing.assert_close(other(**_batch()).logits, before, atol=0, rtol=0)


def test_truncated_file_fails_cleanly(make_tiny, tmp_path):
    path = _trained_like(make_tiny("llama")).save(tmp_path / "e")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(red.EditFileError, match="truncated or corrupt"):
        read_edit(path)


def test_tampered_tensor_fails_cleanly(make_tiny, tmp_path):
    path = _trained_like(make_tiny("llama")).save(tmp_path / "e")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(red.EditFileError, match="checksum"):
        load_edit(make_tiny("llama"), path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(red.EditFileError, match="without redflow metadata"):
        read_edit(tmp_path / "foreign.safetensors")
    with pytest.raises(red.EditFileError, match="does not exist"):
        read_edit(tmp_path / "missing.safetensors")


def test_fingerprint_is_stable_across_dtypes(make_tiny):
    fp32 = attach(make_tiny("llama")).base_fingerprint
    bf16 = attach(make_tiny("llama").to(torch.bfloat16)).base_fingerprint
    assert fp32 == bf16


def test_save_refuses_merged_state(make_tiny, tmp_path):
    edited = _trained_like(make_tiny("gpt2")).merge()
    with pytest.raises(red.EditFileError, match="unmerge"):
        edited.save(tmp_path / "e")
