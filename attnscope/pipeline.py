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
`pipeline_link`, what travels with the stream (`hand_on`, `taken`) in `pipeline_stream`,
rank 0's `Driver` in `pipeline_driver`, the serving ranks' loop (`serve`) in
`pipeline_serve`, the one-process placement in `placement`; all are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from attnscope.errors import AttnscopeError, UsageError

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.distributed import Group

from attnscope.layer_split import (  # noqa: F401  (re-exported)
    RankPlan, _head_part, _pack, layer_bytes, plan_ranks, split, stack_layers,
)
from attnscope.pipeline_link import (  # noqa: F401  (re-exported)
    DEFAULT_TIMEOUT, TIMEOUT_ENV, Named, _dtype, _error_header, _Link, _raise, _timeout,
)
from attnscope.pipeline_driver import LEND, Driver, _DecoderDriver, _wanted  # noqa: F401  (re-exported)
from attnscope.pipeline_serve import _Relay, _report_failure, serve  # noqa: F401  (re-exported)
from attnscope.pipeline_stream import hand_on, taken  # noqa: F401  (re-exported)
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
