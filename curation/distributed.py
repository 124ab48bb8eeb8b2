"""Curation over N processes: `torchrun --nproc_per_node N -m curation.cli run ...` (or `accelerate launch`).

The embedding is the expensive step (a ViT forward per image), so it is what is split: the embedding shards
still to compute are dealt out round-robin (shard s to rank s mod N), each rank writes its own shards (each
shard once, atomically, resumable as in one process), and all wait for the last one. Rank 0 then runs
de-duplication, decontamination, clustering, sampling and writing on the finished embeddings, exactly as a
single process would: the curated set and the removal log do not depend on N by construction. Rank 0 holds
the output directory for the job (`curation.outputs.claim_output_dir`); the other ranks stop after the
embedding. Ranks talk over gloo (barriers and a few small objects), on CPU and GPU machines alike.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

# the ranks wait for each other at the end of every embedding pass; on a cluster one rank's share can take hours
TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: rank, number of processes and local rank (its GPU on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Processes":
        """One process, or the rank that torchrun / accelerate launch made this one (joining the process group)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence) -> list:
        """This rank's part of ``items``: every N-th one from its rank on."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list:
        """Every rank's ``value``, in rank order (collective)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def stop_if_any_failed(self, error: BaseException | None) -> None:
        """Collective: raise ``error`` on the rank that met it, and on the others an error naming it, so that no
        rank goes on (or waits) alone."""
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        if failed:
            rank, message = failed[0]
            raise RuntimeError(f"process {rank} stopped: {message}")


@contextlib.contextmanager
def claimed_by_the_main_process(processes: Processes, claim: Callable[[], ContextManager[Path]],
                                directory: str | os.PathLike) -> Iterator[Path]:
    """Rank 0 enters ``claim()`` (the output directory's lock and earlier-results check) for the ``with`` block;
    if it cannot, every rank stops with its error."""
    with contextlib.ExitStack() as stack:
        error = None
        if processes.is_main:
            try:
                stack.enter_context(claim())
            except Exception as err:  # shared with the other ranks, then raised here
                error = err
        processes.stop_if_any_failed(error)
        yield Path(directory)


def end(processes: Processes) -> None:
    """Leave the process group (after the last collective)."""
    if processes.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
