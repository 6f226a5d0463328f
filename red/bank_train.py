"""TrainableBank: K tasks' RED edits and heads trained together on one frozen copy of the base model.

The routing is :class:`red.bank.RoutedBank`'s (rows carry task ids; each row sees only its task's
vectors and head); the bank is its own state (it is trained, never swapped). Here each task's vectors are its own ``RedEdit`` parameters and each task's head
its own trainable module copy, stacked into the (K, H) tensors the edit hook gathers from at every
forward. So the gradient of a row reaches only its task's parameters: with a loss that is a sum of
per-task losses, ``d loss / d theta_k = d loss_k / d theta_k`` is exactly the gradient of training
task k alone on the same rows (up to floating-point summation order), and each task can have its own
optimizer parameter group (learning rate, weight decay) and its own gradient clipping.

Tasks may differ in RED position (ffn/attn), kind (scale+bias/scale/bias), layers and head shape
(2, 4 labels or a regression head: outputs NaN-padded as in the EditBank). ReFT is refused: its
interventions sit at per-row prompt positions with a low-rank projection per task, which this bank does
not route.

``bank.task_edit(k)`` is task k's view with the interface ``red.io.save_edit`` needs, so
``bank.task_edit(k).save(path, ...)`` writes an ordinary edit file, loadable by ``red.load_edit`` and
registrable like one from a single-task training; ``load_edit_state`` starts a task from an earlier edit.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .bank import RoutedBank, TaskSet, head_copy, union_targets
from .config import EditConfig
from .errors import EditConfigError
from .fingerprint import fingerprint, weight_sample
from .methods.red.layer import RedEdit
from .model import EditTensors
from .targets import Target, find_head, find_targets, module_key


class TrainableBank(RoutedBank, TaskSet):
    """K trainable RED edits (and heads) on one frozen base model; rows routed by ``task_ids``.

    ``configs``: one :class:`EditConfig` per task (RED only). ``heads``: per task, ``{module name: module}``
    holding that task's initial head modules (shapes may differ: another label count); by default a copy
    of the base model's modules named by the task's config (``find_head``). Trainable parameters are fp32
    whatever the base dtype, like ``red.attach``. Raises :class:`EditConfigError` for a ReFT config, a
    head module the model does not have, or mismatched lengths.
    """

    def __init__(self, model: nn.Module, configs: Sequence[EditConfig | dict], names: Sequence[str], *,
                 heads: Sequence[Mapping[str, nn.Module]] | None = None,
                 task_types: Sequence[str | None] | None = None):
        super().__init__()
        self._route(model)
        configs = [c if isinstance(c, EditConfig) else EditConfig(**c) for c in configs]
        names = list(names)
        if not configs:
            raise EditConfigError("a TrainableBank needs at least one task")
        if len(names) != len(configs) or (heads is not None and len(heads) != len(configs)):
            raise EditConfigError(f"{len(configs)} edit configs, {len(names)} names and "
                                  f"{'no' if heads is None else len(heads)} head sets: give one per task")
        for name, config in zip(names, configs):
            if config.method != "red":
                raise EditConfigError(
                    f"co-training trains RED edits only; task {name!r} is {config.method}, whose interventions act "
                    "at per-row prompt positions through a per-task low-rank projection that this bank does not "
                    "route. Train it alone.")
        self.edit_configs = configs
        self.task_targets: list[list[Target]] = [find_targets(model, c) for c in configs]
        task_heads = [find_head(model, c) for c in configs]
        # The base's weights are fingerprinted before anything trains, as EditedModel does.
        self.fingerprints = [fingerprint(model, [t.name for t in ts]) for ts in self.task_targets]
        self.weight_samples = [weight_sample(model, [t.name for t in ts]) for ts in self.task_targets]
        self.edits = nn.ModuleList(nn.ModuleDict({module_key(t.name): RedEdit(t, c.kind) for t in ts})
                                   for ts, c in zip(self.task_targets, configs))
        order = list(dict(model.named_modules()))
        head_names = sorted({h for hs in task_heads for h in hs}, key=order.index)
        modules = dict(model.named_modules())
        self.trained_heads = task_heads
        copies = []
        for k, own in enumerate(task_heads):
            given = dict(heads[k]) if heads is not None else {}
            unknown = sorted(set(given) - set(own))
            if unknown:
                raise EditConfigError(f"task {names[k]!r}: head modules {unknown} are not in its edit config's head "
                                      f"{own}")
            copy = nn.ModuleDict()
            for head in head_names:
                module = head_copy(given[head] if head in given else modules[head])
                for p in module.parameters():  # a task trains only the head modules its config names
                    p.requires_grad_(head in own)
                    if head in own and p.is_floating_point():
                        p.data = p.data.float()
                copy[module_key(head)] = module
            copies.append(copy)
        self.names = names
        self.targets = union_targets(model, configs)
        self.head_names = head_names
        self.heads = nn.ModuleList(copies)
        self.task_types = list(task_types) if task_types is not None else [None] * len(configs)
        self.output_widths: list[int | None] = [self._width(h) for h in self.heads]
        self.to(next(model.parameters()).device)
        self._install_hooks(self)

    # ---- the state protocol of red.bank.RoutedBank: this bank is its own state ---------------
    @property
    def state(self) -> "TrainableBank":
        return self

    def built_for(self, model: nn.Module) -> bool:
        return model is self.base_model

    def stacks(self, key: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(K, H) stacks of the tasks' vectors at target ``key``; identity where a task does not edit it."""
        found = [self.edits[k][key] if key in self.edits[k] else None for k in range(len(self.edits))]
        like = next(p for e in found if e is not None for p in e.parameters())
        if not any(e is not None and e.scale is not None for e in found):
            scales = None
        else:
            ones = like.new_ones(like.shape[-1])
            scales = torch.stack([e.scale if e is not None and e.scale is not None else ones for e in found])
        if not any(e is not None and e.bias is not None for e in found):
            biases = None
        else:
            zeros = like.new_zeros(like.shape[-1])
            biases = torch.stack([e.bias if e is not None and e.bias is not None else zeros for e in found])
        return scales, biases

    def task_edit(self, index: int | str) -> "TaskEdit":
        """Task ``index`` (or name) as an edit: save it, read its tensors, start it from an earlier edit."""
        return TaskEdit(self, self.task_index(index) if isinstance(index, str) else int(index))

    def task_parameters(self, index: int) -> dict[str, nn.Parameter]:
        """Task ``index``'s trainable parameters by their name in this bank (``edits.k.*``, ``heads.k.*``)."""
        prefixes = (f"edits.{index}.", f"heads.{index}.")
        return {n: p for n, p in self.named_parameters() if p.requires_grad and n.startswith(prefixes)}


class TaskEdit(EditTensors):
    """One task of a :class:`TrainableBank`, seen as an edit: what ``red.io.save_edit`` writes to a file.

    Its file is the one training the task alone writes: the task's config (head list included), its targets,
    its vectors and head tensors, and the base model's record and fingerprint.
    """

    def __init__(self, bank: TrainableBank, index: int):
        if not 0 <= index < len(bank.names):
            raise EditConfigError(f"task index {index} is not in [0, {len(bank.names)})")
        self.bank = bank
        self.index = index
        self.name = bank.names[index]
        self.edit_config = bank.edit_configs[index]
        self.targets = bank.task_targets[index]
        self.head_names = bank.trained_heads[index]
        self.base_model = bank.base_model
        self.base_fingerprint = bank.fingerprints[index]
        self.base_weight_sample = bank.weight_samples[index]

    def edit_items(self) -> Iterator[tuple[Target, nn.Module]]:
        edits = self.bank.edits[self.index]
        for t in self.targets:
            yield t, edits[module_key(t.name)]

    def head_parameters(self) -> dict[str, nn.Parameter]:
        heads = self.bank.heads[self.index]
        return {f"{name}.{pn}": p for name in self.head_names for pn, p in heads[module_key(name)].named_parameters()}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "targets": len(self.targets), "edit_parameters": self.num_edit_parameters,
                "head": list(self.head_names)}
