"""Model parallelism by layers: a pipeline of processes under torchrun, or of devices in one.

`--pipeline` under torchrun (any launcher that sets RANK, WORLD_SIZE and MASTER_ADDR)
gives each rank a contiguous share of the layers, balanced by their parameter bytes
(`split`: arithmetic on the kinds' declared shapes, nothing loaded). Each rank loads only
its share, streamed from the checkpoint's shards (`api.load(share=…)`): the embeddings on
the first rank, the final norm and unembedding on the last (the token table too when it
is tied), a stack-owned relative position table on every rank. No rank ever holds the
whole model.

Rank 0 runs the command; the others serve (`serve`). Rank 0's model is a `Driver`: it
runs its own layers, then hands the residual stream (T, d) to rank 1 with
torch.distributed send/recv (gloo on the CPU, NCCL on CUDA with each rank on its
LOCAL_RANK GPU), which runs its layers and hands it on; the rank that ran the last layer
asked for sends it back. Hooks fire on the rank that owns the layer: rank 0 tells each
rank, per pass, which quantities its hooks want at that rank's sites, and the rank relays
each report (a pattern chunk, a route) to rank 0 as it is computed, where the command's
own probes receive it exactly as in one process. So results (top-k, saved patterns,
head scores) are gathered on rank 0 alone, which alone prints and writes; a --save
streams each layer to its file as the layer's chunks arrive, and no rank holds every
layer's patterns. `generate` keeps each layer's KV cache on its owner (one cache per
rank, replaced when rank 0 starts a new one); logits come from the last rank.

Failures: an attnscope error on a serving rank travels to rank 0, which raises it, and
every rank ends with its exit code (rank 0 says it once). A rank that dies or cannot be
reached fails the send or receive waiting on it (within ATTNSCOPE_PIPELINE_TIMEOUT
seconds, default 1800 as torch's, for a rank that hangs), and every rank still running ends with one
line naming it. Files are written by rank 0 alone, atomically (`export.batch`), so
nothing is half-written.

Within one process, `placement` puts the blocks of a model across several devices
(`--device cuda:0,cuda:1`, or auto with several GPUs) by the same split, the residual
stream moved from block to block (`Transformer.placement`): `accelerate`'s device_map
without the dependency.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from attnscope.errors import AttnscopeError, DeviceError, UsageError

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.config import ModelConfig
    from attnscope.distributed import Group

TIMEOUT_ENV = "ATTNSCOPE_PIPELINE_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds a rank waits for another before it says so (torch's own default for gloo)
HINT = "run it as: torchrun --nproc-per-node 2 -m attnscope … --pipeline"


# ------------------------------------------------------------------ the split, by arithmetic


def layer_bytes(cfg: "ModelConfig", width: int) -> tuple[list[int], int, int, int]:
    """Each layer's parameter bytes (one entry a layer, from each kind's declared shapes),
    the embeddings', the head's (final norm, projection, unembedding; 0 when tied) and
    the stack-owned relative table's, which every rank holds."""
    from attnscope.parts import block_shapes, embedding_shapes, head_shapes

    per_layer: list[int] = []
    for spec, count in cfg.stack.runs:
        per_layer += [sum(prod(s) for s in block_shapes(cfg, spec).values()) * width] * count
    embed = {n: s for n, s in embedding_shapes(cfg).items() if n.startswith("embed.")}
    relative = sum(prod(s) for n, s in embedding_shapes(cfg).items() if n.startswith("relative."))
    head = sum(prod(s) for n, s in head_shapes(cfg).items() if _head_part(n))
    if cfg.tied_embeddings and cfg.lm_head:  # the last rank holds the token table to unembed
        head += prod(embed["embed.tok.weight"])
    return per_layer, sum(prod(s) for s in embed.values()) * width, head * width, relative * width


def split(cfg: "ModelConfig", world: int, width: int = 4) -> list[range]:
    """Contiguous layer ranges, one per rank, each at least one layer, minimising the
    largest rank's bytes (embeddings counted on the first, the head on the last)."""
    per_layer, embed, head, _ = layer_bytes(cfg, width)
    n = len(per_layer)
    if world > n:
        raise UsageError(f"{world} ranks cannot share {n} layers", hint="start at most as many processes as layers")
    cost = list(per_layer)
    cost[0] += embed
    cost[-1] += head
    # The smallest largest share: a binary search on it, each guess tried by packing layers greedily
    # (O(layers · log bytes), so a config at MAX_LAYERS still splits at once).
    lo, hi = max(cost), sum(cost)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_pack(cost, mid)) <= world:
            hi = mid
        else:
            lo = mid + 1
    starts = _pack(cost, lo)
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    while len(starts) < world:  # fewer parts than ranks: halve the heaviest part that has two layers
        bounds = starts + [n]
        parts = [(prefix[b] - prefix[a], k) for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b - a >= 2]
        _, k = max(parts)
        a, b = bounds[k], bounds[k + 1]
        half = (prefix[a] + prefix[b]) / 2
        at = min(max(bisect.bisect_left(prefix, half, a + 1, b), a + 1), b - 1)  # the cut nearest the middle
        at = min((j for j in (at - 1, at) if a < j < b),
                 key=lambda j: max(prefix[j] - prefix[a], prefix[b] - prefix[j]))
        starts.insert(k + 1, at)
    return [range(a, b) for a, b in zip(starts, starts[1:] + [n])]


def _pack(cost: list[int], cap: int) -> list[int]:
    """The first layer of each part when layers are packed left to right, each part's
    bytes at most `cap` (which is at least the largest layer's)."""
    starts, total = [0], 0
    for i, c in enumerate(cost):
        if total + c > cap:
            starts.append(i)
            total = 0
        total += c
    return starts


def _head_part(name: str) -> bool:
    return not name.startswith(("pooler.", "mlm.", "nsp.", "classifier."))  # task heads: never run


@dataclass(frozen=True)
class Share:
    """The part of a model one process loads: `layers`, each on its device, and which of
    the other parameters it holds (see the module docstring)."""

    layers: range
    first: bool
    last: bool
    tied: bool
    placement: list[torch.device] | None = None  # every layer's device, blocks across devices in one process

    def holds(self, name: str) -> bool:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) in self.layers
        if name.startswith("relative."):
            return True
        if name.startswith("embed."):
            return self.first or (self.last and self.tied and name == "embed.tok.weight")
        return self.last

    def device(self, layer: int, default: torch.device) -> torch.device:
        return default if self.placement is None else self.placement[layer]


def refuse_unsupported(cfg: "ModelConfig") -> None:
    """Models whose layers read what another layer owns cannot be cut between ranks yet."""
    from attnscope.parts import stack_per_layer

    if getattr(cfg, "decoder", None) is not None:
        raise UsageError("--pipeline cannot split an encoder-decoder's two stacks yet", hint="run it in one process")
    if stack_per_layer(cfg) is not None:
        raise UsageError("--pipeline cannot split a model with per-layer input embeddings (Gemma 4) yet",
                         hint="run it in one process")
    for spec, _ in cfg.stack.kinds():
        if getattr(spec.attn, "kv_from", None) is not None or getattr(spec.attn, "shared_kv", None):
            raise UsageError("--pipeline cannot split a model whose layers share keys and values yet",
                             hint="run it in one process")


# ------------------------------------------------------------------ talking to another rank


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


# ------------------------------------------------------------------ rank 0: the driver


class _Relay:
    """A serving rank's hook: wants what rank 0's hooks want at this rank's sites, and
    sends each report there as it comes."""

    def __init__(self, link: _Link, wanted: dict[str, list[str]]) -> None:
        self.link = link
        self.wanted = {site: set(whats) for site, whats in wanted.items()}

    def wants(self, site: str, what: str) -> bool:
        return what in self.wanted.get(site, ())

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        self.link.send(0, ("report", site, what, int(q_start), int(k_start), tuple(value.shape), _dtype(value)), value)


def _wanted(hooks: Any, layers: range) -> dict[str, list[str]]:
    """What `hooks` want at the sites of `layers` (the question each site asks once a pass)."""
    from attnscope.hooks import WHATS, attn_site, block_site, mlp_site

    if hooks is None:
        return {}
    out: dict[str, list[str]] = {}
    for layer in layers:
        for site in (attn_site(layer), block_site(layer), mlp_site(layer)):
            whats = [what for what in WHATS if hooks.wants(site, what)]
            if whats:
                out[site] = whats
    return out


class Driver:
    """Rank 0's model: a `Transformer`'s interface (call, `logits`, `has_head`, `cfg`,
    `blocks`) over the whole pipeline. Only rank 0's own blocks hold weights here."""

    def __init__(self, net: Any, link: _Link, ranges: list[range], has_head: bool) -> None:
        self.net, self.link, self.ranges = net, link, ranges
        self.cfg = net.cfg
        self.blocks = net.blocks
        self.embed = net.embed
        self.has_head = has_head
        self.block_source = None  # never offloaded: each rank holds its share
        self.placement = None
        self.in_flight = False  # a pass's messages are under way: no clean point to say stop
        self._caches: dict[int, Any] = {}  # id(cache) -> the cache, for the key the serving ranks know it by
        self._cache_key = 0

    def eval(self) -> "Driver":
        return self

    def _key(self, cache: Any) -> int | None:
        if cache is None:
            return None
        if self._caches.get(id(cache)) is not cache:  # a new cache: the serving ranks start theirs afresh
            self._cache_key += 1
            self._caches = {id(cache): cache}
            cache._pipeline_key = self._cache_key
        return cache._pipeline_key

    @torch.inference_mode()  # as Transformer.forward: relayed reports meet probes built in this mode
    def __call__(self, ids: Tensor, hooks: Any = None, last_layer: int | None = None, start: int | None = None,
                 cache: Any = None, packing: Any = None) -> Tensor:
        if packing is not None:
            raise UsageError("--pipeline runs one text a pass", hint="leave out --batch-tokens")
        n = self.cfg.n_layers
        stop = n - 1 if last_layer is None else last_layer
        if start is None:
            start = cache.length if cache is not None else 0
        T = ids.shape[0]
        mine = self.ranges[0]
        x = self.net(ids, hooks, min(stop, mine.stop - 1), start, cache)
        later = [r for r in range(1, len(self.ranges)) if self.ranges[r].start <= stop]
        if later:
            key = self._key(cache)
            self.in_flight = True
            for r in later:
                self.link.send(r, ("pass", start, T, stop, key, _wanted(hooks, self.ranges[r]), r == later[-1]))
            self.link.send(later[0], ("resid", tuple(x.shape), _dtype(x)), x)
            for r in later:
                x = self._serve_reports(r, hooks, r == later[-1])
            self.in_flight = False
        if cache is not None and stop == n - 1:
            cache.length = start + T
        return x

    def _serve_reports(self, rank: int, hooks: Any, final: bool) -> Tensor | None:
        """Hand `rank`'s reports to `hooks` until it is done; the residual stream if it ran the last layer."""
        while True:
            header = self.link.recv(rank)
            kind = header[0]
            if kind == "report":
                _, site, what, q0, k0, shape, dtype = header
                hooks.report(site, what, self.link.recv_tensor(rank, shape, dtype), q0, k0)
            elif kind == "done":
                if not final:
                    return None
                _, shape, dtype = header
                return self.link.recv_tensor(rank, shape, dtype)
            elif kind == "error":
                self.in_flight = False  # the failed rank passed the news on: every rank is back at its loop
                _raise(header)
            else:
                raise DeviceError(f"rank {rank} sent an unexpected message {kind!r}")

    @torch.inference_mode()
    def logits(self, x: Tensor) -> Tensor:
        """The last rank's head on the residual stream `x` (T, d): float32 logits (T, vocab)."""
        if not self.has_head:
            from attnscope.errors import InputError

            raise InputError(f"{self.cfg.name or 'this model'} has no output head to give next-token logits",
                             hint="use a causal language model checkpoint (with its lm_head, or tied embeddings)")
        last = len(self.ranges) - 1
        self.link.send(last, ("logits", tuple(x.shape), _dtype(x)), x)
        header = self.link.recv(last)
        if header[0] == "error":
            _raise(header)
        _, shape, dtype = header
        return self.link.recv_tensor(last, shape, dtype)

    def close(self, code: int) -> None:
        """Tell every serving rank to stop with exit code `code` (best effort: one may be
        gone). Mid-pass (rank 0 failed while a rank was still sending) there is no clean
        point: rank 0 just leaves, and the others end on its absence, naming it."""
        if self.in_flight:
            return
        for r in range(1, len(self.ranges)):
            try:
                self.link.send(r, ("stop", code))
            except DeviceError:
                pass


# ------------------------------------------------------------------ the other ranks


def serve(net: Any, link: _Link, ranges: list[range]) -> int:
    """A serving rank's loop: run its layers for each pass rank 0 asks for, relay the
    hooks' reports, answer for the logits (last rank); the exit code rank 0 ends with."""
    from attnscope.model import KVCache

    rank = link.group.rank
    mine = ranges[rank]
    cache: tuple[int, KVCache] | None = None
    while True:
        header = link.recv(0)
        kind = header[0]
        if kind == "stop":
            return int(header[1])
        try:
            if kind == "pass":
                _, start, T, stop, key, wanted, final = header
                got = link.recv(rank - 1)
                if got[0] == "error":  # an earlier rank failed: rank 0 has its message; pass the news on
                    if not final:
                        link.send(rank + 1, got)
                    continue
                x = link.recv_tensor(rank - 1, got[1], got[2])
                kv = None
                if key is not None:
                    if cache is None or cache[0] != key:
                        cache = (key, KVCache(net.cfg.n_layers))
                    kv = cache[1]
                hooks = _Relay(link, wanted) if wanted else None
                x = net(torch.empty(0, dtype=torch.long), hooks, min(stop, mine.stop - 1), start, kv,
                        first_layer=mine.start, resid=x)
                if kv is not None and stop == net.cfg.n_layers - 1:
                    kv.length = start + T
                if final:
                    link.send(0, ("done", tuple(x.shape), _dtype(x)), x)
                else:
                    link.send(rank + 1, ("resid", tuple(x.shape), _dtype(x)), x)
                    link.send(0, ("done",))
            elif kind == "logits":
                x = link.recv_tensor(0, header[1], header[2])
                out = net.logits(x)
                link.send(0, ("logits", tuple(out.shape), _dtype(out)), out)
            else:
                raise DeviceError(f"rank 0 sent an unexpected message {kind!r}")
        except DeviceError as exc:
            if "cannot be reached" in exc.message:
                raise
            _report_failure(link, header, exc)
        except Exception as exc:  # an attnscope error or a bug: rank 0 says it, and stops everyone
            _report_failure(link, header, exc)


def _report_failure(link: _Link, header: tuple[Any, ...], exc: BaseException) -> None:
    """Send rank 0 the error, and the next rank (waiting for the stream) that there is none."""
    error = _error_header(exc, link.group.rank)
    if header[0] == "pass" and not header[6]:
        link.send(link.group.rank + 1, error)
    link.send(0, error)


# ------------------------------------------------------------------ loading and running


def load_share(model: str | None, device: str, dtype: str, group: "Group") -> tuple[Any, list[range], bool]:
    """This rank's share of the model (see `Share`), every rank's layer ranges, and
    whether the last rank holds an output head. Every rank meets after loading, so a
    failure on one (a missing shard) is one error on all."""
    from attnscope import api, distributed

    net = None
    error: AttnscopeError | None = None
    ranges: list[range] = []
    try:
        src = api.open_source(model)
        cfg = src.config
        if src.gguf is not None:
            raise UsageError("--pipeline streams safetensors shards; a GGUF file is read whole",
                             hint="convert the model to safetensors, or run it in one process")
        refuse_unsupported(cfg)
        dev = api.pick_device(device if device != "auto" else ("cuda" if group.backend == "nccl" else "cpu"))
        width = torch.finfo(api.pick_dtype(dtype, dev, cfg)).bits // 8
        ranges = split(cfg, group.world, width)
        mine = ranges[group.rank]
        share = Share(mine, group.rank == 0, group.rank == group.world - 1, cfg.tied_embeddings)
        m = api.load(model, "cuda" if group.backend == "nccl" else "cpu", dtype, share=share)
        net = m
    except AttnscopeError as exc:
        error = exc
    distributed.raise_first(group, error)
    import torch.distributed as dist

    heads: list[Any] = [None] * group.world
    dist.all_gather_object(heads, bool(net.model.has_head) if net is not None else False)
    return net, ranges, bool(heads[-1])


def run(model: str | None, device: str, dtype: str, body: Callable[["Inspector"], Any]) -> int:
    """Run `body(inspector)` on rank 0 over a pipeline of every rank torchrun started;
    the others serve it. Returns the exit code this rank ends with (0: fine)."""
    from attnscope import distributed

    if "," in device:
        raise UsageError("--pipeline gives each process one device (its LOCAL_RANK GPU), not a list",
                         hint="use --device cuda (or auto) with --pipeline")
    group = distributed.start(device, _timeout())
    if group is None:
        distributed.finish()
        raise UsageError("--pipeline splits the model across processes, and this is a single one", hint=HINT)
    code = 1
    try:
        m, ranges, has_head = load_share(model, device, dtype, group)
        link = _Link(group)
        if not group.main:
            code = serve(m.model, link, ranges)
            return code
        driver = Driver(m.model, link, ranges, has_head)
        m.model = driver
        try:
            body(m)
            code = 0
        except AttnscopeError as exc:
            code = exc.exit_code
            raise
        finally:
            driver.close(code)
        return code
    except AttnscopeError as exc:
        if not group.main and "cannot be reached" not in exc.message:
            return exc.exit_code  # rank 0 says it, once
        raise
    finally:
        _finish()


def _finish() -> None:
    """Leave the group; a group whose peer is gone may fail to tear down, which is no news."""
    from attnscope import distributed

    try:
        distributed.finish()
    except Exception:  # noqa: BLE001 - tearing down after a failure
        pass


# ------------------------------------------------------------------ one process, several devices


def placement(cfg: "ModelConfig", devices: list[torch.device], width: int = 4) -> list[torch.device]:
    """Each layer's device: the same balanced split, one range per device."""
    out: list[torch.device] = []
    for device, layers in zip(devices, split(cfg, len(devices), width)):
        out += [device] * len(layers)
    return out


def parse_devices(device: str) -> list[torch.device] | None:
    """`cuda:0,cuda:1` -> those devices; `auto` with several GPUs -> all of them; else None
    (one device: the plain path)."""
    if device == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] if count > 1 else None
    if "," not in device:
        return None
    names = [part.strip() for part in device.split(",")]
    out: list[torch.device] = []
    for name in names:
        if not name.startswith("cuda:") or not name[5:].isdigit():
            raise DeviceError(f"--device {device!r}: each device of a list must be cuda:N, not {name!r}",
                              hint="e.g. --device cuda:0,cuda:1")
        out.append(torch.device(name))
    if len(set(out)) != len(out):
        raise DeviceError(f"--device {device!r} names a device twice", hint="e.g. --device cuda:0,cuda:1")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device!r} was asked for, but no CUDA GPU is available", hint="use --device cpu")
    if max(d.index for d in out) >= torch.cuda.device_count():
        raise DeviceError(f"--device {device!r} names a GPU beyond the {torch.cuda.device_count()} visible",
                          hint="see nvidia-smi for the GPUs")
    return out


def load_placed(model: str | None, devices: list[torch.device], dtype: str, progress: Any = None) -> "Inspector":
    """One process, the blocks placed across `devices` (embeddings and head on the first)."""
    from attnscope import api

    src = api.open_source(model)
    cfg = src.config
    if src.gguf is not None:
        raise UsageError("blocks across devices stream safetensors shards; a GGUF file is read whole",
                         hint="give one --device")
    refuse_unsupported(cfg)
    width = torch.finfo(api.pick_dtype(dtype, devices[0], cfg)).bits // 8
    where = placement(cfg, devices, width)
    share = Share(range(cfg.n_layers), True, True, cfg.tied_embeddings, where)
    return api.load(model, str(devices[0]), dtype, progress, share=share)


# ------------------------------------------------------------------ --dry-run --pipeline


@dataclass(frozen=True)
class RankPlan:
    rank: int
    layers: range
    weights: int  # bytes of parameters this rank holds
    peak_memory: int  # about: runtime + weights + one block's activations and chunk + what it keeps


def plan_ranks(cfg: "ModelConfig", world: int, dtype: str, n: int, base: Any) -> list[RankPlan]:
    """Each rank's weights and peak memory for a pipelined run of `n` tokens; `base` is
    the one-process `estimate.Plan` (its activations, chunk and runtime hold on every
    rank; what the probes keep and the streamed save layer are rank 0's alone, and each
    serving rank holds the residual stream it receives and one relayed chunk)."""
    from attnscope.params import DTYPE_BYTES

    width = DTYPE_BYTES[dtype]
    per_layer, embed, head, relative = layer_bytes(cfg, width)
    out = []
    for rank, layers in enumerate(split(cfg, world, width)):
        weights = sum(per_layer[i] for i in layers) + relative
        weights += embed if rank == 0 else 0
        weights += head if rank == world - 1 else 0
        extra = base.kept if rank == 0 else n * cfg.d_model * width  # the stream received
        out.append(RankPlan(rank, layers, weights,
                            base.runtime + weights + base.activations + base.attention_chunk + extra))
    return out
