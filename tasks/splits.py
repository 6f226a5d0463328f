"""Seeded splitting and subsampling.

GLUE's test labels are hidden, so the RED paper (following LoReFT) splits each
official dev set, seeded, into a validation set for model selection and a test
set for reporting: 1,000 validation rows where the dev set is large (MNLI,
QNLI, QQP: over 2,000 rows), otherwise half and half with the odd row going to
validation (SST-2 872 -> 436/436, RTE 277 -> 139/138, CoLA 1,043 -> 522/521).
The same protocol applies to any source that ships a ``dev`` file. Sources
with only train (and maybe test) get the missing splits carved from train.

All functions keep the input's row order inside each part, so a split reads
in the same order as its file, and use numpy's PCG64 generator, whose stream
is stable across platforms and numpy versions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LARGE_DEV = 2000             # dev sets above this size give a fixed number of rows to validation
LARGE_DEV_VALIDATION = 1000


def dev_split_sizes(n: int) -> tuple[int, int]:
    """(validation, test) sizes of a dev set of ``n`` rows under the paper's protocol."""
    if n > LARGE_DEV:
        return LARGE_DEV_VALIDATION, n - LARGE_DEV_VALIDATION
    return n - n // 2, n // 2


def split_dev(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an official dev set, seeded, into (validation, test) with :func:`dev_split_sizes`."""
    n_val, _ = dev_split_sizes(len(frame))
    return _take(frame, np.random.default_rng(seed).permutation(len(frame)), n_val)


def carve_size(size: float, n: int) -> int:
    """Rows to carve from ``n``: ``size`` < 1 is a fraction (rounded, at least 1), else a count."""
    if size < 1:
        return max(1, int(round(size * n)))
    return int(size)


def carve(frame: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded (rest, carved): ``carved`` holds :func:`carve_size` rows, ``rest`` the others."""
    k = carve_size(size, len(frame))
    carved, rest = _take(frame, np.random.default_rng(seed).permutation(len(frame)), k)
    return rest, carved


def subsample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, chosen seeded without replacement (all rows if ``n`` is None or larger)."""
    if n is None or len(frame) <= n:
        return frame
    picked, _ = _take(frame, np.random.default_rng(seed).permutation(len(frame)), n)
    return picked


def _take(frame: pd.DataFrame, order: np.ndarray, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    first, second = np.sort(order[:k]), np.sort(order[k:])
    return frame.iloc[first].reset_index(drop=True), frame.iloc[second].reset_index(drop=True)
