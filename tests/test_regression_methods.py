"""Every method the trainer offers learns a regression task, and a trained LoRA serves what it trained.

A fresh regression head predicts ~0 while the labels sit on their own scale (STS-B: 0-5). Until
training starts the head at the labels' mean (``tasks.training.models.center_regression_head``), the MSE gradient
was all offset: LoRA, BitFit, full fine-tuning and the head alone spent their steps pushing every
prediction up together and ended with a Pearson around 0 (issue 22), while RED, whose bias vectors
move the offset fast, learned. The task here is a sentence-pair similarity that a frozen MiniLM (a
sentence-similarity model) can learn in a few dozen steps: both sentences name two things, and the
score is 5 when all four belong to one topic, 2.5 when one thing of the second sentence does, 0 when
none does.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

TOPICS = {
    "sports": ["match", "team", "coach", "player", "goal", "season", "league", "stadium", "referee", "tournament"],
    "tech": ["computer", "software", "phone", "laptop", "app", "screen", "battery", "internet", "keyboard", "robot"],
    "food": ["recipe", "soup", "bread", "cheese", "dinner", "kitchen", "chef", "pasta", "salad", "cake"],
    "travel": ["flight", "hotel", "beach", "passport", "train", "trip", "luggage", "airport", "island", "ferry"],
}
PEOPLE = ["my sister", "my friend", "the critic", "my father", "our teacher", "a neighbor", "my brother"]

# Learning rates for a run of 72 steps (the presets' rates are for thousands of steps).
RATES = {"red": 2e-2, "loreft": 5e-3, "lora": 2e-3, "bitfit": 2e-2, "full": 5e-5, "head": 2e-2}
MARGIN = 0.25  # Pearson points above where the untrained model starts


def _pairs(rng: random.Random, n: int, seen: set) -> list[tuple[str, str, float]]:
    names = list(TOPICS)
    rows = []
    while len(rows) < n:
        shared = len(rows) % 3  # 0, 1 or 2 things of the second sentence from the first one's topic
        topic = rng.choice(names)
        other = rng.choice([t for t in names if t != topic])
        first = rng.sample(TOPICS[topic], 2)
        second = [rng.choice(TOPICS[topic if shared == 2 else other]), rng.choice(TOPICS[topic if shared else other])]
        pair = (f"i read about the {first[0]} and the {first[1]}.",
                f"{rng.choice(PEOPLE)} talked about the {second[0]} and the {second[1]}.")
        if pair not in seen:
            seen.add(pair)
            rows.append((*pair, 2.5 * shared))
    return rows


@pytest.fixture(scope="module")
def similarity(tmp_path_factory):
    """The task as CSV files (train, validation, test), prepared like user data."""
    from tasks.data import DataSpec, prepare_data

    root = tmp_path_factory.mktemp("similarity")
    rng, seen = random.Random(0), set()
    for split, n in (("train", 144), ("validation", 48), ("test", 48)):
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence1", "sentence2", "label"])
            writer.writerows(_pairs(rng, n, seen))
    spec = DataSpec(name="similarity", source="csv", path=root, text_columns=["sentence1", "sentence2"],
                    task_type="regression", metric="pearson")
    return prepare_data(spec, seed=42, cache_dir=root / "cache")


@pytest.fixture(scope="module")
def trained(similarity, minilm_path, tmp_path_factory):
    """Train a method once per module (``trained(method)``, ``trained("head", learning_rate=1e-30)``...)."""
    from tasks.training import TrainConfig, train

    root, done = tmp_path_factory.mktemp("trained"), {}

    def run(method: str, **overrides):
        key = (method, tuple(sorted(overrides.items())))
        if key not in done:
            # 48 evaluation rows in batches of 16: the Trainer's reported loss weighs every evaluation batch alike
            # (a short last batch would count as a full one), and the reload test compares it with the rows' loss
            values = {**dict(model=minilm_path, method=method, epochs=4, batch_size=8, eval_batch_size=16,
                             max_length=32, warmup_ratio=0.0, learning_rate=RATES[method], logging_steps=6),
                      **overrides}
            if method == "loreft":
                values["edit"] = {"rank": 4, "positions": "f3+l3"}
            done[key] = train(similarity, TrainConfig(**values), root / f"{method}-{len(done)}")
        return done[key]

    return run


@pytest.fixture(scope="module")
def start(trained) -> float:
    """Validation Pearson of the untrained model (the head-only floor at step 0: a rate of 1e-30 changes nothing fp32 can hold)."""
    return trained("head", learning_rate=1e-30, max_steps=1).validation["pearson"]


@pytest.mark.parametrize("method", ["lora", "bitfit", "full", "loreft", "red"])
def test_every_method_learns_a_regression_task_well_above_where_it_started(method, trained, start):
    """(The head alone, on MiniLM's frozen [CLS] pooler, gains little on this pair task in so few steps: it is
    the floor the others must beat, not a method under test.)"""
    result = trained(method)
    assert result.learned is True
    assert result.validation["pearson"] > start + MARGIN, (method, result.epochs, start)


@pytest.mark.parametrize("kind,method", [("bert", "lora"), ("bert", "red"), ("gpt2", "full"), ("gpt2", "lora")])
def test_a_fresh_regression_head_starts_at_the_training_labels_mean(kind, method, tiny_checkpoints, similarity):
    """Before the first step the model's mean prediction is the training labels' mean, whatever the method, for a
    head with a bias (BERT's ``classifier``, moved by its bias) and one without (GPT-2's ``score``, moved along
    its mean input): the first gradients carry the signal, not the offset."""
    from transformers import DataCollatorWithPadding

    from tasks.data import encode
    from tasks.training import TrainConfig
    from tasks.training.models import center_regression_head, load_base_model, load_tokenizer, prepare_model

    path = tiny_checkpoints[kind]
    tokenizer = load_tokenizer(path)
    model, fresh = load_base_model(path, "regression", num_labels=1, tokenizer=tokenizer)
    hp = TrainConfig(model=path, method=method).resolved("similarity")
    model, _ = prepare_model(model, method, hp, {}, "regression", fresh)
    model.eval()
    rows, collate = encode(similarity, tokenizer, max_length=32).train, DataCollatorWithPadding(tokenizer)
    target = float(np.mean(rows["labels"]))

    def mean_prediction() -> float:
        with torch.no_grad():
            batches = [collate([rows[i] for i in range(s, min(s + 16, len(rows)))]) for s in range(0, len(rows), 16)]
            return float(torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
                         .mean())

    assert abs(mean_prediction() - target) > 1  # a fresh head predicts ~0, the labels average ~2.5
    center_regression_head(model, collate, rows, 16)
    assert mean_prediction() == pytest.approx(target, abs=1e-4)


def test_a_trained_lora_reloads_as_it_serves_with_the_scores_of_the_end_of_training(trained, similarity):
    """The adapter folder loaded the way its registered version serves (registry pyfunc: base + PEFT adapter with
    the head in ``modules_to_save``) predicts what the trained model predicted on the test rows: the same
    MSE and Pearson, so neither the head nor its offset is lost (a fresh head at load would not be)."""
    from registry.champion import load_trained
    from tasks.evaluate.metrics import glue_metrics
    from tasks.evaluate.paired import score_split

    result = trained("lora")
    rows = score_split(*load_trained(result)[:2], similarity, metric="pearson", max_length=32)
    predictions, labels = np.asarray(rows.predictions), np.asarray(rows.labels)
    assert float(np.mean((predictions - labels) ** 2)) == pytest.approx(result.test["loss"], abs=1e-4)
    assert glue_metrics(["pearson"], predictions, labels)["pearson"] == pytest.approx(result.test["pearson"], abs=1e-4)


def test_the_head_is_centred_on_every_training_label_not_the_first_rows(tiny_checkpoints, similarity):
    """A file sorted by score: the first 256 rows hold only low scores. The head starts at the mean of all of
    them (else it would start far from the labels' mean again, the failure this centring exists for)."""
    from transformers import DataCollatorWithPadding

    from tasks.data import encode
    from tasks.training.models import center_regression_head, load_base_model, load_tokenizer

    path = tiny_checkpoints["bert"]
    tokenizer = load_tokenizer(path)
    model, _ = load_base_model(path, "regression", num_labels=1, tokenizer=tokenizer)
    model.eval()
    encoded = encode(similarity, tokenizer, max_length=32).train
    rows = [encoded[i] for i in range(len(encoded))] * 3  # over 256 rows, sorted by score
    rows.sort(key=lambda r: r["labels"])
    every = float(np.mean([r["labels"] for r in rows]))
    assert float(np.mean([r["labels"] for r in rows[:256]])) < every - 0.5  # the first rows alone would mislead
    shift = center_regression_head(model, DataCollatorWithPadding(tokenizer), rows, 16)
    collate = DataCollatorWithPadding(tokenizer)
    with torch.no_grad():
        predicted = float(torch.cat([model(**{k: v for k, v in collate(rows[s:s + 16]).items() if k != "labels"})
                                     .logits for s in range(0, len(rows), 16)]).mean())
    assert shift is not None and predicted == pytest.approx(every, abs=0.05)
