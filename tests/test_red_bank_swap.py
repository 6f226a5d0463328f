"""EditBank state swaps: a call in flight finishes on the state it started with, later calls get the new one,
and no call ever mixes two states (what lets a server replace task versions without a restart)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import red
from red import EditBank, EditConfig, attach


def _edits(make_tiny, tmp_path, seeds, **cfg):
    paths = []
    for seed in seeds:
        edited = attach(make_tiny("roberta", head="cls"), EditConfig(**cfg))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in list(edited.edit_parameters()) + list(edited.head_parameters().values()):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        paths.append(edited.save(tmp_path / f"task{seed}"))
    return paths


BATCH = {"input_ids": torch.randint(3, 90, (4, 6), generator=torch.Generator().manual_seed(0)),
         "attention_mask": torch.ones(4, 6, dtype=torch.long)}
IDS = [0, 1, 1, 0]


def _run(bank, state=None):
    with torch.no_grad(), bank.tasks(IDS, state):
        return bank.base_model(**BATCH).logits


def test_a_call_in_flight_finishes_on_its_state_and_the_next_call_gets_the_new_one(make_tiny, tmp_path):
    old = _edits(make_tiny, tmp_path / "old", [1, 2])
    new = _edits(make_tiny, tmp_path / "new", [3, 4], layers=[1])  # the new state edits another layer set
    bank = EditBank(make_tiny("roberta", head="cls"), old, ["a", "b"])
    want_old = _run(bank)
    want_new = _run(bank, bank.load_state(new, ["a", "b"]))
    assert not torch.allclose(want_old, want_new)

    # pause a call after its first edited layer; swap while it waits; let it finish
    layer0 = bank.base_model.roberta.encoder.layer[0].output.dense
    reached, release = threading.Event(), threading.Event()

    def pause(module, args, output):
        if threading.current_thread().name == "in-flight":
            reached.set()
            release.wait(timeout=30)

    handle = layer0.register_forward_hook(pause)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=_run(bank)), name="in-flight")
    thread.start()
    assert reached.wait(timeout=30)
    previous = bank.swap(bank.load_state(new, ["a", "b"]))
    after_swap = _run(bank)          # started after the swap: the new state
    release.set()
    thread.join(timeout=30)
    handle.remove()
    torch.testing.assert_close(result["out"], want_old, atol=0, rtol=0)   # no layer of the new state leaked in
    torch.testing.assert_close(after_swap, want_new, atol=0, rtol=0)
    assert previous.names == ["a", "b"] and bank.state is not previous


def test_concurrent_calls_during_repeated_swaps_each_see_exactly_one_state(make_tiny, tmp_path):
    states_edits = [_edits(make_tiny, tmp_path / "s1", [1, 2]), _edits(make_tiny, tmp_path / "s2", [5, 6])]
    bank = EditBank(make_tiny("roberta", head="cls"), states_edits[0])
    states = [bank.state, bank.load_state(states_edits[1])]
    want = [_run(bank, s) for s in states]
    stop = threading.Event()

    def swapper():
        i = 0
        while not stop.is_set():
            i += 1
            bank.swap(states[i % 2])

    swapping = threading.Thread(target=swapper)
    swapping.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _run(bank), range(60)))
    finally:
        stop.set()
        swapping.join()
    seen = set()
    for out in results:
        matches = [i for i, w in enumerate(want) if torch.equal(out, w)]
        assert len(matches) == 1, "a call mixed two states"
        seen.add(matches[0])
    assert seen  # (which states were seen depends on scheduling; each call saw exactly one)


def test_swap_takes_only_states_of_this_bank(make_tiny, tmp_path):
    paths = _edits(make_tiny, tmp_path, [1])
    bank = EditBank(make_tiny("roberta", head="cls"), paths)
    other = EditBank(make_tiny("roberta", head="cls"), paths)
    with pytest.raises(red.EditConfigError, match="built by this bank"):
        bank.swap(other.state)
    with pytest.raises(red.EditConfigError, match="another base model"):
        with bank.tasks([0], other.state):
            pass
