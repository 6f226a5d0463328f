"""Mixed batches for co-training K tasks: how many rows of each task an optimizer step holds, and which.

- **Weights.** Task k's share of the rows is ``p_k = n_k^(1/T) / sum_j n_j^(1/T)`` for ``n_k`` training rows
  and temperature ``T``: ``T = 1`` is proportional to size, larger ``T`` flattens toward uniform
  (``T = inf``: uniform), as in multilingual / multi-task mixing (Arivazhagan et al. 2019; T5, Raffel et al.
  2020, sec. 3.5.2).
- **Steps.** Each optimizer step holds ``rows_per_step`` (R) rows; an epoch is ``S = ceil(sum_k n_k / R)``
  steps (as many rows as all tasks have together).
- **Which task, per step.** ``stratified`` (default): every step holds each task's share of R, rounded by
  largest remainder with the rounding error carried to the next step, so over the run each task's count
  stays within a row of ``p_k`` times the rows so far; deterministic. With equal shares and
  ``R = K * b`` every step holds exactly b rows of every task. ``random``: each row's task is drawn from p
  (seeded per epoch).
- **Which rows.** Task k's rows come from a stream of random permutations of its n_k rows, permutation e
  ordered exactly as the Trainer orders epoch e of a single-task training with seed ``seed_k``
  (accelerate's ``SeedableRandomSampler``: ``randperm(n_k)`` seeded with ``seed_k + e``). The stream runs on
  across steps and epochs: a task that gets more rows than it has repeats them in a new order.
- **Micro-batches.** A step's rows are cut into ``G = ceil(R / micro_batch)`` forward passes of at most
  ``micro_batch`` rows (the Trainer's gradient accumulation), so the activation memory is that of one
  ``micro_batch``, whatever K. ``order="length"`` (default) sorts the step's rows by length first, so each
  pass pads little (tasks of different lengths would otherwise share a pass padded to the longest);
  ``order="task"`` keeps each task's rows together in stream order. The order of the rows inside a step does
  not change the step's gradient (each task's loss is its mean over the whole step), only the rounding.

So for K tasks of equal size n with batch size b, ``R = K * b``, ``micro_batch = b`` and ``order="task"``,
every forward pass is one task's batch, in the order training that task alone would use.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from accelerate.data_loader import SeedableRandomSampler

Mode = Literal["stratified", "random"]
Order = Literal["length", "task"]


def mixing_weights(sizes: Sequence[int], temperature: float = 1.0) -> list[float]:
    """``p_k`` proportional to ``n_k ** (1 / temperature)``; ``temperature=inf`` gives uniform weights."""
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"every task needs at least one training row; sizes {list(sizes)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (1: proportional to size, inf: uniform); got {temperature}")
    raw = [1.0 if math.isinf(temperature) else n ** (1.0 / temperature) for n in sizes]
    total = sum(raw)
    return [r / total for r in raw]


def apportion(total: int, shares: Sequence[float]) -> list[int]:
    """Integers >= 0 summing to ``total``, proportional to ``shares`` (>= 0): largest remainder, ties to the lower index."""
    weights = [max(s, 0.0) for s in shares]
    norm = sum(weights)
    if norm <= 0:
        weights, norm = [1.0] * len(shares), float(len(shares))
    exact = [total * w / norm for w in weights]
    counts = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass
class Mixing:
    """The co-training schedule of K tasks (see the module docstring). Pure index arithmetic, no data."""

    sizes: list[int]
    rows_per_step: int
    micro_batch: int
    seeds: list[int]
    temperature: float = 1.0
    mode: Mode = "stratified"
    seed: int = 42
    order: Order = "length"
    lengths: list[list[int]] | None = None   # tokens of each task's rows (order="length")
    weights: list[float] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.sizes):
            raise ValueError(f"{len(self.sizes)} tasks but {len(self.seeds)} seeds")
        if self.rows_per_step < 1 or self.micro_batch < 1:
            raise ValueError(f"rows_per_step and micro_batch must be >= 1; got {self.rows_per_step}, {self.micro_batch}")
        if self.mode not in ("stratified", "random"):
            raise ValueError(f"mixing must be 'stratified' or 'random'; got {self.mode!r}")
        if self.order not in ("length", "task"):
            raise ValueError(f"micro-batch order must be 'length' or 'task'; got {self.order!r}")
        if self.lengths is not None and [len(x) for x in self.lengths] != list(self.sizes):
            raise ValueError("lengths must give one length per training row of every task")
        self.weights = mixing_weights(self.sizes, self.temperature)
        self._quota_cache: list[list[int]] = []
        self._carry = [0.0] * len(self.sizes)
        self._orders: dict[tuple[int, int], list[int]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(sum(self.sizes) / self.rows_per_step))

    @property
    def micro_batches_per_step(self) -> int:
        return max(1, math.ceil(self.rows_per_step / self.micro_batch))

    # ---- rows per task and step -----------------------------------------------------------------
    def quotas(self, step: int) -> list[int]:
        """Rows of each task in optimizer step ``step`` (0-based over the whole run); they sum to R."""
        if self.mode == "random":
            epoch, within = divmod(step, self.steps_per_epoch)
            return self._random_epoch(epoch)[within]
        while len(self._quota_cache) <= step:  # the carried rounding error makes this a recurrence
            desired = [round(self.rows_per_step * p + c, 9) for p, c in zip(self.weights, self._carry)]
            counts = apportion(self.rows_per_step, desired)
            self._carry = [d - c for d, c in zip(desired, counts)]
            self._quota_cache.append(counts)
        return self._quota_cache[step]

    def _random_epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        draws = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64),
                                  self.steps_per_epoch * self.rows_per_step, replacement=True, generator=g)
        counts = torch.nn.functional.one_hot(draws.view(self.steps_per_epoch, self.rows_per_step),
                                             len(self.sizes)).sum(1)
        return counts.tolist()

    def steps_with_rows(self, steps: int) -> list[int]:
        """How many of the first ``steps`` optimizer steps hold rows of each task: the steps each task takes.

        A task with a small share has no rows in some steps; co-trained, it is not stepped then (no gradient, so
        AdamW skips it), so these counts are the lengths of the tasks' own learning-rate schedules
        (``tasks.training.cotrain``). Random mixing draws each epoch once here, not once per step."""
        taken = [0] * len(self.sizes)
        if self.mode == "random":
            for epoch in range(math.ceil(steps / self.steps_per_epoch)):
                quotas = self._random_epoch(epoch)[: steps - epoch * self.steps_per_epoch]
                for counts in quotas:
                    for k, q in enumerate(counts):
                        taken[k] += q > 0
            return taken
        for t in range(steps):
            for k, q in enumerate(self.quotas(t)):
                taken[k] += q > 0
        return taken

    def rows_seen(self, steps: int) -> list[int]:
        """Rows each task has had after ``steps`` optimizer steps."""
        seen = [0] * len(self.sizes)
        for t in range(steps):
            for k, q in enumerate(self.quotas(t)):
                seen[k] += q
        return seen

    # ---- which rows --------------------------------------------------------------------------
    def _stream(self, task: int, start: int, count: int) -> list[int]:
        """Rows ``start .. start+count`` of task ``task``'s stream of permutations (indices into its rows)."""
        n = self.sizes[task]
        out: list[int] = []
        position = start
        while len(out) < count:
            lap, offset = divmod(position, n)
            order = self._orders.get((task, lap))
            if order is None:
                sampler = SeedableRandomSampler(range(n), data_seed=self.seeds[task])  # the Trainer's epoch order
                sampler.set_epoch(lap)
                order = list(iter(sampler))
                for key in [key for key in self._orders if key[0] == task and key[1] < lap - 1]:
                    del self._orders[key]
                self._orders[(task, lap)] = order
            take = order[offset: offset + count - len(out)]
            out += take
            position += len(take)
        return out

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Epoch ``epoch``'s micro-batches, in order: lists of ``(task, row index)``; ``G`` per optimizer step."""
        first = epoch * self.steps_per_epoch
        position = self.rows_seen(first)
        batches: list[list[tuple[int, int]]] = []
        for step in range(first, first + self.steps_per_epoch):
            rows: list[tuple[int, int]] = []
            for k, q in enumerate(self.quotas(step)):
                rows += [(k, i) for i in self._stream(k, position[k], q)]
                position[k] += q
            if self.order == "length" and self.lengths is not None:
                rows.sort(key=lambda row: -self.lengths[row[0]][row[1]])  # stable: ties keep the task order
            g = self.micro_batches_per_step
            cuts = [round(j * len(rows) / g) for j in range(g + 1)]
            batches += [rows[cuts[j]:cuts[j + 1]] for j in range(g)]
        return batches

    def describe(self) -> dict[str, object]:
        return {"temperature": self.temperature, "mixing": self.mode, "order": self.order,
                "rows_per_step": self.rows_per_step,
                "micro_batch": self.micro_batch, "micro_batches_per_step": self.micro_batches_per_step,
                "steps_per_epoch": self.steps_per_epoch, "weights": [round(w, 6) for w in self.weights]}


class MixedBatchSampler(torch.utils.data.Sampler):
    """A batch sampler over the K tasks' training rows laid end to end (task k's row i is index
    ``offsets[k] + i``), yielding :meth:`Mixing.epoch_batches` of the epoch set by ``set_epoch``.
    The Trainer (and accelerate's ``DataLoaderShard``) call ``set_epoch`` before every epoch."""

    def __init__(self, mixing: Mixing):
        self.mixing = mixing
        self.offsets = [0]
        for n in mixing.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.mixing.steps_per_epoch * self.mixing.micro_batches_per_step

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.mixing.epoch_batches(self.epoch):
            yield [self.offsets[k] + i for k, i in batch]
