"""The pipeline's serving ranks: `serve`, the loop that runs a rank's layers for rank 0.

`_Relay` is its hook: it sends each report to rank 0 as it comes (and lends a block's weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnscope.errors import DeviceError
from attnscope.layer_split import stack_layers
from attnscope.pipeline_driver import LEND
from attnscope.pipeline_link import _dtype, _error_header, _Link
from attnscope.pipeline_stream import hand_on, taken


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
