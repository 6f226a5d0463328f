"""The ReFT family beside RED: LoReFT, DiReFT and NodiReFT interventions on the residual stream.

LoReFT (Wu et al., 2024, "ReFT: Representation Finetuning for Language Models") edits a
hidden state inside a rank-r subspace:

    Φ(h) = h + Rᵀ(W h + b − R h),   R ∈ ℝ^{r×d} with orthonormal rows

R is kept orthonormal during training by ``torch.nn.utils.parametrizations.orthogonal``
(Householder map, no trivialization: the parameter alone determines R, so the
edit file, which stores parameters only, restores it exactly; see
``orthonormal_rows`` for why its diagonal is snapped to ±1). The other two follow
pyreft's classes of the same names (``pyreft/interventions.py``):

    DiReFT   (pyreft ``DireftIntervention``):   Φ(h) = h + Rᵀ(W h + b),  R orthonormal rows, no subtraction
    NodiReFT (pyreft ``NodireftIntervention``): Φ(h) = h + Pᵀ(W h + b),  P ∈ ℝ^{r×d} unconstrained

(pyreft's NodiReFT projection is an ``nn.Linear`` whose optional bias is never used;
ours has none.)

All act on a transformer block's output (the residual stream) at the first f
and last l prompt tokens only (positions.py), so unlike RED they cannot be
folded into weights. With ``share_weights=False`` the prefix and suffix
positions get separate interventions (pyreft's default for ``f7+l7``).

Deviation from pyreft: dropout is applied to the r-dimensional edit signal, not
to the whole output h, so it never zeroes the frozen model's own residual stream.
Parameters stay fp32; the gathered hidden states are computed on in fp32 and the
edit is cast back to the base dtype where it is added.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import orthogonal
from torch.nn.utils.parametrize import register_parametrization

from ...config import EditConfig
from ...errors import EditConfigError
from ...hooks import HookedEdit
from ...targets import Target
from .notation import parse_positions
from .positions import PromptPositions, Window


class _UnitDiagonal(nn.Module):
    """Snap the diagonal of the Householder factors to ±1 before ``orthogonal`` reads it.

    torch's Householder map takes the signs of R's columns from the factors' diagonal
    through ``.int()``, so AdamW's weight decay (1 → 0.9997 → int 0) would silently turn
    R into 0 after one step. Snapping to the sign makes the map immune to any
    shrinkage; the diagonal gets no gradient either way.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        diagonal = torch.eye(X.shape[-2], X.shape[-1], dtype=torch.bool, device=X.device)
        return torch.where(diagonal, torch.where(X >= 0, 1.0, -1.0).to(X.dtype), X)

    def right_inverse(self, X: torch.Tensor) -> torch.Tensor:
        return X


def orthonormal_rows(linear: nn.Linear) -> nn.Linear:
    """Parametrize ``linear.weight`` (r×d, r ≤ d) to have orthonormal rows for good.

    Householder map without trivialization: the parameter alone determines R (no
    d×d ``base`` buffer), so the parameter-only edit file restores R exactly.
    """
    start = linear.weight.detach().clone()
    nn.init.orthogonal_(start)
    register_parametrization(linear, "weight", _UnitDiagonal())
    orthogonal(linear, orthogonal_map="householder", use_trivialization=False)
    with torch.no_grad():
        linear.weight = start  # right_inverse through the chain: Householder factors with a ±1 diagonal
    return linear


class _Unit(nn.Module):
    """A rank-r intervention's parameters: the learned source ``Wh + b`` and the (r, d) projection back."""

    def __init__(self, hidden: int, rank: int, dropout: float = 0.0, orthonormal: bool = True):
        super().__init__()
        projection = nn.Linear(hidden, rank, bias=False)  # only its (r, d) weight is used, as in pyreft
        if orthonormal:
            self.rotate = orthonormal_rows(projection)
        else:
            self.proj = projection
        self.source = nn.Linear(hidden, rank)
        self.dropout = nn.Dropout(dropout)

    @property
    def R(self) -> torch.Tensor:
        """The (r, d) projection (orthonormal rows for LoReFT and DiReFT)."""
        return self.rotate.weight if hasattr(self, "rotate") else self.proj.weight


class LoReFT(_Unit):
    """One LoReFT intervention: maps fp32 hidden states (..., d) to their edit Rᵀ(Wh + b − Rh)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        R = self.R
        # (W − R)h + b is Wh + b − Rh in one matmul, and exactly 0 when W = R and b = 0.
        return self.dropout(F.linear(h, self.source.weight - R, self.source.bias)) @ R

    @torch.no_grad()
    def set_identity(self) -> None:
        """W = R, b = 0: the learned source equals Rh, so Φ(h) = h (useful as a start or a check)."""
        self.source.weight.copy_(self.R)
        self.source.bias.zero_()


class DiReFT(_Unit):
    """One DiReFT intervention (pyreft's ``DireftIntervention``): (..., d) -> Rᵀ(Wh + b), R orthonormal rows."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.source(h)) @ self.R


class NodiReFT(_Unit):
    """One NodiReFT intervention (pyreft's ``NodireftIntervention``): (..., d) -> Pᵀ(Wh + b), P unconstrained."""

    def __init__(self, hidden: int, rank: int, dropout: float = 0.0):
        super().__init__(hidden, rank, dropout, orthonormal=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.source(h)) @ self.R


UNITS: dict[str, type[nn.Module]] = {"loreft": LoReFT, "direft": DiReFT, "nodireft": NodiReFT}


def _edit_at(out: torch.Tensor, h: torch.Tensor, unit: nn.Module, index: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
    """``out`` plus ``unit``'s edit of ``h`` at (row, index) where ``valid``; out-of-place for autograd.

    Invalid slots point at arbitrary positions (maybe padding): their inputs are zeroed
    before the unit so no NaN/inf from padding can leak into gradients, and their edits
    are zeroed so the scatter adds exactly 0 there.
    """
    idx = index.unsqueeze(-1).expand(-1, -1, h.shape[-1])
    keep = valid.unsqueeze(-1)
    gathered = torch.where(keep, h.gather(1, idx).float(), 0.0)
    delta = torch.where(keep, unit(gathered), 0.0)
    return out.scatter_add(1, idx, delta.to(h.dtype))


class ReftEdit(HookedEdit):
    """The ReFT intervention(s) of one block: a forward hook editing the block's output at prompt positions.

    ``units`` holds ``first`` and ``last`` (separate prefix/suffix weights) or ``all``
    (shared weights, or only one side selected by ``positions``).
    """

    def __init__(self, target: Target, config: EditConfig):
        super().__init__()
        if config.rank > target.hidden:
            raise EditConfigError(f"rank {config.rank} exceeds the hidden size {target.hidden} of {target.name}")
        self.target = target
        self.method = config.method
        first, last = parse_positions(config.positions)
        unit = UNITS[config.method]
        names = ("all",) if config.share_weights or not (first and last) else ("first", "last")
        self.units = nn.ModuleDict({n: unit(target.hidden, config.rank, config.dropout) for n in names})
        self.positions: PromptPositions | None = None  # shared state, set by install_position_hook

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            raise RuntimeError("ReFT layer used without install_position_hook(); attach it with red.attach()")
        window = self.positions.window(h, self.target.name)
        out = h
        for unit, index, valid in self._groups(window):
            out = _edit_at(out, h, unit, index, valid)
        return out

    def _groups(self, w: Window) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
        if "all" in self.units:
            if w.any_first or w.any_last:
                yield (self.units["all"], torch.cat([w.first, w.last], 1), torch.cat([w.first_valid, w.last_valid], 1))
            return
        if w.any_first:
            yield self.units["first"], w.first, w.first_valid
        if w.any_last:
            yield self.units["last"], w.last, w.last_valid

    def extra_repr(self) -> str:
        return f"{self.target.name}, method={self.method}, hidden={self.target.hidden}"


def make_intervention(target: Target, config: EditConfig) -> ReftEdit:
    """The ReFT edit for one block target (called by EditedModel for method loreft/direft/nodireft)."""
    if config.method not in UNITS:
        raise EditConfigError(f"method {config.method!r} is not a ReFT method ({sorted(UNITS)})")
    return ReftEdit(target, config)
