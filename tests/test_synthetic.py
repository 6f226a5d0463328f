"""tasks.data.synthetic: generated tasks are deterministic, balanced, leak-free, non-trivial and load like user data."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tasks.data import DataError, DataSpec, prepare_data
from tasks.data.synthetic import SYNTHETIC_TASKS, generate_rows, write_synthetic

CLASSIFICATION = [name for name, t in SYNTHETIC_TASKS.items() if t.task_type == "classification"]


def read_rows(folder: Path, split: str) -> list[dict]:
    if (folder / f"{split}.json").exists():
        return json.loads((folder / f"{split}.json").read_text())
    with (folder / f"{split}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_there_are_three_classification_tasks_one_of_them_pairs_and_an_instruction_task():
    assert {"sentiment", "topic", "paraphrase"} <= set(CLASSIFICATION)
    assert len(SYNTHETIC_TASKS["topic"].label_list) == 4
    assert SYNTHETIC_TASKS["paraphrase"].text_columns == ("sentence1", "sentence2")
    assert SYNTHETIC_TASKS["instructions"].task_type == "causal_lm"


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_same_arguments_write_the_same_bytes(tmp_path, task):
    a = write_synthetic(task, tmp_path / "a", n_train=60, n_dev=20, seed=3)
    b = write_synthetic(task, tmp_path / "b", n_train=60, n_dev=20, seed=3)
    c = write_synthetic(task, tmp_path / "c", n_train=60, n_dev=20, seed=4)
    assert a == tmp_path / "a" / task
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "meta.json" in files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert read_rows(a, "train") != read_rows(c, "train")


@pytest.mark.parametrize("task", CLASSIFICATION)
def test_labels_are_balanced_and_rows_do_not_leak_between_train_and_dev(tmp_path, task):
    folder = write_synthetic(task, tmp_path, n_train=301, n_dev=200)
    labels = SYNTHETIC_TASKS[task].label_list
    for split, n in (("train", 301), ("dev", 200)):
        counts = Counter(r["label"] for r in read_rows(folder, split))
        assert set(counts) == set(labels) and sum(counts.values()) == n
        assert max(counts.values()) - min(counts.values()) <= 1
    columns = SYNTHETIC_TASKS[task].text_columns
    texts = {split: [tuple(r[c] for c in columns) for r in read_rows(folder, split)] for split in ("train", "dev")}
    assert len(set(texts["train"]) | set(texts["dev"])) == 501


@pytest.mark.parametrize("task", CLASSIFICATION)
def test_no_single_word_gives_the_label(task):
    """Negations, contrasts and distractors: the best one-word rule is far from perfect."""
    rows = [(set(re.findall(r"[a-z]+", " ".join(texts))), label) for texts, label in generate_rows(task, 400)]
    best = 0.0
    for word in set().union(*(words for words, _ in rows)):
        having = Counter(label for words, label in rows if word in words)
        lacking = Counter(label for words, label in rows if word not in words)
        best = max(best, (max(having.values()) + max(lacking.values(), default=0)) / len(rows))
    assert best < 0.75


def test_vocabulary_is_plain_words_bert_knows(minilm_path):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(minilm_path).get_vocab()
    words = set()
    for task in SYNTHETIC_TASKS:
        for texts, _ in generate_rows(task, 300):
            words |= set(re.findall(r"[a-z]+", " ".join(texts).lower()))
    assert sorted(w for w in words if w not in vocab) == []


def test_instruction_answers_are_correct():
    for (instruction, given, answer), _ in generate_rows("instructions", 200):
        if instruction == "Add the two numbers.":
            a, b = given.split(" and ")
            assert answer == str(int(a) + int(b))
        elif instruction == "Write the plural of the word.":
            assert answer == given + "s"
        elif instruction == "Repeat the word three times.":
            assert answer == f"{given} {given} {given}"


def test_synthetic_source_generates_once_then_loads_like_user_files(tmp_path):
    spec = DataSpec(source="synthetic", task="sentiment", path=tmp_path / "synthetic",
                    synthetic={"n_train": 40, "n_dev": 21})
    data = prepare_data(spec, seed=0)
    assert (tmp_path / "synthetic" / "sentiment" / "train.csv").is_file()
    sizes = data.sizes()  # dev halved into validation and test by content hash
    assert sizes["train"] == 40 and sizes["validation"] + sizes["test"] == 21 and min(sizes.values()) >= 5
    assert (data.name, data.task, data.task_type, data.metric) == ("sentiment", "sentiment", "classification",
                                                                  "accuracy")
    assert data.label_list == ["negative", "positive"] and data.text_columns == ("sentence",)
    stamp = (tmp_path / "synthetic" / "sentiment" / "train.csv").stat().st_mtime_ns
    assert prepare_data(spec, seed=0).data_hash == data.data_hash
    assert (tmp_path / "synthetic" / "sentiment" / "train.csv").stat().st_mtime_ns == stamp  # not rewritten
    bigger = prepare_data(spec.model_copy(update={"synthetic": spec.synthetic.model_copy(update={"n_train": 50})}))
    assert bigger.sizes()["train"] == 50 and bigger.data_hash != data.data_hash


def test_synthetic_pairs_and_instructions_load(tmp_path):
    pairs = prepare_data(DataSpec(source="synthetic", task="paraphrase", synthetic={"n_train": 20, "n_dev": 10}),
                         cache_dir=tmp_path)
    assert pairs.text_columns == ("sentence1", "sentence2") and pairs.num_labels == 2
    assert (tmp_path / "synthetic" / "paraphrase" / "dev.csv").is_file()  # no path: under cache_dir
    chat = prepare_data(DataSpec(source="synthetic", task="instructions", path=tmp_path,
                                 synthetic={"n_train": 20, "n_dev": 10}))
    assert chat.task_type == "causal_lm" and chat.is_instruction
    assert chat.train[0]["prompt"].startswith("Below is an instruction")


def test_synthetic_needs_a_place_to_write():
    with pytest.raises(DataError, match="needs `path`"):
        prepare_data(DataSpec(source="synthetic", task="topic"))
    with pytest.raises(ValueError, match="one of \\['instructions', 'paraphrase', 'sentiment', 'topic'\\]"):
        DataSpec(source="synthetic", task="weather", path=".")
