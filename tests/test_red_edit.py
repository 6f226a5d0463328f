"""RED edits: identity at init, gradients only on edit vectors, exact merge, export, generate."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

import red
from red import EditConfig, attach

KINDS = ["bert", "roberta", "gpt2", "llama", "t5"]


def _inputs(kind: str, batch: int = 3, length: int = 7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "t5":
        out["decoder_input_ids"] = torch.randint(3, 90, (batch, 4), generator=g)
    return out


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _randomize(edited, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_attached_at_init_equals_base_and_keeps_state_dict_keys(make_tiny, kind):
    model = make_tiny(kind)
    batch = _inputs(kind)
    before = _logits(model, batch)
    keys = list(model.state_dict())
    edited = attach(model)
    assert torch.equal(_logits(edited, batch), before)
    assert list(model.state_dict()) == keys
    expected_layers = 4 if kind == "t5" else 2  # T5: encoder and decoder blocks
    assert len(edited.targets) == expected_layers
    assert edited.num_edit_parameters == 2 * 32 * expected_layers


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "llama"])
def test_gradients_reach_only_edit_vectors_and_head(make_tiny, kind):
    head = "cls" if kind == "roberta" else "lm"
    model = make_tiny(kind, head=head)
    edited = attach(model)
    batch = _inputs(kind)
    out = edited(**batch)
    out.logits.float().pow(2).mean().backward()
    head_params = set(map(id, edited.head_parameters().values()))
    for name, p in model.named_parameters():
        if id(p) in head_params:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in edited.edit_parameters())
    assert bool(head_params) == (head == "cls")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("position", ["ffn", "attn", "ffn+attn"])
def test_merge_is_exact_and_unmerge_restores(make_tiny, kind, position):
    model = make_tiny(kind)
    batch = _inputs(kind)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    edited = attach(model, EditConfig(position=position))
    _randomize(edited)
    attached = _logits(edited, batch)
    edited.merge()
    assert edited.merged
    torch.testing.assert_close(_logits(edited, batch), attached, atol=1e-5, rtol=0)
    edited.unmerge()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, base_state[k], atol=1e-6, rtol=1e-5)
    assert set(model.state_dict()) == set(base_state)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_exported_merged_checkpoint_reloads_with_same_logits(make_tiny, kind, tmp_path):
    model = make_tiny(kind)
    batch = _inputs(kind)
    edited = attach(model)
    _randomize(edited)
    attached = _logits(edited, batch)
    edited.export_merged(tmp_path / "merged")
    auto = AutoModelForCausalLM if kind != "bert" else type(model)
    reloaded = auto.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_logits(reloaded, batch), attached, atol=1e-5, rtol=0)
    if kind == "llama":
        assert reloaded.config.mlp_bias is True  # the bias survived the round trip
    assert not edited.merged  # export leaves the live model attached, unmerged


def test_export_refuses_to_drop_t5_bias_but_allows_scale_only(make_tiny, tmp_path):
    model = make_tiny("t5")
    edited = attach(model)
    _randomize(edited)
    with pytest.raises(red.MergeError, match="no bias"):
        edited.export_merged(tmp_path / "m")
    edited.detach()
    edited = attach(model, EditConfig(kind="scale"))
    _randomize(edited)
    batch = _inputs("t5")
    attached = _logits(edited, batch)
    edited.export_merged(tmp_path / "m2")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "m2").eval()
    torch.testing.assert_close(_logits(reloaded, batch), attached, atol=1e-5, rtol=0)


def test_minilm_merge_and_merged_checkpoint(minilm_path, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    edited = attach(model)
    assert edited.num_edit_parameters == 2 * 384 * 6
    assert edited.head_names == ["classifier"]
    _randomize(edited)
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    attached = _logits(edited, batch)
    edited.export_merged(tmp_path / "merged")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_logits(reloaded, batch), attached, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_ablation_kinds_have_half_the_parameters(make_tiny, kind):
    edited = attach(make_tiny("llama"), EditConfig(kind=kind))
    assert edited.num_edit_parameters == 32 * 2


def test_layer_selection(make_tiny):
    edited = attach(make_tiny("gpt2"), EditConfig(layers=[1]))
    assert [t.name for t in edited.targets] == ["transformer.h.1.mlp.c_proj"]
    edited.detach()
    edited = attach(make_tiny("gpt2"), EditConfig(exclude_layers=[1]))
    assert [t.layer for t in edited.targets] == [0]


def test_unknown_architecture_explains_explicit_targets(make_tiny):
    model = make_tiny("llama")
    model.config.model_type = "brand-new-arch"
    with pytest.raises(red.UnknownArchitectureError, match="target_modules"):
        attach(model)
    edited = attach(model, EditConfig(target_modules=[r"layers\.(\d+)\.mlp\.down_proj$"]))
    assert len(edited.targets) == 2


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="position"):
        EditConfig(position="ffm")
    with pytest.raises(ValueError, match="kind"):
        EditConfig(kind="scaling")
    with pytest.raises(ValueError, match="extra_field"):
        EditConfig(extra_field=1)


def test_fp32_vectors_on_bf16_base(make_tiny):
    model = make_tiny("llama").to(torch.bfloat16)
    edited = attach(model)
    assert all(p.dtype == torch.float32 for p in edited.edit_parameters())
    out = edited(**_inputs("llama"))
    assert out.logits.dtype == torch.bfloat16
    out.logits.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in edited.edit_parameters())


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_generate_with_edits_matches_merged(make_tiny, kind):
    model = make_tiny(kind)
    edited = attach(model)
    _randomize(edited, seed=5)
    batch = _inputs(kind, batch=2, length=5)
    batch.pop("decoder_input_ids", None)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    kw = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)
    out = edited.generate(**batch, **kw)
    edited.merge()
    merged = edited.generate(**batch, **kw)
    edited.unmerge()
    base = edited.detach().generate(**batch, **kw)
    assert torch.equal(out.sequences, merged.sequences)
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(merged.scores), atol=1e-5, rtol=0)
    # the edit is really applied at every decoding step
    assert not torch.allclose(torch.stack(out.scores), torch.stack(base.scores), atol=1e-3)


def test_training_a_few_steps_lowers_the_loss(make_tiny):
    """A generated task (label = whether token 7 occurs) is learnable through edits and head alone."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 90, (64, 8), generator=g)
    labels = torch.randint(0, 2, (64,), generator=g)
    ids[labels == 1, 3] = 7
    edited = attach(make_tiny("roberta", head="cls"))
    edited.train()
    optim = torch.optim.AdamW([p for p in edited.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for step in range(40):
        loss = edited(input_ids=ids, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    frozen = [p for n, p in edited.base_model.named_parameters() if not n.startswith("classifier")]
    assert all(p.grad is None for p in frozen)


def test_export_gives_the_same_checkpoint_from_the_merged_and_the_unmerged_state(make_tiny, tmp_path):
    from safetensors.torch import load_file

    model = make_tiny("llama")
    batch = _inputs("llama")
    edited = attach(model)
    _randomize(edited)
    attached = _logits(edited, batch)
    edited.export_merged(tmp_path / "unmerged")
    edited.merge()
    edited.export_merged(tmp_path / "merged")
    assert edited.merged  # exporting leaves the live model as it was
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("unmerged", "merged"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    for folder in ("unmerged", "merged"):
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
        assert reloaded.config.mlp_bias is True  # RED's bias survives the round trip from either state
        torch.testing.assert_close(_logits(reloaded, batch), attached, atol=1e-5, rtol=0)


def test_export_refuses_to_drop_t5_bias_from_the_merged_state_too(make_tiny, tmp_path):
    edited = attach(make_tiny("t5"))
    _randomize(edited)
    edited.merge()
    with pytest.raises(red.MergeError, match="no bias"):
        edited.export_merged(tmp_path / "m")
    assert edited.merged and not (tmp_path / "m").exists()
