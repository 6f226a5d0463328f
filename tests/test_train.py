"""tasks/training: every method through one Trainer-based pipeline, with the paper's protocol."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, TrainerCallback

import red
from tasks.data import DataSpec, prepare_data
from tasks.training import TrainConfig, TrainingError, TrainResult, train
from tasks.training.presets import preset_values


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    spec = DataSpec(name="sentiment", source="synthetic", task="sentiment", path=root / "files",
                    synthetic={"n_train": 64, "n_dev": 40})
    return prepare_data(spec, seed=42, cache_dir=root / "cache")


def _config(path, **kw):
    base = dict(model=path, epochs=2, batch_size=16, learning_rate=1e-2, max_length=32, logging_steps=1)
    base.update(kw)
    return TrainConfig(**base)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_red_training_follows_the_paper_protocol(sentiment, tiny_checkpoints, tmp_path):
    result = train(sentiment, _config(tiny_checkpoints["bert"]), tmp_path)
    assert result.method == "red" and result.primary_metric == "accuracy"
    assert [e["epoch"] for e in result.epochs] == [1, 2]
    # the best epoch is chosen on validation and the reported test score comes from it
    best = max(result.epochs, key=lambda e: e["validation_accuracy"])
    assert result.best_epoch == best["epoch"]
    assert result.validation["accuracy"] == pytest.approx(best["validation_accuracy"])
    assert 0.0 <= result.test["accuracy"] <= 1.0 and "runtime" not in " ".join(result.test)
    assert result.edit_parameters == 2 * 32 * 2
    assert result.trainable_parameters == result.edit_parameters + 32 * 2 + 2  # + the classifier head
    assert result.steps and all(math.isfinite(s["loss"]) for s in result.steps)
    # checkpoints every epoch hold only trainable tensors: kilobytes, not the base model
    ckpts = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert len(ckpts) == 2
    state = load_file(str(ckpts[0] / "trainable.safetensors"))
    assert sum(t.numel() for t in state.values()) == result.trainable_parameters
    # the saved edit reproduces the trained model on a fresh base
    tensors, meta = red.read_edit(result.edit_path)
    assert meta["extra"]["label_list"] == sentiment.label_list
    assert TrainResult.load(tmp_path / "result.json").to_dict() == result.to_dict()


class CrashAfterFirstSave(TrainerCallback):
    """Stands in for a killed process: training stops dead right after the first checkpoint is written."""

    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("killed")


def test_resuming_a_crashed_training_runs_only_the_missing_steps(sentiment, tiny_checkpoints, tmp_path):
    config = _config(tiny_checkpoints["bert"], epochs=2)
    whole = train(sentiment, config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(sentiment, config, tmp_path / "crashed", callbacks=[CrashAfterFirstSave()])
    checkpoint = tmp_path / "crashed" / "checkpoints" / "checkpoint-4"
    counted = CountSteps()
    resumed = train(sentiment, config, tmp_path / "crashed", resume_from=checkpoint, callbacks=[counted])
    assert counted.steps == 4 and resumed.steps_trained == 4 and resumed.global_step == 8
    assert resumed.resumed_from == str(checkpoint) and [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert whole.steps_trained == 8 and whole.resumed_from is None
    # the same rows in the same order with the same optimizer state: the same edit as without the crash
    a, _ = red.read_edit(whole.edit_path)
    b, _ = red.read_edit(resumed.edit_path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # without resume_from, a folder that holds checkpoints is not resumed: training starts at step 0
    again = train(sentiment, config, tmp_path / "crashed")
    assert again.steps_trained == 8


def test_a_finite_loss_that_runs_away_is_reported_as_diverged(sentiment, tiny_checkpoints, tmp_path):
    from tasks.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"rose from .* diverged .*Lower the learning rate \(now 1e\+0?6\)"):
        train(sentiment, _config(tiny_checkpoints["bert"], learning_rate=1e6, epochs=3), tmp_path)
    # also when the first logged loss already averages steps that all ran away: the baseline is the loss
    # measured before the first step, not the first log
    with pytest.raises(TrainingDiverged, match=r"rose from 0\.[0-9]+ to"):
        train(sentiment, _config(tiny_checkpoints["bert"], learning_rate=1e6, epochs=1, logging_steps=3),
              tmp_path / "one-log")


def test_init_from_an_earlier_edit_starts_where_it_ended(sentiment, tiny_checkpoints, tmp_path):
    first = train(sentiment, _config(tiny_checkpoints["bert"], epochs=1), tmp_path / "first")
    tensors, _ = red.read_edit(first.edit_path)
    zero = train(sentiment, _config(tiny_checkpoints["bert"], epochs=1, learning_rate=1e-30, warmup_ratio=0.0),
                 tmp_path / "warm", init_state=tensors, init_note="production v1")
    assert zero.init == "production v1"
    continued, _ = red.read_edit(zero.edit_path)
    assert all(torch.equal(tensors[k], continued[k]) for k in tensors)  # lr 1e-30: below fp32 resolution, nothing moved
    other = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    with pytest.raises(TrainingError, match=r"cannot start from production v1: .*set init: fresh"):
        train(sentiment, _config(tiny_checkpoints["bert"], epochs=1), tmp_path / "bad", init_state=other,
              init_note="production v1")
    with pytest.raises(ValueError, match="init: production .* method 'lora' must start fresh"):
        _config(tiny_checkpoints["bert"], method="lora", init="production")


def test_nan_loss_stops_with_a_clear_error(sentiment, tiny_checkpoints, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints["bert"], num_labels=2)
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight[0] = float("nan")
    with pytest.raises(TrainingError, match="loss became nan at step 1.*learning rate"):
        train(sentiment, _config(tiny_checkpoints["bert"]), tmp_path, model=model)


def test_training_is_seeded_and_reproducible(sentiment, tiny_checkpoints, tmp_path):
    a = train(sentiment, _config(tiny_checkpoints["bert"], epochs=1), tmp_path / "a")
    b = train(sentiment, _config(tiny_checkpoints["bert"], epochs=1), tmp_path / "b")
    assert a.steps == b.steps and a.test == b.test


def test_trainings_in_two_threads_match_the_same_trainings_one_after_the_other(sentiment, tiny_checkpoints,
                                                                                 tmp_path):
    """accelerate's state is one per process and every TrainingArguments resets it: trainings started from
    several threads (the threads task runner, tuning trials) take turns instead of wiping each other's state,
    and each gets exactly what it would get alone (seeds included)."""
    from concurrent.futures import ThreadPoolExecutor

    configs = [_config(tiny_checkpoints["bert"], seed=s, epochs=1) for s in (1, 2, 3)]
    alone = [train(sentiment, c, tmp_path / f"alone{i}") for i, c in enumerate(configs)]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda ic: train(sentiment, ic[1], tmp_path / f"together{ic[0]}"),
                                 enumerate(configs)))
    for a, b in zip(alone, together):
        assert [s["loss"] for s in b.steps] == [s["loss"] for s in a.steps]
        assert b.validation == a.validation
        ta, tb = red.read_edit(a.edit_path)[0], red.read_edit(b.edit_path)[0]
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("method", ["lora", "bitfit", "full", "loreft"])
def test_baselines_run_through_the_same_pipeline(sentiment, tiny_checkpoints, tmp_path, method):
    result = train(sentiment, _config(tiny_checkpoints["bert"], method=method, epochs=1, lora_r=4,
                                      edit={"rank": 2, "positions": "f1+l1"} if method == "loreft" else {}),
                   tmp_path)
    red_params = 2 * 32 * 2
    expected = {"lora": lambda n: n == 2 * 2 * 4 * (32 + 32),  # r * (in + out) on query and value in 2 layers
                "bitfit": lambda n: n > red_params, "full": lambda n: n > 900_000,
                "loreft": lambda n: n == 2 * 2 * (2 * 2 * 32 + 2)}[method]
    assert expected(result.edit_parameters), result.edit_parameters
    assert "accuracy" in result.test
    if method == "loreft":
        assert red.read_edit(result.edit_path)[1]["method"] == "loreft"


def test_causal_lm_instruction_tuning_masks_the_prompt(tmp_path, tiny_checkpoints):
    spec = DataSpec(name="instructions", source="synthetic", task="instructions", path=tmp_path / "files",
                    synthetic={"n_train": 24, "n_dev": 8})
    data = prepare_data(spec, seed=0)
    result = train(data, _config(tiny_checkpoints["gpt2"], epochs=1, batch_size=8, max_length=64), tmp_path / "out")
    assert result.task_type == "causal_lm" and result.primary_metric == "loss"
    assert math.isfinite(result.test["loss"])
    assert red.read_edit(result.edit_path)[1]["base_model"]["model_type"] == "gpt2"


def test_presets_come_from_the_paper_and_explicit_fields_win():
    assert preset_values("roberta-base-glue", "red", "rte")["learning_rate"] == 8e-3
    assert preset_values("roberta-base-glue", "red", "SST-2")["epochs"] == 40
    assert preset_values("roberta-large-glue", "red", "mrpc")["warmup_ratio"] == 0.0
    cfg = TrainConfig(model="x", preset="roberta-base-glue", learning_rate=1e-4)
    assert cfg.resolved("mrpc")["learning_rate"] == 1e-4 and cfg.resolved("mrpc")["epochs"] == 40
    with pytest.raises(ValueError, match="no values for method 'lora'"):
        preset_values("t5-base-glue", "lora", "mrpc")
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig(model="x", learning_rat=1)


def test_seq2seq_t5_edits_encoder_and_decoder(tmp_path, tiny_checkpoints):
    """T5 learns classification as text-to-text; RED edits the FFN of every encoder and decoder block."""
    spec = DataSpec(name="sentiment", source="synthetic", task="sentiment", path=tmp_path / "files",
                    task_type="seq2seq", synthetic={"n_train": 32, "n_dev": 16})
    data = prepare_data(spec, seed=0)
    result = train(data, _config(tiny_checkpoints["t5"], epochs=1, batch_size=8), tmp_path / "out")
    assert result.task_type == "seq2seq" and math.isfinite(result.test["loss"])
    assert result.edit_parameters == 2 * 32 * 4
    targets = red.read_edit(result.edit_path)[1]["targets"]
    assert {t.split(".")[0] for t in targets} == {"encoder", "decoder"}


def test_a_base_folder_without_tokenizer_files_is_refused_before_training(sentiment, tmp_path):
    """transformers invents a 5-token tokenizer from the config alone: every word would be [UNK]."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "weights-only"
    BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=37)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"has no vocabulary, only special tokens .* save them beside the "
                                         r"weights \(tokenizer.save_pretrained"):
        train(sentiment, _config(str(folder)), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_run_too_short_for_the_loss_guard_that_ends_diverged_is_not_a_result(sentiment, tiny_checkpoints, tmp_path):
    """Two steps: the logged training loss is the untrained one, the last update ran away. The validation
    loss says so, and the run is diverged rather than a registrable 'did not learn'."""
    from tasks.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"the validation loss ended at .*x the loss before training"):
        train(sentiment, _config(tiny_checkpoints["bert"], epochs=1, max_steps=2, learning_rate=1e4), tmp_path)


def test_the_reported_evaluation_loss_is_the_mean_over_rows_when_the_last_batch_is_short(sentiment, tiny_checkpoints,
                                                                                         tmp_path):
    """The Trainer repeats each batch's mean loss eval_batch_size times: a short last batch must count its rows only
    (the loss picks a causal LM's best epoch and judges divergence)."""
    from red.pretrained import load_pretrained_edit
    from tasks.data import encode

    rows = len(sentiment.validation)
    batch = 6 if rows % 6 else 7
    assert rows % batch, "the last evaluation batch must be short"
    result = train(sentiment, _config(tiny_checkpoints["bert"], epochs=1, eval_batch_size=batch), tmp_path)
    model, tokenizer, _ = load_pretrained_edit(result.edit_path)
    enc = encode(sentiment, tokenizer, max_length=32).validation
    losses = []
    with torch.no_grad():
        for row in enc:
            out = model(input_ids=torch.tensor([row["input_ids"]]),
                        attention_mask=torch.tensor([row["attention_mask"]]))
            losses.append(float(torch.nn.functional.cross_entropy(out.logits, torch.tensor([row["labels"]]))))
    assert result.validation["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
