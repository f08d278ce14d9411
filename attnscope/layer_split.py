"""The pipeline's layer split by parameter bytes, and the per-rank plan of --dry-run --pipeline (torch-free arithmetic)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any

from attnscope.errors import UsageError

if TYPE_CHECKING:
    from attnscope.config import ModelConfig


def layer_bytes(cfg: "ModelConfig", width: int) -> tuple[list[int], int, int, int]:
    """Each layer's parameter bytes (one entry a layer, from each kind's declared shapes),
    the embeddings', the head's (final norm, projection, unembedding; 0 when tied) and
    the stack-owned relative tables', which a rank holds where it holds a layer of their
    stack (counted here on every rank: the tables are tiny).

    An encoder-decoder's layers are one ordered list, the encoder's then the decoder's
    (`stack_layers`), each decoder layer with its cross-attention; the first rank holds
    both stacks' embeddings and the encoder's final norm (it normalises the encoder's
    states before they travel to the decoder's ranks), the last the decoder's final norm."""
    from attnscope.parts import block_shapes, embedding_shapes, head_shapes

    per_layer: list[int] = []
    for stack in (cfg.stack,) + ((cfg.decoder,) if cfg.decoder is not None else ()):
        for spec, count in stack.runs:
            per_layer += [sum(prod(s) for s in block_shapes(cfg, spec).values()) * width] * count
    seq2seq = cfg.decoder is not None
    outside = {**embedding_shapes(cfg), **head_shapes(cfg)}
    embed = {n: s for n, s in outside.items()
             if n.startswith(("embed.", "per_layer.")) or (seq2seq and n.startswith(("decoder.embed.", "final_norm.")))}
    relative = sum(prod(s) for n, s in outside.items() if n.startswith(("relative.", "decoder.relative.")))
    head = sum(prod(s) for n, s in head_shapes(cfg).items() if _head_part(n) and n not in embed)
    if cfg.tied_embeddings and cfg.lm_head:  # the last rank holds the token table to unembed
        head += prod(embed["embed.tok.weight"])
    return per_layer, sum(prod(s) for s in embed.values()) * width, head * width, relative * width


def stack_layers(cfg: "ModelConfig", layers: range) -> tuple[range, range | None]:
    """A range of the split's layers as (the encoder's, or the one stack's, blocks; the
    decoder's layers, counted within the decoder, or None for a model of one stack)."""
    if cfg.decoder is None:
        return layers, None
    n = cfg.n_layers  # the encoder's
    return (range(min(layers.start, n), min(layers.stop, n)),
            range(max(layers.start - n, 0), max(layers.stop - n, 0)))


def split(cfg: "ModelConfig", world: int, width: int = 4) -> list[range]:
    """Contiguous layer ranges, one per rank, each at least one layer, minimising the
    largest rank's bytes (embeddings counted on the first, the head on the last). An
    encoder-decoder's ranges index the encoder's layers then the decoder's (`layer_bytes`,
    `stack_layers`)."""
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
class RankPlan:
    rank: int
    layers: range  # of the split's list (an encoder-decoder's: the encoder's layers, then the decoder's)
    weights: int  # bytes of parameters this rank holds
    peak_memory: int  # about: runtime + weights + one block's activations and chunk + what it keeps
    encoder: range | None = None  # an encoder-decoder's: its encoder layers and decoder layers, each
    decoder: range | None = None  # counted within its stack (`stack_layers`); None for one stack

    def words(self) -> str:
        """Its layers as --dry-run shows them: "0-5", or per stack "encoder 0-5, decoder 0-1"."""
        def span(r: range) -> str:
            return f"{r.start}-{r.stop - 1}" if len(r) > 1 else str(r.start)

        if self.encoder is None or self.decoder is None:
            return span(self.layers)
        return ", ".join(f"{name} {span(r)}" for name, r in (("encoder", self.encoder), ("decoder", self.decoder))
                         if len(r))

    def stacks(self) -> dict[str, list[int] | None]:
        """An encoder-decoder's layers per stack for --json ([first, last] within the stack,
        None where it holds none of that stack's); empty for one stack."""
        if self.encoder is None or self.decoder is None:
            return {}
        return {f"{name}_layers": [r.start, r.stop - 1] if len(r) else None
                for name, r in (("encoder", self.encoder), ("decoder", self.decoder))}


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
        if cfg.decoder is not None:  # and the encoder's states, which travel with the decoder's stream
            extra += n * cfg.d_model * width
        encoder, decoder = stack_layers(cfg, layers) if cfg.decoder is not None else (None, None)
        out.append(RankPlan(rank, layers, weights,
                            base.runtime + weights + base.activations + base.attention_chunk + extra,
                            encoder, decoder))
    return out
