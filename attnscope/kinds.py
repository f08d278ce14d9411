"""Layers by kind: what one layer of a model is, as frozen, hashable specs.

A model is model-wide fields (`config.ModelConfig`) plus a stack of layers, held as a
run-length list of `LayerSpec`s: Gemma 3 1B is ((local, 5), (global, 1)) × 4 + ((local, 2)).
A family maps its config.json onto kinds; a quirk lives in its layer's spec, never in a
model-wide flag. Everything downstream reads the same list: the parts build one layer
from its spec (`parts.block.Block`), shapes and counts are declared per kind
(`parts.layer_shapes`; counting sums count × numel), the cache keeps what each kind
needs (`AttnSpec.cache_tokens`, `bytes_per_token`), and the per-pass state holds one
RoPE table per distinct `RopeSpec`.

After transformers' `layer_types` (each layer names its attention kind; Gemma 3 builds
one rotary embedding per kind), vLLM's per-layer KV-cache specs (each knows its own bytes
per token and window) and mlx-lm's `make_cache()` (one cache object per layer kind).
This module is free of torch, so `params` and `--dry-run` read it without importing it.

How a new kind goes in: a linear-attention layer, say, is an `AttnSpec(kind="linear",
…)` with its own fields (state size), its shapes in `parts.attention_shapes`, its cache
in `cache_tokens`/`bytes_per_token` (a fixed state, whatever the context), and its module
chosen by `kind` in `parts.block`. Experts are an `MlpSpec(kind="experts", …)`; shared
key/values an `AttnSpec.kv_source` naming the layer that owns them; a relative position
bias or sinks a field of `AttnSpec` that the kernel's optional arguments receive.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

ATTENTION_KINDS = ("softmax", "latent", "linear")
MLP_KINDS = ("dense", "gated", "experts")
# How a mixture of experts picks a token's experts and weighs them (see ExpertSpec.router).
ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_grouped")
# How a block joins attention and MLP to the residual stream (see parts.block).
WIRINGS = ("pre", "post", "parallel", "parallel_shared", "sandwich", "post_sublayer", "pre_no_attn_norm",
           "sandwich_moe")
QK_NORMS = ("head", "projection")  # over each head's dims (Qwen3, Gemma 3) or the whole projection (OLMo 2)


def freeze(value: Any) -> Any:
    """A JSON-like value made hashable: dicts become sorted item tuples, lists tuples."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """`freeze`'s inverse for a frozen dict (item pairs), lists left as tuples."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value):
        return {k: thaw(v) for k, v in value}
    return value


@dataclass(frozen=True)
class RopeSpec:
    """Rotary positions of one kind of layer: the base, how many of each head's
    dimensions turn (partial rotary), and a scaling (linear, llama3, longrope, … as
    config.json writes it, frozen)."""

    theta: float
    rotary_dim: int
    scaling: tuple[tuple[str, Any], ...] | None = None

    @property
    def scaling_dict(self) -> dict[str, Any] | None:
        return thaw(self.scaling) if self.scaling is not None else None

    @property
    def scaling_type(self) -> str | None:
        s = self.scaling_dict
        return None if not s else s.get("rope_type", s.get("type"))


@dataclass(frozen=True)
class LatentSpec:
    """Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2; `AttnSpec(kind="latent")`):
    queries plain or through a low rank (`q_rank`: d → q_rank → norm → heads), keys and
    values from one shared latent of `kv_rank` (normed, then expanded per head into a
    `nope_dim` key part and a `v_dim` value), plus a `rope_dim` rotated key part that all
    heads share. A head's query and key are `nope_dim + rope_dim` wide (`AttnSpec.d_head`),
    its value `v_dim`. `rope_interleave`: the rotated dimensions come in adjacent pairs
    (DeepSeek's checkpoints), turned into rotate-half order before rotating."""

    kv_rank: int
    nope_dim: int
    rope_dim: int
    v_dim: int
    q_rank: int | None = None
    rope_interleave: bool = False
    norm_eps: float = 1e-6  # the latents' own RMSNorms (transformers' default, not the config's)

    @property
    def cached(self) -> int:
        """Values one position keeps in the design's cache: the latent and the shared rotated key."""
        return self.kv_rank + self.rope_dim


@dataclass(frozen=True)
class LinearSpec:
    """Linear attention: a Gated DeltaNet layer (Qwen3.5, Qwen3-Next; `AttnSpec(kind="linear")`,
    parts.deltanet). `n_k_heads` query/key heads of `d_k` (each serving n_v_heads / n_k_heads
    value heads), `n_v_heads` value heads of `d_v`, a causal depthwise convolution of
    `conv_kernel` taps over q, k and v, and its gated output RMSNorm's `norm_eps`. Its
    AttnSpec reads n_heads = n_v_heads (M's heads), n_kv_heads = n_k_heads, d_head = d_k.

    What it keeps between tokens is fixed whatever the context (`state_values`): the
    recurrent state, n_v_heads × d_k × d_v, and the convolution's last kernel − 1 inputs."""

    n_k_heads: int
    n_v_heads: int
    d_k: int
    d_v: int
    conv_kernel: int
    norm_eps: float = 1e-6

    @property
    def conv_channels(self) -> int:
        """The convolution's channels: q and k (n_k_heads × d_k each) and v (n_v_heads × d_v)."""
        return 2 * self.n_k_heads * self.d_k + self.n_v_heads * self.d_v

    @property
    def state_values(self) -> int:
        """Values one layer keeps between tokens: recurrent state plus the conv's tail."""
        return self.n_v_heads * self.d_k * self.d_v + (self.conv_kernel - 1) * self.conv_channels


@dataclass(frozen=True)
class RelativeSpec:
    """A learned relative position bias (T5, MPNet): the key's distance from its query
    falls into one of `buckets` buckets (one per distance below half of them, then
    log-spaced up to `max_distance`, beyond which all share the last; `bidirectional`:
    keys before and after the query get separate halves, else only keys at or before it
    count, as a causal stack sees them), and a table of `rows` × heads learned scores,
    one per bucket, is added to every head's scores. The stack owns the one table and hands
    it to every layer whose `AttnSpec.relative` names it (parts.relative). `rows`: the
    table's size where it differs from the buckets used (None: `buckets`; MPNet buckets
    into 32 whatever its table holds)."""

    buckets: int
    max_distance: int
    bidirectional: bool
    rows: int | None = None

    @property
    def table_rows(self) -> int:
        return self.buckets if self.rows is None else self.rows


@dataclass(frozen=True)
class AttnSpec:
    """One layer's attention: heads, sizes, the mask rule (causal, window), positions
    (a RopeSpec, or None for a layer without RoPE), the score scale (None: 1/√d_head),
    soft-capping, q/k norms ("head" or "projection"), biases and attention sinks."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    causal: bool = True
    window: int | None = None
    rope: RopeSpec | None = None
    scale: float | None = None
    softcap: float | None = None
    qk_norm: str | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    kind: str = "softmax"
    sinks: bool = False  # gpt-oss: a learned sink logit per head, an extra softmax column
    relative: RelativeSpec | None = None  # the stack's relative position bias, added to this layer's scores
    latent: LatentSpec | None = None  # kind "latent": the low-rank projections (MLA)
    linear: LinearSpec | None = None  # kind "linear": the Gated DeltaNet's sizes (parts.deltanet)
    out_gate: bool = False  # Qwen3.5, Qwen3-Next: q_proj also yields a per-head gate; output × σ(gate) before o
    # Gemma 4: the layer whose keys and values this one reads (it projects only queries, and
    # caches nothing of its own; its pattern is its own queries against those keys), values
    # that are the key projection itself (`attention_k_eq_v`: no v projection), and an
    # RMSNorm without a scale over each value head.
    kv_source: int | None = None
    k_eq_v: bool = False
    v_norm: bool = False

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def d_value(self) -> int:
        """Each head's value (and output) width: `d_head`, but latent attention's own."""
        return self.latent.v_dim if self.latent is not None else self.d_head

    @property
    def score_scale(self) -> float:
        return self.scale if self.scale is not None else self.d_head ** -0.5

    def cache_tokens(self, context: int) -> int:
        """Positions this layer's cache keeps after `context` tokens (a window keeps its
        last; a linear layer none: it keeps a fixed state, `fixed_state_values`)."""
        if self.linear is not None:
            return 0
        return context if self.window is None else min(self.window, context)

    @property
    def fixed_state_values(self) -> int:
        """Values this layer keeps whatever the context: a linear layer's recurrent state
        and conv tail (`LinearSpec.state_values`); 0 for a layer that caches positions."""
        return self.linear.state_values if self.linear is not None else 0

    def bytes_per_token(self, bytes_per_value: int) -> int:
        """Bytes one cached position costs: a key and a value per key/value head; for
        latent attention the shared latent and rotated key (`LatentSpec.cached`); nothing
        for a layer reading another layer's keys and values (`kv_source`)."""
        if self.kv_source is not None:
            return 0
        if self.linear is not None:  # a fixed state instead (`fixed_state_values`)
            return 0
        if self.latent is not None:
            return self.latent.cached * bytes_per_value
        return 2 * self.n_kv_heads * self.d_head * bytes_per_value

    def words(self, rope_model: bool = False) -> str:
        """The kind in words, as mask-demo and params name it (`rope_model`: the model
        rotates positions elsewhere, so a layer without RoPE is worth naming)."""
        if self.kind == "linear":
            return "linear (gated delta rule)"
        words = kind_words(self.causal, self.window, no_rope=self.rope is None and rope_model)
        return words if self.kv_source is None else f"{words}, KV-shared from layer {self.kv_source}"


def kind_words(causal: bool, window: int | None, no_rope: bool = False) -> str:
    """A layer's kind in words: "local, window 4096" (causal within a window), "global"
    (causal over every earlier key), "bidirectional encoder" (every key) or "local, ±64
    tokens" (bidirectional within a window: a rule window W keeps keys less than W away,
    so W − 1 on each side, as ModernBERT's `local_attention` 128 does), and ", no RoPE"
    for a layer that does not rotate."""
    if not causal:
        words = "bidirectional encoder" if window is None else f"local, ±{window - 1} tokens"
    else:
        words = "global" if window is None else f"local, window {window}"
    return words + (", no RoPE" if no_rope else "")


@dataclass(frozen=True)
class ExpertSpec:
    """A mixture of experts in the MLP slot (`MlpSpec(kind="experts", d_mlp=<each routed
    expert's width>, act=…, experts=ExpertSpec(…))`): a router scores `n_experts` gated
    experts per token and the token visits its `top_k` best, weighted.

    `router`: "softmax_topk" = softmax over all experts, then the top k (Mixtral, Qwen2-MoE,
    Qwen3-MoE), renormalised to sum 1 where `norm_topk_prob` (Mixtral always);
    "topk_softmax" = the top k logits, then a softmax over those k (gpt-oss).
    `d_shared`: the width of the shared expert(s) every token also visits, as one gated
    MLP (0: none); `n_shared` how many experts that width holds (DeepSeek's
    n_shared_experts × moe_intermediate_size; Qwen2-MoE: one); `shared_gate`: Qwen2-MoE's
    sigmoid(x · w) scaling the shared output. `router_bias`, `expert_bias`: biases on the
    router's logits and on each expert's projections (gpt-oss).
    The module (parts.experts) and its parameter names: see parts/experts.py.
    Families that need more (gpt-oss's clamped SwiGLU, DeepSeek's grouped sigmoid
    routing with its score-correction bias and routed scaling) add fields with defaults."""

    n_experts: int
    top_k: int
    router: str = "softmax_topk"
    norm_topk_prob: bool = True
    d_shared: int = 0
    n_shared: int = 0
    shared_gate: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    # DeepSeek-V3 (router "sigmoid_grouped"): sigmoid scores plus a stored score-correction
    # bias choose the experts, only within the `topk_group` best of `n_group` equal groups
    # (a group scored by its two best); the chosen experts' uncorrected scores are the
    # weights (renormalised where norm_topk_prob), times `routed_scale`.
    n_group: int = 1
    topk_group: int = 1
    routed_scale: float = 1.0
    # gpt-oss's clamped SwiGLU, where `swiglu_alpha` is set: the gate clamped above and the
    # up projection on both sides at `swiglu_limit` (None: no clamp), then
    # (up + 1) · gate · sigmoid(alpha · gate) in place of act(gate) · up.
    swiglu_alpha: float | None = None
    swiglu_limit: float | None = None
    # Gemma 4's 26B-A4B (wiring "sandwich_moe": the slot reads the residual stream itself):
    # `d_dense` > 0 is a gated MLP of that width beside the experts, on the block's MLP norm
    # and its own post-norm, the experts on their own pre- and post-norm, the two summed;
    # `router_norm`: the router reads the residual RMS-normed without a weight, times a
    # learned scale per dimension and 1/√d; `expert_scale`: each chosen expert's weight
    # (after renormalising) times that expert's learned scale.
    d_dense: int = 0
    router_norm: bool = False
    expert_scale: bool = False


@dataclass(frozen=True)
class MlpSpec:
    """One layer's MLP slot: dense (up, down), gated (gate, up, down), or a mixture of
    experts (`experts`, each routed expert a gated MLP of width `d_mlp`)."""

    kind: str
    d_mlp: int
    act: str
    bias: bool = False
    experts: ExpertSpec | None = None


@dataclass(frozen=True)
class PerLayerSpec:
    """Per-layer input embeddings (Gemma 4's PLE): the stack owns one table of `vocab`
    rows × (layers × `width`) and one projection of the embeddings to the same width;
    layer i's slice of their normed, scaled sum (`model.PerLayerInputs`) enters layer i
    after its MLP through a gate: x += norm(W_up(act(W_gate x) · input_i))."""

    width: int
    vocab: int


@dataclass(frozen=True)
class LayerSpec:
    """One kind of layer: its attention, its MLP, how they join the residual stream, and
    a scale on what each adds to it (Granite's residual_multiplier); a decoder layer of an
    encoder-decoder model also its cross-attention."""

    attn: AttnSpec
    mlp: MlpSpec
    wiring: str = "pre"
    residual_scale: float = 1.0
    # A decoder layer of an encoder-decoder model (T5, BART): its cross-attention, after the
    # self-attention and before the MLP, with queries from this stack and keys and values
    # from the encoder's final states (`causal` False: every query sees the whole source).
    cross: AttnSpec | None = None
    # Gemma 4: the per-layer input gate (the stack owns the inputs) and a stored scalar on
    # the block's whole output (`layer_scalar`: a buffer in transformers, loaded, not counted).
    per_layer: PerLayerSpec | None = None
    out_scalar: bool = False

    def with_attn(self, **changes: Any) -> "LayerSpec":
        return replace(self, attn=replace(self.attn, **changes))


@dataclass(frozen=True)
class Stack:
    """Layers as a run-length list of kinds: ((spec, count), …) in order."""

    runs: tuple[tuple[LayerSpec, int], ...]
    _starts: tuple[int, ...] = field(default=(), compare=False, repr=False)
    _kinds: tuple[tuple[LayerSpec, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        starts, at = [], 0
        # Kinds found once, by object first: a spec's hash is not cached and costs ~10 µs,
        # and a run list may repeat one object 10^5 times; equal objects merge after.
        by_object: dict[int, list[Any]] = {}
        for spec, count in self.runs:
            starts.append(at)
            at += count
            entry = by_object.get(id(spec))
            if entry is None:
                by_object[id(spec)] = [spec, count]
            else:
                entry[1] += count
        totals: dict[LayerSpec, int] = {}
        for spec, count in by_object.values():
            totals[spec] = totals.get(spec, 0) + count
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_kinds", tuple(totals.items()))

    @classmethod
    def of(cls, layers: Iterable[LayerSpec]) -> "Stack":
        """The run-length form of a per-layer list."""
        runs: list[list[Any]] = []
        for spec in layers:
            if runs and (runs[-1][0] is spec or runs[-1][0] == spec):
                runs[-1][1] += 1
            else:
                runs.append([spec, 1])
        return cls(tuple((spec, count) for spec, count in runs))

    def __len__(self) -> int:
        return sum(count for _, count in self._kinds)

    def layer(self, i: int) -> LayerSpec:
        """Layer i's spec, by bisecting the runs (never expanding them)."""
        return self.runs[bisect_right(self._starts, i) - 1][0]

    def kinds(self) -> list[tuple[LayerSpec, int]]:
        """Each distinct spec with its total layer count, in first-seen order."""
        return list(self._kinds)

    def __iter__(self) -> Iterator[LayerSpec]:
        for spec, count in self.runs:
            for _ in range(count):
                yield spec
