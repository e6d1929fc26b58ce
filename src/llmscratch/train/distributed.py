"""Several processes, one model: DistributedDataParallel set up from the environment torchrun provides.

`torchrun --nproc_per_node=N -m llmscratch pretrain ...` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT set. Each process trains on its own shard of every global batch; gradients are averaged
across processes after backward. Rank 0 logs and writes checkpoints; everyone waits at a barrier around saves.
Without those variables everything here is a no-op for one process.

Several machines: run the same torchrun command on each with --nnodes, --node_rank and a rendezvous address
(--master_addr/--master_port or --rdzv_endpoint); OUT must be on storage all nodes share (README: Training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llmscratch.utils import pick_device


@dataclass
class DistInfo:
    """Where this process stands: its rank among world_size processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        device_id = dev if backend == "nccl" else None
        dist.init_process_group(backend=backend, rank=rank, world_size=world, device_id=device_id)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all processes (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """`obj` from every process, by rank (a one-item list for one process). Objects travel in memory only."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """The model wrapped for gradient averaging across processes (the model itself for one process)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
