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


# ---- everything that is loaded is covered by the checksum ---------------------------------------
def _rewrite_metadata(path, change, tensors=None):
    """Rewrite the file with ``change(meta)`` applied (and ``tensors`` if given); the checksum is left as it was
    unless ``change`` recomputes it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["redflow"])
    change(meta)
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata={"redflow": json.dumps(meta)})


@pytest.mark.parametrize("field,change", [
    ("labels", lambda m: m["extra"]["label_list"].reverse()),
    ("base path", lambda m: m["base_model"].update(name="/elsewhere/other-model")),
    ("model class", lambda m: m["base_model"].update({"class": "GPT2LMHeadModel"})),
    ("config", lambda m: m["config"].update(kind="scale")),
    ("task type", lambda m: m["extra"].update(task_type="regression")),
])
def test_metadata_changes_are_refused_like_tensor_changes(make_tiny, tmp_path, field, change):
    path = _trained_like(make_tiny("gpt2", head="cls")).save(
        tmp_path / "e", extra={"label_list": ["negative", "positive"], "task_type": "classification"})
    _rewrite_metadata(path, change)
    with pytest.raises(red.EditFileError, match="checksum"):
        read_edit(path)


def test_non_finite_edits_are_neither_written_nor_read(make_tiny, tmp_path):
    from red.io import metadata_sha256, tensors_sha256

    edited = _trained_like(make_tiny("gpt2"))
    path = edited.save(tmp_path / "e")
    with torch.no_grad():
        edited.edit_parameters()[0][3] = float("nan")
    with pytest.raises(red.EditFileError, match="NaN"):
        edited.save(tmp_path / "nan")
    assert not (tmp_path / "nan.safetensors").exists()
    tensors = load_file(str(path))  # a file that says NaN with a valid checksum (another writer)
    name = sorted(tensors)[0]
    tensors[name][0] = float("inf")

    def resign(meta):
        meta["tensors_sha256"] = tensors_sha256(tensors)
        meta["sha256"] = metadata_sha256(meta)

    _rewrite_metadata(path, resign, tensors)
    with pytest.raises(red.EditFileError, match="NaN/inf"):
        read_edit(path)


def test_loading_onto_another_architecture_is_an_edit_mismatch(tiny_checkpoints, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from red.pretrained import load_pretrained_edit

    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints["bert"], num_labels=2)
    path = _trained_like(model).save(tmp_path / "e", base_model=tiny_checkpoints["bert"],
                                     extra={"task_type": "classification", "label_list": ["a", "b"]})
    with pytest.raises(red.EditMismatchError, match="bert.*gpt2|gpt2.*bert"):
        load_pretrained_edit(path, base_model=tiny_checkpoints["gpt2"], device="cpu")
    with pytest.raises(red.EditMismatchError, match="bert"):
        load_edit(AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints["gpt2"], num_labels=2), path)


def test_an_edit_that_cannot_attach_to_another_size_is_an_edit_mismatch(make_tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = attach(make_tiny("llama"), EditConfig(method="loreft", rank=8, layers=[1])).save(tmp_path / "e")
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
                                          num_attention_heads=1, num_key_value_heads=1))
    with pytest.raises(red.EditMismatchError, match="cannot be attached"):
        load_edit(narrow, path)
