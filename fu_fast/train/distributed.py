"""Multi-process training under torchrun: process group, device, data shards, reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is the
single-process case (rank 0 of 1) and no process group is created.

A global batch is split across ranks by striding (rank r takes rows r, r+W, r+2W, ...), and
each rank scales its summed loss by W / (global batch size): DistributedDataParallel averages
the W gradients, so the update equals the single-process update on the same global batch,
also when the last batch does not divide evenly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank::self.world]

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device: str | None) -> tuple[Distributed, torch.device]:
    """The process's rank and device; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    target = resolve_device(device)
    if target.type == "cuda":
        if ctx.enabled:   # one GPU per process, as torchrun's LOCAL_RANK says
            target = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(target)
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return ctx, target


def teardown(ctx: Distributed) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
