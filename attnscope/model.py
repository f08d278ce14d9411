"""The model, assembled from its parts: embeddings, blocks, an output head and a KV cache.

After nanoGPT's `model.py` (one readable forward pass) and gpt-fast's (built on the meta
device with the checkpoint's tensors assigned, never first allocated at random; a small
`KVCache` and a forward that takes a start position). The parts live in `attnscope.parts`
and each declares its parameter shapes there; this module wires them, and `model_tensors` checks every
checkpoint tensor against those declarations. Batch size is always 1: one text at a
time, shapes (T, ...) without a batch.

A forward pass reports to hooks at named sites (`attnscope.hooks`); the model keeps
nothing and prints nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError, InputError
from attnscope.model_tensors import _EXPERT_PIECE, _collect, _stack_piece, block_tensors  # noqa: F401  (re-exported)
from attnscope.parts import OPTIONAL_PREFIXES, model_shapes, stack_per_layer, stack_relative
from attnscope.parts.attention import Packing
from attnscope.parts.block import Block
from attnscope.parts.norms import make_norm
from attnscope.parts.positions import Rotary
from attnscope.parts.relative import RelativeBias


class Embedding(nn.Module):
    """Token table (with OPT's projection in), learned positions, BERT's token types and
    embedding norm, Gemma's √width scale."""

    def __init__(self, cfg: ModelConfig, tokens: bool = True) -> None:
        """`tokens` False: the token table is another stack's, passed to `forward` (the
        decoder of an encoder-decoder shares the encoder's)."""
        super().__init__()
        self.cfg = cfg
        if tokens:
            self.tok = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        if cfg.d_embed != cfg.d_model:  # OPT-350m: narrow embeddings projected to the width
            self.proj_in = nn.Linear(cfg.d_embed, cfg.d_model, bias=False)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.n_ctx + cfg.pos_offset, cfg.d_model)
        if cfg.n_types:
            self.types = nn.Embedding(cfg.n_types, cfg.d_model)
        if cfg.embed_norm:
            self.norm = make_norm(cfg)

    def forward(self, ids: Tensor, start: int, positions: Tensor | None = None, tok: nn.Module | None = None) -> Tensor:
        cfg = self.cfg
        x = (tok or self.tok)(ids)  # (T, d_embed)
        if cfg.d_embed != cfg.d_model:
            x = self.proj_in(x)  # (T, d)
        if cfg.embed_multiplier is not None:  # Gemma's √d, Granite's: in the activations' dtype, as the references round it
            x = x * torch.tensor(cfg.embed_multiplier, dtype=x.dtype)
        if cfg.positions == "learned":
            if positions is None:
                positions = torch.arange(start, start + ids.shape[0], device=ids.device)
            x = x + self.pos(positions + cfg.pos_offset)
        elif cfg.positions == "sinusoidal":  # Marian: a fixed table, computed rather than stored
            from attnscope.parts.positions import sinusoidal

            if positions is None:
                positions = torch.arange(start, start + ids.shape[0], device=ids.device)
            x = x + sinusoidal(positions, cfg.d_model).to(x.dtype)
        if cfg.n_types:
            x = x + self.types(torch.zeros_like(ids))  # a single segment: type 0
        if cfg.embed_norm:
            x = self.norm(x)
        return x


class PerLayerInputs(nn.Module):
    """Gemma 4's per-layer input embeddings (`kinds.PerLayerSpec`, shapes in
    `parts.embedding_shapes`): each token's row of one table (× √width) and a projection of
    its embedding (× 1/√d, then RMS-normed per layer) give every layer its own input,
    (tok + proj) / √2, (T, layers, width); layer i's block reads [:, i] through its gate."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        spec = stack_per_layer(cfg)
        assert spec is not None  # internal invariant: built for a stack that takes them
        self.n_layers, self.width = cfg.n_layers, spec.width
        self.tok = nn.Embedding(spec.vocab, cfg.n_layers * spec.width)
        self.proj = nn.Linear(cfg.d_model, cfg.n_layers * spec.width, bias=False)
        self.norm = make_norm(cfg, spec.width)
        self.d_model = cfg.d_model

    def forward(self, ids: Tensor, x: Tensor) -> Tensor:
        """Token ids (T,) and their embeddings x (T, d) -> (T, layers, width)."""
        T = ids.shape[0]
        tok = self.tok(ids) * torch.tensor(self.width ** 0.5, dtype=x.dtype)  # (T, L*p), rounded as transformers'
        proj = self.proj(x) * self.d_model ** -0.5  # (T, L*p)
        proj = self.norm(proj.view(T, self.n_layers, self.width))  # (T, L, p)
        return (proj + tok.view(T, self.n_layers, self.width)) * 2 ** -0.5


class KVCache:
    """Keys (after RoPE) and values per layer, (H_kv, K, d_head), for positions
    `start(layer)`.. ; a sliding layer keeps only its last `window` keys, which is all its
    next query can see. After gpt-fast's `KVCache.update`, without preallocation: the
    cache grows by what each forward pass appends."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers
        self.starts = [0] * n_layers
        self.states: list[Any] = [None] * n_layers  # a linear layer's DeltaState (parts.deltanet), else None
        self.length = 0  # positions seen: the next token's position
        # an encoder-decoder's decoder: each layer's cross-attention keys and values (Hkv, S, dh),
        # computed once from the encoder's states by its first pass (parts.cross)
        self.cross: dict[int, tuple[Tensor, Tensor]] = {}
        # and with blocks across devices (`seq2seq.Decoder.placement`), the encoder's states by device:
        # where they began and each device the decoder's blocks run on, moved there once per decoding
        self.memory: dict[torch.device, Tensor] = {}

    def update(self, layer: int, k: Tensor, v: Tensor, start: int, window: int | None) -> tuple[Tensor, Tensor, int]:
        """Append this pass's keys and values (positions start..); returns every key and
        value the pass's queries may need, and the position of the first."""
        old_k, old_v = self.k[layer], self.v[layer]
        if old_k is not None:
            assert self.starts[layer] + old_k.shape[1] == start, "cache and positions disagree"  # internal invariant
            k, v = torch.cat([old_k, k], dim=1), torch.cat([old_v, v], dim=1)  # (Hkv, K, dh)
            first = self.starts[layer]
        else:
            first = start
        keep = k.shape[1] if window is None else min(window, k.shape[1])
        self.k[layer], self.v[layer] = k[:, -keep:], v[:, -keep:]
        self.starts[layer] = first + k.shape[1] - keep
        return k, v, first


@dataclass(frozen=True)
class PassState:
    """What one forward pass shares with every layer, built once per pass: the first
    query's position (the cache's length; hooks' coordinates), each token's absolute
    position (T,) int64, each token's text (T,) on a packed pass (else None; positions then
    count within a text), each RoPE kind's (cos, sin) tables at those positions, and the
    stack's score bias (a relative position bias, `parts.relative`: a callable of query
    and key positions) for the layers whose kind takes it, else None."""

    start: int
    positions: Tensor
    segments: Tensor | None
    ropes: dict[Any, tuple[Tensor, Tensor]]
    bias: Callable[[Tensor, Tensor], Tensor] | None = None
    memory: Tensor | None = None  # an encoder-decoder's decoder pass: the encoder's final states (S, d)
    # and each decoder layer's cross-attention keys and values from them, by layer (the cache's
    # `KVCache.cross` where the pass has a cache): filled by the first pass that needs them
    cross: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # Gemma 4: each layer's own input (T, layers, width; `PerLayerInputs`), and the keys and
    # values a layer hands to the KV-shared layers after it, by its index: (k, v, first key's
    # position, key positions), this pass's and the cache's, filled as the pass goes.
    per_layer: Tensor | None = None
    shared: dict[int, tuple[Tensor, Tensor, int, Tensor]] = field(default_factory=dict)


class Unembed(nn.Module):
    """The unembedding's own parameters: a weight unless tied to the token table, and a bias (Phi)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.tied_embeddings:
            self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_embed))
        if cfg.unembed_bias:
            self.bias = nn.Parameter(torch.empty(cfg.vocab_size))


class Transformer(nn.Module):
    """Embeddings, blocks, and the output head (final norm, OPT's project_out, the
    unembedding, tied or not, with Phi's bias and Gemma 2's final soft-capping)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        if cfg.final_norm:
            self.final_norm = make_norm(cfg)
        if cfg.d_embed != cfg.d_model:
            self.proj_out = nn.Linear(cfg.d_model, cfg.d_embed, bias=False)
        if cfg.lm_head and (not cfg.tied_embeddings or cfg.unembed_bias):
            self.unembed = Unembed(cfg)
        # One rotary table per distinct RoPE kind among the layers (none without RoPE).
        ropes = dict.fromkeys(spec.attn.rope for spec, _ in cfg.stack.kinds() if spec.attn.rope is not None)
        self.rotaries = {rope: Rotary(rope, cfg.n_ctx) for rope in ropes}
        # The stack's relative position table (T5, MPNet): one, handed to every layer that takes it.
        relative = stack_relative(cfg)
        if relative is not None:
            self.relative = RelativeBias(relative, cfg.n_heads)
        if stack_per_layer(cfg) is not None:  # Gemma 4: every layer's own input embedding
            self.per_layer = PerLayerInputs(cfg)
        # Offloading: blocks stay on the meta device and `block_source(i)` supplies one
        # block's weights (our names, relative to the block) just before it runs.
        self.block_source: Callable[[int], dict[str, Tensor]] | None = None
        # Blocks across devices in one process (`--device cuda:0,cuda:1`): block i's device,
        # the residual stream moved to it before it runs (`attnscope.pipeline.placement`).
        self.placement: list[torch.device] | None = None
        if "logits_bias" in cfg.heads:  # BART's final_logits_bias, added to the logits
            self.logits_bias = nn.Parameter(torch.empty(1, cfg.vocab_size))
        if cfg.decoder is not None:  # an encoder-decoder: this module's blocks are the encoder's
            from attnscope.seq2seq import Decoder

            self.decoder = Decoder(cfg)
        # no next-token head: encoders, or a checkpoint without one
        self.has_head = cfg.lm_head and (cfg.causal or cfg.decoder is not None)

    @torch.inference_mode()
    def forward(self, ids: Tensor, hooks: Any = None, last_layer: int | None = None, start: int | None = None,
                cache: KVCache | None = None, packing: Packing | None = None, first_layer: int = 0,
                resid: Tensor | None = None, carry: dict[str, Any] | None = None) -> Tensor:
        """Run layers 0..last_layer on token ids (T,) at positions start.. (default: the
        cache's length, else 0) and return the residual stream (T, d). A pipeline's later
        stage (`attnscope.pipeline`) runs first_layer..last_layer on the residual stream
        `resid` (T, d) it received instead of embedding `ids`. `carry` (a pipeline stage's,
        Gemma 4): what an earlier stage computed for later layers, used as given ("per_layer",
        the per-layer inputs; "shared", an owner layer's keys and values by its index, as in
        `PassState`), and on return this pass's own, to hand on."""
        cfg = self.cfg
        T = ids.shape[0] if resid is None else resid.shape[0]
        if start is None:
            start = cache.length if cache is not None else 0
        last = int(packing.positions.max()) + 1 if packing is not None else start + T
        if cfg.positions in ("learned", "sinusoidal") and last > cfg.n_ctx:
            raise InputError(f"positions up to {last} exceed the model's {cfg.n_ctx}")
        if packing is not None:  # several texts in one pass: their own positions, masked apart
            assert cache is None and start == 0, "a packed pass starts afresh"  # internal invariant
            x = self.embed(ids, start, packing.positions)
            positions, segments = packing.positions, packing.segments
        elif resid is not None:  # a pipeline's later stage: the stream the rank before handed on
            x = resid
            positions, segments = torch.arange(start, start + T, device=x.device), None
        else:
            x = self.embed(ids, start)
            positions, segments = torch.arange(start, start + T, device=ids.device), None
        # The per-pass state: positions, texts, each RoPE kind's (cos, sin) at those positions.
        ropes = {spec: rotary.tables_at(positions) for spec, rotary in self.rotaries.items()}
        bias = self.relative.for_pass(last) if hasattr(self, "relative") else None  # positions lie in 0..last-1
        if carry is not None and carry.get("per_layer") is not None:  # computed where the token embeddings live
            per_layer = carry["per_layer"]
        else:
            per_layer = self.per_layer(ids, x) if hasattr(self, "per_layer") else None
        state = PassState(start, positions, segments, ropes, bias, per_layer=per_layer)
        if carry is not None:
            state.shared.update(carry.get("shared") or {})  # owners held by an earlier stage
            carry.update(per_layer=per_layer, shared=state.shared)
        stop = cfg.n_layers - 1 if last_layer is None else last_layer
        for i, block in enumerate(self.blocks):
            if i > stop:
                break
            if i < first_layer:
                continue
            if self.placement is not None and x.device != self.placement[i]:  # blocks across devices
                x, state = x.to(self.placement[i]), _state_on(state, self.placement[i])
            x = run_block(block, self.block_source, i, x, state, cache, hooks, "layer")
        if cache is not None and stop == cfg.n_layers - 1:
            cache.length = start + T
        return x

    @torch.inference_mode()
    def logits(self, x: Tensor) -> Tensor:
        """Float32 next-token logits (T, vocab) from the last layer's residual stream."""
        cfg = self.cfg
        if self.placement is not None:  # the head sits with the embeddings, on the first device
            x = x.to(self.embed.tok.weight.device)
        if not self.has_head:
            raise InputError(f"{cfg.name or 'this model'} has no output head to give next-token logits",
                             hint="use a causal language model checkpoint (with its lm_head, or tied embeddings)")
        if cfg.final_norm:  # an encoder-decoder's logits read its decoder, after the decoder's own norm
            x = self.decoder.final_norm(x) if cfg.decoder is not None else self.final_norm(x)
        if cfg.d_embed != cfg.d_model:
            x = self.proj_out(x)  # (T, d_embed)
        unembed = getattr(self, "unembed", None)
        weight = self.embed.tok.weight if cfg.tied_embeddings else unembed.weight  # (vocab, d_embed)
        out = x @ weight.T  # (T, vocab)
        if cfg.unembed_bias:
            out = out + unembed.bias
        if "logits_bias" in cfg.heads:
            out = out + self.logits_bias
        out = out.float() if out.dtype != torch.float64 else out
        if cfg.logits_divisor is not None:  # Granite's logits_scaling
            out = out / cfg.logits_divisor
        if cfg.final_softcap is not None:
            out = torch.tanh(out / cfg.final_softcap) * cfg.final_softcap
        return out


def run_block(block: nn.Module, block_source: Any, i: int, x: Tensor, state: Any, cache: Any, hooks: Any,
              what: str) -> Tensor:
    """Block ``i`` on ``x``: its weights streamed in from ``block_source`` first and dropped after
    when the model streams them (``block_source`` not None); a result that is not finite is refused,
    naming ``what`` ("layer", "decoder layer"). Shared by Transformer and seq2seq's Decoder."""
    if block_source is None:
        x = block(x, state, cache, hooks)
    else:
        block.load_state_dict(block_source(i), strict=True, assign=True)
        try:
            x = block(x, state, cache, hooks)
        finally:
            block.to_empty(device="meta")  # drop this block's weights before the next loads
    if not bool(torch.isfinite(x).all()):  # one reduction a layer: never print NaN as a result
        raise CheckpointError(f"{what} {i} produced values that are not finite (NaN or infinity)",
                              hint="the checkpoint's weights or config.json hold numbers the model cannot compute with")
    return x


def _state_on(state: PassState, device: torch.device) -> PassState:
    """The pass's state with its tensors on `device` (the next block's, when blocks are
    placed across devices)."""
    import dataclasses

    def move(t: Any) -> Any:
        return t.to(device) if isinstance(t, Tensor) else t

    changes = {"positions": state.positions.to(device), "segments": move(state.segments),
               "ropes": {k: (c.to(device), s.to(device)) for k, (c, s) in state.ropes.items()}}
    if getattr(state, "per_layer", None) is not None:  # Gemma 4's per-layer inputs
        changes["per_layer"] = move(state.per_layer)
    return dataclasses.replace(state, **changes)


def expected_shapes(cfg: ModelConfig, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The parameters the model holds, checked against the accounting's single list."""
    shapes = model_shapes(cfg)
    own = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, shape in own.items():
        assert shapes.get(name) == shape, f"model and params disagree on {name}"  # internal invariant
    return own


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip nn.init while building on the meta device: the weights come from the
    checkpoint, and the init functions cost a second of lazy imports on first use."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "ones_", "zeros_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, Tensor]],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: bool = False,
    only: Callable[[str], bool] | None = None,
) -> Transformer:
    """Build on the meta device, then assign checkpoint tensors (already in our names).

    Every parameter the model needs must arrive with exactly its expected shape; tensors
    the model does not use (pooler, output heads) are accepted and dropped. With
    `offload`, the blocks stay on the meta device (see `Transformer.block_source`); `only`
    keeps of the rest the parameters it holds (a pipeline rank's parts), the others on meta.
    """
    with torch.device("meta"), _no_init():
        model = Transformer(cfg)
    need = expected_shapes(cfg, model)
    if offload:  # every stack's blocks (an encoder-decoder's `decoder.blocks.` too) stream in one at a time
        need = {name: shape for name, shape in need.items() if not name.startswith(("blocks.", "decoder.blocks."))}
    if only is not None:
        need = {name: shape for name, shape in need.items() if only(name)}
    optional = [name for name in need if name.startswith(OPTIONAL_PREFIXES)]
    state = _collect(cfg, tensors, need, device, dtype, "the model", optional)
    if "logits_bias" in need and "logits_bias" not in state:  # left out of a checkpoint: zeros, as in transformers
        state["logits_bias"] = torch.zeros(1, cfg.vocab_size, device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if any(name not in state for name in optional):
        model.has_head = False  # the checkpoint ships no (complete) output head
    return model.eval()
