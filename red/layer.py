"""RED's edit on one layer: h2 = s * h1 + b, as a forward hook that can fold into the weights.

The hook keeps the base model's module tree (and so its state-dict keys) untouched.
Vectors are kept in fp32 whatever the base dtype and cast where they are used.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import MergeError
from .hooks import HookedEdit
from .targets import Target


class RedEdit(HookedEdit):
    """Scaling (init 1) and bias (init 0) vectors for one target layer."""

    def __init__(self, target: Target, kind: str = "scale+bias"):
        super().__init__()
        self.target = target
        self.kind = kind
        hidden = target.hidden
        self.scale = nn.Parameter(torch.ones(hidden)) if kind in ("scale+bias", "scale") else None
        self.bias = nn.Parameter(torch.zeros(hidden)) if kind in ("scale+bias", "bias") else None
        self.merged = False
        self._bias_added = False  # merge() created a bias the layer did not have

    # ---- applying -----------------------------------------------------------------
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.scale is not None and self.bias is not None:
            return torch.addcmul(self.bias.to(h.dtype), h, self.scale.to(h.dtype))
        if self.scale is not None:
            return h * self.scale.to(h.dtype)
        return h + self.bias.to(h.dtype)

    @property
    def active(self) -> bool:
        return not self.merged  # once folded into the weights the hook must not apply it again

    # ---- folding into the weights -------------------------------------------------
    @torch.no_grad()
    def merge(self, module: nn.Module) -> None:
        """W' = diag(s) W, b' = s * b0 + b (exact: the edit is the same at every position)."""
        if self.merged:
            return
        weight = module.weight
        if self.scale is not None:
            s = self.scale.to(weight.dtype)
            weight.mul_(s[None, :] if self.target.conv1d else s[:, None])
        if self.bias is not None and getattr(module, "bias", None) is None:
            module.bias = nn.Parameter(torch.zeros(self.target.hidden, dtype=weight.dtype, device=weight.device),
                                       requires_grad=False)
            self._bias_added = True
        if getattr(module, "bias", None) is not None:
            b0 = module.bias
            if self.scale is not None:
                b0.mul_(self.scale.to(b0.dtype))
            if self.bias is not None:
                b0.add_(self.bias.to(b0.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self, module: nn.Module) -> None:
        """Undo merge(): W = W' / s, b0 = (b' - b) / s. Exact up to floating point rounding."""
        if not self.merged:
            return
        if self.scale is not None and bool((self.scale == 0).any()):
            raise MergeError(f"{self.target.name}: a scaling entry is 0, so the merge cannot be undone; "
                             "reload the base model instead")
        weight = module.weight
        if getattr(module, "bias", None) is not None:
            if self._bias_added:
                module.register_parameter("bias", None)
                self._bias_added = False
            else:
                b = module.bias
                if self.bias is not None:
                    b.sub_(self.bias.to(b.dtype))
                if self.scale is not None:
                    b.div_(self.scale.to(b.dtype))
        if self.scale is not None:
            s = self.scale.to(weight.dtype)
            weight.div_(s[None, :] if self.target.conv1d else s[:, None])
        self.merged = False

    def extra_repr(self) -> str:
        return f"{self.target.name}, hidden={self.target.hidden}, kind={self.kind}"
