"""Everything `torchrun` / DDP: the only module that imports torch.distributed.

One process (no `WORLD_SIZE` in the environment) runs with the same code paths: every
helper here degrades to a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None) -> Context:
    """Reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE and joins the process group.

    NCCL on CUDA, gloo on CPU. `device` None picks `cuda:LOCAL_RANK` when CUDA is there.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return Context(rank, local, world, dev)


def resolve_device(name: Optional[str], local_rank: int = 0) -> torch.device:
    """The device `name` means on this machine; None: `cuda:local_rank` when CUDA is there, else cpu.

    A bare `cuda` is this process's GPU (`cuda:LOCAL_RANK` under torchrun).

    Raises:
        ValueError: not a device name, or a device this machine lacks; one line, where torch
            gives a list of every backend or an assertion from deep inside `.to()`.
    """
    if name is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not one of cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {name!r}: {why}; use cpu")
        index = local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA GPU(s), cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu")
    return dev


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context, find_unused_parameters: bool) -> nn.Module:
    """DDP around `model` when there is more than one process.

    Elastic depth leaves whole layers out of a step, which DDP must be told about
    (`find_unused_parameters`); the trainer turns it on from the search space.
    """
    if ctx.world_size == 1:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """`model.no_sync()` for the micro-steps of gradient accumulation that are not the last."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def mean(value: float, ctx: Context) -> float:
    """The mean of a float over all processes."""
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def mean_tensor(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The element-wise mean of a tensor over all processes (a copy; `t` is left as it is)."""
    if ctx.world_size == 1:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / ctx.world_size


def gather_object(obj: object, ctx: Context) -> list:
    """Every process's `obj` on rank 0, in rank order (other ranks get an empty list); e.g. the
    RNG states a checkpoint keeps for each rank."""
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out if ctx.is_main else []


def broadcast_object(obj: object, ctx: Context) -> object:
    """Rank 0's `obj` on every process (the others pass anything, e.g. None): for what one
    process computes once for all, such as the digests of a run's inputs."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def parameters_equal(model: nn.Module, ctx: Context) -> list[bool]:
    """Per parameter, whether every process holds rank 0's values: the same list on every rank.

    Every rank broadcasts every tensor, then one all_reduce of the per-tensor mismatch flags
    gives each rank every rank's findings. Answering from a rank's own comparisons let a rank
    that saw a difference stop (`all(...)` at its first mismatch) while rank 0, which always
    agrees with itself, went on broadcasting and waited for it.
    """
    params = list(unwrap(model).parameters())
    if ctx.world_size == 1:
        return [True] * len(params)
    differs = torch.zeros(len(params), dtype=torch.int32, device=ctx.device)
    for i, p in enumerate(params):
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        differs[i] = (ref != p.detach()).any()  # on the device: no host sync per tensor
    dist.all_reduce(differs)
    return [not d for d in differs.tolist()]
