"""EditBank: serve K tasks' RED edits from one frozen base model in one batch.

Each row of a batch carries a task index. Every target layer holds a (K, H)
stack of scaling and bias vectors and applies row i's task: the result equals
running each task alone. Task heads (a classifier per task) are applied per
row group with ``torch.func.functional_call``. Works in ``generate()``: when a
batch is expanded for beams or several return sequences, the task ids are
expanded the same way.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .config import EditConfig
from .errors import EditConfigError
from .fingerprint import fingerprint
from .io import check_compatible, read_edit
from .targets import Target, find_targets


class EditBank(nn.Module):
    def __init__(self, model: nn.Module, edits: Sequence[str | Path], names: Sequence[str] | None = None,
                 *, check_fingerprint: bool = True):
        super().__init__()
        if not edits:
            raise EditConfigError("an EditBank needs at least one edit file")
        self.base_model = model
        self.names = list(names or [Path(e).stem for e in edits])
        files = [read_edit(e) for e in edits]
        for _, meta in files:
            if meta["method"] != "red":
                raise EditConfigError(f"EditBank serves RED edits; got a {meta['method']} edit")
            check_compatible(model, meta)
        # Union of the targets of all tasks; a task that does not edit a layer gets the identity there.
        targets: dict[str, Target] = {}
        for _, meta in files:
            for t in find_targets(model, EditConfig(**meta["config"])):
                targets.setdefault(t.name, t)
        self.targets = [targets[n] for n in sorted(targets, key=list(dict(model.named_modules())).index)]
        if check_fingerprint:
            for (_, meta), name in zip(files, self.names):
                fp = fingerprint(model, list(meta["targets"]))
                if fp != meta["base_model"]["fingerprint"]:
                    raise EditConfigError(
                        f"edit {name!r} was trained on base weights {meta['base_model']['fingerprint']}, this model "
                        f"has {fp}; load the base model it was trained on ({meta['base_model']['name']})"
                    )
        k = len(files)
        self.scales = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for t in self.targets:
            s = torch.ones(k, t.hidden)
            b = torch.zeros(k, t.hidden)
            for i, (tensors, _) in enumerate(files):
                s[i] = tensors.get(f"edit.{t.name}.scale", s[i])
                b[i] = tensors.get(f"edit.{t.name}.bias", b[i])
            key = t.name.replace(".", "__")
            self.scales[key] = nn.Parameter(s, requires_grad=False)
            self.biases[key] = nn.Parameter(b, requires_grad=False)
        self.heads = self._stack_heads(files)
        for p in model.parameters():
            p.requires_grad_(False)
        device = next(model.parameters()).device
        self.to(device)
        self._ids: torch.Tensor | None = None
        self._in_head = False
        self._handles = []
        modules = dict(model.named_modules())
        for t in self.targets:
            self._handles.append(modules[t.name].register_forward_hook(self._edit_hook(t.name.replace(".", "__"))))
        for head_name in self.heads:
            self._handles.append(modules[head_name].register_forward_hook(self._head_hook(head_name), with_kwargs=True))

    def _stack_heads(self, files) -> dict[str, dict[str, str]]:
        """Stack each head parameter over tasks as a (K, ...) buffer, so heads move with ``.to()``.

        Returns {head module: {parameter name: buffer name}}.
        """
        heads: dict[str, dict[str, str]] = {}
        names = [set(meta["head"]) for _, meta in files]
        if any(n != names[0] for n in names):
            raise EditConfigError("all edits in a bank must train the same head modules (or none)")
        for head in sorted(names[0]):
            prefix = f"head.{head}."
            params = sorted(k[len(prefix):] for k in files[0][0] if k.startswith(prefix))
            heads[head] = {}
            for pn in params:
                buffer = f"head__{head}__{pn}".replace(".", "__")
                self.register_buffer(buffer, torch.stack([tensors[prefix + pn] for tensors, _ in files]))
                heads[head][pn] = buffer
        return heads

    # ---- routing ----------------------------------------------------------------------
    def _row_ids(self, batch: int) -> torch.Tensor:
        ids = self._ids
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
            ids = self._row_ids(h.shape[0])
            shape = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
            s = self.scales[key][ids].to(h.dtype).view(shape)
            b = self.biases[key][ids].to(h.dtype).view(shape)
            h = torch.addcmul(b, h, s)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def _head_hook(self, head_name: str):
        def hook(module, args, kwargs, output):
            if self._in_head:  # functional_call below re-enters this hook
                return None
            x = args[0] if args else next(iter(kwargs.values()))
            ids = self._row_ids(x.shape[0])
            out = None
            self._in_head = True
            try:
                for task in ids.unique().tolist():
                    rows = (ids == task).nonzero(as_tuple=True)[0]
                    params = {pn: getattr(self, buf)[task].to(x.dtype) for pn, buf in self.heads[head_name].items()}
                    y = torch.func.functional_call(module, params, (x[rows],) + tuple(args[1:]), kwargs)
                    if out is None:
                        out = y.new_empty((x.shape[0],) + tuple(y.shape[1:]))
                    out[rows] = y
            finally:
                self._in_head = False
            return out
        return hook

    @contextlib.contextmanager
    def tasks(self, task_ids: Sequence[int] | torch.Tensor) -> Iterator[None]:
        ids = torch.as_tensor(task_ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.names)):
            raise EditConfigError(f"task ids must be in [0, {len(self.names)}); got {ids.tolist()}")
        previous, self._ids = self._ids, ids.to(next(self.scales.values()).device if self.scales else "cpu")
        try:
            yield
        finally:
            self._ids = previous

    def task_index(self, name: str) -> int:
        return self.names.index(name)

    def forward(self, *args, task_ids, **kwargs):
        with self.tasks(task_ids):
            return self.base_model(*args, **kwargs)

    def generate(self, *args, task_ids, **kwargs):
        with self.tasks(task_ids):
            return self.base_model.generate(*args, **kwargs)

    def close(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.base_model
