"""Co-training K tasks in one pass over one base: the same gradients, and the same edits, as training each alone."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import red
from red import EditConfig, attach
from red.bank_train import TrainableBank
from tasks.data import DataSpec, prepare_data
from tasks.training import CoTask, CoTrainConfig, TrainConfig, TrainingDiverged, TrainingError, co_train, train
from tasks.training.floors import learned
from tasks.training.mixing import Mixing, mixing_weights


# ---- the trainable bank: each row's gradient reaches only its task, as if trained alone -------------------------
def _perturb(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_gradients_equal_those_of_training_each_task_alone(make_tiny, kind):
    """Three tasks with different RED positions and kinds (and, on RoBERTa, 2-label, 4-label and regression
    heads) in one mixed, padded batch: each task's gradient equals the gradient of its mean loss alone."""
    cls = kind == "roberta"
    base = make_tiny(kind, head="cls" if cls else "lm")
    configs = [EditConfig(head=["classifier"] if cls else "none"),
               EditConfig(position="ffn+attn", kind="scale", head=["classifier"] if cls else "none"),
               EditConfig(position="attn", kind="bias", layers=[1], head=["classifier"] if cls else "none")]
    task_types = ["classification", "classification", "regression"] if cls else ["causal_lm"] * 3
    heads = None
    if cls:  # the task's own classifier shapes: 2 labels, 4 labels, 1 regression output
        widths = [2, 4, 1]
        heads = []
        for w in widths:
            config = copy.deepcopy(base.config)
            config.num_labels = w
            heads.append({"classifier": type(base)(config).classifier})
    bank = TrainableBank(copy.deepcopy(base), configs, ["a", "b", "c"], heads=heads, task_types=task_types).eval()
    _perturb([p for k in range(3) for p in bank.task_parameters(k).values()], seed=1)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (9, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 5:] = 0  # padded rows
    tasks = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0, 2])
    labels = [torch.tensor([0, 1, 1]), torch.tensor([3, 0, 2]), torch.tensor([0.5, -1.0, 2.0])]

    def loss_of(logits, k, rows_mask):
        if not cls:  # causal LM: per-token mean over the task's rows, shifted
            x, y = logits[:, :-1], ids[rows_mask][:, 1:].masked_fill(mask[rows_mask][:, 1:] == 0, -100)
            return F.cross_entropy(x.reshape(-1, x.shape[-1]), y.reshape(-1), ignore_index=-100)
        if task_types[k] == "regression":
            return F.mse_loss(logits[:, 0], labels[k])
        return F.cross_entropy(logits[:, :[2, 4][k]], labels[k])

    logits = bank(input_ids=ids, attention_mask=mask, task_ids=tasks).logits
    sum(loss_of(logits[tasks == k], k, tasks == k) for k in range(3)).backward()
    for k in range(3):
        edit = bank.task_edit(k)
        alone = copy.deepcopy(base)
        if cls:
            alone.classifier = copy.deepcopy(bank.heads[k]["classifier"])
        alone = attach(alone, configs[k]).eval()  # no dropout: the same math
        alone.load_edit_state(edit.edit_state())
        rows = tasks == k
        loss_of(alone(input_ids=ids[rows], attention_mask=mask[rows]).logits, k, rows).backward()
        theirs, ours = alone.file_parameters(), edit.file_parameters()
        assert sorted(theirs) == sorted(ours) and len(ours) > 0
        for name, p in theirs.items():
            assert p.grad is not None and float(p.grad.abs().max()) > 0
            torch.testing.assert_close(ours[name].grad, p.grad, atol=1e-6, rtol=0, msg=name)


def test_each_task_saves_an_ordinary_edit_file_that_serves_as_it_trained(make_tiny, tmp_path):
    """A trained task of the bank is an edit file: an EditBank of those files gives the trainable bank's outputs."""
    base = make_tiny("roberta", head="cls")
    four = copy.deepcopy(base.config)
    four.num_labels = 4
    configs = [EditConfig(head=["classifier"]), EditConfig(position="attn", kind="scale", head=["classifier"])]
    bank = TrainableBank(copy.deepcopy(base), configs, ["two", "four"],
                         heads=[{"classifier": base.classifier}, {"classifier": type(base)(four).classifier}],
                         task_types=["classification"] * 2).eval()
    _perturb([p for k in range(2) for p in bank.task_parameters(k).values()], seed=3)
    paths = [bank.task_edit(k).save(tmp_path / name, extra={"task": name, "task_type": "classification"})
             for k, name in enumerate(bank.names)]
    ids, tasks = torch.randint(3, 90, (5, 6), generator=torch.Generator().manual_seed(0)), [1, 0, 1, 1, 0]
    served = red.EditBank(copy.deepcopy(base), paths)
    with torch.no_grad():
        trained = bank(input_ids=ids, task_ids=tasks).logits
        again = served(input_ids=ids, task_ids=tasks).logits
    assert served.output_widths == [2, 4] and trained.shape == (5, 4)
    torch.testing.assert_close(again, trained, atol=1e-6, rtol=0, equal_nan=True)  # NaN: the 2-label rows' padding
    assert red.read_edit(paths[1])[1]["config"]["kind"] == "scale"


def test_a_trainable_bank_refuses_reft(make_tiny):
    with pytest.raises(red.EditConfigError, match=r"co-training trains RED edits only; task 'b' is loreft"):
        TrainableBank(make_tiny("bert"), [EditConfig(), EditConfig(method="loreft")], ["a", "b"])


# ---- the schedule ---------------------------------------------------------------------------------------
def test_mixing_shares_rows_by_size_or_temperature_and_orders_them_as_the_trainer():
    from accelerate.data_loader import SeedableRandomSampler

    sizes = [64, 64, 96, 96, 128, 128, 160, 160]
    mixing = Mixing(sizes, rows_per_step=128, micro_batch=16, seeds=list(range(8)))
    assert mixing.steps_per_epoch == 7 and mixing.micro_batches_per_step == 8
    assert all(sum(mixing.quotas(t)) == 128 for t in range(14))
    assert mixing.rows_seen(7) == sizes and mixing.rows_seen(14) == [2 * n for n in sizes]  # one pass per epoch
    batches = mixing.epoch_batches(0)
    assert len(batches) == 56 and all(len(b) == 16 for b in batches)
    rows = [i for b in batches for k, i in b if k == 2]
    sampler = SeedableRandomSampler(range(96), data_seed=2)
    sampler.set_epoch(0)
    assert rows == list(sampler)  # task 2's epoch order is a single-task Trainer's epoch 0 with its seed

    by_length = Mixing([3, 3], rows_per_step=6, micro_batch=3, seeds=[0, 1], lengths=[[5, 1, 9], [2, 8, 4]])
    assert [[by_length.lengths[k][i] for k, i in b] for b in by_length.epoch_batches(0)] == [[9, 8, 5], [4, 2, 1]]
    by_task = Mixing([3, 3], rows_per_step=6, micro_batch=3, seeds=[0, 1], order="task")
    assert [sorted({k for k, _ in b}) for b in by_task.epoch_batches(0)] == [[0], [1]]

    uniform = Mixing([64, 640], rows_per_step=32, micro_batch=16, seeds=[0, 1], temperature=float("inf"))
    assert uniform.quotas(0) == [16, 16]  # equal shares: every step holds 16 rows of each task
    assert mixing_weights([100, 400], temperature=2.0) == pytest.approx([1 / 3, 2 / 3])
    drawn = Mixing([100, 300], rows_per_step=40, micro_batch=40, seeds=[0, 1], mode="random")
    assert sum(drawn.rows_seen(100)) == 4000 and 850 < drawn.rows_seen(100)[0] < 1150  # ~ 1/4 of the rows
    assert drawn.epoch_batches(1) == drawn.epoch_batches(1)  # seeded per epoch
    assert drawn.steps_with_rows(25) == [sum(drawn.quotas(t)[k] > 0 for t in range(25)) for k in range(2)]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mixing_weights([1, 2], temperature=0)


# ---- the trainer: edits equal to training alone, per-task guards, resume ------------------------------------------
@pytest.fixture(scope="module")
def dropout_free(tmp_path_factory, minilm_path) -> dict[str, str]:
    """Tiny BERT and GPT-2 checkpoints without dropout (training alone and co-training then see the same math)."""
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2LMHeadModel)

    root = tmp_path_factory.mktemp("dropout-free")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ).save_pretrained(root / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                               pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
                    ).save_pretrained(root / "gpt2")
    for name in ("bert", "gpt2"):
        tok.save_pretrained(root / name)
    return {"bert": str(root / "bert"), "gpt2": str(root / "gpt2")}


def _data(root: Path, name: str, task: str, seed: int, n_train: int = 48, n_dev: int = 32):
    if task == "rating":  # regression: a score from 0 to 5 that the words decide (labels far from a new head's 0)
        from tasks.data.synthetic import generate_rows

        rows = generate_rows("sentiment", n_train + 2 * n_dev, seed)
        path = root / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        for split, part in (("train", rows[:n_train]), ("validation", rows[n_train:n_train + n_dev]),
                            ("test", rows[n_train + n_dev:])):  # as many training rows as the other tasks
            (path / f"{split}.csv").write_text("sentence,label\n" + "".join(
                f"\"{texts[0]}\",{(4.5 if label == 'positive' else 0.5) + len(texts[0]) % 3 * 0.25}\n"
                for texts, label in part))
        spec = DataSpec(name=name, source="csv", path=path, text_columns=["sentence"], task_type="regression")
        return prepare_data(spec, seed=42, cache_dir=root / "cache")
    spec = DataSpec(name=name, source="synthetic", task=task, path=root / "data" / name,
                    synthetic={"n_train": n_train, "n_dev": n_dev, "seed": seed})
    return prepare_data(spec, seed=42, cache_dir=root / "cache")


def _config(model: str, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(model=model, epochs=2, batch_size=8, learning_rate=1e-2, max_length=48,
                                 logging_steps=1), **kw})


GROUPS = {
    # classification: a fresh 4-label head (its own seed), per-task learning rates and weight decay, RED kinds
    "bert": [("sentiment", "sentiment", dict(seed=1)),
             ("topic", "topic", dict(seed=2, learning_rate=5e-3, weight_decay=0.1, edit={"position": "ffn+attn"})),
             ("paraphrase", "paraphrase", dict(seed=3, edit={"kind": "scale"})),
             # regression: a fresh one-output head, centred on its labels' mean before the first step as alone
             ("rating", "rating", dict(seed=4))],
    # causal LM: per-task token-mean losses
    "gpt2": [("qa", "instructions", dict(seed=1)), ("qa2", "instructions", dict(seed=2, learning_rate=3e-3))],
}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_co_trained_edits_equal_training_each_task_alone(kind, dropout_free, tmp_path):
    """Same rows per task in every step, no dropout: each task's saved edit is the edit training it alone gives.

    (With the default ``micro_batches="length"`` the passes mix tasks: the same gradients, rounded differently.)"""
    rows = {"bert": dict(n_train=48, n_dev=32), "gpt2": dict(n_train=24, n_dev=16)}[kind]
    tasks = [CoTask(_data(tmp_path, name, task, seed=i, **rows), _config(dropout_free[kind], max_length=40, **kw),
                    tmp_path / "co" / name) for i, (name, task, kw) in enumerate(GROUPS[kind])]
    results = co_train(tasks, CoTrainConfig(micro_batches="task"), tmp_path / "co")  # each pass: one task's batch
    for task in tasks:
        together = results[task.name]
        alone = train(task.data, task.config, tmp_path / "alone" / task.name)
        mine, theirs = red.read_edit(together.edit_path)[0], red.read_edit(alone.edit_path)[0]
        assert sorted(mine) == sorted(theirs)
        moved = max(float((t - (1.0 if k.endswith(".scale") else 0.0)).abs().max()) for k, t in theirs.items()
                    if k.startswith("edit."))
        assert moved > 1e-3  # the edits trained
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=0, msg=f"{task.name}: {key}")
        assert together.best_epoch == alone.best_epoch and together.steps_trained == alone.steps_trained
        assert [e["epoch"] for e in together.epochs] == [1, 2] and together.test == pytest.approx(alone.test)
        assert [s["loss"] for s in together.steps] == pytest.approx([s["loss"] for s in alone.steps], rel=1e-4)
        assert together.co_trained_with == [t.name for t in tasks if t is not task]
        assert together.params["co_train.tasks"] == ",".join(t.name for t in tasks)
        # the registry serves a version with the text columns its run's params record
        assert together.params["text_columns"] == alone.params["text_columns"] == list(task.data.text_columns) != []
    # an ordinary edit file: attaches to a fresh base like any other
    first = results[tasks[0].name]
    from red.pretrained import load_pretrained_edit

    edited, _, meta = load_pretrained_edit(first.edit_path)
    assert meta["extra"]["task"] == tasks[0].name and edited.num_edit_parameters == first.edit_parameters


# Very unequal tasks: a big one with a row in every step, two small ones that take turns (one row every other step).
# rows_per_step 5 = 4 big + 1 small; shares 32:4:4 of 40 rows give the big task exactly 4 rows every step and the
# small tasks' one row alternates, so each small task sits out half the steps, yet each task's rows per step are a
# constant batch (4 / 1) that training it alone reproduces.
UNEQUAL = [("big", "sentiment", 32, dict(seed=1, batch_size=4)),
           ("small", "topic", 4, dict(seed=2, batch_size=1, weight_decay=0.1, edit={"position": "ffn+attn"})),
           ("other", "paraphrase", 4, dict(seed=3, batch_size=1, learning_rate=5e-3))]
UNEQUAL_MIXING = CoTrainConfig(rows_per_step=5, batch_size=5, micro_batches="task")


def _unequal_tasks(root: Path, model: str, epochs: int = 2) -> list[CoTask]:
    """The tasks of :data:`UNEQUAL`, each with the batch size that training it alone on its step's rows takes."""
    return [CoTask(_data(root, name, task, seed=i, n_train=n, n_dev=16),
                   _config(model, epochs=epochs, max_length=40, **kw), root / "co" / name)
            for i, (name, task, n, kw) in enumerate(UNEQUAL)]


def _absent_steps(tasks: list[CoTask], steps: int) -> dict[str, list[int]]:
    """The optimizer steps in which each task has no rows, from the co-training's own mixing order."""
    mixing = Mixing([len(t.data.train) for t in tasks], rows_per_step=UNEQUAL_MIXING.rows_per_step,
                    micro_batch=UNEQUAL_MIXING.batch_size, seeds=[t.config.seed for t in tasks])
    return {t.name: [s for s in range(steps) if mixing.quotas(s)[k] == 0] for k, t in enumerate(tasks)}


def test_a_task_with_few_rows_trains_exactly_as_alone_though_it_sits_out_steps(dropout_free, tmp_path):
    """A task that has no rows in an optimizer step is not stepped at all (AdamW's moments, step count and weight
    decay untouched) and its learning-rate schedule advances by its own steps only: the small tasks, absent from
    half the steps, end with the edit, losses and learning rates of training each alone on the same batches."""
    tasks = _unequal_tasks(tmp_path, dropout_free["bert"])
    assert [len(t.data.train) for t in tasks] == [32, 4, 4]
    absent = _absent_steps(tasks, 16)
    assert absent["big"] == [] and absent["small"] == list(range(1, 16, 2)) and absent["other"] == list(range(0, 16, 2))
    results = co_train(tasks, UNEQUAL_MIXING, tmp_path / "co")
    for task in tasks:
        together = results[task.name]
        assert together.params["co_train.steps_per_epoch"] == 8
        alone = train(task.data, task.config, tmp_path / "alone" / task.name)  # small: 4 steps an epoch of 1 row
        mine, theirs = red.read_edit(together.edit_path)[0], red.read_edit(alone.edit_path)[0]
        assert sorted(mine) == sorted(theirs)
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=0, msg=f"{task.name}: {key}")
        assert len(together.steps) == len(alone.steps) == 16 - len(absent[task.name])
        assert [s["loss"] for s in together.steps] == pytest.approx([s["loss"] for s in alone.steps], rel=1e-4)
        assert [s["learning_rate"] for s in together.steps] == pytest.approx(
            [s["learning_rate"] for s in alone.steps], rel=1e-6)  # its own schedule: warmup and decay over its steps
        assert together.best_epoch == alone.best_epoch and together.test == pytest.approx(alone.test)
        assert together.steps_trained == alone.steps_trained == 16 - len(absent[task.name])  # its own steps
    by_share = Mixing([32, 4, 4], rows_per_step=5, micro_batch=5, seeds=[1, 2, 3])
    assert by_share.steps_with_rows(16) == [16, 8, 8]  # the lengths of the tasks' own schedules: their steps alone


def test_a_step_without_a_tasks_rows_leaves_its_parameters_and_optimizer_state_bit_identical(dropout_free, tmp_path):
    """AdamW updates every parameter with a gradient, and a zero gradient is one: its moments decay, its step count
    (bias correction) advances, weight decay shrinks it. A task absent from a step must have no gradient (None), so
    across that step its vectors, head, exp_avg, exp_avg_sq, step and learning rate are exactly as before."""
    from transformers import TrainerCallback

    tasks = _unequal_tasks(tmp_path, dropout_free["bert"], epochs=1)
    absent = _absent_steps(tasks, 8)

    def snapshot(bank: TrainableBank, optimizer: torch.optim.Optimizer, k: int) -> tuple[dict, dict, list[float]]:
        params = bank.task_parameters(k)
        state = {n: {key: v.clone() if torch.is_tensor(v) else v for key, v in optimizer.state.get(p, {}).items()}
                 for n, p in params.items()}
        lrs = [g["lr"] for g in optimizer.param_groups if any(p is q for p in g["params"] for q in params.values())]
        return {n: p.detach().clone() for n, p in params.items()}, state, lrs

    class Watch(TrainerCallback):
        def __init__(self):
            self.before, self.across = {}, {}   # task -> snapshot at the step's start; (step, task) -> (before, after)

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.before = {k: snapshot(model, optimizer, k) for k in (1, 2)}

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            for k in (1, 2):
                self.across[(state.global_step - 1, k)] = (self.before[k], snapshot(model, optimizer, k))

    watch = Watch()
    results = co_train(tasks, UNEQUAL_MIXING, tmp_path / "co", callbacks=[watch])
    assert not any(isinstance(results[t.name], Exception) for t in tasks)
    for k, name in ((1, "small"), (2, "other")):
        assert len(absent[name]) == 4
        stepped = 0
        for step in range(8):
            (params, state, lrs), (params_after, state_after, lrs_after) = watch.across[(step, k)]
            if step not in absent[name]:  # a step with its rows is one AdamW step of every parameter of it
                assert all(int(state_after[n]["step"]) == int(state[n].get("step", 0)) + 1 for n in state_after)
                continue
            assert all(torch.equal(params[n], params_after[n]) for n in params), f"{name} moved in step {step}"
            assert lrs_after == lrs, f"{name}'s learning rate advanced in step {step}"
            assert state.keys() == state_after.keys()
            for n in state:
                assert state[n].keys() == state_after[n].keys()
                for key, value in state[n].items():  # exp_avg, exp_avg_sq, step
                    after = state_after[n][key]
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(after)), (name, step, n, key)
            stepped += bool(any(state.values()))
        assert stepped >= 3  # most absent steps come after the task's first step: its moments exist and stay put


def test_a_task_that_nans_diverges_or_cannot_encode_stops_alone_and_the_others_are_untouched(dropout_free, tmp_path):
    model = dropout_free["bert"]
    good = _data(tmp_path, "good", "sentiment", seed=1)
    poisoned = _data(tmp_path, "poisoned", "sentiment", seed=2)
    wild = _data(tmp_path, "wild", "paraphrase", seed=3)
    start = {k: v.clone() for k, v in red.read_edit(train(poisoned, _config(model, learning_rate=1e-30, epochs=1),
                                                          tmp_path / "start").edit_path)[0].items()}
    start["head.classifier.weight"][0, 0] = float("nan")  # a NaN loss from its first step, for this task only
    results = co_train([CoTask(good, _config(model, epochs=3), tmp_path / "co" / "good"),
                        CoTask(poisoned, _config(model, epochs=3), tmp_path / "co" / "poisoned", init_state=start,
                               init_note="production v1"),
                        CoTask(wild, _config(model, epochs=3, learning_rate=1e6), tmp_path / "co" / "wild"),
                        CoTask(_data(tmp_path, "short", "topic", seed=4), _config(model, epochs=3, max_length=1),
                               tmp_path / "co" / "short")],
                       None, tmp_path / "co")
    assert isinstance(results["poisoned"], TrainingError) and "poisoned: the training loss became nan" in str(
        results["poisoned"])
    assert isinstance(results["wild"], TrainingDiverged) and "wild: the training loss rose" in str(results["wild"])
    assert isinstance(results["short"], ValueError) and "max_length must be at least 2" in str(results["short"])
    assert not any((tmp_path / "co" / name).exists() for name in ("poisoned", "wild", "short"))
    alone = train(good, _config(model, epochs=3), tmp_path / "alone")
    mine, theirs = red.read_edit(results["good"].edit_path)[0], red.read_edit(alone.edit_path)[0]
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=0, msg=key)


def test_a_runaway_task_is_diverged_and_a_floor_task_did_not_learn_as_if_trained_alone(dropout_free, tmp_path):
    """With the default logging_steps (10) the first logged loss already averages runaway steps, and an epoch may
    be shorter than 10 steps: the guard still compares with the loss before the first step, like a training alone;
    every co-trained result says whether it left its majority-class floor."""
    model = dropout_free["bert"]
    calm, wild = _data(tmp_path, "calm", "sentiment", seed=1), _data(tmp_path, "wild", "sentiment", seed=2)

    def config(**kw):  # 48 rows / batch 8: 6 steps an epoch, fewer than logging_steps
        return TrainConfig(**{**dict(model=model, epochs=3, batch_size=8, learning_rate=1e-2, max_length=48), **kw})

    alone = pytest.raises(TrainingDiverged, match="the training loss rose from")
    with alone:
        train(wild, config(learning_rate=1e4), tmp_path / "alone")
    results = co_train([CoTask(calm, config(), tmp_path / "co" / "calm"),
                        CoTask(wild, config(learning_rate=1e4), tmp_path / "co" / "wild")], None, tmp_path / "co")
    assert isinstance(results["wild"], TrainingDiverged) and "wild: the training loss rose from" in str(results["wild"])
    calm_result = results["calm"]
    assert calm_result.floor and set(calm_result.floor) >= {"accuracy"} and calm_result.learned is not None
    best = max([e["validation_accuracy"] for e in calm_result.epochs] + [calm_result.validation["accuracy"]])
    assert calm_result.learned == learned([best], calm_result.floor["accuracy"])


def test_a_crashed_co_training_resumes_from_its_checkpoint(dropout_free, tmp_path):
    def tasks(root):
        return [CoTask(_data(tmp_path, n, t, seed=i), _config(dropout_free["bert"]), root / n)
                for i, (n, t) in enumerate([("s", "sentiment"), ("p", "paraphrase")])]

    full = co_train(tasks(tmp_path / "full"), None, tmp_path / "full")
    epoch1 = sorted((tmp_path / "full" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))[0]
    crashed = tmp_path / "crashed" / "checkpoints" / epoch1.name
    shutil.copytree(epoch1, crashed)
    resumed = co_train(tasks(tmp_path / "crashed"), None, tmp_path / "crashed", resume_from=crashed)
    for name in ("s", "p"):
        assert resumed[name].steps_trained == full[name].steps_trained // 2
        assert resumed[name].resumed_from == str(crashed)
        mine, theirs = red.read_edit(resumed[name].edit_path)[0], red.read_edit(full[name].edit_path)[0]
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], atol=1e-6, rtol=0, msg=key)
