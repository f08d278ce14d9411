"""Model parallelism by layers: a pipeline of processes under torchrun, or of devices in one.

`--pipeline` under torchrun (any launcher that sets RANK, WORLD_SIZE and MASTER_ADDR)
gives each rank a contiguous share of the layers, balanced by their parameter bytes
(`split`: arithmetic on the kinds' declared shapes, nothing loaded). Each rank loads only
its share, streamed from the checkpoint's shards (`api.load(share=…)`; a GGUF: only the
share's tensors read by name from the memory-mapped file and dequantized): the embeddings
(and Gemma 4's per-layer input tables) on the first rank, the final norm and unembedding
on the last (the token table too when it is tied), a stack-owned relative position table
on every rank that holds a layer of its stack (loaded there, never sent). No rank ever
holds the whole model. What a later layer reads that an earlier rank computed travels
with the stream (`hand_on`): Gemma 4's per-layer inputs, and the keys and values (cached
ones included) of an owner layer whose KV-shared readers sit on a later rank.

An encoder-decoder's layers are split as one ordered list, the encoder's then the
decoder's (each decoder layer with its cross-attention; `layer_split.stack_layers`). The
encoder's stream runs from rank to rank and back to rank 0, which holds the encoder's
final norm; the decoder's ids are embedded on rank 0 and its stream runs from rank to
rank, the encoder's final states travelling with it to every rank that holds decoder
layers (once per decoding under `generate`, where each rank keeps them beside its KV
cache and computes its layers' cross-attention keys and values once). See `Driver`.

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

The split and the --dry-run plan live in `layer_split`, the rank-to-rank messages in
`pipeline_link`, the one-process placement in `placement`; all are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from attnscope.errors import AttnscopeError, DeviceError, UsageError

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.config import ModelConfig
    from attnscope.distributed import Group

from attnscope.layer_split import (  # noqa: F401  (re-exported)
    RankPlan, _head_part, _pack, layer_bytes, plan_ranks, split, stack_layers,
)
from attnscope.pipeline_link import (  # noqa: F401  (re-exported)
    DEFAULT_TIMEOUT, TIMEOUT_ENV, Named, _dtype, _error_header, _Link, _raise, _timeout,
)
from attnscope.placement import load_placed, parse_devices, placement  # noqa: F401  (re-exported)

HINT = "run it as: torchrun --nproc-per-node 2 -m attnscope … --pipeline"


@dataclass(frozen=True)
class Share:
    """The part of a model one process loads: `layers`, each on its device, and which of
    the other parameters it holds (see the module docstring)."""

    layers: range  # the blocks of the model's own stack (an encoder-decoder's encoder)
    first: bool
    last: bool
    tied: bool
    placement: list[torch.device] | None = None  # every layer's device, blocks across devices in one process
    decoder: range | None = None  # an encoder-decoder's decoder layers (counted in the decoder); None: one stack

    def holds(self, name: str) -> bool:
        """Whether this share loads parameter `name`. A stack's relative position table
        (T5's) is loaded by every share holding a layer of that stack, which computes the
        stack's bias itself (the tables are tiny: loaded, never sent); an encoder-decoder's
        first share holds both stacks' embeddings and the encoder's final norm."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) in self.layers
        if name.startswith("relative."):
            return self.decoder is None or len(self.layers) > 0
        if self.decoder is not None and name.startswith("decoder."):
            rest = name.removeprefix("decoder.")
            if rest.startswith("blocks."):
                return int(rest.split(".")[1]) in self.decoder
            if rest.startswith("relative."):
                return len(self.decoder) > 0
            return self.first if rest.startswith("embed.") else self.last
        if self.decoder is not None and name.startswith("final_norm."):  # the encoder's: rank 0 normalises its states
            return self.first
        if name.startswith("embed."):
            return self.first or (self.last and self.tied and name == "embed.tok.weight")
        if name.startswith("per_layer."):  # Gemma 4's per-layer inputs: computed with the embeddings, handed on
            return self.first
        return self.last

    def device(self, layer: int, default: torch.device) -> torch.device:
        return default if self.placement is None else self.placement[layer]


def refuse_unsupported(cfg: "ModelConfig") -> None:
    """Models whose layers read what another layer owns cannot be cut between ranks yet.
    (Gemma 4's per-layer inputs and KV-shared layers travel with the stream: `hand_on`.)"""


# ------------------------------------------------------------------ what travels with the stream (Gemma 4)


def hand_on(cfg: "ModelConfig", carry: dict[str, Any], after: int, stop: int) -> "Named":
    """What layers after..stop read that an earlier stage computed, as named tensors for the
    stream (from a `Transformer.forward` `carry`): Gemma 4's per-layer inputs "per_layer"
    (T, layers, width), and for each owner layer i < after that a KV-shared layer in
    after..stop reads, its keys and values of this pass, cached ones included,
    "kv.{i}.k"/"kv.{i}.v" (H_kv, K, dh) and their positions "kv.{i}.positions" (K,)."""
    out: Named = {}
    readers = range(after, min(stop, cfg.n_layers - 1) + 1)
    if carry.get("per_layer") is not None and readers:
        out["per_layer"] = carry["per_layer"]
    shared = carry.get("shared") or {}
    owners = sorted({src for i in readers if (src := cfg.layer(i).attn.kv_source) is not None and src < after})
    for i in owners:
        k, v, _, positions = shared[i]
        out.update({f"kv.{i}.k": k, f"kv.{i}.v": v, f"kv.{i}.positions": positions})
    return out


def taken(stream: "Named") -> tuple[dict[str, Any], "Named"]:
    """The `carry` a stage's forward takes from a received stream (see `hand_on`), and the
    rest of the stream ("resid", and what travels on as it came)."""
    carry: dict[str, Any] = {"per_layer": stream.get("per_layer"), "shared": {}}
    rest: Named = {}
    for name, t in stream.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "kv" and parts[1].isdigit() and parts[2] == "k":
            i = int(parts[1])
            positions = stream.get(f"kv.{i}.positions")
            if stream.get(f"kv.{i}.v") is None or positions is None or positions.numel() == 0:
                raise DeviceError(f"the stream carries keys of layer {i} without their values or positions",
                                  hint="run the same attnscope on every rank")
            carry["shared"][i] = (t, stream[f"kv.{i}.v"], int(positions[0]), positions)
        elif name != "per_layer" and not (parts[0] == "kv" and len(parts) == 3):
            rest[name] = t
    return carry, rest


# ------------------------------------------------------------------ talking to another rank


# ------------------------------------------------------------------ rank 0: the driver


# Not a quantity a layer reports but a request at a block's site (`blocks.{i}`): rank 0's hooks
# read that block's own weights while its reports come (the mixing measures, `measures.mixing`),
# so its owner lends them, just before the block's first report (`_Relay`, `Driver._lend`).
LEND = "weights"


class _Relay:
    """A serving rank's hook: wants what rank 0's hooks want at this rank's sites, and
    sends each report there as it comes; a block whose weights rank 0's hooks read (`LEND`)
    is sent first, one tensor at a time, before its input (`resid_pre`)."""

    def __init__(self, link: _Link, wanted: dict[str, list[str]], net: Any = None) -> None:
        self.link, self.net = link, net
        self.wanted = {site: set(whats) for site, whats in wanted.items()}

    def wants(self, site: str, what: str) -> bool:
        return what in self.wanted.get(site, ())

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "resid_pre" and LEND in self.wanted.get(site, ()) and self.net is not None:
            layer = int(site.split(".")[1])
            for name, t in self.net.blocks[layer].state_dict().items():
                self.link.send(0, ("weight", name, tuple(t.shape), _dtype(t)), t)
            self.link.send(0, ("lent", layer))
        self.link.send(0, ("report", site, what, int(q_start), int(k_start), tuple(value.shape), _dtype(value)), value)


def _wanted(hooks: Any, layers: range, decoder: bool = False) -> dict[str, list[str]]:
    """What `hooks` want at the sites of `layers` (the question each site asks once a pass);
    `decoder`: the layers are an encoder-decoder's decoder's (its self- and cross-attention)."""
    from attnscope.hooks import DECODER, WHATS, attn_site, block_site, cross_site, mlp_site

    if hooks is None:
        return {}
    out: dict[str, list[str]] = {}
    for layer in layers:
        names = ((DECODER + attn_site(layer), cross_site(layer), DECODER + block_site(layer)) if decoder
                 else (attn_site(layer), block_site(layer), mlp_site(layer)))
        for site in names:
            whats = [what for what in (*WHATS, LEND) if hooks.wants(site, what)]
            if whats:
                out[site] = whats
    return out


class Driver:
    """Rank 0's model: a `Transformer`'s interface (call, `logits`, `has_head`, `cfg`,
    `blocks`) over the whole pipeline. Only rank 0's own blocks hold weights here.

    An encoder-decoder's `ranges` index the encoder's layers, then the decoder's
    (`layer_split.stack_layers`). A call runs the encoder from rank to rank and its stream
    comes back to rank 0, which holds the encoder's final norm (`seq2seq.encode` applies
    it); `decoder` (a `Decoder`'s interface) embeds the decoder's ids on rank 0 and runs
    the decoder's layers from rank to rank, the encoder's final states ("memory") travelling
    with the stream to every rank that holds decoder layers: once per decoding when there
    is a cache (each rank keeps them with its cache, where its layers' cross keys and values
    are computed once), with every pass otherwise."""

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
        self._lending: dict[str, Tensor] = {}  # a lent block's tensors as they come (see LEND)
        self._lent: int | None = None  # the layer whose block is lent to rank 0 now
        if hasattr(net, "final_norm"):  # an encoder-decoder's encoder: its states normalised here
            self.final_norm = net.final_norm
        if self.cfg.decoder is not None:
            self.decoder = _DecoderDriver(self)
            self._memory_key: int | None = None  # the cache whose decoding the serving ranks hold memory for

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
        carry: dict[str, Any] = {}
        x = self.net(ids, hooks, min(stop, mine.stop - 1), start, cache, carry=carry)
        later = [r for r in range(1, len(self.ranges)) if self.ranges[r].start <= stop]
        if later:
            key = self._key(cache)
            self.in_flight = True
            for r in later:
                self.link.send(r, ("pass", start, T, stop, key, _wanted(hooks, stack_layers(self.cfg, self.ranges[r])[0]),
                                   r == later[-1], 0))
            self.link.send_named(later[0], ("resid",), {"resid": x, **hand_on(self.cfg, carry, mine.stop, stop)})
            for r in later:
                got = self._serve_reports(r, hooks, r == later[-1])
                if got is not None:
                    x = got["resid"]
            self.in_flight = False
        if cache is not None and stop == n - 1:
            cache.length = start + T
        return x

    @torch.inference_mode()
    def decode_pass(self, ids: Tensor, memory: Tensor, hooks: Any = None, start: int | None = None,
                    cache: Any = None) -> Tensor:
        """An encoder-decoder's decoder over the pipeline (see the class): decoder ids (T,) at
        positions start.., reading the encoder's final states `memory` (S, d); the decoder's
        last residual stream (T, d), before its final norm (the last rank's `logits` applies it)."""
        n_enc, n_dec = self.cfg.n_layers, len(self.cfg.decoder)
        if start is None:
            start = cache.length if cache is not None else 0
        T = ids.shape[0]
        mine = self.ranges[0]
        _, own = stack_layers(self.cfg, mine)  # rank 0's decoder layers (it embeds the ids whatever it holds)
        x = self.net.decoder(ids, self.net.embed.tok, memory, hooks, start, cache, last_layer=own.stop - 1)
        later = [r for r in range(1, len(self.ranges)) if self.ranges[r].stop > n_enc]
        if later:
            key = self._key(cache)
            stream: Named = {"resid": x}
            if key is None or key != self._memory_key:  # a new decoding: the encoder's states travel once
                stream["memory"] = memory
                self._memory_key = key
            stop = n_enc + n_dec - 1
            self.in_flight = True
            for r in later:
                theirs = stack_layers(self.cfg, self.ranges[r])[1]
                self.link.send(r, ("pass", start, T, stop, key, _wanted(hooks, theirs, decoder=True), r == later[-1],
                                   n_enc))
            self.link.send_named(later[0], ("resid",), stream)
            for r in later:
                got = self._serve_reports(r, hooks, r == later[-1])
                if got is not None:
                    x = got["resid"]
            self.in_flight = False
        if cache is not None:
            cache.length = start + T
        return x

    def _serve_reports(self, rank: int, hooks: Any, final: bool) -> Named | None:
        """Hand `rank`'s reports to `hooks` until it is done; the stream (`Named`, "resid"
        and what travels with it) if it ran the last layer."""
        while True:
            header = self.link.recv(rank)
            kind = header[0]
            if kind == "report":
                _, site, what, q0, k0, shape, dtype = header
                hooks.report(site, what, self.link.recv_tensor(rank, shape, dtype), q0, k0)
            elif kind == "weight":
                _, name, shape, dtype = header
                self._lending[str(name)] = self.link.recv_tensor(rank, shape, dtype)
            elif kind == "lent":
                self._lend(int(header[1]))
            elif kind == "done":
                self._give_back()
                return self.link.recv_named(rank, header) if final else None
            elif kind == "error":
                self.in_flight = False  # the failed rank passed the news on: every rank is back at its loop
                self._give_back()
                _raise(header)
            else:
                raise DeviceError(f"rank {rank} sent an unexpected message {kind!r}")

    def _lend(self, layer: int) -> None:
        """Put block `layer`'s lent weights into rank 0's (meta) block while its reports come;
        the block lent before goes back to the meta device first: one lent block at a time."""
        state, self._lending = self._lending, {}
        self._give_back()
        if not 0 <= layer < len(self.net.blocks) or layer in self.ranges[0]:
            raise DeviceError(f"a rank lent rank 0 layer {layer}, which is not another rank's")
        self.net.blocks[layer].load_state_dict(state, strict=True, assign=True)
        self._lent = layer

    def _give_back(self) -> None:
        if self._lent is not None:
            self.net.blocks[self._lent].to_empty(device="meta")  # drop the lent weights
            self._lent = None
        self._lending = {}

    def fetch(self, name: str) -> Tensor:
        """A block's parameter `name` (`blocks.{i}.…`) from the rank that holds it, rank
        0's own as it is: what a measure reads of one layer's weights on rank 0 (the norm
        focus view's W_O, `measures.update`). Between passes only."""
        layer = int(name.split(".")[1])
        owner = next(r for r, layers in enumerate(self.ranges) if layer in layers)
        if owner == 0:
            return self.net.get_parameter(name)
        self.link.send(owner, ("fetch", name))
        header = self.link.recv(owner)
        if header[0] == "error":
            _raise(header)
        _, shape, dtype = header
        return self.link.recv_tensor(owner, shape, dtype)

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


class _DecoderDriver:
    """`Driver.decoder`: the call `seq2seq` makes of a `Decoder`, over the pipeline."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def __call__(self, ids: Tensor, tok: Any, memory: Tensor, hooks: Any = None, start: int | None = None,
                 cache: Any = None) -> Tensor:
        return self.driver.decode_pass(ids, memory, hooks, start, cache)


# ------------------------------------------------------------------ the other ranks


def serve(net: Any, link: _Link, ranges: list[range]) -> int:
    """A serving rank's loop: run its layers for each pass rank 0 asks for, relay the
    hooks' reports, answer for the logits (last rank); the exit code rank 0 ends with."""
    from attnscope.model import KVCache

    rank = link.group.rank
    mine = ranges[rank]
    cache: tuple[int, KVCache, Tensor | None] | None = None  # its key, the cache, an encoder-decoder's memory
    while True:
        header = link.recv(0)
        kind = header[0]
        if kind == "stop":
            return int(header[1])
        try:
            if kind == "pass":
                _, start, T, stop, key, wanted, final, first = header
                n_enc = net.cfg.n_layers
                decoding = net.cfg.decoder is not None and first >= n_enc  # an encoder-decoder's decoder pass
                got = link.recv(rank - 1)
                if got[0] == "error":  # an earlier rank failed: rank 0 has its message; pass the news on
                    if not final:
                        link.send(rank + 1, got)
                    continue
                carry, stream = taken(link.recv_named(rank - 1, got))
                x = stream["resid"]
                kv = None
                if key is not None:
                    if cache is None or cache[0] != key:
                        n_layers = len(net.cfg.decoder) if decoding else net.cfg.n_layers
                        cache = (key, KVCache(n_layers), stream.get("memory"))
                    kv = cache[1]
                hooks = _Relay(link, wanted, net) if wanted else None
                if decoding:  # its decoder layers, reading the encoder's states (sent once per decoding)
                    memory = stream.get("memory", cache[2] if kv is not None and cache is not None else None)
                    if memory is None:
                        raise DeviceError("rank 0 asked for a decoder pass without the encoder's states",
                                          hint="run the same attnscope on every rank")
                    _, own = stack_layers(net.cfg, mine)
                    x = net.decoder(torch.empty(0, dtype=torch.long), net.embed.tok, memory, hooks, start, kv,
                                    first_layer=own.start, last_layer=min(stop - n_enc, own.stop - 1), resid=x)
                else:
                    x = net(torch.empty(0, dtype=torch.long), hooks, min(stop, mine.stop - 1), start, kv,
                            first_layer=mine.start, resid=x, carry=carry)
                    if kv is not None and stop == net.cfg.n_layers - 1:
                        kv.length = start + T
                stream = {**stream, "resid": x}  # the rest travels on as it came
                if final:  # rank 0 needs the stream alone back
                    link.send_named(0, ("done",), {"resid": x})
                else:
                    link.send_named(rank + 1, ("resid",), {**stream, **hand_on(net.cfg, carry, mine.stop, stop)})
                    link.send(0, ("done",))
            elif kind == "logits":
                x = link.recv_tensor(0, header[1], header[2])
                out = net.logits(x)
                link.send(0, ("logits", tuple(out.shape), _dtype(out)), out)
            elif kind == "fetch":  # one of this rank's parameters, for a measure on rank 0
                name = str(header[1])
                if not name.startswith("blocks.") or int(name.split(".")[1]) not in mine:
                    raise DeviceError(f"rank 0 asked rank {rank} for {name!r}, which it does not hold")
                t = net.get_parameter(name)
                link.send(0, ("fetch", tuple(t.shape), _dtype(t)), t)
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
        refuse_unsupported(cfg)
        dev = api.pick_device(device if device != "auto" else ("cuda" if group.backend == "nccl" else "cpu"))
        width = torch.finfo(api.pick_dtype(dtype, dev, cfg)).bits // 8
        ranges = split(cfg, group.world, width)
        blocks, decoder = stack_layers(cfg, ranges[group.rank])
        share = Share(blocks, group.rank == 0, group.rank == group.world - 1, cfg.tied_embeddings, decoder=decoder)
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
