"""Half precision: small edits survive a bf16 base, one checkpoint has one fingerprint in every dtype,
and a run trained in bf16 loads its base in bf16 and is served in it by default.

Specifications:
- RED computes ``s * h + b`` in fp32 and rounds the result once (attached, in an EditBank, merged), so an
  edit of ``s = 1.003`` (which is 1.0 in bf16) still changes a bf16 model, by exactly what fp32 says;
- fp32, fp16 and bf16 loads of one checkpoint share a fingerprint, and a refusal caused by the dtype says so;
- ``precision: bf16`` loads the frozen base in bf16 (trainable tensors stay fp32), records it in the edit
  file, and the pyfunc serves in it unless its config says otherwise.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

import red
from red import EditBank, EditConfig, attach, load_edit
from red.targets import find_targets

BATCH = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]),
         "attention_mask": torch.ones(2, 6, dtype=torch.long)}


def _small(edited, scale: float = 1.003, bias: float = 0.0):
    with torch.no_grad():
        for edit in edited.edits.values():
            edit.scale.fill_(scale)
            edit.bias.fill_(bias)
    return edited


def _capture(model, names):
    """Forward hooks that record each named module's output (registered before or after the edit's hook)."""
    seen, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda m, a, out, n=name: seen.__setitem__(n, out)))
    return seen, handles


def test_a_small_edit_on_a_bf16_base_is_computed_in_fp32_and_rounded_once(make_tiny):
    model = make_tiny("llama").to(torch.bfloat16)
    with torch.no_grad():
        base = model(**BATCH).logits
    names = [t.name for t in find_targets(model, EditConfig())]
    raw, _ = _capture(model, names)                  # before the edit's hook: the layer's own output
    edited = _small(attach(model, EditConfig()), scale=1.003, bias=0.0)
    out, _ = _capture(model, names)                  # after it: the edited output
    with torch.no_grad():
        logits = edited(**BATCH).logits
    assert not torch.equal(logits, base)             # 1.003 rounds to 1.0 in bf16: casting s first loses the edit
    for name in names:
        assert out[name].dtype == torch.bfloat16
        reference = (raw[name].float() * 1.003).to(torch.bfloat16)   # fp32 math, one rounding of the result
        assert torch.equal(out[name], reference), name


def test_a_bank_on_a_bf16_base_applies_small_edits_like_each_edit_alone(make_tiny, tmp_path):
    paths = [_small(attach(make_tiny("llama"), EditConfig()), scale).save(tmp_path / f"t{i}")
             for i, scale in enumerate((1.003, 1.002))]  # both are 1.0 in bf16
    model = make_tiny("llama").to(torch.bfloat16)
    with torch.no_grad():
        base = model(**BATCH).logits
    bank = EditBank(model, paths)
    with torch.no_grad():
        mixed = bank(**BATCH, task_ids=[1, 0]).logits
    assert not torch.equal(mixed, base)
    for row, task in enumerate([1, 0]):
        alone = load_edit(make_tiny("llama").to(torch.bfloat16), paths[task])
        with torch.no_grad():
            want = alone(**{k: v[row:row + 1] for k, v in BATCH.items()}).logits
        torch.testing.assert_close(mixed[row:row + 1], want, atol=0, rtol=0)


def test_merging_into_bf16_weights_computes_in_fp32(make_tiny):
    model = make_tiny("llama").to(torch.bfloat16)
    edited = _small(attach(model, EditConfig()), scale=1.003, bias=2e-3)
    target = edited.targets[0]
    layer = dict(model.named_modules())[target.name]
    weight = layer.weight.detach().clone()
    edited.merge()
    assert layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, (weight.float() * 1.003).to(torch.bfloat16))
    assert not torch.equal(layer.weight, weight)
    assert torch.equal(layer.bias, torch.full_like(layer.bias, 2e-3))  # Llama's down_proj had no bias: b' = b


# ---- one fingerprint for every dtype ----------------------------------------------------------
@pytest.fixture
def llama_checkpoint(tmp_path, make_tiny):
    path = tmp_path / "llama"
    make_tiny("llama").save_pretrained(path)
    return path


def _trained(model, **config):
    edited = attach(model, EditConfig(**config))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return edited


def test_fp32_fp16_and_bf16_loads_of_one_checkpoint_share_a_fingerprint(llama_checkpoint, tmp_path):
    fp32 = AutoModelForCausalLM.from_pretrained(llama_checkpoint)
    path = _trained(fp32).save(tmp_path / "edit", base_model=str(llama_checkpoint))
    assert red.read_edit(path)[1]["base_model"]["dtype"] == "float32"
    fingerprints = set()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        loaded = load_edit(AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=dtype), path)
        fingerprints.add(loaded.base_fingerprint)
    assert len(fingerprints) == 1


def test_a_refusal_caused_by_the_dtype_says_so(llama_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(llama_checkpoint)
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] = 1e5  # fine in fp32 and bf16, inf in fp16
    model.save_pretrained(llama_checkpoint)
    path = _trained(AutoModelForCausalLM.from_pretrained(llama_checkpoint)).save(tmp_path / "edit")
    load_edit(AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.bfloat16), path)
    with pytest.raises(red.EditMismatchError, match=r"float16.*float32 or bfloat16"):
        load_edit(AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float16), path)


def test_weights_an_edit_was_merged_into_are_refused(llama_checkpoint, tmp_path):
    edited = _trained(AutoModelForCausalLM.from_pretrained(llama_checkpoint), kind="scale")  # keeps every sign
    path = edited.save(tmp_path / "edit")
    edited.export_merged(tmp_path / "merged")
    with pytest.raises(red.EditMismatchError, match="already merged"):
        load_edit(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), path)


# ---- training in bf16, serving in the training precision ----------------------------------------
class _Dtypes(TrainerCallback):
    def __init__(self):
        self.frozen, self.trainable = set(), set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for p in model.parameters():
            (self.trainable if p.requires_grad else self.frozen).add(p.dtype)


def test_bf16_training_loads_the_base_in_bf16_and_serves_in_it(tmp_path, tiny_checkpoints):
    from registry.serving.pyfunc import load_in_process
    from registry.serving.version_config import build_model_config
    from tasks.data import DataSpec, prepare_data
    from tasks.training import TrainConfig, train

    data = prepare_data(DataSpec(name="sentiment", source="synthetic", task="sentiment", path=tmp_path / "data",
                                 synthetic={"n_train": 32, "n_dev": 16}), seed=0)
    seen = _Dtypes()
    result = train(data, TrainConfig(model=tiny_checkpoints["bert"], precision="bf16", epochs=1, batch_size=16,
                                     max_length=32, learning_rate=1e-2), tmp_path / "out", callbacks=[seen])
    assert seen.frozen == {torch.bfloat16} and seen.trainable == {torch.float32}
    tensors, meta = red.read_edit(result.edit_path)
    assert meta["base_model"]["dtype"] == "bfloat16" and result.params["base_dtype"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in tensors.values())

    config = build_model_config(task="sentiment", task_type="classification", meta=meta, tensors=tensors,
                                text_columns=list(data.text_columns), label_list=data.label_list)
    served = load_in_process(result.edit_path, config)
    assert served.edited.base_model.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    config["serving"]["dtype"] = "float32"
    fp32 = load_in_process(result.edit_path, config)
    assert fp32.edited.base_model.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    texts = {c: ["a wonderful film", "a dull film"] for c in data.text_columns}
    import pandas as pd

    assert len(served.predict(None, pd.DataFrame(texts))) == 2
