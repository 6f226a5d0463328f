"""HookedEdit: an edit that rewrites a module's output through a forward hook.

Hooks leave the base model's module tree, and so its state-dict keys, exactly as
they were; ``detach()`` restores the plain model. Subclasses define ``forward(h)``.
"""
from __future__ import annotations

from torch import nn


class HookedEdit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._handle = None

    @property
    def active(self) -> bool:
        """Whether the hook should edit (RED turns itself off once folded into the weights)."""
        return True

    def _hook(self, module: nn.Module, args, output):
        if not self.active:
            return output
        if isinstance(output, tuple):  # some blocks return (hidden, position_bias, ...)
            return (self(output[0]),) + tuple(output[1:])
        return self(output)

    def attach(self, module: nn.Module) -> None:
        self.detach()
        self._handle = module.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
