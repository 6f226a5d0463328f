"""Figures people would rather look at than read: training curves and where an edit acts.

Figures are built with the object-oriented API on the Agg canvas (``matplotlib.figure.Figure``
+ ``FigureCanvasAgg``), never through ``pyplot``: no global figure state, no GUI backend, safe
from worker threads (Prefect task runners). Log them with ``mlflow.log_figure`` /
``MlflowClient.log_figure``.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from red import read_edit  # noqa: E402

if TYPE_CHECKING:
    import torch

    from tasks.training import TrainResult


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finite(xs: list, ys: list) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys)
             if isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _smooth(values: list[float]) -> list[float]:
    """Trailing moving average over ~5% of the run (at least 1 point)."""
    window = max(1, len(values) // 20)
    arr = np.asarray(values, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(arr)])
    idx = np.arange(1, len(arr) + 1)
    lo = np.maximum(0, idx - window)
    return list((csum[idx] - csum[lo]) / (idx - lo))


def training_curves_figure(result: "TrainResult") -> Figure | None:
    """Loss per step (with its moving average and the learning rate) and metrics per epoch.

    Returns None when the result has neither steps nor epochs.
    """
    steps, epochs = result.steps or [], result.epochs or []
    if not steps and not epochs:
        return None
    fig = _figure(11, 4)
    ax_loss, ax_epoch = fig.subplots(1, 2)

    x, y = _finite([s.get("step") for s in steps], [s.get("loss") for s in steps])
    if y:
        ax_loss.plot(x, y, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
        if len(y) >= 40:
            ax_loss.plot(x, _smooth(y), color="tab:blue", linewidth=2, label="loss (moving average)")
        ax_loss.set_yscale("log" if min(y) > 0 and max(y) / min(y) > 50 else "linear")
    x_lr, lr = _finite([s.get("step") for s in steps], [s.get("learning_rate") for s in steps])
    if lr:
        ax_lr = ax_loss.twinx()
        ax_lr.plot(x_lr, lr, color="tab:gray", linestyle="--", linewidth=1, label="learning rate")
        ax_lr.set_ylabel("learning rate", color="tab:gray")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"{result.task} / {result.method}: training loss per step")
    ax_loss.grid(alpha=0.3)
    if y:
        ax_loss.legend(loc="upper right", fontsize=8)

    primary = f"validation_{result.primary_metric}"
    keys = [k for k in dict.fromkeys(k for e in epochs for k in e) if k.startswith("validation_")]
    keys = sorted(keys, key=lambda k: (k != primary, k))
    for i, key in enumerate(keys):
        ex, ey = _finite([e.get("epoch") for e in epochs], [e.get(key) for e in epochs])
        if ey:
            ax_epoch.plot(ex, ey, marker="o", linewidth=2.5 if key == primary else 1.2,
                          label=key.removeprefix("validation_"), color=f"C{i + 1}")
    ex, ey = _finite([e.get("epoch") for e in epochs], [e.get("train_loss") for e in epochs])
    if ey:
        ax_tl = ax_epoch.twinx()
        ax_tl.plot(ex, ey, color="tab:blue", linestyle=":", marker=".", label="train loss")
        ax_tl.set_ylabel("train loss (epoch mean)", color="tab:blue")
    if result.best_epoch:
        ax_epoch.axvline(result.best_epoch, color="tab:green", linestyle="--", alpha=0.6,
                         label=f"best epoch ({result.best_epoch})")
    ax_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_epoch.set_xlabel("epoch")
    ax_epoch.set_ylabel("validation metric")
    ax_epoch.set_title("validation per epoch")
    ax_epoch.grid(alpha=0.3)
    if ax_epoch.get_legend_handles_labels()[0]:
        ax_epoch.legend(loc="best", fontsize=8)
    return fig


def short_names(names: list[str]) -> list[str]:
    """Strip the dotted prefix all names share: ``bert.encoder.layer.3.output.dense`` -> ``3.output.dense``."""
    if len(names) < 2:
        return names
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def _binned(rows: list[np.ndarray | None], max_columns: int) -> tuple[np.ndarray, int]:
    """Stack per-layer vectors into a (layers, bins) matrix of per-bin maxima (NaN where absent)."""
    width = max((len(r) for r in rows if r is not None), default=0)
    bin_size = max(1, math.ceil(width / max_columns))
    bins = math.ceil(width / bin_size) if width else 0
    out = np.full((len(rows), bins), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is None:
            continue
        padded = np.full(bins * bin_size, np.nan, dtype=np.float32)
        padded[: len(row)] = row
        with np.errstate(all="ignore"):
            out[i] = np.nanmax(padded.reshape(bins, bin_size), axis=1)
    return out, bin_size


def edit_vectors(tensors: Mapping[str, "torch.Tensor"], meta: Mapping[str, Any]
                 ) -> tuple[list[str], list[np.ndarray | None], list[np.ndarray | None]]:
    """Per target (in the file's order): |s - 1| and |b| as numpy arrays (None if the edit has none)."""
    targets = list(meta.get("targets") or {})
    scales, biases = [], []
    for name in targets:
        s = tensors.get(f"edit.{name}.scale")
        b = tensors.get(f"edit.{name}.bias")
        scales.append(None if s is None else (s.detach().float().cpu().numpy() - 1.0).__abs__())
        biases.append(None if b is None else np.abs(b.detach().float().cpu().numpy()))
    return targets, scales, biases


def edit_heatmap_figure(edit: str | Path | tuple[Mapping[str, Any], Mapping[str, Any]],
                        max_columns: int = 256) -> Figure | None:
    """Heatmaps of |s - 1| and |b| per edited layer (rows) and hidden unit (columns, max-pooled
    into at most ``max_columns`` bins), plus the per-layer means.

    ``edit`` is an edit file path or the ``(tensors, meta)`` pair from ``red.read_edit``.
    Returns None for edits without RED vectors (e.g. ReFT interventions).
    """
    if isinstance(edit, (str, Path)):
        tensors, meta = read_edit(edit)
    else:
        tensors, meta = edit
    targets, scales, biases = edit_vectors(tensors, meta)
    panels = [(title, rows) for title, rows in (("|s - 1|  (scaling)", scales), ("|b|  (bias)", biases))
              if any(r is not None for r in rows)]
    if not targets or not panels:
        return None
    labels = short_names(targets)
    height = min(40.0, max(3.0, 0.28 * len(targets) + 1.5))
    fig = _figure(5.0 * len(panels) + 3.5, height)
    axes = fig.subplots(1, len(panels) + 1, width_ratios=[5] * len(panels) + [2.5], sharey=True)
    method = (meta.get("config") or {}).get("method", "red")
    base = (meta.get("base_model") or {}).get("name", "")
    if base and Path(base).is_absolute():
        base = "/".join(Path(base).parts[-2:])
    fig.suptitle(f"{method} edit on {base or 'base model'}: "
                 f"{len(targets)} layers, {meta.get('edit_parameters', '?')} parameters", fontsize=10)
    y = np.arange(len(targets))
    for ax, (title, rows) in zip(axes, panels):
        matrix, bin_size = _binned(rows, max_columns)
        image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="magma")
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("hidden unit" + (f" (max over bins of {bin_size})" if bin_size > 1 else ""))
        ticks = ax.get_xticks()
        ax.set_xticks([t for t in ticks if 0 <= t < matrix.shape[1]])
        ax.set_xticklabels([str(int(t * bin_size)) for t in ax.get_xticks()])
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=7 if len(targets) > 24 else 8)
    axes[0].set_ylabel("edited module")
    bars = axes[-1]
    width = 0.8 / len(panels)
    for i, (title, rows) in enumerate(panels):
        means = [float(np.mean(r)) if r is not None else 0.0 for r in rows]
        bars.barh(y + (i - (len(panels) - 1) / 2) * width, means, height=width,
                  label=re.sub(r"\s+\(.*\)", "", title), color=f"C{i}")
    bars.set_title("mean per layer", fontsize=10)
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08 if len(targets) > 8 else -0.15),
                ncol=len(panels), frameon=False)
    bars.grid(axis="x", alpha=0.3)
    return fig


def edit_diff_figure(layers: list[Mapping[str, Any]], title: str) -> Figure | None:
    """Two edits of one base compared per layer (rows: ``red.compare.LayerDiff.to_dict()`` of each layer):
    bars of ||Δs||₂ and ||Δb||₂ (ReFT: ||Δθ||₂ over the layer's parameters), and the cosine similarity of the
    two edit vectors. Returns None when there are no layers."""
    if not layers:
        return None
    names = short_names([str(row["layer"]) for row in layers])
    red = any(row.get("scale_l2") is not None or row.get("bias_l2") is not None for row in layers)
    series = ([("||Δs||₂  (scaling)", "scale_l2"), ("||Δb||₂  (bias)", "bias_l2")] if red
              else [("||Δθ||₂  (parameters)", "l2")])
    series = [(label, key) for label, key in series if any(row.get(key) is not None for row in layers)]
    fig = _figure(9.0, min(40.0, max(3.0, 0.28 * len(layers) + 1.5)))
    norms, cosines = fig.subplots(1, 2, width_ratios=[5, 2.5], sharey=True)
    fig.suptitle(title, fontsize=10)
    y = np.arange(len(layers))
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [float(row.get(key) or 0.0) for row in layers]
        norms.barh(y + (i - (len(series) - 1) / 2) * width, values, height=width, label=label, color=f"C{i}")
    largest = max((float(row.get(key) or 0.0) for row in layers for _, key in series), default=0.0)
    norms.set_xlim(0.0, largest * 1.05 if largest > 0 else 1.0)
    norms.set_title("L2 norm of the difference per layer" + ("" if largest > 0 else ": identical edits"),
                    fontsize=10)
    norms.legend(fontsize=7, frameon=False)
    norms.grid(axis="x", alpha=0.3)
    norms.set_yticks(y)
    norms.set_yticklabels(names, fontsize=7 if len(layers) > 24 else 8)
    norms.set_ylabel("edited module")
    norms.invert_yaxis()
    cos = [row.get("cosine") for row in layers]
    cosines.barh(y, [float(c) if c is not None else 0.0 for c in cos], height=0.6, color="C2")
    cosines.set_xlim(-1.05, 1.05)
    cosines.axvline(0.0, color="0.5", linewidth=0.8)
    cosines.set_title("cosine of the edit vectors", fontsize=10)
    cosines.grid(axis="x", alpha=0.3)
    return fig
