"""EditBank: serve K tasks' RED edits from one frozen base model in one batch.

The routing lives in ``RoutedBank``, shared by ``EditBank`` (edits read from files, inference,
states swapped atomically) and ``red.bank_train.TrainableBank`` (the same routing with trainable
per-task vectors and heads, to co-train K tasks in one pass).

Each row of a batch carries a task index. Every target layer holds a (K, H)
stack of scaling and bias vectors and applies row i's task (in fp32, cast once,
as ``RedEdit`` does): the result equals running each task alone. Works in
``generate()``: when a batch is expanded for beams or several return sequences,
the task ids are expanded the same way.

Task heads. Each task keeps its own version of every head module it trained (a
classifier per task), with its own tensors, so tasks may have heads of different
shapes: 2, 3 or 4 labels, or a regression head, in one bank. The base model's head
module's output is not used by the bank: a forward hook replaces it by each row's
task's version. An ``EditBank`` state stacks the tasks' head tensors by shape and
applies each shape in one batched operation, with no loop over the tasks present
(``red.bank_heads``); a ``TrainableBank`` runs each task's own (trained) module on
that task's rows. When the tasks' head
outputs differ in width, the output is padded on the last dimension to the widest
task with NaN (``EditBank.PAD``), so a row's first ``output_widths[task]`` values
are exactly what the task alone gives and the rest can never be mistaken for a
score; ``split_outputs`` returns each row's own part. Loss computation by the base
model (``labels=``) is refused when the tasks' heads differ: compute it per task.

State and swaps. Everything that describes the K tasks (names, stacks, stacked heads,
widths) is one ``BankState``, built beside the serving one and never changed
afterwards. The bank's hooks sit on the base model once; each call captures the
bank's current state when it starts (``tasks()``), and ``swap(new_state)`` replaces
that reference in one assignment. A call in flight therefore finishes on the state it
started with, the next call sees the new one, and no call ever mixes the two (a
second bank on the same base would apply its edits on top instead: one bank per base).

Thread safety: the task ids and state of a call are kept per thread (``threading.local``),
so concurrent calls from a server's threads each get their own result; no module shared
between threads has its parameters swapped (stacked heads run a per-thread skeleton).
"""
from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bank_heads import StackedHead, head_copy  # noqa: F401 - head_copy: red.bank's name for it
from .config import EditConfig
from .errors import EditConfigError
from .fingerprint import fingerprint, weight_sample
from .io import check_compatible, check_weights, read_edit
from .methods.red.layer import apply_scale_bias
from .targets import Target, find_targets, module_key


def union_targets(model: nn.Module, configs: Sequence[EditConfig]) -> list[Target]:
    """The targets of all ``configs`` (one entry per module), in the model's module order; a task that does
    not edit one of them gets the identity there."""
    targets: dict[str, Target] = {}
    for config in configs:
        for t in find_targets(model, config):
            targets.setdefault(t.name, t)
    order = list(dict(model.named_modules()))
    return [targets[n] for n in sorted(targets, key=order.index)]


def _last_weight_rows(named: Iterable[tuple[str, torch.Tensor]]) -> int | None:
    """Rows of the last 2-D ``...weight`` among a head module's ``(name, tensor)`` pairs: its output width."""
    weights = [t for n, t in named if n.endswith("weight") and t.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


class TaskSet:
    """What a bank state says about its K tasks (mixed into :class:`BankState` and the trainable bank)."""

    names: list[str]
    task_types: list[str | None]
    head_names: list[str]
    output_widths: list[int | None]

    def _width(self, heads: nn.ModuleDict) -> int | None:
        """Output width of a task's last head module: rows of its last 2-D weight (classes, or 1 for regression)."""
        if not self.head_names:
            return None
        return _last_weight_rows(heads[module_key(self.head_names[-1])].named_parameters())

    def heads_differ(self) -> bool:
        return len({(w, t) for w, t in zip(self.output_widths, self.task_types)}) > 1

    def describe(self) -> list[dict[str, Any]]:
        return [{"task": n, "task_type": t, "outputs": w} for n, t, w in
                zip(self.names, self.task_types, self.output_widths)]


def _file_key(path: str | Path) -> tuple:
    """What identifies an edit file's content without reading it: its resolved path, size and modification time."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError:
        return (str(path),)  # read_edit names the problem
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


class BankState(TaskSet, nn.Module):
    """The K tasks of a bank: names, (K, H) scale/bias stacks per target layer, stacked per-task heads.

    Built from edit files for one base model (checked: method, architecture, weight fingerprint)
    and not modified afterwards: a change of tasks or versions builds a new state and
    ``EditBank.swap`` puts it in place. ``fingerprints`` caches the base's fingerprint per target
    set (the base is frozen, so it is computed once per bank, not once per state). ``known``: the
    ``sources`` of an earlier state of the same bank: a file unchanged since (same path, size and
    modification time) is not read and checked again, so a state of K tasks where one moved costs one
    read, not K. Heads are stacked from the files' tensors (``red.bank_heads``), not copied per task.
    """

    def __init__(self, model: nn.Module, edits: Sequence[str | Path], names: Sequence[str] | None = None, *,
                 check_fingerprint: bool = True, fingerprints: dict | None = None,
                 known: Mapping[tuple, tuple] | None = None):
        super().__init__()
        if not edits:
            raise EditConfigError("an EditBank needs at least one edit file")
        self.names = list(names or [Path(e).stem for e in edits])
        if len(self.names) != len(edits):
            raise EditConfigError(f"{len(edits)} edit files but {len(self.names)} names")
        cache = {} if fingerprints is None else fingerprints
        self.sources: dict[tuple, tuple] = {}  # file key -> (tensors, meta, fingerprint checked)
        files = []
        for path, name in zip(edits, self.names):
            key = _file_key(path)
            record = (known or {}).get(key)
            if record is None or (check_fingerprint and not record[2]):
                tensors, meta = read_edit(path)
                self._check(model, meta, name, check_fingerprint, cache)
                record = (tensors, meta, check_fingerprint)
            self.sources[key] = record
            files.append(record[:2])
        self.task_types = [str((meta.get("extra") or {}).get("task_type", "")) or None for _, meta in files]
        configs = {json.dumps(meta["config"], sort_keys=True): meta["config"] for _, meta in files}
        self.targets = union_targets(model, [EditConfig(**c) for c in configs.values()])
        order = list(dict(model.named_modules()))
        k = len(files)
        self.scales = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for t in self.targets:
            s = torch.ones(k, t.hidden)
            b = torch.zeros(k, t.hidden)
            for i, (tensors, _) in enumerate(files):
                s[i] = tensors.get(f"edit.{t.name}.scale", s[i])
                b[i] = tensors.get(f"edit.{t.name}.bias", b[i])
            self.scales[module_key(t.name)] = nn.Parameter(s, requires_grad=False)
            self.biases[module_key(t.name)] = nn.Parameter(b, requires_grad=False)
        self.head_names = sorted({h for _, meta in files for h in meta["head"]}, key=order.index)
        modules = dict(model.named_modules())
        self.stacked = nn.ModuleDict({module_key(head): StackedHead(modules[head], [
            self._own_tensors(modules[head], head, tensors, name) for (tensors, _), name in zip(files, self.names)])
            for head in self.head_names})
        self.output_widths: list[int | None] = [self._stacked_width(modules, k) for k in range(len(files))]
        self.to(next(model.parameters()).device)
        object.__setattr__(self, "_base", weakref.ref(model))  # not a submodule: the base is the bank's

    @staticmethod
    def _check(model: nn.Module, meta: dict, name: str, check_fingerprint: bool, cache: dict) -> None:
        """Refuse an edit this bank cannot serve: not RED, another architecture, other base weights."""
        if meta["method"] != "red":
            raise EditConfigError(f"EditBank serves RED edits; {name!r} is a {meta['method']} edit")
        check_compatible(model, meta)
        if check_fingerprint:
            key = tuple(sorted(meta["targets"]))
            if key not in cache:
                cache[key] = (fingerprint(model, key), weight_sample(model, key))
            fp, sample = cache[key]
            check_weights(model, meta, base_fingerprint=fp, sample=sample, where=f"edit {name!r}")

    @staticmethod
    def _own_tensors(module: nn.Module, head: str, tensors: Mapping[str, torch.Tensor], name: str
                     ) -> dict[str, torch.Tensor]:
        """A task's tensors of head module ``head`` by parameter name, in the module's dtype."""
        prefix, own = f"head.{head}.", {}
        fallback = next(module.parameters(), None)
        for key, tensor in tensors.items():
            if not key.startswith(prefix):
                continue
            pname = key[len(prefix):]
            owner, _, leaf = pname.rpartition(".")
            try:
                sub = module.get_submodule(owner) if owner else module
            except AttributeError as exc:
                raise EditConfigError(f"edit {name!r}: head tensor {key} has no module in this model") from exc
            old = getattr(sub, leaf, None)
            like = old if isinstance(old, torch.Tensor) else fallback
            own[pname] = tensor.to(like.dtype) if like is not None else tensor
        return own

    def _stacked_width(self, modules: dict[str, nn.Module], task: int) -> int | None:
        """Output width of a task's last head module: rows of its last 2-D weight (classes, or 1 for regression)."""
        if not self.head_names:
            return None
        last = self.head_names[-1]
        return _last_weight_rows(self.stacked[module_key(last)].tensors(modules[last], task).items())

    @property
    def heads(self) -> list[dict[str, nn.Module]]:
        """Per task, a standalone copy of each of its head modules, built on each access (to inspect a task's
        head; calls run the stacked tensors and never build these)."""
        modules = dict(self._base().named_modules())
        return [{module_key(h): self.stacked[module_key(h)].module_for(modules[h], k) for h in self.head_names}
                for k in range(len(self.names))]

    def stacks(self, key: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(K, hidden) scaling and bias vectors of target ``key``; (None, None) where no task edits it."""
        if key not in self.scales:
            return None, None
        return self.scales[key], self.biases[key]

    def built_for(self, model: nn.Module) -> bool:
        return self._base() is model



class _Calls(threading.local):
    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None
        self.state: BankState | None = None


class RoutedBank(nn.Module):
    """The routing of a bank of K tasks on one frozen base: per-call task ids and state (per thread), RED's edit
    applied row by row from the state's (K, H) stacks, per-task head copies with NaN padding.

    A *state* describes the K tasks: ``names``, ``task_types``, ``head_names``, ``heads`` (per task a
    ModuleDict of head copies), ``output_widths``, ``stacks(key)``, ``heads_differ()``, ``built_for(model)``
    and ``describe()``. :class:`EditBank` serves immutable :class:`BankState` s read from edit files and swaps
    them; :class:`red.bank_train.TrainableBank` is its own (trainable) state. Attribute look-ups that the bank
    does not answer go to the base model (``bank.config``), as for :class:`red.EditedModel`.
    """

    PAD = float("nan")

    def _route(self, model: nn.Module) -> None:
        """Set up the routing for ``model`` (call from ``__init__`` after ``nn.Module.__init__``)."""
        self.base_model = model
        self._calls = _Calls()
        self._handles: list = []
        self._hooked: set = set()
        for p in model.parameters():
            p.requires_grad_(False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base_model")
            if base is None:
                raise
            return getattr(base, name)

    def _install_hooks(self, state) -> None:
        """Hooks on the target layers and head modules of ``state`` not hooked yet (each hook reads the call's
        state, and is the identity for a state that does not edit its layer)."""
        modules = dict(self.base_model.named_modules())
        for t in state.targets:
            if t.name not in self._hooked:
                self._handles.append(modules[t.name].register_forward_hook(self._edit_hook(module_key(t.name))))
                self._hooked.add(t.name)
        for head_name in state.head_names:
            if ("head", head_name) not in self._hooked:
                self._handles.append(modules[head_name].register_forward_hook(self._head_hook(head_name),
                                                                              with_kwargs=True))
                self._hooked.add(("head", head_name))

    # ---- routing ----------------------------------------------------------------------
    def _current(self, batch: int) -> tuple[BankState, torch.Tensor]:
        """This thread's call: its state and the task id of each of ``batch`` rows."""
        ids, state = self._calls.ids, self._calls.state
        if ids is None or state is None:
            raise EditConfigError("no task ids set: call the bank with task_ids=... or inside `with bank.tasks(ids):`")
        if batch != ids.shape[0]:
            if batch % ids.shape[0]:
                raise EditConfigError(f"batch of {batch} rows but {ids.shape[0]} task ids")
            ids = ids.repeat_interleave(batch // ids.shape[0])  # beams / num_return_sequences
        return state, ids

    def _edit_hook(self, key: str):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            state, ids = self._current(h.shape[0])
            scales, biases = state.stacks(key)
            if scales is None and biases is None:
                return None  # no task of this state edits this layer
            ids = ids.to(h.device)
            shape = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
            h = apply_scale_bias(h, None if scales is None else scales[ids].view(shape),
                                 None if biases is None else biases[ids].view(shape))
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def _head_hook(self, head_name: str):
        key = module_key(head_name)

        def hook(module, args, *rest):
            # (module, args, kwargs, output); also (module, args, output) in case a call starts while
            # torch is still registering this hook's with_kwargs flag on another thread
            kwargs, output = (rest[0], rest[1]) if len(rest) == 2 else ({}, rest[0])
            x = args[0] if args else next(iter(kwargs.values()))
            rest_args = tuple(args[1:]) if args else ()
            extra = kwargs if args else dict(list(kwargs.items())[1:])
            state, ids = self._current(x.shape[0])
            if head_name not in state.head_names:
                return None
            ids = ids.to(x.device)
            stacked = getattr(state, "stacked", None)
            if stacked is not None:  # an EditBank's state: one batched op per head signature, no loop over tasks
                return stacked[key].run(module, x, ids, rest_args, extra)
            groups = []  # a TrainableBank's own head modules, trained per task
            for task in ids.unique().tolist():
                rows = (ids == task).nonzero(as_tuple=True)[0]
                groups.append((rows, state.heads[task][key](x[rows], *rest_args, **extra)))
            width = max(y.shape[-1] for _, y in groups)
            like = groups[0][1]
            out = like.new_full((x.shape[0],) + tuple(like.shape[1:-1]) + (width,), self.PAD)
            for rows, y in groups:
                out[rows, ..., : y.shape[-1]] = y
            return out
        return hook

    @contextlib.contextmanager
    def tasks(self, task_ids: Sequence[int] | torch.Tensor, state: BankState | None = None) -> Iterator[None]:
        """Within this block (this thread only), calls of the base model route row i to task ``task_ids[i]``.

        The block runs on ``state`` (default: the bank's current state, captured now): a ``swap`` during
        the block does not affect it.
        """
        state = self.state if state is None else state
        ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(state.names)):
            raise EditConfigError(f"task ids must be in [0, {len(state.names)}); got {ids.tolist()}")
        if not state.built_for(self.base_model):
            raise EditConfigError("this BankState was built for another base model")
        previous = (self._calls.ids, self._calls.state)
        self._calls.ids, self._calls.state = ids, state
        try:
            yield
        finally:
            self._calls.ids, self._calls.state = previous

    def task_index(self, name: str) -> int:
        return self.state.names.index(name)

    def _heads_differ(self) -> bool:
        return self.state.heads_differ()

    def forward(self, *args, task_ids, **kwargs):
        """The base model's forward with row i routed to task ``task_ids[i]``; outputs as described above."""
        state = self.state
        if kwargs.get("labels") is not None and state.heads_differ():
            raise EditConfigError("the tasks of this bank have different heads (label counts or regression), so the "
                                  "base model cannot compute one loss; call without labels and score each task's rows")
        with self.tasks(task_ids, state):
            return self.base_model(*args, **kwargs)

    def generate(self, *args, task_ids, **kwargs):
        with self.tasks(task_ids):
            return self.base_model.generate(*args, **kwargs)

    def split_outputs(self, outputs: torch.Tensor, task_ids: Sequence[int] | torch.Tensor,
                      state: BankState | None = None) -> list[torch.Tensor]:
        """Row i of ``outputs`` (logits from the bank) without the padding of tasks with fewer outputs."""
        widths = (state or self.state).output_widths
        ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1).tolist()
        if len(ids) != outputs.shape[0]:
            raise EditConfigError(f"{outputs.shape[0]} rows but {len(ids)} task ids")
        return [row if widths[t] is None else row[..., : widths[t]] for row, t in zip(outputs, ids)]

    def describe(self) -> list[dict[str, Any]]:
        return self.state.describe()

    def close(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._hooked = set()
        return self.base_model


class EditBank(RoutedBank):
    """K RED edits (with their task heads) on one frozen base model; route rows with ``task_ids``."""

    def __init__(self, model: nn.Module, edits: Sequence[str | Path], names: Sequence[str] | None = None,
                 *, check_fingerprint: bool = True, fingerprints: dict | None = None,
                 known: Mapping[tuple, tuple] | None = None):
        """``fingerprints``/``known``: as for ``BankState`` (a caller that checked the files beside this bank)."""
        super().__init__()
        self._route(model)
        self._fingerprints: dict = {} if fingerprints is None else fingerprints
        self._swap_lock = threading.Lock()
        state = self.load_state(edits, names, check_fingerprint=check_fingerprint, known=known)
        self._install_hooks(state)
        self.state = state

    # ---- the current state ------------------------------------------------------------
    def load_state(self, edits: Sequence[str | Path], names: Sequence[str] | None = None, *,
                   check_fingerprint: bool = True, known: Mapping[tuple, tuple] | None = None) -> BankState:
        """A new ``BankState`` for this bank's base model (checked; not yet serving: see ``swap``). Files the
        current state (or ``known``) read and checked, unchanged since, are not read again."""
        current = self._modules.get("state")  # None while the bank's first state is built
        reuse = {**(current.sources if current is not None else {}), **(known or {})}
        return BankState(self.base_model, edits, names, check_fingerprint=check_fingerprint,
                         fingerprints=self._fingerprints, known=reuse)

    def swap(self, state: BankState) -> BankState:
        """Serve ``state`` from the next call on and return the previous state; calls in flight keep theirs.

        Hooks for layers the new state edits and the old did not are installed first (they are the
        identity for any state that does not edit their layer), then the state is replaced in one
        assignment.
        """
        if not isinstance(state, BankState) or not state.built_for(self.base_model):
            raise EditConfigError("swap() takes a BankState built by this bank's load_state()")
        with self._swap_lock:
            self._install_hooks(state)
            previous = self.state
            self.state = state
        return previous

    # the current state's fields, as attributes of the bank
    names = property(lambda self: self.state.names)
    task_types = property(lambda self: self.state.task_types)
    targets = property(lambda self: self.state.targets)
    scales = property(lambda self: self.state.scales)
    biases = property(lambda self: self.state.biases)
    head_names = property(lambda self: self.state.head_names)
    heads = property(lambda self: self.state.heads)
    output_widths = property(lambda self: self.state.output_widths)
