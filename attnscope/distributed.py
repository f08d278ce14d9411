"""One command as several processes under torchrun: who this process is, the process
group, float64 sums across it, and one error for all.

torchrun (torch.distributed.run) starts WORLD_SIZE copies of a command with RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; `start()` joins them into one
process group, after PyTorch's DDP recipe: NCCL when the run is on CUDA (each rank on
GPU LOCAL_RANK, so `--device cuda` and `auto` mean that GPU), gloo on the CPU. A single
process, or torchrun with one process, is no group at all: every caller then takes the
plain path and nothing here touches torch.distributed.

Collectives block until every rank arrives, so a rank that fails must still arrive:
`raise_first` is the meeting point where each rank hands over its error (or None) and
every rank raises the same one, the first by corpus line, so a bad text on rank 3 stops
rank 0 with that text's message instead of leaving it waiting forever.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from attnscope import errors
from attnscope.errors import AttnscopeError, DeviceError, UsageError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun job of `world` processes."""

    rank: int
    world: int
    local_rank: int
    backend: str  # "gloo" or "nccl"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that returns results, writes files and prints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collectives put their tensors: this rank's GPU under NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def launched() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from torchrun's variables; None when this process was
    not started by torchrun, or is its only process."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world, local = (int(os.environ.get(name, "0")) for name in _ENV)
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers",
                         hint="start several processes with torchrun --nproc-per-node N") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"RANK {rank} does not fit WORLD_SIZE {world}",
                         hint="start several processes with torchrun --nproc-per-node N")
    return None if world == 1 else (rank, world, local)


def start(device: str = "auto", timeout: float | None = None) -> Group | None:
    """Join torchrun's process group (once: a later call returns the same group, as it
    does one the caller started), or None when this is a single process. `device` is the command's --device: NCCL for cuda (or
    auto with a GPU), each rank on GPU LOCAL_RANK; gloo for the CPU. `timeout` (seconds):
    how long a collective or a receive waits for another rank before it fails (torch's
    default when None)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # started already, by us or by the caller
        if dist.get_world_size() == 1:
            return None
        backend = dist.get_backend()
        local = torch.cuda.current_device() if backend == "nccl" else int(os.environ.get("LOCAL_RANK", "0"))
        return Group(dist.get_rank(), dist.get_world_size(), local, backend)
    where = launched()
    if where is None:
        return None
    rank, world, local = where
    if not dist.is_available():
        raise DeviceError("this PyTorch was built without torch.distributed", hint="run one process, without torchrun")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but no CUDA GPU is available", hint="use --device cpu")
        if local >= torch.cuda.device_count():
            raise DeviceError(f"rank {rank} wants GPU {local}, but {torch.cuda.device_count()} are visible",
                              hint="give torchrun --nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU, for the model and NCCL alike
    backend = "nccl" if cuda else "gloo"
    if timeout is None:
        dist.init_process_group(backend=backend)
    else:
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    return Group(rank, world, local, backend)


def current(device: torch.device) -> Group | None:
    """The group this process belongs to, started for `device` (a model's) if torchrun
    launched us and nobody started it yet; None for a single process."""
    return start("cuda" if device.type == "cuda" else "cpu")


def finish() -> None:
    """Leave the process group, if one was started (at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_float64(group: Group | None, values: Tensor) -> Tensor:
    """`values` summed over every rank, in float64, back on the CPU (itself when alone)."""
    out = values.to(torch.float64)
    if group is None:
        return out
    import torch.distributed as dist

    out = out.to(group.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def raise_first(group: Group | None, error: AttnscopeError | None, line: float = math.inf) -> None:
    """Meet every rank; if any had an error, raise on every rank the one with the lowest
    `line` (a corpus line number: the error one process would have met first).

    Only attnscope's own errors travel (class name, message, hint); any other exception
    ends its process, and torchrun then stops the rest."""
    if group is None:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    mine = None if error is None else (line, group.rank, type(error).__name__, error.message, error.hint)
    everyone: list[tuple[float, int, str, str, str | None] | None] = [None] * group.world
    dist.all_gather_object(everyone, mine)
    failed = sorted(item for item in everyone if item is not None)
    if not failed:
        return
    if error is not None and failed[0][1] == group.rank:
        raise error
    _, _, name, message, hint = failed[0]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, AttnscopeError)):
        cls = AttnscopeError
    raise cls(message, hint)
