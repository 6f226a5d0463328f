"""EditBank: K tasks in one batch give the same results as each task alone."""
from __future__ import annotations

import pytest
import torch

import red
from red import EditBank, EditConfig, attach, load_edit


def _make_edits(make_tiny, kind, tmp_path, k=3, head="lm", **cfg):
    paths = []
    for i in range(k):
        edited = attach(make_tiny(kind, head=head), EditConfig(**cfg))
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in edited.edit_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            for p in edited.head_parameters().values():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        paths.append(edited.save(tmp_path / f"task{i}"))
    return paths


def _alone(make_tiny, kind, path, batch, head="lm"):
    edited = load_edit(make_tiny(kind, head=head), path)
    with torch.no_grad():
        return edited(**batch).logits


@pytest.mark.parametrize("kind,head", [("gpt2", "lm"), ("llama", "lm"), ("roberta", "cls"), ("t5", "lm")])
def test_mixed_batch_equals_each_task_alone(make_tiny, tmp_path, kind, head):
    paths = _make_edits(make_tiny, kind, tmp_path, head=head)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 90, (6, 7), generator=g), "attention_mask": torch.ones(6, 7, dtype=torch.long)}
    if kind == "t5":
        batch["decoder_input_ids"] = torch.randint(3, 90, (6, 3), generator=g)
    task_ids = [0, 1, 2, 2, 1, 0]
    bank = EditBank(make_tiny(kind, head=head), paths)
    with torch.no_grad():
        mixed = bank(**batch, task_ids=task_ids).logits
    for row, task in enumerate(task_ids):
        alone = _alone(make_tiny, kind, paths[task], {k: v[row:row + 1] for k, v in batch.items()}, head)
        torch.testing.assert_close(mixed[row:row + 1], alone, atol=1e-5, rtol=0)


def test_bank_generate_matches_per_task_generate(make_tiny, tmp_path):
    paths = _make_edits(make_tiny, "gpt2", tmp_path, k=2)
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    bank = EditBank(make_tiny("gpt2"), paths)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    mixed = bank.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), task_ids=[1, 0], **kw)
    for row, task in enumerate([1, 0]):
        alone = load_edit(make_tiny("gpt2"), paths[task]).generate(
            input_ids=prompt[row:row + 1], attention_mask=torch.ones(1, 4, dtype=torch.long), **kw)
        assert torch.equal(mixed[row:row + 1], alone)
    beams = bank.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), task_ids=[1, 0],
                          num_beams=2, **kw)  # rows are expanded for beams; task ids follow
    assert beams.shape[0] == 2


def test_bank_merges_tasks_with_different_layers(make_tiny, tmp_path):
    a = _make_edits(make_tiny, "gpt2", tmp_path / "a", k=1, layers=[0])[0]
    b = _make_edits(make_tiny, "gpt2", tmp_path / "b", k=1, layers=[1])[0]
    bank = EditBank(make_tiny("gpt2"), [a, b])
    batch = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 7]])}
    with torch.no_grad():
        mixed = bank(**batch, task_ids=[0, 1]).logits
    torch.testing.assert_close(mixed[:1], _alone(make_tiny, "gpt2", a, {"input_ids": batch["input_ids"][:1]}), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1:], _alone(make_tiny, "gpt2", b, {"input_ids": batch["input_ids"][1:]}), atol=1e-5, rtol=0)


def test_bank_errors_are_clear(make_tiny, tmp_path):
    paths = _make_edits(make_tiny, "gpt2", tmp_path, k=2)
    bank = EditBank(make_tiny("gpt2"), paths)
    with pytest.raises(red.EditConfigError, match="task ids"):
        bank(input_ids=torch.tensor([[1, 2]]), task_ids=[5])
    with pytest.raises(red.EditConfigError, match="no task ids"):
        bank.base_model(input_ids=torch.tensor([[1, 2]]))
    with pytest.raises(red.EditConfigError, match="trained on base weights"):
        EditBank(make_tiny("gpt2", seed=7), paths)
