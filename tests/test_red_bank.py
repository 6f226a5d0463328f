"""EditBank: K tasks in one batch give the same results as each task alone."""
from __future__ import annotations

import copy

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
    with pytest.raises(red.EditMismatchError, match="fingerprint"):
        EditBank(make_tiny("gpt2", seed=7), paths)


# ---- tasks with different heads in one bank ------------------------------------------------------
def _head_edit(base_path, tmp_path, name, *, num_labels=None, regression=False, seed=0, loaded=None):
    """A RED edit + head trained (perturbed) on a classification or regression model loaded from ``base_path``
    (or a copy of ``loaded``, that model already loaded with these settings)."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"num_labels": 1, "problem_type": "regression"} if regression else {"num_labels": num_labels}
    kwargs["ignore_mismatched_sizes"] = True
    torch.manual_seed(seed)
    model = (copy.deepcopy(loaded) if loaded is not None
             else AutoModelForSequenceClassification.from_pretrained(base_path, **kwargs).eval())
    edited = attach(model, EditConfig())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(edited.edit_parameters()) + list(edited.head_parameters().values()):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    extra = {"task_type": "regression" if regression else "classification"}
    return edited.save(tmp_path / name, extra=extra), kwargs


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_tasks_with_2_4_labels_and_regression_share_a_bank(make_tiny, tmp_path, kind):
    from transformers import AutoModelForSequenceClassification

    base_path = tmp_path / "base"
    make_tiny(kind, head="cls").save_pretrained(base_path)
    specs = [("two", dict(num_labels=2)), ("four", dict(num_labels=4)), ("score", dict(regression=True)),
             ("two-b", dict(num_labels=2, seed=5))]
    files = [_head_edit(base_path, tmp_path, name, **kw) for name, kw in specs]
    bank = EditBank(AutoModelForSequenceClassification.from_pretrained(base_path).eval(), [p for p, _ in files])
    assert bank.output_widths == [2, 4, 1, 2]
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, 90, (6, 7), generator=g), "attention_mask": torch.ones(6, 7, dtype=torch.long)}
    task_ids = [1, 0, 2, 3, 1, 2]
    with torch.no_grad():
        logits = bank(**batch, task_ids=task_ids).logits
    assert logits.shape == (6, 4)
    for row, (task, part) in enumerate(zip(task_ids, bank.split_outputs(logits, task_ids))):
        path, kwargs = files[task]
        alone = load_edit(AutoModelForSequenceClassification.from_pretrained(base_path, **kwargs).eval(), path)
        with torch.no_grad():
            want = alone(**{k: v[row:row + 1] for k, v in batch.items()}).logits[0]
        torch.testing.assert_close(part, want, atol=1e-5, rtol=0)
        assert torch.isnan(logits[row, want.shape[0]:]).all()  # padding can never be mistaken for a score
    with pytest.raises(red.EditConfigError, match="different heads"):
        bank(**batch, task_ids=task_ids, labels=torch.zeros(6, dtype=torch.long))


def test_sixteen_tasks_of_four_head_widths_in_one_batch_equal_each_task_alone(make_tiny, tmp_path, monkeypatch):
    """K = 16 (2, 3, 4 labels and regression, RoBERTa's two-layer head: the stacked, vmapped path): every row as its
    task alone; and the host syncs of a call do not grow with the number of tasks in it (issue 21: one batched
    op per head shape, no per-task loop)."""
    from transformers import AutoModelForSequenceClassification

    base_path = tmp_path / "base"
    make_tiny("roberta", head="cls").save_pretrained(base_path)
    kinds = [dict(num_labels=2), dict(num_labels=3), dict(num_labels=4), dict(regression=True)]
    loaded = []  # one load per head shape; each task's edit and its "alone" model are copies of it
    for kind in kinds:
        path, kwargs = _head_edit(base_path, tmp_path, "probe", **kind)
        loaded.append(AutoModelForSequenceClassification.from_pretrained(base_path, **kwargs).eval())
    files = [_head_edit(base_path, tmp_path, f"t{k}", seed=k, loaded=loaded[k % 4], **kinds[k % 4]) for k in range(16)]
    bank = EditBank(AutoModelForSequenceClassification.from_pretrained(base_path).eval(), [p for p, _ in files])
    assert bank.output_widths == [2, 3, 4, 1] * 4
    g = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(3, 90, (16, 5), generator=g), "attention_mask": torch.ones(16, 5, dtype=torch.long)}
    every = list(range(15, -1, -1))             # all 16 tasks, one row each
    four = [0, 1, 2, 3] * 4                      # 4 tasks, the same four head shapes
    syncs = {"n": 0}
    for method in ("tolist", "item", "nonzero", "unique"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            syncs["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    counts = []
    with torch.no_grad():
        for ids in (every, four):
            syncs["n"] = 0
            logits = bank(**batch, task_ids=ids).logits
            counts.append(syncs["n"])
    monkeypatch.undo()
    assert counts[0] == counts[1], f"host syncs per call: {counts} for 16 vs 4 tasks present"
    with torch.no_grad():
        logits = bank(**batch, task_ids=every).logits
    for task in range(16):
        rows = [r for r, t in enumerate(every) if t == task]
        path, kwargs = files[task]
        alone = load_edit(copy.deepcopy(loaded[task % 4]), path)
        with torch.no_grad():
            want = alone(**{k: v[rows] for k, v in batch.items()}).logits
        got = logits[rows]
        torch.testing.assert_close(got[:, : want.shape[1]], want, atol=1e-5, rtol=0)
        assert torch.isnan(got[:, want.shape[1]:]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stacked_linear_heads_round_as_the_task_alone_and_an_empty_batch_of_mixed_widths_answers(dtype):
    """A half-precision linear head adds its bias inside the product (one rounding, as ``nn.Linear``), so each row equals
    its task alone exactly; an empty batch of heads of several widths gives an empty output of the widest width; a
    state's stacked head can be deep-copied (its per-thread skeletons are not copied)."""
    from red.bank_heads import StackedHead

    g = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(64, 3).to(dtype)
    own = [{"weight": torch.randn(3, 64, generator=g).to(dtype), "bias": torch.randn(3, generator=g).to(dtype)}
           for _ in range(2)] + [{"weight": torch.randn(2, 64, generator=g).to(dtype), "bias": torch.randn(2).to(dtype)}]
    head = StackedHead(base, own)
    x, ids = torch.randn(4, 5, 64, generator=g).to(dtype), torch.tensor([0, 1, 1, 0])
    alone = torch.stack([torch.nn.functional.linear(x[i], own[t]["weight"], own[t]["bias"]) for i, t in enumerate(ids)])
    assert torch.equal(head.run(base, x, ids, (), {}), alone)
    empty = head.run(base, x[:0], ids[:0], (), {})
    assert empty.shape == (0, 5, 3)
    assert torch.equal(copy.deepcopy(head).run(base, x, ids, (), {}), alone)


def test_a_large_non_linear_head_goes_in_row_chunks_each_row_as_its_task_alone(monkeypatch):
    """A head whose per-row copy would pass ``GATHER_LIMIT`` for the whole batch (RoBERTa-base's dense + out_proj at
    29 rows and more) is gathered in chunks of rows, still one batched op per chunk whatever the tasks in it: never
    one call (and host sync) per task."""
    import red.bank_heads as bank_heads

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    own = [{name: torch.randn(p.shape, generator=g) for name, p in base.named_parameters()} for _ in range(3)]
    head = bank_heads.StackedHead(base, own)
    size = sum(t.numel() for t in own[0].values())
    monkeypatch.setattr(bank_heads, "GATHER_LIMIT", 2 * size)  # two rows per chunk
    monkeypatch.setattr(bank_heads.StackedHead, "_task_by_task", lambda *a, **k: pytest.fail("went task by task"))
    x, ids = torch.randn(7, 8, generator=g), torch.tensor([2, 0, 1, 1, 0, 2, 2])
    with torch.no_grad():
        got = head.run(base, x, ids, (), {})
        want = torch.stack([torch.func.functional_call(base, own[t], (x[i:i + 1],))[0] for i, t in enumerate(ids)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
