"""What one multi-task request is answered from: the loaded base models, their banks, and a snapshot of both.

* ``BaseGroup``: one loaded base model (one checkpoint, model class and dtype), its tokenizer and its
  ``red.EditBank``; ``check`` refuses an edit that cannot join the bank.
* ``Snapshot``: the task table and one ``BankState`` per base, built whole and never modified; the
  ``MultiTaskModel`` (``registry.serving.multitask``) replaces it in one assignment when a version moves.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from red import EditBank, RedError, read_edit
from red.bank import BankState
from red.pretrained import as_dtype, load_base_model, load_tokenizer
from red.utils import utc_now

from .served_tasks import ServedTask, VersionRefused


class BaseGroup:
    """One loaded base model (one checkpoint, model class and dtype), its tokenizer and its EditBank."""

    def __init__(self, key: tuple, first: ServedTask, device: str):
        """Load ``first``'s base model and tokenizer on ``device`` (``key`` is ``first.base_key``); the bank is
        created with the first ``state_for``."""
        self.key = key
        self.device = device
        self.generative = first.generative
        self.causal = first.task_type == "causal_lm"
        labels = list(first.label_list) if first.label_list else None
        self.tokenizer = load_tokenizer(first.base_model, revision=first.base_revision)
        if self.causal:
            self.tokenizer.padding_side = "left"  # generation continues after the prompt
        self.model, self.fresh = load_base_model(
            first.base_model, first.task_type, revision=first.base_revision, dtype=as_dtype(first.dtype),
            label_list=labels, num_labels=len(labels) if labels else None, model_class=first.model_class,
            tokenizer=self.tokenizer)
        self.model.to(device).eval()
        self.bank = None
        self._fingerprints: dict = {}   # the base's weight fingerprint per target set: computed once per base
        self._checked: dict = {}        # edit files read and checked by ``check`` since the last state
        self.tokenize_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The base as ``status()`` shows it: checkpoint, revision, model class, dtype, device."""
        base, revision, model_class, dtype = self.key
        return {"base_model": base, "revision": revision, "model_class": model_class, "dtype": dtype,
                "device": self.device}

    def check(self, task: ServedTask) -> None:
        """Refuse an edit that leaves freshly initialised head weights random, or that fails the bank's checks
        (architecture, widths, the base weights' fingerprint)."""
        if task.generative != self.generative:
            raise VersionRefused(f"{task.model} v{task.version}: a {task.task_type} task cannot share a base loaded "
                                 f"for {'generation' if self.generative else 'scoring'}")
        state, failed = None, None
        try:
            if self.bank is None:
                state = BankState(self.model, [task.edit_path], [task.model], fingerprints=self._fingerprints,
                                  known=self._checked)
            else:
                state = self.bank.load_state([task.edit_path], [task.model], known=self._checked)
        except RedError as exc:
            failed = exc
        # the file as the state read it (read once); the fresh-head check is reported first
        tensors = next(iter(state.sources.values()))[0] if state is not None else read_edit(task.edit_path)[0]
        uncovered = sorted({m for m in self.fresh for p, _ in self.model.get_submodule(m).named_parameters()
                            if f"head.{m}.{p}" not in tensors})
        if uncovered:
            raise VersionRefused(f"{task.model} v{task.version}: loading {task.base_model} initialises {uncovered[:4]} "
                                 "randomly and the edit does not hold them; retrain it with this redflow")
        if failed is not None:
            raise VersionRefused(f"{task.model} v{task.version}: {failed}") from failed
        self._checked.update(state.sources)  # the next state reads this file from here

    def state_for(self, tasks: list[ServedTask]) -> BankState:
        """A ``BankState`` holding ``tasks`` in this order (the bank is created with the first one)."""
        paths, names = [t.edit_path for t in tasks], [t.model for t in tasks]
        checked, self._checked = self._checked, {}
        if self.bank is None:
            self.bank = EditBank(self.model, paths, names, fingerprints=self._fingerprints, known=checked)
            return self.bank.state
        return self.bank.load_state(paths, names, known=checked)


@dataclass(frozen=True)
class Snapshot:
    """Everything one request is answered from; replaced whole, never modified."""

    tasks: dict[str, ServedTask]                        # by registered model name
    groups: dict[tuple, tuple[BaseGroup, Any]]             # base key -> (group, BankState)
    slots: dict[str, tuple[tuple, int]]                 # model -> (base key, index in that state)
    lookup: dict[str, ServedTask] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    since: str = ""

    @classmethod
    def build(cls, tasks: dict[str, ServedTask], groups: dict[tuple, BaseGroup]) -> "Snapshot":
        """The snapshot serving ``tasks`` (by model name) on the loaded ``groups`` (by base key): one ``BankState``
        per base holding its tasks in name order, and the names a request may use (a task name shared by two
        models is ambiguous). Raises ``red.RedError`` if a base's tasks cannot share it."""
        by_key: dict[tuple, list[ServedTask]] = {}
        for name in sorted(tasks):
            by_key.setdefault(tasks[name].base_key, []).append(tasks[name])
        states, slots = {}, {}
        for key, members in by_key.items():
            states[key] = (groups[key], groups[key].state_for(members))
            slots.update({t.model: (key, i) for i, t in enumerate(members)})
        lookup: dict[str, ServedTask] = dict(tasks)
        owners: dict[str, list[str]] = {}
        for t in tasks.values():
            owners.setdefault(t.task, []).append(t.model)
        ambiguous = {}
        for short, models in owners.items():
            if short in tasks:
                continue  # a model's own name wins
            if len(models) == 1:
                lookup[short] = tasks[models[0]]
            else:
                ambiguous[short] = sorted(models)
        return cls(tasks=tasks, groups=states, slots=slots, lookup=lookup, ambiguous=ambiguous, since=utc_now("seconds"))
