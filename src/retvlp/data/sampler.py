"""Stateless step samplers: which rows every process reads at every training step.

A stream of `n` rows is consumed as the concatenation of per-epoch permutations (permutation `e` is drawn
from `(seed, e)`); step `s` takes the `G = b × world_size` positions `[s·G, (s+1)·G)` of that sequence and
process `r` takes the slice `[r·b, (r+1)·b)`. Hence:

- every process gets exactly `b` rows at every step (equal per-process batches, as the global-batch
  contrastive loss needs), and the union over processes is the single-process batch of size `G`;
- the rows of a step depend only on `(seed, step)`: resuming at step `k` needs nothing but `k`;
- epochs roll over inside a step instead of dropping the last partial batch, so no row is skipped.

Two streams (paired + unpaired for MaskedCLIP, categorical + elite for KeepFIT) are two samplers advanced
by the same step counter; each rolls over its own epochs.

With `groups` (one class id per row: `data.balance_classes`), an epoch is instead about `n` draws (the next
multiple of the group count) in which every group has the same share, each group reading on through its own
sequence of permutations: a class with 20 rows is seen as often as one with 326 (its rows repeated), the 326 rows
of the large class are each drawn once over the next epochs before any repeats, and the draw still depends
only on `(seed, epoch)`. Neither paper balances classes;
FLAIR's public pretraining code balances its source datasets the same way (`balance=True`: uniform over datasets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StepSampler:
    """Rows of one data stream for every (step, process).

    Args:
        num_rows: rows in the stream.
        batch_size: rows per process per step (`b`).
        world_size: number of processes.
        seed: base seed of the epoch permutations.
        shuffle: draw a permutation per epoch (else rows in order).
        groups: optional `(num_rows,)` integer group (class) ids: class-balanced epochs (module docstring).
    """

    num_rows: int
    batch_size: int
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    groups: np.ndarray | None = None

    def __post_init__(self):
        if self.num_rows <= 0:
            raise ValueError("StepSampler needs at least one row; the data stream is empty.")
        if self.batch_size <= 0 or self.world_size <= 0:
            raise ValueError(
                f"batch_size and world_size must be positive, got {self.batch_size}, {self.world_size}"
            )
        if self.groups is not None:
            self.groups = np.asarray(self.groups)
            if self.groups.shape != (self.num_rows,):
                raise ValueError(
                    f"groups must hold one id per row: {self.groups.shape} for {self.num_rows} rows."
                )
            if not self.shuffle:
                raise ValueError(
                    "Class-balanced sampling (groups) draws rows at random; it needs shuffle=True."
                )
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:  # steps only ever move forward a little: keep a few epochs
                self._permutations.pop(min(self._permutations))
            if self.groups is not None:
                order = self._balanced_order(epoch)
            elif self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            else:
                order = np.arange(self.num_rows)
            self._permutations[epoch] = order
        return self._permutations[epoch]

    @property
    def epoch_length(self) -> int:
        """Draws per epoch: `num_rows`, or with groups the smallest multiple of the group count at least that."""
        if self.groups is None:
            return self.num_rows
        count = len(np.unique(self.groups))
        return count * -(-self.num_rows // count)

    def _balanced_order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch` with groups: the same share of draws per group, shuffled together.

        Each group reads its own endless sequence of permutations of its rows (permutation `c` of group `g` from
        `(seed, g, c)`), epoch `e` taking the `e`-th share of it: a small group's rows repeat within an epoch, a
        large group's rows are all drawn once before any repeats, across epochs."""
        ids = np.unique(self.groups)
        share = self.epoch_length // len(ids)
        draws = []
        for group in ids:
            members = np.flatnonzero(self.groups == group)
            first, last = epoch * share, (epoch + 1) * share  # positions in the group's sequence
            cycles = range(first // len(members), -(-last // len(members)))
            sequence = np.concatenate(
                [np.random.default_rng([self.seed, int(group), c]).permutation(members) for c in cycles]
            )
            start = first - cycles[0] * len(members)
            draws.append(sequence[start : start + share])
        return np.random.default_rng([self.seed, epoch]).permutation(np.concatenate(draws))

    def global_indices(self, step: int) -> np.ndarray:
        """Rows of the whole global batch of `step` (all processes, process 0's slice first)."""
        start = step * self.global_batch_size
        positions = np.arange(start, start + self.global_batch_size)
        epochs, offsets = np.divmod(positions, self.epoch_length)
        out = np.empty(self.global_batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            out[selected] = self.permutation(int(epoch))[offsets[selected]]
        return out

    def indices(self, step: int, rank: int = 0) -> np.ndarray:
        """Rows process `rank` reads at `step`."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world_size {self.world_size}")
        return self.global_indices(step)[rank * self.batch_size : (rank + 1) * self.batch_size]

    def epoch(self, step: int) -> float:
        """Epochs of this stream completed before `step` (fractional)."""
        return step * self.global_batch_size / self.epoch_length


__all__ = ["StepSampler"]
