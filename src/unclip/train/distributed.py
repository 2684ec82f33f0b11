"""Several processes, one training run: torch.distributed DDP under torchrun or accelerate.

Both launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and starts the process group (NCCL on CUDA, gloo on CPU), so
``torchrun --nproc_per_node=N -m unclip train ...`` and ``accelerate launch -m unclip train ...``
run the same code as a plain ``unclip train ...``. The engine is PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel`; this module only starts it and holds the few
collectives the loop needs (the stop flag, the logged loss, gathering per-rank checkpoint state).

How work is split (docs/scale-out.md): ``TrainConfig.batch_size`` is the *global* batch of one
optimizer step. Each step reads ``grad_accum * world_size`` micro-batches of the global stream;
rank ``r`` takes micro-batches ``r, r + W, ...``. The randomness of micro-batch ``k`` (diffusion
noise, timesteps, condition dropout) comes from a seed keyed by ``(seed, k)``, so the same
micro-batches give the same gradients however they are spread over processes and accumulation.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def dist_info() -> DistInfo:
    """Rank, world size and local rank of this process ((0, 1, 0) when not distributed)."""
    if is_initialized():
        local = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank()))
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local)
    return DistInfo()


def init_distributed(timeout_minutes: float = 30.0) -> DistInfo:
    """Start the process group when a launcher asked for several processes; else do nothing.

    The backend is NCCL when CUDA is available (each process then uses ``cuda:LOCAL_RANK``) and
    gloo otherwise. Safe to call twice.
    """
    if is_initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
    )
    info = dist_info()
    logger.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, "nccl" if cuda else "gloo")
    return info


def shutdown_distributed() -> None:
    if is_initialized():
        torch.distributed.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` unchanged.

    ``find_unused_parameters`` is on: the condition-dropout paths leave the null embeddings
    without a gradient in batches where nothing was dropped.
    """
    if not dist_info().enabled:
        return module
    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def all_reduce_max(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag True on every rank when any rank says True, in one collective (a stop request or a
    bad step must stop or skip on them all)."""
    if not dist_info().enabled:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Maximum over ranks of a few floats (the slowest rank's clock, for a time budget)."""
    if not dist_info().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Mean over ranks of a few floats (the logged loss)."""
    if not dist_info().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    torch.distributed.all_reduce(t)
    return (t / dist_info().world_size).tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one when not distributed)."""
    info = dist_info()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist_info().enabled:
        torch.distributed.barrier()


def micro_batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for global micro-batch ``index`` of a run seeded ``seed``."""
    state = np.random.SeedSequence((seed & 0xFFFFFFFF, 0x5EED, index)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)
