"""Encoder-decoder models (T5, BART, mBART, Marian): the second stack and a pass over both.

A `ModelConfig` whose `decoder` is set describes two stacks: the model-wide fields and
`cfg.stack` are the encoder's (its blocks are `model.Transformer`'s own, sites
`blocks.{i}.attn`), and `cfg.decoder` lists the decoder's layers, each holding a
cross-attention (`LayerSpec.cross`). The token table is shared (T5's and BART's `shared`);
each stack has its own learned positions, embedding norm, relative position table and
final norm where the family has them (parameter names `decoder.…`). The decoder's sites
are `decoder.blocks.{i}.attn` (causal self-attention) and `decoder.blocks.{i}.cross`
(rows: target positions, keys: source positions).

A pass (`run`) encodes the source once, then runs the decoder on its input ids (the
decoder's start token followed by the target: teacher forcing), every decoder layer's
cross-attention reading the encoder's final states (`PassState.memory`). The output head
(`Transformer.logits`) reads the decoder's stream after the decoder's final norm.

After transformers' T5ForConditionalGeneration / BartForConditionalGeneration (two stacks
sharing one embedding, the encoder's last hidden state handed to every decoder layer).
The --save and --save-topk writers live in `seq2seq_save`; what `attend --target` and
`heads --target` show of a pair (`PairView`, `pair_view`, `diagonal_scores`, `self_scores`)
in `seq2seq_view`; decoding (`decode`, `save_decoding`) in `seq2seq_generate`; all are
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.errors import InputError
from attnscope.hooks import DECODER, PARTS
from attnscope.parts import stack_relative
from attnscope.parts.block import Block
from attnscope.parts.norms import make_norm
from attnscope.parts.relative import RelativeBias


class Decoder(nn.Module):
    """The decoder stack: positions and embedding norm of its own (the token table is the
    encoder's), its blocks with cross-attention, its relative table and final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from attnscope.model import Embedding

        assert cfg.decoder is not None  # internal invariant: built for an encoder-decoder only
        self.cfg = cfg
        self.embed = Embedding(cfg, tokens=False)
        self.blocks = nn.ModuleList(Block(cfg, i, cfg.decoder, DECODER) for i in range(len(cfg.decoder)))
        relative = stack_relative(cfg, cfg.decoder)
        if relative is not None:
            self.relative = RelativeBias(relative, cfg.decoder.layer(0).attn.n_heads)
        if cfg.final_norm:
            self.final_norm = make_norm(cfg)
        # Offloading (`api.load(offload=True)`): as `Transformer.block_source`, block i's
        # weights (names relative to the block) just before it runs, dropped after it.
        self.block_source: Any = None
        # Blocks across devices in one process (`attnscope.placement`): decoder block i's device,
        # as `Transformer.placement` for the encoder's; the stream, the pass's state and the
        # encoder's final states moved to it before it runs (`_moved`).
        self.placement: list[torch.device] | None = None

    def forward(self, ids: Tensor, tok: nn.Module, memory: Tensor, hooks: Any = None, start: int | None = None,
                cache: Any = None, first_layer: int = 0, last_layer: int | None = None,
                resid: Tensor | None = None) -> Tensor:
        """Decoder ids (T,) at positions start.. (default: the cache's length, else 0), reading
        the encoder's final states `memory` (S, d): the decoder's last residual stream (T, d),
        before its final norm. A pipeline's stage (`attnscope.pipeline`) runs decoder layers
        first_layer..last_layer (-1: none, the ids embedded only) on the stream `resid` (T, d)
        it received instead of embedding `ids`."""
        from attnscope.model import PassState, run_block

        cfg = self.cfg
        T = ids.shape[0] if resid is None else resid.shape[0]
        if start is None:
            start = cache.length if cache is not None else 0
        if cfg.positions in ("learned", "sinusoidal") and start + T > cfg.n_ctx:
            raise InputError(f"decoder positions up to {start + T} exceed the model's {cfg.n_ctx}")
        x = self.embed(ids, start, tok=tok) if resid is None else resid
        stop = len(self.blocks) - 1 if last_layer is None else last_layer
        positions = torch.arange(start, start + T, device=x.device)
        runs = first_layer <= stop  # a stage that only embeds has no table to read
        bias = self.relative.for_pass(start + T) if hasattr(self, "relative") and runs else None
        cross = cache.cross if cache is not None else {}  # the source's keys and values, per layer
        state = PassState(start, positions, None, {}, bias, memory=memory, cross=cross)
        moved = cache.memory if cache is not None else {}  # blocks across devices: the encoder's states on each
        if self.placement is not None:
            moved.setdefault(memory.device, memory)
        for i, block in enumerate(self.blocks):
            if i > stop:
                break
            if i < first_layer:
                continue
            device = self.placement[i] if self.placement is not None else None
            if device is not None and (x.device != device or state.memory.device != device):
                x, state = x.to(device), _moved(state, device, moved)
            x = run_block(block, self.block_source, i, x, state, cache, hooks, "decoder layer")
        if cache is not None and stop == len(self.blocks) - 1:
            cache.length = start + T
        return x


def _moved(state: Any, device: torch.device, moved: dict[torch.device, Tensor]) -> Any:
    """The decoder pass's state on `device` (the next block's, blocks across devices): its
    positions as `model._state_on` moves them, and the encoder's final states, moved to a
    device once and kept in `moved` (a decoding's cache keeps them: once per decoding). The
    cross-attention's keys and values stay in the one dict by layer, each computed on its
    layer's device."""
    import dataclasses

    from attnscope.model import _state_on

    memory = moved.get(device)
    if memory is None:
        memory = moved[device] = state.memory.to(device)
    return dataclasses.replace(_state_on(state, device), memory=memory)


@torch.inference_mode()
def encode(model: nn.Module, source: Tensor, hooks: Any = None) -> Tensor:
    """The encoder's final states (S, d): its last residual stream after its final norm,
    what every cross-attention reads."""
    x = model(source, hooks)
    if model.cfg.final_norm and model.placement is not None:  # blocks across devices: the norm is the first's
        x = x.to(model.embed.tok.weight.device)
    return model.final_norm(x) if model.cfg.final_norm else x


@torch.inference_mode()
def run(model: nn.Module, source: Tensor, decoder_ids: Tensor, hooks: Any = None) -> Tensor:
    """Encode `source` (S,), then decode `decoder_ids` (T,) (the start token and the target,
    teacher forcing): the decoder's last residual stream (T, d); `model.logits` of it gives
    each next token's logits."""
    if model.cfg.decoder is None:
        raise InputError(f"{model.cfg.name or 'this model'} has no decoder: it reads one text",
                         hint="a target is for encoder-decoder models (T5, BART, Marian)")
    memory = encode(model, source, hooks)
    return model.decoder(decoder_ids, model.embed.tok, memory, hooks)


def decoder_input(cfg: ModelConfig, target: list[int]) -> list[int]:
    """What the decoder reads for a target under teacher forcing: the start token
    (`decoder_start_token_id`), then the target's own ids."""
    return [int(cfg.extra.get("decoder_start_token_id", 0))] + list(target)


def decoder_tokens(m: Any, tgt: Any) -> Any:
    """The decoder's inputs as `Tokens`: its start token (a special token), then the target's."""
    from attnscope.tokenize import Tokens

    ids = decoder_input(m.config, tgt.ids)
    start = getattr(m.tokenizer, "id_to_token", lambda i: None)(ids[0]) or f"<{ids[0]}>"
    return Tokens(text=tgt.text, ids=ids, labels=[start] + list(tgt.labels), offsets=[(0, 0)] + list(tgt.offsets),
                  special=[True] + list(tgt.special), truncated_from=tgt.truncated_from)


@dataclass
class Patterns:
    """One encoder-decoder pass's attention, float32 on the CPU, every layer and head:
    `encoder` [enc layers, H, S, S], `decoder` [dec layers, H, T, T] (causal) and `cross`
    [dec layers, H, T, S] (rows: the decoder's inputs, keys: the source), each None where not
    asked for; the ids each stack read and the next-token logits (T, vocab)."""

    source_ids: list[int]
    decoder_ids: list[int]
    encoder: Tensor | None
    decoder: Tensor | None
    cross: Tensor | None
    logits: Tensor


def part_sites(cfg: ModelConfig, part: str) -> list[str]:
    """Every site of one part ("encoder", "decoder", "cross"; `hooks.PARTS`), in layer order."""
    from attnscope.hooks import sites

    return [s.name for s in sites(cfg, part)]


def patterns(model: nn.Module, source: Tensor, decoder_ids: Tensor, parts: tuple[str, ...] = PARTS) -> Patterns:
    """Run both stacks once (teacher forcing) and keep the patterns of `parts`."""
    from attnscope.hooks import Capture

    cfg = model.cfg
    wanted = {site: ["pattern"] for part in parts for site in part_sites(cfg, part)}
    cap = Capture(wanted)
    x = run(model, source, decoder_ids, cap)
    out = {part: torch.stack([cap.get(site, "pattern") for site in part_sites(cfg, part)]).float()
           if part in parts else None for part in PARTS}
    return Patterns(source.tolist(), decoder_ids.tolist(), out["encoder"], out["decoder"], out["cross"],
                    model.logits(x).cpu())


def part_heads(cfg: ModelConfig, part: str) -> int:
    """The head count of a part's sites (one for every layer of a stack here)."""
    from attnscope.hooks import sites

    counts = {s.n_heads for s in sites(cfg, part)}
    assert len(counts) == 1, counts  # internal invariant: T5, BART and Marian stacks are uniform
    return counts.pop()


def three_masks(n_source: int, n_target: int) -> dict[str, list[list[bool]]]:
    """What each of an encoder-decoder's attentions may see (True: visible), as `mask-demo`
    shows them side by side: the encoder every source token ([n_s, n_s]), the decoder each
    target token and those before it ([n_t, n_t], causal), the cross-attention the whole
    source from every target token ([n_t, n_s])."""
    return {"encoder": [[True] * n_source for _ in range(n_source)],
            "decoder": [[j <= i for j in range(n_target)] for i in range(n_target)],
            "cross": [[True] * n_source for _ in range(n_target)]}


from attnscope.seq2seq_generate import SAVED_TOPK, Decoded, Step, decode, save_decoding  # noqa: E402,F401  re-exported
from attnscope.seq2seq_save import PairWriter, save_pair_topk  # noqa: E402,F401  re-exported (it reads part_sites, part_heads from here)
from attnscope.seq2seq_view import (  # noqa: E402,F401  re-exported
    VIEWS, PairView, diagonal_scores, pair_selection, pair_tokens, pair_view, self_scores,
)
