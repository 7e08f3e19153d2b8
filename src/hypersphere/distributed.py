"""Several processes (GPUs) training one encoder with DistributedDataParallel, launched by torchrun:

    torchrun --nproc_per_node 4 -m hypersphere train --dataset stl10 --batch-size 768 ...

Each process takes its share of every global batch (the same sample order on all of them) and draws its
own augmentations; the features of all processes are gathered with a gather that keeps gradients, so
L_uniform and L_contrastive are computed over the global batch, as in the paper (a per-GPU estimate would be
another loss). Every process computes the same global loss; the gather's backward sums each feature's
gradient over the processes and DDP averages the parameter gradients, which together give the gradient of
the global loss. BatchNorm statistics stay per process; MoCo's key encoder normalises a random share of the
global batch instead of its own (Shuffle-BN, moco.MoCo._keys).
Only process 0 writes the run record. Each process binds GPU LOCAL_RANK before NCCL starts and runs every
collective on it (init_from_env, collective_device). Under `torchrun --max-restarts N` a process killed mid-epoch
restarts the whole group, which resumes from the run's last saved state (train.py). The tests run all of this
with gloo on the CPU (tests/test_distributed.py); the NCCL path has not yet run on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def local_device(device: torch.device, env: Mapping[str, str]) -> torch.device:
    """This process's device: under torchrun (WORLD_SIZE > 1) a CUDA run's process trains on GPU LOCAL_RANK of its
    node (torchrun starts one process per GPU; RANK counts over all nodes), else `device` as asked."""
    if device.type == "cuda" and int(env.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(env["LOCAL_RANK"]))
    return device


def init_from_env(device: torch.device) -> tuple[torch.device, int, int]:
    """This process's device (local_device), rank and world size, joining the process group torchrun describes
    (WORLD_SIZE > 1). The process binds its GPU as the current CUDA device before NCCL starts, and NCCL is bound
    to it (device_id): left unbound, every process would talk to NCCL from GPU 0 (a duplicate-GPU error or a hang).
    On the CPU the group is gloo's. Restarts (torchrun --max-restarts) need a store per start, which only torchrun's
    c10d rendezvous with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 makes: its default, and the static rendezvous, keep
    the first start's store, where a restarted group reads its predecessor's addresses."""
    device = local_device(device, os.environ)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0"
        if restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            raise ValueError(
                "torchrun --max-restarts would restart the processes on the store of their first start, "
                "whose stale addresses fail the new group (pytorch#135712): launch torchrun with "
                "--standalone (or --rdzv-backend c10d) and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return (device, *rank_world())


def collective_device() -> torch.device:
    """Where this process's collectives run: its own GPU under NCCL (bound by init_from_env), else the CPU."""
    if rank_world()[1] > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    return global_idx[rank * size : (rank + 1) * size]


def all_gather(x: Tensor) -> list[Tensor]:
    """Every process's `x` (the same shape on all), in rank order, on x's device; gathered on the collectives'
    device (NCCL takes GPU tensors only: generator states, CPU tensors even for CUDA generators, travel there)."""
    world = rank_world()[1]
    if world == 1:
        return [x]
    mine = x.to(collective_device()).contiguous()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [part.to(x.device) for part in parts]


class _Gather(torch.autograd.Function):
    """All-gather whose backward sums the gradient of every process's copy and returns this process's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.cat(all_gather(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, world = rank_world()
        size = len(grad) // world
        return grad[rank * size : (rank + 1) * size]


def gather(x: Tensor) -> Tensor:
    """The rows of every process, in rank order, with gradients flowing back to each process's own rows."""
    return _Gather.apply(x) if rank_world()[1] > 1 else x


def agree(flag: bool) -> bool:
    """Process 0's decision on every process (e.g. whether to save now), so that collectives stay in step."""
    if rank_world()[1] == 1:
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    dist.broadcast(value, 0)
    return bool(value.item())


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
