"""The processes of one evaluation: who encodes which images under `accelerate launch`, how their features
come back together, and who writes files.

`retvlp evaluate` is the same command with one process or under `accelerate launch --num_processes N`.
Launched, feature extraction gives each process a contiguous run of whole batches of the records
(`shard_rows`), each process encodes only its share, and `Processes.gather` hands every process all shares in
process order, i.e. the features of every record in the original order. Every process then runs the same
(deterministic) tasks on the same features, so their results agree, and fine-tuning's collectives find every
process at the same point; only the main process writes the feature cache and the report.

Not launched (no process group and `WORLD_SIZE` unset or 1), nothing here touches accelerate or
torch.distributed: a one-process run is what it was before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Processes:
    """`count` processes evaluating together; this one is number `index` (0: the main process)."""

    count: int = 1
    index: int = 0

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def gather(self, value) -> list:
        """`value` of every process, in process order; every process gets the whole list (a collective: every
        process must call it)."""
        if self.count == 1:
            return [value]
        import torch.distributed as dist

        # all_gather_object rather than padded tensors: the values here are shares of different lengths (whole
        # batches, a process may have none), may hold None (image-only models have no embeddings) and are
        # numpy arrays, which pickle bit for bit. No shape exchange, no padding to drop; accelerate's
        # gather_for_metrics would drop padding only for a DataLoader it prepared. The cost, pickling ~4 bytes
        # per feature value (3 MB per 1000 images at 768-d), is small next to the encoder passes.
        gathered = [None] * self.count
        dist.all_gather_object(gathered, value)
        return gathered

    def all(self, flag: bool) -> bool:
        """Whether `flag` holds on every process (a collective), e.g. "the features are in my cache": a
        decision on whether collectives follow must be the same everywhere."""
        return all(self.gather(bool(flag)))

    def barrier(self) -> None:
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (which then find what it cached). The
        main process releases the others even when its body raises: they run the same deterministic body, meet
        the same error and stop too, instead of waiting forever."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()


SINGLE = Processes()


def evaluation_processes() -> Processes:
    """The processes of this run: an existing torch.distributed process group's, else (under `accelerate
    launch`, `WORLD_SIZE` > 1) accelerate's `PartialState`, which sets up the process group; else one process,
    without touching accelerate."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(count=dist.get_world_size(), index=dist.get_rank())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # The CPU flag as AcceleratorState reads it: PartialState() alone ignores ACCELERATE_USE_CPU, and the state
    # it freezes is the one fine-tuning's Accelerator inherits later in the same run.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes != world_size:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but accelerate set up {state.num_processes} process(es): the processes "
            "would each evaluate everything unsynchronised. On CPUs launch with ACCELERATE_USE_CPU=1."
        )
    return Processes(count=state.num_processes, index=state.process_index)


def shard_rows(num_rows: int, batch_size: int, processes: Processes) -> slice:
    """The rows `[start, stop)` of `num_rows` that `processes.index` encodes: a contiguous run of whole batches
    of `batch_size`, the batches split as evenly as they go (earlier processes get one more when they do not
    divide; a process gets no rows when there are fewer batches than processes).

    Whole batches, not rows: every image then lands in the same batch, next to the same images, as in a
    one-process run, so batch-shape-dependent kernels cannot make the features differ from it. Contiguous runs
    in process order: concatenating the gathered shares restores the original order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    num_batches = -(-num_rows // batch_size)
    per_process, extra = divmod(num_batches, processes.count)
    first = processes.index * per_process + min(processes.index, extra)
    last = first + per_process + (1 if processes.index < extra else 0)
    return slice(min(first * batch_size, num_rows), min(last * batch_size, num_rows))
