"""EditedModel: a frozen transformers model with edits attached.

Like a PEFT model it wraps the base model, finds the target modules from the
architecture table and attaches one edit per target. Unlike PEFT it never
replaces modules: edits are forward hooks, so the base model's module tree and
state-dict keys stay exactly as they were, and ``detach()`` gives the plain
model back. ``attach`` starts a new edit; ``load_edit`` attaches one read from an
edit file (red/io.py writes and verifies the files, and never imports this module).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import EditConfig
from .errors import EditMismatchError, MergeError
from .fingerprint import fingerprint, weight_sample
from .io import check_compatible, read_edit, save_edit
from .merge import export_merged
from .methods.red.layer import RedEdit
from .methods.reft.layer import make_intervention
from .methods.reft.model import install_position_hook, prompt_generation, prompt_targets, remove_position_hook
from .targets import Target, find_head, find_targets, model_type, module_key


def make_edit(target: Target, config: EditConfig) -> nn.Module:
    """The edit module for one target: RED's vectors, or a ReFT intervention."""
    if config.is_reft:
        return make_intervention(target, config)
    return RedEdit(target, config.kind)


class EditTensors:
    """What an edit file holds, for anything with edits and a head: :class:`EditedModel`, and one task of a
    :class:`red.bank_train.TrainableBank` (``TaskEdit``). Subclasses give ``edit_items()`` (target, edit module)
    and ``head_parameters()`` (``{"<module>.<param>": parameter}``); file keys are ``edit.<target>.<param>`` and
    ``head.<module>.<param>``.
    """

    merged = False

    def edit_items(self) -> Iterator[tuple[Target, nn.Module]]:
        raise NotImplementedError

    def head_parameters(self) -> dict[str, nn.Parameter]:
        raise NotImplementedError

    def edit_parameters(self) -> list[nn.Parameter]:
        return [p for _, edit in self.edit_items() for p in edit.parameters()]

    @property
    def num_edit_parameters(self) -> int:
        """Trainable edit parameters, excluding any task head (the paper's count)."""
        return sum(p.numel() for p in self.edit_parameters())

    def file_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters an edit file holds, by their key in the file."""
        own = {f"edit.{t.name}.{pn}": p for t, e in self.edit_items() for pn, p in e.named_parameters()}
        own.update({f"head.{n}": p for n, p in self.head_parameters().items()})
        return own

    def edit_state(self) -> dict[str, torch.Tensor]:
        """All tensors an edit file holds: edit vectors and head weights, fp32 on CPU."""
        return {k: p.detach().float().cpu().contiguous() for k, p in self.file_parameters().items()}

    @torch.no_grad()
    def load_edit_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.file_parameters()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise EditMismatchError(
                f"edit tensors do not match this model's edit layout (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); attach with the EditConfig stored in the file"
            )
        for k, p in own.items():
            if tuple(p.shape) != tuple(state[k].shape):
                raise EditMismatchError(f"{k}: shape {tuple(state[k].shape)} in the file, {tuple(p.shape)} in the model")
            p.copy_(state[k].to(p.device, p.dtype))

    def save(self, path: str | Path, **kwargs) -> Path:
        """Write the edit file (``red.io.save_edit``: base_model=, revision=, extra=)."""
        return save_edit(self, path, **kwargs)


class EditedModel(EditTensors, nn.Module):
    """A base model plus trainable edits. Calls and attribute look-ups go to the base model."""

    def __init__(self, base_model: nn.Module, config: EditConfig | None = None):
        super().__init__()
        config = config or EditConfig()
        self.base_model = base_model
        self.edit_config = config
        self.targets: list[Target] = find_targets(base_model, config)
        if config.is_reft:  # an encoder-decoder's prompt is seen by its encoder blocks only
            self.targets = prompt_targets(base_model, self.targets)
        self.head_names: list[str] = find_head(base_model, config)
        # Fingerprint the weights before anything can change them (merge, training of a head).
        self.base_fingerprint = fingerprint(base_model, [t.name for t in self.targets])
        self.base_weight_sample = weight_sample(base_model, [t.name for t in self.targets])
        for p in base_model.parameters():
            p.requires_grad_(False)
        modules = dict(base_model.named_modules())
        for name in self.head_names:
            for p in modules[name].parameters():
                p.requires_grad_(True)
        self.edits = nn.ModuleDict({module_key(t.name): make_edit(t, config) for t in self.targets})
        device = next(base_model.parameters()).device
        self.edits.to(device)  # stays fp32: cast at the point of use
        for t in self.targets:
            self.edits[module_key(t.name)].attach(modules[t.name])
        if config.is_reft:
            install_position_hook(self)

    # ---- delegation -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["base_model"], name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        if self.edit_config.is_reft:  # edit the prompt's positions only, never generated tokens
            with prompt_generation(self, kwargs.get("attention_mask")):
                return self.base_model.generate(*args, **kwargs)
        return self.base_model.generate(*args, **kwargs)

    # ---- parameters -------------------------------------------------------------------
    def edit_items(self) -> Iterator[tuple[Target, nn.Module]]:
        for t in self.targets:
            yield t, self.edits[module_key(t.name)]

    def head_parameters(self) -> dict[str, nn.Parameter]:
        modules = dict(self.base_model.named_modules())
        return {f"{name}.{pn}": p for name in self.head_names for pn, p in modules[name].named_parameters()}

    @property
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---- merging ----------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return any(getattr(e, "merged", False) for e in self.edits.values())

    def _mergeable(self) -> None:
        if self.edit_config.is_reft:
            raise MergeError(
                f"{self.edit_config.method} intervenes only at chosen token positions, so it cannot be folded "
                "into the weights (which act on every position). Serve it attached; only RED merges."
            )

    def merge(self) -> "EditedModel":
        """Fold every edit into its layer's weights: afterwards the hooks are no-ops."""
        self._mergeable()
        modules = dict(self.base_model.named_modules())
        for t, edit in self.edit_items():
            edit.merge(modules[t.name])
        return self

    def unmerge(self) -> "EditedModel":
        self._mergeable()
        modules = dict(self.base_model.named_modules())
        for t, edit in self.edit_items():
            edit.unmerge(modules[t.name])
        return self

    def detach(self) -> nn.Module:
        """Remove the hooks (unmerging first) and return the plain base model."""
        if self.merged:
            self.unmerge()
        for edit in self.edits.values():
            edit.detach()
        if self.edit_config.is_reft:
            remove_position_hook(self)
        return self.base_model

    # ---- persistence (see io.py / merge.py) ---------------------------------------------
    def export_merged(self, out_dir: str | Path, tokenizer=None) -> Path:
        return export_merged(self, out_dir, tokenizer=tokenizer)

    def describe(self) -> dict:
        return {
            "method": self.edit_config.method,
            "model_type": model_type(self.base_model),
            "targets": len(self.targets),
            "edit_parameters": self.num_edit_parameters,
            "trainable_parameters": self.num_trainable_parameters,
            "base_fingerprint": self.base_fingerprint,
        }


def attach(model: nn.Module, config: EditConfig | dict | None = None, **overrides) -> EditedModel:
    """Freeze ``model`` and attach edits to it.

    RED starts as the identity (outputs equal the base model's exactly). ReFT starts
    like pyreft, from a random intervention (``LoReFT.set_identity()`` gives the identity).
    """
    if isinstance(config, dict):
        config = EditConfig(**config)
    if overrides:
        config = (config or EditConfig()).model_copy(update=overrides)
        config = EditConfig(**config.model_dump())  # re-validate
    return EditedModel(model, config)


def load_edit(model: nn.Module, path: str | Path, *, check_fingerprint: bool = True) -> EditedModel:
    """Attach the edit stored at ``path`` to ``model`` (frozen) and return the EditedModel.

    The file is read and verified first (``red.io.read_edit``); an edit for another architecture, other
    targets or other base weights raises EditMismatchError naming the base model it was trained on.
    """
    tensors, meta = read_edit(path)
    check_compatible(model, meta)
    config = EditConfig(**meta["config"])
    try:
        edited = EditedModel(model, config)
    except EditMismatchError:
        raise
    except Exception as exc:  # e.g. a rank above this model's width: another architecture size
        raise EditMismatchError(f"the edit in {path} cannot be attached to this {model_type(model)} model: {exc}. "
                                f"Load the base model it was trained on ({meta['base_model'].get('name')!r}).") from exc
    try:
        check_compatible(model, meta, edited, check_fingerprint=check_fingerprint)
        edited.load_edit_state(tensors)
    except Exception:
        edited.detach()
        raise
    edited.edit_metadata = meta
    return edited
