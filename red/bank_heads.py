"""Stacked task heads: K tasks' versions of one head module applied to a mixed batch without a loop over tasks.

Why: a bank serving K tasks used to run, per call, one host sync (``ids.unique().tolist()``), one ``nonzero`` and
one module call per task present, which at K = 128 made a 32-row mixed request about 30 % slower than one task.
Here a ``BankState`` describes each head module once (``StackedHead``):

* a *skeleton*: a copy of the base's module whose tensors are placeholders, never read (every call passes the
  tensors it computes with), so it costs nothing however large the head;
* per task, its *own* tensors (those its edit file holds); the others are the base module's, shared;
* tasks grouped by *signature* (the names, shapes and dtypes of their own tensors: two label counts are two
  groups), each group's tensors stacked once, ``(K_g, ...)``, when the state is built.

A call gathers every row's tensors by task id and applies each group in one batched operation: a plain
``nn.Linear`` as a batched matmul, any other module (RoBERTa's classification head, a pooler) through
``torch.func.functional_call`` under ``torch.func.vmap`` (each row its own parameters). A group with no tensors
of its own (an untrained pooler) runs the base's module. Rows are split among groups with one ``bincount``
(one host sync per call, and only when the bank holds heads of more than one signature). Gathering costs the
head's own size per row: rows are gathered in chunks of at most ``GATHER_LIMIT`` elements (a RoBERTa-base head,
0.6 M per row, goes 28 rows at a time, still one op per chunk whatever the tasks in it); a head whose one row
alone exceeds it (an LM head) is applied task by task.

Thread safety: ``functional_call`` swaps the tensors of the module it is given for the duration of the call,
so each thread calls its own copy of the skeleton; nothing shared is modified.
"""
from __future__ import annotations

import copy
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from .targets import module_key

GATHER_LIMIT = 1 << 24  # elements gathered per call (rows x a task's own tensors) before a group goes task by task


def head_copy(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A copy of a head module that runs for a bank only: no hooks of the base module (``memo``: as
    ``copy.deepcopy``'s, tensors to put in place of the module's own)."""
    module = copy.deepcopy(module, memo)
    for m in module.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return module


def skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` without its hooks whose parameters and buffers are empty placeholders (never read:
    ``functional_call`` is always given every tensor)."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty(0, dtype=p.dtype, device="meta"), requires_grad=False)
                            for p in module.parameters()}
    memo.update({id(b): torch.empty(0, dtype=b.dtype, device="meta") for b in module.buffers()})
    return head_copy(module, memo)


class HeadGroup(nn.Module):
    """Tasks whose own head tensors have one signature, stacked: ``own[name]`` is ``(len(tasks), ...)``."""

    def __init__(self, tasks: list[int], own: Sequence[Mapping[str, torch.Tensor]], linear: bool):
        super().__init__()
        self.tasks = tasks
        self.names = list(own[0])
        self.stacks = nn.ParameterDict({module_key(n): nn.Parameter(torch.stack([o[n] for o in own]),
                                                                    requires_grad=False) for n in self.names})
        self.linear = linear and self.names and set(self.names) <= {"weight", "bias"} and "weight" in self.names
        self.size = sum(o.numel() for o in own[0].values())

    def rows(self, local: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each row's own tensors, ``(rows, ...)``, for the rows' indices ``local`` into this group."""
        return {n: self.stacks[module_key(n)][local] for n in self.names}

    def one(self, j: int) -> dict[str, torch.Tensor]:
        return {n: self.stacks[module_key(n)][j] for n in self.names}


class StackedHead(nn.Module):
    """One head module of a bank state, every task's version of it stacked by signature (see the module docstring)."""

    def __init__(self, module: nn.Module, own: Sequence[Mapping[str, torch.Tensor]]):
        """``module``: the base model's head module; ``own``: per task, its tensors by parameter name (its file's)."""
        super().__init__()
        object.__setattr__(self, "skeleton", skeleton(module))  # not a submodule: placeholders, never moved
        self._threads = threading.local()
        by_signature: dict[tuple, list[int]] = {}
        for k, tensors in enumerate(own):
            signature = tuple(sorted((n, tuple(t.shape), str(t.dtype)) for n, t in tensors.items()))
            by_signature.setdefault(signature, []).append(k)
        linear = type(module) is nn.Linear
        self.groups = nn.ModuleList(HeadGroup(tasks, [own[k] for k in tasks], linear)
                                    for tasks in by_signature.values())
        group_of, local = torch.zeros(len(own), dtype=torch.long), torch.zeros(len(own), dtype=torch.long)
        for g, group in enumerate(self.groups):
            group_of[group.tasks] = g
            local[group.tasks] = torch.arange(len(group.tasks))
        self.register_buffer("group_of", group_of, persistent=False)
        self.register_buffer("local", local, persistent=False)

    def __getstate__(self) -> dict[str, Any]:
        """Copied or pickled without the per-thread skeletons (a ``threading.local`` cannot be: a ``BankState``
        was deep-copyable before its heads were stacked)."""
        state = self.__dict__.copy()
        state.pop("_threads", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._threads = threading.local()

    def tensors(self, base: nn.Module, task: int) -> dict[str, torch.Tensor]:
        """Every tensor of task ``task``'s version of the module: its own, else the base module ``base``'s."""
        group = self.groups[int(self.group_of[task])]
        return {**dict(base.named_parameters()), **dict(base.named_buffers()), **group.one(int(self.local[task]))}

    def module_for(self, base: nn.Module, task: int) -> nn.Module:
        """A standalone copy of task ``task``'s module (for inspection; calls never build one)."""
        module = copy.deepcopy(self.skeleton)
        for name, tensor in self.tensors(base, task).items():
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner)
            if isinstance(tensor, nn.Parameter) or leaf in sub._parameters:
                sub._parameters[leaf] = nn.Parameter(tensor.detach().clone(), requires_grad=False)
            else:
                sub._buffers[leaf] = tensor.detach().clone()
        return module.train(base.training)

    def _skeleton(self, training: bool) -> nn.Module:
        module = getattr(self._threads, "module", None)
        if module is None:
            module = self._threads.module = copy.deepcopy(self.skeleton)
        if module.training != training:
            module.train(training)
        return module

    def run(self, base: nn.Module, x: torch.Tensor, ids: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The head's output for rows ``x`` (task ``ids[i]`` for row i), NaN-padded on the last dimension to the
        widest group when groups differ in width (``pad``)."""
        shared = {**dict(base.named_parameters()), **dict(base.named_buffers())}
        if len(self.groups) == 1:
            return self._run_group(self.groups[0], base, shared, x, self.local[ids], args, kwargs)
        gid = self.group_of[ids]
        counts = torch.bincount(gid, minlength=len(self.groups)).tolist()  # the call's one host sync
        order = torch.argsort(gid, stable=True)
        parts = [(rows, self._run_group(group, base, shared, x[rows], self.local[ids[rows]], args, kwargs))
                 for group, rows, n in zip(self.groups, order.split(counts), counts) if n or not x.shape[0]]
        # (an empty batch runs every group on no rows: its output has the widest group's width, not an IndexError)
        like = parts[0][1]
        if len(parts) == 1:
            return like  # one group present: its rows are all rows, in call order (a stable sort of equal keys)
        width = max(y.shape[-1] for _, y in parts)
        out = like.new_full((x.shape[0],) + tuple(like.shape[1:-1]) + (width,), float("nan"))
        for rows, y in parts:
            out[rows, ..., : y.shape[-1]] = y
        return out

    def _run_group(self, group: HeadGroup, base: nn.Module, shared: dict, x: torch.Tensor, local: torch.Tensor,
               args: tuple, kwargs: dict) -> torch.Tensor:
        if not group.names:  # no task of this group holds its own tensors: the base's module
            return functional_call(self._skeleton(base.training), shared, (x,) + args, kwargs)
        if group.size > GATHER_LIMIT:  # one row's copy alone is too large (an LM head)
            return self._task_by_task(group, base, shared, x, local, args, kwargs)
        chunk = GATHER_LIMIT // group.size
        if x.shape[0] > chunk and not args and not kwargs:  # a large head (RoBERTa's dense + out_proj): rows in chunks
            return torch.cat([self._gathered(group, base, shared, x[i:i + chunk], local[i:i + chunk], args, kwargs)
                              for i in range(0, x.shape[0], chunk)])
        if x.shape[0] > chunk:
            return self._task_by_task(group, base, shared, x, local, args, kwargs)
        return self._gathered(group, base, shared, x, local, args, kwargs)

    def _gathered(self, group: HeadGroup, base: nn.Module, shared: dict, x: torch.Tensor, local: torch.Tensor,
                  args: tuple, kwargs: dict) -> torch.Tensor:
        """Each row with its own task's tensors gathered: one batched op for all rows, whatever their tasks."""
        own = group.rows(local)
        if group.linear and not args and not kwargs:
            weight = own["weight"]                                   # (rows, out, in)
            flat = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])  # not -1: ambiguous for 0 rows
            bias = own["bias"][:, None] if "bias" in own else shared.get("bias")
            # bias added inside the product (one rounding, as nn.Linear's addmm): matmul then + bias rounds twice,
            # a bf16/fp16 row then differed from its task alone by an ulp
            y = torch.matmul(flat, weight.transpose(1, 2)) if bias is None \
                else torch.baddbmm(bias, flat, weight.transpose(1, 2))
            return y.reshape(tuple(x.shape[:-1]) + (weight.shape[1],))
        module = self._skeleton(base.training)

        def one(tensors: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            return functional_call(module, {**shared, **tensors}, (row.unsqueeze(0),) + args, kwargs).squeeze(0)

        return vmap(one, randomness="different")(own, x)

    def _task_by_task(self, group: HeadGroup, base: nn.Module, shared: dict, x: torch.Tensor, local: torch.Tensor,
                      args: tuple, kwargs: dict) -> torch.Tensor:
        """A head too large to gather per row: one call per task present (as many host syncs)."""
        module = self._skeleton(base.training)
        out = None
        for j in local.unique().tolist():
            rows = (local == j).nonzero(as_tuple=True)[0]
            y = functional_call(module, {**shared, **group.one(j)}, (x[rows],) + args, kwargs)
            if out is None:
                out = y.new_empty((x.shape[0],) + tuple(y.shape[1:]))
            out[rows] = y
        return out
