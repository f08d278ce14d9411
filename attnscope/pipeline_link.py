"""Rank-to-rank messages for the pipeline: headers and raw tensors, timeouts, errors relayed as headers.

A message is a small header (a tuple whose first element names its kind; pickled, as
torch.distributed's object collectives do, and only ranks of this job send them), then
the tensors the header announces, sent raw. The API:

- `_Link.send(peer, header, tensor=None)` / `recv(peer)` / `recv_tensor(peer, shape, dtype)`:
  a header and at most one tensor (a hook's report, the logits).
- `_Link.send_named(peer, header, tensors)` / `recv_named(peer, header)`: a header and an
  ordered set of named tensors (`Named`, a dict: its order is the order on the wire). The
  header's last element is the set's manifest, `((name, shape, dtype), …)`, added by
  `send_named`; `recv_named` reads it from the header `recv` returned and receives the
  tensors in that order. The pipeline's stream travels this way: "resid" (T, d) always,
  and whatever else a later layer reads that an earlier rank computed (the encoder's final
  states "memory" of an encoder-decoder, a per-layer input, shared keys and values).

Every announced shape and dtype is checked before anything is allocated (`check_manifest`:
at most MAX_TENSORS tensors, MAX_DIMS dimensions, dtypes of `DTYPES`, MAX_MESSAGE_BYTES in
all), so a message this rank cannot read is one DeviceError, never an unbounded allocation.
A peer that is gone or silent for ATTNSCOPE_PIPELINE_TIMEOUT seconds is one DeviceError
naming it; an error a rank sends as a header (`_error_header`) is raised by `_raise`.
"""

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
MAX_TENSORS = 16  # tensors in one message
MAX_DIMS = 8
MAX_MESSAGE_BYTES = 1 << 37  # 128 GiB: far above any stream (a million tokens at width 16,384 in float32 is 64 GiB)
DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "bool")

Named = dict[str, Tensor]  # an ordered set of named tensors; insertion order is the wire order
Manifest = tuple[tuple[str, tuple[int, ...], str], ...]


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

    def send_named(self, peer: int, header: tuple[Any, ...], tensors: Named) -> None:
        """`header` with the manifest of `tensors` appended, then each tensor in order."""
        import torch.distributed as dist

        listing = manifest(tensors)
        try:
            dist.send_object_list([(*header, listing)], dst=peer, device=self.group.device)
            for t in tensors.values():
                dist.send(t.contiguous().to(self.group.device), dst=peer)
        except (RuntimeError, ValueError, OSError) as exc:
            raise self._failed(peer, exc) from None

    def recv_named(self, peer: int, header: tuple[Any, ...]) -> Named:
        """The tensors a `send_named` header (as `recv` returned it) announces, by name, in order."""
        listing = header[-1] if header else None
        check_manifest(listing, peer)
        return {name: self.recv_tensor(peer, shape, dtype) for name, shape, dtype in listing}

    def recv_tensor(self, peer: int, shape: Sequence[int], dtype: str) -> Tensor:
        import torch.distributed as dist

        check_manifest((("tensor", shape, dtype),), peer)
        out = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=self.group.device)
        try:
            dist.recv(out, src=peer)
        except (RuntimeError, ValueError, OSError) as exc:
            raise self._failed(peer, exc) from None
        return out


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def manifest(tensors: Named) -> Manifest:
    """What a receiver needs to allocate `tensors`: (name, shape, dtype) each, in order."""
    listing = tuple((str(name), tuple(int(n) for n in t.shape), _dtype(t)) for name, t in tensors.items())
    check_manifest(listing, -1)  # internal invariant: this rank never sends what it would refuse
    return listing


def check_manifest(listing: Any, peer: int) -> None:
    """A DeviceError unless `listing` announces at most MAX_TENSORS distinct names, each
    with a shape of at most MAX_DIMS sizes, a dtype of `DTYPES`, MAX_MESSAGE_BYTES in all."""
    def bad(why: str) -> DeviceError:
        return DeviceError(f"rank {peer} sent a message this rank cannot read: {why}",
                           hint="run the same attnscope on every rank")

    if not isinstance(listing, tuple) or len(listing) > MAX_TENSORS:
        raise bad(f"not a list of at most {MAX_TENSORS} tensors")
    total, names = 0, set()
    for entry in listing:
        if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str) and len(entry[0]) <= 64
                and isinstance(entry[1], (tuple, list)) and entry[2] in DTYPES):
            raise bad("a tensor without a name, shape and known dtype")
        name, shape, dtype = entry
        if name in names:
            raise bad(f"tensor {name!r} twice")
        names.add(name)
        if len(shape) > MAX_DIMS or not all(type(n) is int and 0 <= n <= MAX_MESSAGE_BYTES for n in shape):
            raise bad(f"tensor {name!r} of shape {tuple(shape)!r}")
        size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        for n in shape:
            size *= n
        total += size
        if total > MAX_MESSAGE_BYTES:
            raise bad(f"more than {MAX_MESSAGE_BYTES} bytes")


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
