"""ReFT (LoReFT, DiReFT) beside RED: where it intervenes, that it trains, and that it survives a file.

Specifications, on tiny real models:
- positions are the first f and last l *prompt* tokens of each row, under any padding, never twice;
- LoReFT is the identity when its learned source equals Rh, and R keeps orthonormal rows while training;
- padding side and batching do not change what a row computes, in forward and in generate();
- generate() edits the prompt pass only: generated tokens are computed by the plain model;
- edit files round-trip and refuse other weights; merging is refused with the reason.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import red
from red import EditConfig, attach, load_edit, read_edit
from red.methods.reft.layer import DiReFT, LoReFT, NodiReFT
from red.methods.reft.model import count_reft_parameters
from red.methods.reft.positions import prompt_mask, split_first_last, to_indices
from red.params import load_config, meta_model

PAD = 0
PROMPTS = [[11, 12, 13, 14, 15, 16, 17, 18, 19], [21, 22, 23, 24, 25], [31, 32]]  # 9, 5 and 2 tokens


def reft(model, method: str = "loreft", **kw):
    """Attach a small ReFT edit: rank 2, first 3 + last 3 prompt tokens (so short prompts overlap)."""
    return attach(model, EditConfig(method=method, rank=2, positions="f3+l3", **kw))


def pad(rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
    """A padded batch with position_ids from the mask, as generate() builds them (left padding needs them)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, cols] = torch.tensor(row)
        mask[i, cols] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


def real_logits(model, rows: list[list[int]], side: str) -> list[torch.Tensor]:
    """Each row's logits at its real tokens only."""
    batch = pad(rows, side)
    with torch.no_grad():
        logits = model(**batch).logits
    return [logits[i][batch["attention_mask"][i].bool()] for i in range(len(rows))]


def units(edited) -> list[torch.nn.Module]:
    return [u for edit in edited.edits.values() for u in edit.units.values()]


# ---- positions (red/methods/reft/positions.py) -----------------------------------------------
def test_prompt_tokens_follow_the_mask_and_stop_at_the_first_label():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert prompt_mask(mask, 2, 5).tolist() == mask.bool().tolist()
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, 5, 6, -100, -100]])  # prompt labels are -100
    assert prompt_mask(mask, 2, 5, labels).long().tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert prompt_mask(None, 1, 3).all()
    # plain language modelling (labels = input_ids, even on padding): no split, the whole row is prompt
    assert torch.equal(prompt_mask(mask, 2, 5, torch.ones(2, 5, dtype=torch.long)), mask.bool())


def test_first_and_last_positions_under_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]]).bool()   # 8 prompt tokens after 2 pads
    first, last = split_first_last(left, 3, 3)
    assert first.nonzero()[:, 1].tolist() == [2, 3, 4]
    assert last.nonzero()[:, 1].tolist() == [7, 8, 9]
    first, last = split_first_last(left.flip(1), 3, 3)                # the same prompt, right padded
    assert first.nonzero()[:, 1].tolist() == [0, 1, 2]
    assert last.nonzero()[:, 1].tolist() == [5, 6, 7]
    idx, valid = to_indices(last, 3)
    assert idx.tolist() == [[5, 6, 7]] and valid.all()


@pytest.mark.parametrize("f,l", [(3, 3), (1, 4), (4, 1), (0, 3), (3, 0), (7, 7)])
def test_short_prompts_are_clipped_and_no_token_is_edited_twice(f, l):
    for n in range(0, 10):
        prompt = torch.zeros(1, 10, dtype=torch.bool)
        prompt[0, 10 - n:] = True  # left padded
        first, last = split_first_last(prompt, f, l)
        assert not (first & last).any(), (n, f, l)
        assert not ((first | last) & ~prompt).any()
        assert int(first.sum()) <= f and int(last.sum()) <= l
        if n >= f + l:
            assert int(first.sum()) == f and int(last.sum()) == l
        elif f and l:
            # too short for both: every prompt token is edited exactly once, split about evenly
            assert torch.equal(first | last, prompt)
            assert abs(int(first.sum()) - int(last.sum())) <= max(1, abs(f - l)), (n, f, l)
        else:
            assert int((first | last).sum()) == n


# ---- the interventions ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert", "t5"])
def test_loreft_is_the_identity_when_the_source_equals_Rh(make_tiny, kind):
    model = make_tiny(kind)
    batch = pad(PROMPTS, "right")
    batch.pop("position_ids")
    if kind == "t5":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 6]] * len(PROMPTS))
    with torch.no_grad():
        base = model(**batch).logits
    edited = reft(model)
    with torch.no_grad():
        assert not torch.allclose(edited(**batch).logits, base, atol=1e-3)  # pyreft's random start edits
        for unit in units(edited):
            unit.set_identity()
        assert torch.equal(edited(**batch).logits, base)
    # T5: only the encoder sees the prompt, so only encoder blocks are edited
    assert all(".layer." in t.name or ".h." in t.name or ".layers." in t.name or t.name.startswith("encoder.")
               for t in edited.targets)


def test_parameter_counts_and_shared_weights(make_tiny):
    r, d, layers = 2, 32, 2
    per_unit = 2 * r * d + r  # R (or P), W and b
    separate = reft(make_tiny("llama"))
    assert separate.num_edit_parameters == layers * 2 * per_unit
    shared = reft(make_tiny("llama"), share_weights=True)
    assert shared.num_edit_parameters * 2 == separate.num_edit_parameters
    one_side = attach(make_tiny("llama"), EditConfig(method="direft", rank=2, positions="l1"))
    assert one_side.num_edit_parameters == layers * per_unit
    assert reft(make_tiny("gpt2"), "direft", layers=[1]).num_edit_parameters == 2 * per_unit
    with pytest.raises(red.EditConfigError, match="rank"):
        attach(make_tiny("llama"), EditConfig(method="loreft", rank=33))
    # the same count from the architecture alone (no weights), e.g. for the paper's tables
    assert count_reft_parameters(make_tiny("llama"), separate.edit_config) == separate.num_edit_parameters
    llama7b = meta_model(load_config("llama-2-7b"))
    config = EditConfig(method="loreft", rank=4, positions="f7+l7", layers=[0, 8, 16, 24])
    assert count_reft_parameters(llama7b, config) == 4 * 2 * (2 * 4 * 4096 + 4)
    t5 = meta_model(load_config("t5-base"))  # encoder blocks only: the decoder never sees the prompt
    assert count_reft_parameters(t5, EditConfig(method="direft", rank=1, share_weights=True)) == 12 * (2 * 768 + 1)


@pytest.mark.parametrize("method", ["loreft", "direft", "nodireft"])
def test_training_lowers_the_loss_and_keeps_R_orthonormal(make_tiny, method):
    model = make_tiny("llama")
    edited = reft(model, method)
    # prompt + response rows, right padded; prompt and padding labels are -100 (tasks/data/prepare.py's convention)
    batch = pad([p + [40, 41, 42] for p in PROMPTS], "right")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    for i, p in enumerate(PROMPTS):
        labels[i, : len(p)] = -100
    batch["labels"] = labels
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(edited.edit_parameters(), lr=3e-2)
    edited.train()
    losses = []
    for _ in range(12):
        loss = edited(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    edited.eval()
    assert losses[-1] < losses[0] - 0.1 and losses[-1] == min(losses), losses  # a tiny random model: ~0.2 nats
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the base stays frozen
    for unit in units(edited):
        if isinstance(unit, (LoReFT, DiReFT)):  # pyreft's LoreftIntervention and DireftIntervention
            R = unit.R.detach()
            torch.testing.assert_close(R @ R.T, torch.eye(2), atol=1e-5, rtol=0)
        else:  # pyreft's NodireftIntervention: an unconstrained projection
            assert isinstance(unit, NodiReFT) and not hasattr(unit, "rotate")
            P = unit.proj.weight.detach()
            assert not torch.allclose(P @ P.T, torch.eye(2), atol=1e-2)


def test_gradient_checkpointing_edits_the_same_positions_when_blocks_rerun(make_tiny):
    def edit_grads(checkpointing: bool) -> torch.Tensor:
        model = make_tiny("llama")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        edited = reft(model)
        edited.train()
        batch = pad(PROMPTS, "left")
        edited(**batch, labels=batch["input_ids"], use_cache=False).loss.backward()
        return torch.cat([p.grad.flatten() for p in edited.edit_parameters()])

    plain = edit_grads(False)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(edit_grads(True), plain, atol=1e-6, rtol=0)


def test_fp32_interventions_on_a_bf16_base(make_tiny):
    model = make_tiny("llama").to(torch.bfloat16)
    edited = reft(model)
    assert all(p.dtype == torch.float32 for p in edited.edit_parameters())
    out = edited(**pad(PROMPTS, "left"))
    assert out.logits.dtype == torch.bfloat16
    out.logits.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in edited.edit_parameters())


# ---- positions are right in batches, under padding, in generate() ----------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("share_weights", [False, True])
def test_padding_side_and_batching_do_not_change_a_row(make_tiny, kind, share_weights):
    edited = reft(make_tiny(kind), share_weights=share_weights)
    alone = [real_logits(edited, [p], "right")[0] for p in PROMPTS]
    for side in ("left", "right"):
        for got, want in zip(real_logits(edited, PROMPTS, side), alone):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


GEN = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True, pad_token_id=PAD)


def generate(model, rows: list[list[int]], **kw):
    batch = pad(rows, "left")
    batch.pop("position_ids")  # generate() derives them from the mask
    return model.generate(**batch, **{**GEN, **kw})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_generate_equals_one_by_one(make_tiny, kind):
    edited = reft(make_tiny(kind))
    batched = generate(edited, PROMPTS)
    width = max(map(len, PROMPTS))
    for i, p in enumerate(PROMPTS):
        single = generate(edited, [p])
        assert batched.sequences[i, width:].tolist() == single.sequences[0, len(p):].tolist()
        torch.testing.assert_close(torch.stack([s[i] for s in batched.scores]),
                                   torch.stack([s[0] for s in single.scores]), atol=1e-4, rtol=0)
    base = generate(edited.detach(), PROMPTS)
    assert not torch.allclose(torch.stack(batched.scores), torch.stack(base.scores), atol=1e-3)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generate_edits_the_prompt_pass_only(make_tiny, kind):
    """generate()'s scores equal a teacher-forced pass over prompt + generated tokens in which the
    generated tokens are marked as the response (labels), i.e. edited nowhere; with or without a cache."""
    edited = reft(make_tiny(kind))
    out = generate(edited, PROMPTS)
    width = max(map(len, PROMPTS))
    full = out.sequences
    prompt = pad(PROMPTS, "left")["attention_mask"]
    mask = torch.cat([prompt, torch.ones(len(PROMPTS), full.shape[1] - width, dtype=prompt.dtype)], 1)
    labels = full.clone()
    labels[:, :width] = -100
    with torch.no_grad():
        logits = edited(input_ids=full, attention_mask=mask, labels=labels,
                        position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(logits[:, width - 1:-1], torch.stack(out.scores, 1), atol=1e-4, rtol=0)
    # without a KV cache every step recomputes the prompt, which is edited exactly as in the first pass
    no_cache = generate(edited, PROMPTS, use_cache=False)
    assert torch.equal(no_cache.sequences, out.sequences)
    torch.testing.assert_close(torch.stack(no_cache.scores), torch.stack(out.scores), atol=1e-4, rtol=0)


# ---- files, merging, detaching ------------------------------------------------------------
@pytest.mark.parametrize("method", ["loreft", "direft"])
def test_save_load_round_trip_and_fingerprint_refusal(make_tiny, tmp_path, method):
    edited = reft(make_tiny("gpt2"), method)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(0.1)
    want = real_logits(edited, PROMPTS, "left")
    path = edited.save(tmp_path / "edit", base_model="tiny-gpt2")
    _, meta = read_edit(path)
    assert meta["method"] == method and meta["config"]["positions"] == "f3+l3"
    assert meta["edit_parameters"] == edited.num_edit_parameters
    loaded = load_edit(make_tiny("gpt2"), path)
    for got, exp in zip(real_logits(loaded, PROMPTS, "left"), want):
        torch.testing.assert_close(got, exp, atol=1e-6, rtol=0)
    with pytest.raises(red.EditMismatchError, match="fingerprint"):
        load_edit(make_tiny("gpt2", seed=1), path)


def test_merge_is_refused_with_the_reason(make_tiny, tmp_path):
    edited = reft(make_tiny("llama"))
    with pytest.raises(red.MergeError, match="token positions"):
        edited.merge()
    with pytest.raises(red.MergeError, match="token positions"):
        edited.export_merged(tmp_path / "merged")
    assert not edited.merged


def test_detach_gives_the_plain_model_back(make_tiny):
    model = make_tiny("gpt2")
    base = real_logits(model, PROMPTS, "left")
    edited = reft(model)
    assert edited(**pad(PROMPTS, "left")).logits.shape[0] == 3
    plain = edited.detach()
    assert plain is model and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())
    for got, want in zip(real_logits(plain, PROMPTS, "left"), base):
        assert torch.equal(got, want)
