"""Concurrent callers: every edited model gives each of many overlapping calls from several threads exactly
what the same call gives alone (a model server calls one model from a thread per request).

The calls differ in batch size, length and padding (ReFT's positions differ per call) and in task ids
(an EditBank routes each call's rows by its own ids); a barrier starts the threads together.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from red import EditBank, EditConfig, attach

THREADS = 8


def _calls(n: int = 48, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    calls = []
    for i in range(n):
        rows, length = 1 + i % 4, 3 + (5 * i) % 10
        ids = torch.randint(3, 90, (rows, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, : i % (length - 1)] = 0  # the first row is left padded by a different amount in each call
        calls.append({"input_ids": ids, "attention_mask": mask})
    return calls


def _concurrently(fn, n: int) -> list:
    barrier = threading.Barrier(THREADS)

    def start(i):
        if i < THREADS:
            barrier.wait(timeout=60)
        return fn(i)

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(start, range(n)))


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, i
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"call {i}")


def test_concurrent_forward_calls_of_a_reft_model_equal_sequential_ones(make_tiny):
    edited = attach(make_tiny("llama"), EditConfig(method="loreft", rank=2, positions="f2+l2"))
    calls = _calls()

    def run(i):
        with torch.no_grad():
            return edited(**calls[i]).logits

    want = [run(i) for i in range(len(calls))]
    _same(_concurrently(run, len(calls)), want)


def test_concurrent_generate_calls_of_a_reft_model_equal_sequential_ones(make_tiny):
    edited = attach(make_tiny("gpt2"), EditConfig(method="direft", rank=2, positions="f1+l2"))
    prompts = [torch.randint(3, 90, (1 + i % 3, 2 + i % 5), generator=torch.Generator().manual_seed(i))
               for i in range(16)]

    def run(i):
        out = edited.generate(input_ids=prompts[i], attention_mask=torch.ones_like(prompts[i]), max_new_tokens=4,
                              do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        return torch.stack(out.scores, 1)

    want = [run(i) for i in range(len(prompts))]
    _same(_concurrently(run, len(prompts)), want)


def test_concurrent_calls_of_an_edit_bank_equal_sequential_ones(make_tiny, tmp_path):
    paths = []
    for k in range(3):
        edited = attach(make_tiny("roberta", head="cls"), EditConfig())
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in list(edited.edit_parameters()) + list(edited.head_parameters().values()):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        paths.append(edited.save(tmp_path / f"task{k}"))
    bank = EditBank(make_tiny("roberta", head="cls"), paths)
    calls = _calls()
    ids = [[(i + r) % 3 for r in range(c["input_ids"].shape[0])] for i, c in enumerate(calls)]

    def run(i):
        with torch.no_grad():
            return bank(**calls[i], task_ids=ids[i]).logits

    want = [run(i) for i in range(len(calls))]
    _same(_concurrently(run, len(calls)), want)


def test_concurrent_calls_of_a_red_model_equal_sequential_ones(make_tiny):
    edited = attach(make_tiny("gpt2"), EditConfig())
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(0.1)
    calls = _calls(24)

    def run(i):
        with torch.no_grad():
            return edited(**calls[i]).logits

    want = [run(i) for i in range(len(calls))]
    _same(_concurrently(run, len(calls)), want)


def test_loads_from_several_threads_leave_weight_tying_intact(tiny_checkpoints):
    """transformers swaps PreTrainedModel.tie_weights/init_weights during a load and puts back what it found;
    two loads at once used to leave the no-op in place for the rest of the process (a tied GPT-2 or T5 then
    "lacks" its lm_head). Loads through red.pretrained take turns, so the class keeps its methods."""
    from transformers import PreTrainedModel

    from red.pretrained import load_base_model

    originals = (PreTrainedModel.tie_weights, PreTrainedModel.init_weights)
    jobs = [(tiny_checkpoints["gpt2"], "causal_lm"), (tiny_checkpoints["t5"], "seq2seq")] * 4
    with ThreadPoolExecutor(4) as pool:
        fresh = list(pool.map(lambda job: load_base_model(*job)[1], jobs))
    assert fresh == [[]] * len(jobs)
    assert (PreTrainedModel.tie_weights, PreTrainedModel.init_weights) == originals
    model, after = load_base_model(tiny_checkpoints["gpt2"], "causal_lm")
    assert after == [] and model.lm_head.weight is model.transformer.wte.weight
