"""Several processes (GPUs) training one encoder with DistributedDataParallel, launched by torchrun:

    torchrun --nproc_per_node 4 -m hypersphere train --dataset stl10 --batch-size 768 ...

Each process takes its share of every global batch (the same sample order on all of them) and draws its
own augmentations; the features of all processes are gathered with a gather that keeps gradients, so
L_uniform and L_contrastive are computed over the global batch, as in the paper (a per-GPU estimate would be
another loss). Every process computes the same global loss; the gather's backward sums each feature's
gradient over the processes and DDP averages the parameter gradients, which together give the gradient of
the global loss. BatchNorm statistics stay per process; MoCo's key encoder normalises a random share of the
global batch instead of its own (Shuffle-BN, moco.MoCo._keys).
Only process 0 writes the run record.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_env(device_type: str) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return rank_world()


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(global_idx: Tensor) -> Tensor:
    """This process's contiguous share of a global batch (the batch size must divide by the world size)."""
    rank, world = rank_world()
    if len(global_idx) % world:
        raise ValueError(f"batch size {len(global_idx)} does not divide by {world} processes; choose a multiple")
    size = len(global_idx) // world
    return global_idx[rank * size:(rank + 1) * size]


class _Gather(torch.autograd.Function):
    """All-gather whose backward sums the gradient of every process's copy and returns this process's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(rank_world()[1])]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, world = rank_world()
        size = len(grad) // world
        return grad[rank * size:(rank + 1) * size]


def gather(x: Tensor) -> Tensor:
    """The rows of every process, in rank order, with gradients flowing back to each process's own rows."""
    return _Gather.apply(x) if rank_world()[1] > 1 else x


def agree(flag: bool) -> bool:
    """Process 0's decision on every process (e.g. whether to save now), so that collectives stay in step."""
    if rank_world()[1] == 1:
        return flag
    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(value, 0)
    return bool(value.item())


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
