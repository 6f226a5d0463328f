"""Small, seeded, learnable tasks written to files, for tests and the offline demo.

The demo must run without a network and still exercise the real loading code,
so these generators write ordinary files (CSV for classification, Alpaca JSON
for instructions) that ``prepare_data`` then reads like any user data.

The tasks are easy enough for a frozen 6-layer MiniLM with RED (a few thousand
edit parameters plus the classifier head) to learn clearly above chance from
~300 rows in two epochs, but not solvable from one keyword: sentences use
varied templates, negations ("was not dull"), contrasts ("the plot was slow,
but overall the film was great") and distractor words from other classes.
Labels are balanced exactly and no sentence (pair) occurs twice across train
and dev, so dev scores are honest. Every word is plain English in BERT's
uncased vocabulary.
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticTask:
    """What ``prepare_data`` needs to know about a synthetic task's files."""

    name: str
    label_list: tuple[str, ...] | None
    text_columns: tuple[str, ...]
    task_type: str
    metric: str
    file_format: str  # "csv" or "alpaca"


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {t.name: t for t in [
    SyntheticTask("sentiment", ("negative", "positive"), ("sentence",), "classification", "accuracy", "csv"),
    SyntheticTask("topic", ("sports", "tech", "food", "travel"), ("sentence",), "classification", "accuracy", "csv"),
    SyntheticTask("paraphrase", ("not_equivalent", "equivalent"), ("sentence1", "sentence2"), "classification",
                  "accuracy", "csv"),
    SyntheticTask("instructions", None, ("prompt",), "causal_lm", "loss", "alpaca"),
]}

# --------------------------------------------------------------------------- sentiment

_POSITIVE = ["great", "wonderful", "excellent", "delightful", "charming", "brilliant", "superb", "enjoyable",
             "lovely", "fantastic", "pleasant", "beautiful", "clever", "moving", "fun"]
_NEGATIVE = ["awful", "terrible", "boring", "dull", "poor", "dreadful", "weak", "bad", "horrible",
             "disappointing", "clumsy", "ugly", "messy", "slow", "bland"]
_THINGS = ["movie", "film", "book", "meal", "hotel", "concert", "show", "album", "game", "play", "novel",
           "restaurant", "song", "museum", "series"]
_ASPECTS = ["acting", "plot", "music", "ending", "service", "food", "writing", "price", "view", "cast",
            "pacing", "design", "opening", "room", "sound"]
_PEOPLE = ["my sister", "my friend", "the critic", "my father", "our teacher", "a neighbor", "my brother",
           "my mother", "the reviewer", "my uncle"]
_ADVERBS = ["really", "truly", "quite", "very", "rather", "simply", "honestly", "pretty"]
_FILLERS = ["we went there on a sunday.", "it lasted about two hours.", "i went with my family.",
            "the tickets were bought online.", "it was my first time.", "we arrived a little late.",
            "it was raining that day.", "i had heard about it from a friend."]


def _sentiment(rng: random.Random, label: int) -> tuple[str, ...]:
    good, bad = (_POSITIVE, _NEGATIVE) if label == 1 else (_NEGATIVE, _POSITIVE)
    adj, opp = rng.choice(good), rng.choice(bad)
    thing, aspect, person, adv = rng.choice(_THINGS), rng.choice(_ASPECTS), rng.choice(_PEOPLE), rng.choice(_ADVERBS)
    templates = [
        # direct
        (3, f"the {thing} was {adv} {adj}."),
        (2, f"what a {adj} {thing}!"),
        (2, f"{person} said the {thing} was {adj}, and i agree."),
        # negation: the polarity word is the opposite one
        (2, f"the {thing} was not {opp} at all."),
        (1, f"i would not call the {thing} {opp}."),
        # contrast: the main clause decides
        (2, f"the {aspect} was {opp}, but overall the {thing} was {adj}."),
        (2, f"although the {aspect} was {opp}, the {thing} itself was {adv} {adj}."),
        (1, f"{person} thought the {thing} was {opp}, but i found it {adj}."),
        # no adjective at all
        (1, f"i would happily recommend this {thing} to anyone." if label == 1
         else f"i would never recommend this {thing} to anyone."),
    ]
    sentence = _weighted(rng, templates)
    if rng.random() < 0.3:
        filler = rng.choice(_FILLERS)
        sentence = f"{filler} {sentence}" if rng.random() < 0.5 else f"{sentence} {filler}"
    return (sentence,)


# --------------------------------------------------------------------------- topic

_TOPICS = {
    "sports": ["match", "team", "coach", "player", "goal", "season", "league", "stadium", "referee",
               "tournament", "striker", "championship"],
    "tech": ["computer", "software", "phone", "laptop", "app", "screen", "battery", "internet", "keyboard",
             "robot", "website", "printer"],
    "food": ["recipe", "soup", "bread", "cheese", "dinner", "kitchen", "chef", "pasta", "salad", "cake",
             "sauce", "breakfast"],
    "travel": ["flight", "hotel", "beach", "passport", "train", "trip", "luggage", "airport", "island",
               "tour", "ferry", "map"],
}
_TOPIC_NAMES = list(_TOPICS)


def _topic(rng: random.Random, label: int) -> tuple[str, ...]:
    words = _TOPICS[_TOPIC_NAMES[label]]
    k1, k2 = rng.sample(words, 2)
    other = rng.choice([t for t in _TOPIC_NAMES if t != _TOPIC_NAMES[label]])
    d = rng.choice(_TOPICS[other])
    person = rng.choice(_PEOPLE)
    templates = [
        # two words of the topic
        (2, f"{person} talked about the {k1} and the {k2} for an hour."),
        (2, f"i read an article about the {k1} and its {k2}."),
        (1, f"everyone was excited about the new {k1}, especially the {k2}."),
        # one word of the topic
        (2, f"the {k1} was the main story in the news today."),
        (1, f"we spent the whole evening arguing about the {k1}."),
        # two words of the topic and one distractor from another topic
        (2, f"while waiting for the {d}, {person} read about the {k1} and the {k2}."),
        (2, f"forget the {d}; the {k1} and the {k2} are what matter this week."),
        (1, f"{person} mentioned the {d} once, but mostly complained about the {k1} and the {k2}."),
        # one word of the topic and one distractor: only the sentence's structure decides
        (1, f"forget the {d}; the {k1} is what matters this week."),
        (1, f"{person} ignored the {d} and only cared about the {k1}."),
    ]
    return (_weighted(rng, templates),)


# --------------------------------------------------------------------------- paraphrase (pairs)

# (past, base form, synonym past, antonym past, objects)
_ACTIONS = [
    ("bought", "buy", "purchased", "sold", ["car", "house", "boat", "painting", "bicycle", "piano"]),
    ("opened", "open", "unlocked", "closed", ["door", "window", "gate", "shop", "box", "store"]),
    ("won", "win", "secured", "lost", ["prize", "award", "contest", "title", "medal", "trophy"]),
    ("started", "start", "began", "ended", ["meeting", "project", "lesson", "journey", "class", "party"]),
    ("fixed", "fix", "repaired", "broke", ["car", "radio", "clock", "fence", "roof", "computer"]),
    ("liked", "like", "enjoyed", "hated", ["movie", "song", "book", "meal", "speech", "painting"]),
]
_AGENTS = ["the teacher", "my uncle", "the doctor", "a farmer", "the pilot", "my cousin", "the mayor",
           "a student", "the baker", "the captain", "my aunt", "the nurse"]
_TIMES = ["yesterday", "last week", "on monday", "this morning", "in june", "last night", "on friday",
          "after lunch"]


def _paraphrase(rng: random.Random, label: int) -> tuple[str, ...]:
    past, base, synonym, antonym, objects = rng.choice(_ACTIONS)
    agent, obj, time = rng.choice(_AGENTS), rng.choice(objects), rng.choice(_TIMES)
    first = f"{agent} {past} the {obj} {time}."
    if label == 1:  # restates: same fact, other words or order
        second = _weighted(rng, [
            (3, f"{agent} {synonym} the {obj} {time}."),
            (3, f"the {obj} was {past} by {agent} {time}."),
            (2, f"{time}, {agent} {past} the {obj}."),
            (2, f"{time}, the {obj} was {past} by {agent}."),
        ])
    else:  # contradicts: negated, opposite verb, or another agent / object
        other_agent = rng.choice([a for a in _AGENTS if a != agent])
        other_obj = rng.choice([o for o in objects if o != obj])
        second = _weighted(rng, [
            (3, f"{agent} did not {base} the {obj} {time}."),
            (3, f"{agent} {antonym} the {obj} {time}."),
            (2, f"the {obj} was {past} by {other_agent} {time}."),
            (2, f"{time}, {agent} {past} the {other_obj}."),
        ])
    return first, second


# --------------------------------------------------------------------------- instructions

_OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("early", "late"),
              ("light", "dark"), ("old", "young"), ("open", "closed"), ("up", "down"), ("rich", "poor"),
              ("hard", "soft"), ("wet", "dry"), ("full", "empty"), ("loud", "quiet"), ("strong", "weak")]
_NOUNS = ["cat", "dog", "book", "tree", "car", "house", "bird", "river", "apple", "chair", "table", "flower",
          "cup", "road", "friend", "song", "garden", "window", "letter", "cloud"]
_FRUIT_COLORS = [("banana", "yellow"), ("lemon", "yellow"), ("strawberry", "red"), ("cherry", "red"),
                 ("orange", "orange"), ("lime", "green"), ("grape", "purple"), ("tomato", "red"),
                 ("coconut", "brown"), ("plum", "purple")]


def _instruction(rng: random.Random, label: int) -> tuple[str, ...]:
    kind = rng.randrange(5)
    if kind == 0:
        word, answer = rng.choice(_OPPOSITES)
        if rng.random() < 0.5:
            word, answer = answer, word
        return "Write the opposite of the word.", word, answer
    if kind == 1:
        noun = rng.choice(_NOUNS)
        return "Write the plural of the word.", noun, noun + "s"
    if kind == 2:
        a, b = rng.randrange(1, 60), rng.randrange(1, 60)
        return "Add the two numbers.", f"{a} and {b}", str(a + b)
    if kind == 3:
        noun = rng.choice(_NOUNS)
        return "Repeat the word three times.", noun, " ".join([noun] * 3)
    fruit, color = rng.choice(_FRUIT_COLORS)
    return f"What color is a ripe {fruit}?", "", f"A ripe {fruit} is {color}."


_GENERATORS: dict[str, Callable[[random.Random, int], tuple[str, ...]]] = {
    "sentiment": _sentiment, "topic": _topic, "paraphrase": _paraphrase, "instructions": _instruction,
}


# --------------------------------------------------------------------------- writing


def generate_rows(task: str, n: int, seed: int = 0, exclude: set[tuple[str, ...]] | None = None
                  ) -> list[tuple[tuple[str, ...], str | None]]:
    """``n`` unique rows ``(texts, label name)``; labels balanced exactly (counts differ by at most 1).

    ``exclude`` holds texts already used elsewhere (train, when generating dev): they are
    skipped so that no row leaks between splits. The set is updated in place.
    """
    spec = _task(task)
    rng = random.Random(f"{task}:{seed}:{n}")
    seen = exclude if exclude is not None else set()
    n_labels = len(spec.label_list) if spec.label_list else 1
    labels = [i % n_labels for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for label in labels:
        for _ in range(1000):
            texts = _GENERATORS[task](rng, label)
            if texts not in seen:
                break
        else:  # pragma: no cover - only for absurd sizes
            raise ValueError(f"synthetic task {task!r} cannot produce {n} distinct rows; ask for fewer.")
        seen.add(texts)
        rows.append((texts, spec.label_list[label] if spec.label_list else None))
    return rows


def write_synthetic(task: str, out_dir: Path | str, n_train: int = 300, n_dev: int = 200, seed: int = 0) -> Path:
    """Write ``out_dir/<task>/train.<ext>`` and ``dev.<ext>`` (+ ``meta.json``); return that folder.

    Deterministic: the same arguments write byte-identical files. ``dev`` is later split
    into validation and test by the same protocol as GLUE's dev sets. Classification tasks
    are CSV (``sentence`` or ``sentence1,sentence2``, then ``label`` as a word); the
    instruction task is an Alpaca JSON list. The folder appears atomically, so concurrent
    jobs never see half-written files.
    """
    spec = _task(task)
    if n_train < 1 or n_dev < 2:
        raise ValueError(f"synthetic task {task!r}: need n_train >= 1 and n_dev >= 2 (got {n_train}, {n_dev}).")
    out_dir = Path(out_dir)
    target = out_dir / task
    meta = {"task": task, "n_train": n_train, "n_dev": n_dev, "seed": seed, "version": GENERATOR_VERSION}
    if _meta_matches(target, meta):
        return target
    seen: set[tuple[str, ...]] = set()
    train = generate_rows(task, n_train, seed, seen)
    dev = generate_rows(task, n_dev, seed + 1_000_003, seen)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / f".{task}.lock")):  # two tasks of one night on one folder: one writes, one reads
        return _write_locked(spec, target, meta, train, dev)


def _write_locked(spec: SyntheticTask, target: Path, meta: dict, train: list, dev: list) -> Path:
    """Write the folder under the writers' lock, so a second writer of the same files finds the first's folder
    and keeps it (without the lock it could remove that folder while the first job reads it)."""
    task, out_dir = meta["task"], target.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}-", dir=out_dir))
    try:
        ext = "json" if spec.file_format == "alpaca" else "csv"
        for split, rows in (("train", train), ("dev", dev)):
            _write_rows(tmp / f"{split}.{ext}", spec, rows)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if _meta_matches(target, meta):  # a concurrent job wrote the same files meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _meta_matches(target, meta):  # a concurrent writer did not win either
            raise
    return target


def _write_rows(path: Path, spec: SyntheticTask, rows: list[tuple[tuple[str, ...], str | None]]) -> None:
    if spec.file_format == "alpaca":
        records = [{"instruction": t[0], "input": t[1], "output": t[2]} for t, _ in rows]
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*spec.text_columns, "label"])
        for texts, label in rows:
            writer.writerow([*texts, label])


def _meta_matches(folder: Path, meta: dict) -> bool:
    try:
        return json.loads((folder / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def _task(task: str) -> SyntheticTask:
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(SYNTHETIC_TASKS)}.")
    return SYNTHETIC_TASKS[task]


def _weighted(rng: random.Random, options: list[tuple[int, str]]) -> str:
    total = sum(w for w, _ in options)
    pick = rng.randrange(total)
    for weight, text in options:
        if pick < weight:
            return text
        pick -= weight
    raise AssertionError("unreachable")
