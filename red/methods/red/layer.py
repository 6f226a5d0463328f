"""RED's edit on one layer: h2 = s * h1 + b, as a forward hook that can fold into the weights.

The hook keeps the base model's module tree (and so its state-dict keys) untouched.
Vectors are kept in fp32 whatever the base dtype, and the edit is *computed* in fp32:
``(s * h.float() + b)`` is cast to the activation dtype once. Casting ``s`` to bf16 first
would round ``s = 1.003`` to ``1.0`` (bf16 has 8 significant bits) and silently drop small
edits on a bf16 base. Merging likewise computes ``diag(s) W`` and ``s * b0 + b`` in fp32 and
rounds the result once.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import MergeError
from ...hooks import HookedEdit
from ...targets import Target


def apply_scale_bias(h: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``scale * h + bias`` computed in fp32 and cast once to ``h``'s dtype; broadcast over the last dimension.

    ``scale``/``bias`` are (hidden,) or already shaped to broadcast against ``h``; either may be None.
    """
    out = h.float()
    if scale is not None and bias is not None:
        out = torch.addcmul(bias.to(out.device, torch.float32), out, scale.to(out.device, torch.float32))
    elif scale is not None:
        out = out * scale.to(out.device, torch.float32)
    elif bias is not None:
        out = out + bias.to(out.device, torch.float32)
    return out.to(h.dtype)


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
        """(..., hidden) activations of any float dtype -> the edited activations, same dtype (computed in fp32)."""
        return apply_scale_bias(h, self.scale, self.bias)

    @property
    def active(self) -> bool:
        return not self.merged  # once folded into the weights the hook must not apply it again

    # ---- folding into the weights -------------------------------------------------
    @torch.no_grad()
    def merge(self, module: nn.Module) -> None:
        """W' = diag(s) W, b' = s * b0 + b (exact: the edit is the same at every position), computed in fp32."""
        if self.merged:
            return
        weight = module.weight
        if self.scale is not None:
            s = self.scale.to(weight.device)
            weight.copy_((weight.float() * (s[None, :] if self.target.conv1d else s[:, None])).to(weight.dtype))
        if self.bias is not None and getattr(module, "bias", None) is None:
            module.bias = nn.Parameter(torch.zeros(self.target.hidden, dtype=weight.dtype, device=weight.device),
                                       requires_grad=False)
            self._bias_added = True
        if getattr(module, "bias", None) is not None:
            b0 = module.bias
            b0.copy_(apply_scale_bias(b0, self.scale, self.bias))
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
                b = module.bias.float()
                if self.bias is not None:
                    b = b - self.bias.to(b.device)
                if self.scale is not None:
                    b = b / self.scale.to(b.device)
                module.bias.copy_(b.to(module.bias.dtype))
        if self.scale is not None:
            s = self.scale.to(weight.device)
            weight.copy_((weight.float() / (s[None, :] if self.target.conv1d else s[:, None])).to(weight.dtype))
        self.merged = False

    @property
    def bias_added(self) -> bool:
        """merge() gave the layer a bias it did not have (an export must then switch the config flag on)."""
        return self._bias_added

    def extra_repr(self) -> str:
        return f"{self.target.name}, hidden={self.target.hidden}, kind={self.kind}"
