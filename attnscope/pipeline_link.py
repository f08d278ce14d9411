"""Rank-to-rank messages for the pipeline: headers and raw tensors, timeouts, errors relayed as headers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from attnscope.errors import AttnscopeError, DeviceError, UsageError

if TYPE_CHECKING:
    from attnscope.distributed import Group

TIMEOUT_ENV = "ATTNSCOPE_PIPELINE_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds a rank waits for another before it says so (torch's own default for gloo)


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 1.0 <= value <= 7 * 86400:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds from 1 to 604800, got {raw!r}")
    return value


class _Link:
    """Point-to-point messages with the other ranks: a small header (pickled, as
    torch.distributed's object collectives do; only ranks of this job send them) and
    tensors sent raw. Any failure is one DeviceError naming the rank it waited on."""

    def __init__(self, group: "Group") -> None:
        self.group = group

    def _failed(self, peer: int, exc: BaseException) -> DeviceError:
        import re

        # gloo's and NCCL's own words, without their source location and advice: "Connection closed by peer
        # [127.0.0.1]:37047", "Timed out waiting 5000ms for recv operation to complete"
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        first = text.split(". ")[0].rstrip(".") or type(exc).__name__
        seen = f"(seen from rank {self.group.rank})"
        return DeviceError(f"rank {peer} stopped or cannot be reached {seen}: {first[:160]}",
                           hint="the other ranks' output says why; every rank has stopped")

    def send(self, peer: int, header: tuple[Any, ...], tensor: Tensor | None = None) -> None:
        import torch.distributed as dist

        try:
            dist.send_object_list([header], dst=peer, device=self.group.device)
            if tensor is not None:
                dist.send(tensor.contiguous().to(self.group.device), dst=peer)
        except (RuntimeError, ValueError, OSError) as exc:
            raise self._failed(peer, exc) from None

    def recv(self, peer: int) -> tuple[Any, ...]:
        import torch.distributed as dist

        box: list[Any] = [None]
        try:
            dist.recv_object_list(box, src=peer, device=self.group.device)
        except (RuntimeError, ValueError, OSError, EOFError) as exc:
            raise self._failed(peer, exc) from None
        header = box[0]
        if not isinstance(header, tuple) or not header:
            raise DeviceError(f"rank {peer} sent a message this rank cannot read",
                              hint="run the same attnscope on every rank")
        return header

    def recv_tensor(self, peer: int, shape: Sequence[int], dtype: str) -> Tensor:
        import torch.distributed as dist

        out = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=self.group.device)
        try:
            dist.recv(out, src=peer)
        except (RuntimeError, ValueError, OSError) as exc:
            raise self._failed(peer, exc) from None
        return out


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _error_header(exc: BaseException, rank: int) -> tuple[Any, ...]:
    if isinstance(exc, AttnscopeError):
        return ("error", type(exc).__name__, exc.message, exc.hint)
    return ("error", "AttnscopeError", f"internal error on rank {rank}: {type(exc).__name__}: {exc}",
            "set ATTNSCOPE_DEBUG=1 for the traceback and report it")


def _raise(header: tuple[Any, ...]) -> None:
    from attnscope import errors

    _, name, message, hint = header
    cls = getattr(errors, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, AttnscopeError)):
        cls = AttnscopeError
    raise cls(str(message), hint)
