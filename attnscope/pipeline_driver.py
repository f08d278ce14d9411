"""The pipeline's rank 0: `Driver`, a `Transformer`'s interface over every rank.

Also what its hooks ask of the other ranks (`_wanted`, and `LEND`: a block's weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnscope.errors import DeviceError, UsageError
from attnscope.layer_split import stack_layers
from attnscope.pipeline_link import Named, _dtype, _Link, _raise
from attnscope.pipeline_stream import hand_on


# Not a quantity a layer reports but a request at a block's site (`blocks.{i}`): rank 0's hooks
# read that block's own weights while its reports come (the mixing measures, `measures.mixing`),
# so its owner lends them, just before the block's first report (`_Relay`, `Driver._lend`).
LEND = "weights"


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
