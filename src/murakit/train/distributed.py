"""Distributed training under torchrun: process group set-up and the few collectives we need.

Without torchrun's environment (WORLD_SIZE unset or 1) every function degrades to the
single-process answer, so the training loop has one code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world, local_rank)


def shutdown(ctx: DistContext) -> None:
    """Wait for every rank, then tear the group down: a rank that destroys it while rank 0
    is still writing its last files can abort the job at exit ("terminate called without an
    active exception", seen once in 2 CI runs)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64, so sums of losses stay exact enough)."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_objects(ctx: DistContext, obj):
    """Every rank's object, in rank order (used to assemble validation predictions)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each training forward, so after an epoch's last
    step every rank still holds statistics updated by its own last batch. Validation is split
    across ranks; without this, each share would be scored by a slightly different model,
    and none of them exactly the one rank 0 saves.
    """
    if not ctx.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if it is true on one (a Ctrl-C on rank 0 stops all ranks together)."""
    return bool(all_sum(ctx, [float(flag)])[0]) if ctx.enabled else flag


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
