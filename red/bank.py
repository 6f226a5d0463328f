"""EditBank: serve K tasks' RED edits from one frozen base model in one batch.

The routing lives in ``RoutedBank``, shared by ``EditBank`` (edits read from files, inference)
and ``red.bank_train.TrainableBank`` (the same routing with trainable per-task vectors and heads,
to co-train K tasks in one pass).

Each row of a batch carries a task index. Every target layer holds a (K, H)
stack of scaling and bias vectors and applies row i's task (in fp32, cast once,
as ``RedEdit`` does): the result equals running each task alone. Works in
``generate()``: when a batch is expanded for beams or several return sequences,
the task ids are expanded the same way.

Task heads. Each task keeps its own copy of every head module it trained (a
classifier per task), loaded with its own tensors, so tasks may have heads of
different shapes: 2, 3 or 4 labels, or a regression head, in one bank. The base
model's head module computes nothing for the bank: a forward hook replaces its
output by running each task's copy on that task's rows. When the tasks' head
outputs differ in width, the output is padded on the last dimension to the widest
task with NaN (``EditBank.PAD``), so a row's first ``output_widths[task]`` values
are exactly what the task alone gives and the rest can never be mistaken for a
score; ``split_outputs`` returns each row's own part. Loss computation by the base
model (``labels=``) is refused when the tasks' heads differ: compute it per task.

Thread safety: the task ids of a call are kept per thread (``threading.local``), so
concurrent calls from a server's threads each get their own result; the per-task
head copies are applied without swapping any module's parameters.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import EditConfig
from .errors import EditConfigError
from .io import check_compatible, check_weights, read_edit
from .layer import apply_scale_bias
from .targets import Target, find_targets


def _key(name: str) -> str:
    return name.replace(".", "__")


class _Calls(threading.local):
    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None


def union_targets(model: nn.Module, configs: Sequence[EditConfig]) -> list[Target]:
    """The targets of all ``configs`` (one entry per module), in the model's module order."""
    targets: dict[str, Target] = {}
    for config in configs:
        for t in find_targets(model, config):
            targets.setdefault(t.name, t)
    order = list(dict(model.named_modules()))
    return [targets[n] for n in sorted(targets, key=order.index)]


def head_copy(module: nn.Module) -> nn.Module:
    """A copy of a head module that runs for a bank only: no hooks of the base module."""
    module = copy.deepcopy(module)
    for m in module.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return module


class RoutedBank(nn.Module):
    """The routing of a bank of K tasks on one frozen base: per-row task ids (per thread), RED's edit applied
    row by row from (K, H) stacks, per-task head copies with NaN padding.

    Subclasses provide the stacks (:meth:`_stacks`) and call :meth:`_install` once their tensors exist:
    :class:`EditBank` reads them from edit files (inference), :class:`red.bank_train.TrainableBank` trains them.
    Attribute look-ups that the bank does not answer go to the base model (``bank.config``), as for
    :class:`red.EditedModel`.
    """

    PAD = float("nan")

    def _install(self, model: nn.Module, names: Sequence[str], targets: Sequence[Target], head_names: Sequence[str],
                 heads: Sequence[nn.ModuleDict], task_types: Sequence[str | None]) -> None:
        """Register the base, the heads and the hooks; freezes the base model's own parameters."""
        self.base_model = model
        self.names = list(names)
        self.targets = list(targets)
        self.head_names = list(head_names)
        self.heads = nn.ModuleList(heads)
        self.task_types = list(task_types)
        self.output_widths: list[int | None] = [self._width(h) for h in self.heads]
        for p in model.parameters():
            p.requires_grad_(False)
        self.to(next(model.parameters()).device)
        self._calls = _Calls()
        self._handles = []
        modules = dict(model.named_modules())
        for t in self.targets:
            self._handles.append(modules[t.name].register_forward_hook(self._edit_hook(_key(t.name))))
        for head_name in self.head_names:
            self._handles.append(modules[head_name].register_forward_hook(self._head_hook(head_name), with_kwargs=True))

    def _stacks(self, key: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(K, hidden) scaling and bias vectors of target ``key`` (None: no task has that kind there)."""
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base_model")
            if base is None:
                raise
            return getattr(base, name)

    def _width(self, heads: nn.ModuleDict) -> int | None:
        """Output width of a task's last head module: rows of its last 2-D weight (classes, or 1 for regression)."""
        if not self.head_names:
            return None
        last = heads[_key(self.head_names[-1])]
        weights = [p for n, p in last.named_parameters() if n.endswith("weight") and p.ndim == 2]
        return int(weights[-1].shape[0]) if weights else None

    # ---- routing ----------------------------------------------------------------------
    def _row_ids(self, batch: int) -> torch.Tensor:
        ids = self._calls.ids
        if ids is None:
            raise EditConfigError("no task ids set: call the bank with task_ids=... or inside `with bank.tasks(ids):`")
        if batch != ids.shape[0]:
            if batch % ids.shape[0]:
                raise EditConfigError(f"batch of {batch} rows but {ids.shape[0]} task ids")
            ids = ids.repeat_interleave(batch // ids.shape[0])  # beams / num_return_sequences
        return ids

    def _edit_hook(self, key: str):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            ids = self._row_ids(h.shape[0]).to(h.device)
            shape = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
            scales, biases = self._stacks(key)
            h = apply_scale_bias(h, None if scales is None else scales[ids].view(shape),
                                 None if biases is None else biases[ids].view(shape))
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def _head_hook(self, head_name: str):
        key = _key(head_name)

        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            rest = tuple(args[1:]) if args else ()
            extra = kwargs if args else dict(list(kwargs.items())[1:])
            ids = self._row_ids(x.shape[0]).to(x.device)
            groups = []
            for task in ids.unique().tolist():
                rows = (ids == task).nonzero(as_tuple=True)[0]
                groups.append((rows, self.heads[task][key](x[rows], *rest, **extra)))
            width = max(y.shape[-1] for _, y in groups)
            like = groups[0][1]
            out = like.new_full((x.shape[0],) + tuple(like.shape[1:-1]) + (width,), self.PAD)
            for rows, y in groups:
                out[rows, ..., : y.shape[-1]] = y
            return out
        return hook

    @contextlib.contextmanager
    def tasks(self, task_ids: Sequence[int] | torch.Tensor) -> Iterator[None]:
        """Within this block (this thread only), calls of the base model route row i to task ``task_ids[i]``."""
        ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.names)):
            raise EditConfigError(f"task ids must be in [0, {len(self.names)}); got {ids.tolist()}")
        previous, self._calls.ids = self._calls.ids, ids
        try:
            yield
        finally:
            self._calls.ids = previous

    def task_index(self, name: str) -> int:
        return self.names.index(name)

    def _heads_differ(self) -> bool:
        return len({(w, t) for w, t in zip(self.output_widths, self.task_types)}) > 1

    def forward(self, *args, task_ids, **kwargs):
        """The base model's forward with row i routed to task ``task_ids[i]``; outputs as described above."""
        if kwargs.get("labels") is not None and self._heads_differ():
            raise EditConfigError("the tasks of this bank have different heads (label counts or regression), so the "
                                  "base model cannot compute one loss; call without labels and score each task's rows")
        with self.tasks(task_ids):
            return self.base_model(*args, **kwargs)

    def generate(self, *args, task_ids, **kwargs):
        with self.tasks(task_ids):
            return self.base_model.generate(*args, **kwargs)

    def split_outputs(self, outputs: torch.Tensor, task_ids: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        """Row i of ``outputs`` (logits from the bank) without the padding of tasks with fewer outputs."""
        ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1).tolist()
        if len(ids) != outputs.shape[0]:
            raise EditConfigError(f"{outputs.shape[0]} rows but {len(ids)} task ids")
        return [row if self.output_widths[t] is None else row[..., : self.output_widths[t]]
                for row, t in zip(outputs, ids)]

    def describe(self) -> list[dict[str, Any]]:
        return [{"task": n, "task_type": t, "outputs": w} for n, t, w in
                zip(self.names, self.task_types, self.output_widths)]

    def close(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.base_model


class EditBank(RoutedBank):
    """K RED edits (with their task heads) on one frozen base model; route rows with ``task_ids``."""

    def __init__(self, model: nn.Module, edits: Sequence[str | Path], names: Sequence[str] | None = None,
                 *, check_fingerprint: bool = True):
        super().__init__()
        if not edits:
            raise EditConfigError("an EditBank needs at least one edit file")
        names = list(names or [Path(e).stem for e in edits])
        if len(names) != len(edits):
            raise EditConfigError(f"{len(edits)} edit files but {len(names)} names")
        files = [read_edit(e) for e in edits]
        for (_, meta), name in zip(files, names):
            if meta["method"] != "red":
                raise EditConfigError(f"EditBank serves RED edits; {name!r} is a {meta['method']} edit")
            check_compatible(model, meta)
            if check_fingerprint:
                check_weights(model, meta, where=f"edit {name!r}")
        task_types = [str((meta.get("extra") or {}).get("task_type", "")) or None for _, meta in files]
        # Union of the targets of all tasks; a task that does not edit a layer gets the identity there.
        targets = union_targets(model, [EditConfig(**meta["config"]) for _, meta in files])
        k = len(files)
        self.scales = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for t in targets:
            s = torch.ones(k, t.hidden)
            b = torch.zeros(k, t.hidden)
            for i, (tensors, _) in enumerate(files):
                s[i] = tensors.get(f"edit.{t.name}.scale", s[i])
                b[i] = tensors.get(f"edit.{t.name}.bias", b[i])
            self.scales[_key(t.name)] = nn.Parameter(s, requires_grad=False)
            self.biases[_key(t.name)] = nn.Parameter(b, requires_grad=False)
        order = list(dict(model.named_modules()))
        head_names = sorted({h for _, meta in files for h in meta["head"]}, key=order.index)
        heads = self._task_heads(model, files, names, head_names)
        self._install(model, names, targets, head_names, heads, task_types)

    def _stacks(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scales[key], self.biases[key]

    @staticmethod
    def _task_heads(model: nn.Module, files, names, head_names) -> list[nn.ModuleDict]:
        """Per task, a copy of every head module with that task's tensors (the base module's where it has none)."""
        modules = dict(model.named_modules())
        heads = []
        for (tensors, _), name in zip(files, names):
            copies = nn.ModuleDict()
            for head in head_names:
                module = head_copy(modules[head])
                prefix = f"head.{head}."
                for key, tensor in tensors.items():
                    if not key.startswith(prefix):
                        continue
                    owner, _, pname = key[len(prefix):].rpartition(".")
                    try:
                        sub = module.get_submodule(owner) if owner else module
                    except AttributeError as exc:
                        raise EditConfigError(f"edit {name!r}: head tensor {key} has no module in this model") from exc
                    old = getattr(sub, pname, None)
                    like = old if isinstance(old, torch.Tensor) else next(module.parameters())
                    sub.register_parameter(pname, nn.Parameter(tensor.to(like.dtype), requires_grad=False))
                copies[_key(head)] = module
            heads.append(copies)
        return heads
