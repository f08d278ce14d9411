"""The model's parts, and the parameter shapes each part declares.

This file stays free of torch, so that `params` and `--dry-run` can read the same
declarations as the model without importing it: each part's torch module (in the
sibling modules `attention`, `positions`, `mlp`, `norms`, `block`) holds exactly the
parameters declared here under the same relative names, and `model.build` checks that
invariant on every build. `model_shapes(cfg)` is the one list the model, the loading
checks, `params` and `--dry-run` all read.

Shapes are nn.Linear's (out, in). Blocks are declared once per layer kind (`block_shapes`,
names relative to the block; `kind_counts`) and counted kind × its number of layers, so
counting a model of any depth is arithmetic and never enumerates its layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnscope.config import ModelConfig
    from attnscope.kinds import AttnSpec, LayerSpec, MlpSpec, PerLayerSpec, RelativeSpec, Stack

Shapes = dict[str, tuple[int, ...]]

# float32 scores per query chunk (all heads of one layer). Small chunks stay in cache:
# on a GPT-2-small shape at n = 2,048, 8 MiB ran the top-k capture 28% faster than 64 MiB.
CHUNK_BYTES = 8 * 1024 * 1024
MIN_CHUNK_ROWS = 64  # below this, per-chunk overhead wins (measured at n = 8,192)


def chunk_rows(n_heads: int, n_keys: int) -> int:
    """Query rows per attention chunk: the one rule the kernel runs and `--dry-run` reports."""
    return max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * n_heads * max(1, n_keys)))


def norm_shapes(cfg: "ModelConfig", d: int | None = None) -> Shapes:
    width = d or cfg.d_model
    names = ("weight", "bias") if cfg.norm == "layernorm" else ("weight",)  # layernorm_no_bias, rmsnorm: a scale only
    return {name: (width,) for name in names}


def _prefixed(prefix: str, shapes: Shapes) -> Shapes:
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def attention_shapes(cfg: "ModelConfig", spec: "AttnSpec | None" = None) -> Shapes:
    """Projections q, k, v (to per-head vectors) and o (heads back to the residual), and
    the q/k norms a kind may hold: per head (Qwen3, Gemma 3) or over the whole projection
    (OLMo 2). `spec`: the layer's attention (default: layer 0's)."""
    a = spec or cfg.layer(0).attn
    if a.kind == "latent":
        return latent_shapes(cfg, a)
    if a.kind == "linear":
        return linear_shapes(cfg, a)
    d, dh = cfg.d_model, a.d_head
    q_out, kv_out = a.n_heads * dh, a.n_kv_heads * dh
    shapes: Shapes = {}
    # A KV-shared layer (Gemma 4) projects only queries; values that are the keys
    # (`k_eq_v`) have no projection of their own.
    own = ("q",) if a.kv_source is not None else ("q", "k") if a.k_eq_v else ("q", "k", "v")
    # an output gate (Qwen3.5, Qwen3-Next): q yields each head's query and its gate, 2 × dh rows a head
    for part, out in (("q", 2 * q_out if a.out_gate else q_out), ("k", kv_out), ("v", kv_out)):
        if part not in own:
            continue
        shapes[f"{part}.weight"] = (out, d)
        if a.qkv_bias:
            shapes[f"{part}.bias"] = (out,)
    if a.qk_norm == "head":  # RMSNorm over each head's dimensions
        shapes.update(_prefixed("q_norm", norm_shapes(cfg, dh)))
        if a.kv_source is None:
            shapes.update(_prefixed("k_norm", norm_shapes(cfg, dh)))
    elif a.qk_norm == "projection":  # RMSNorm over all heads' dimensions at once
        shapes.update(_prefixed("q_norm", norm_shapes(cfg, q_out)))
        shapes.update(_prefixed("k_norm", norm_shapes(cfg, kv_out)))
    shapes["o.weight"] = (d, q_out)
    if a.out_bias:
        shapes["o.bias"] = (d,)
    if a.sinks:  # gpt-oss: one sink logit per query head
        shapes["sinks"] = (a.n_heads,)
    return shapes


def linear_shapes(cfg: "ModelConfig", a: "AttnSpec") -> Shapes:
    """A Gated DeltaNet layer (`kinds.LinearSpec`, `parts.deltanet`): `qkv` (q and k for
    each key head, v for each value head, before the convolution), the gate `z` of the
    output norm, the write strength `b` and decay input `a` (one per value head), the
    depthwise `conv` (channels × kernel), `dt_bias` and `a_log` (per value head), the gated
    norm's scale over one value head (`norm`), and `o` from the value heads back."""
    m = a.linear
    assert m is not None  # internal invariant: kind "linear" carries its LinearSpec
    d, values = cfg.d_model, m.n_v_heads * m.d_v
    return {
        "qkv.weight": (m.conv_channels, d),
        "z.weight": (values, d),
        "b.weight": (m.n_v_heads, d),
        "a.weight": (m.n_v_heads, d),
        "conv.weight": (m.conv_channels, m.conv_kernel),
        "dt_bias": (m.n_v_heads,),
        "a_log": (m.n_v_heads,),
        "norm.weight": (m.d_v,),
        "o.weight": (d, values),
    }


def latent_shapes(cfg: "ModelConfig", a: "AttnSpec") -> Shapes:
    """Multi-head latent attention (`kinds.LatentSpec`, `parts.latent`): queries plain
    (`q`) or low-rank (`q_a` → `q_a_norm` → `q_b`); one joint `kv_a` to the latent and the
    shared rotated key, `kv_a_norm` on the latent, `kv_b` expanding it to each head's key
    part and value; `o` from the heads' values. Biases (`qkv_bias`, `out_bias`) only where
    transformers has them: on `q_a`, `kv_a` and `o`."""
    m = a.latent
    assert m is not None  # internal invariant: kind "latent" carries its LatentSpec
    d, H = cfg.d_model, a.n_heads
    shapes: Shapes = {}
    if m.q_rank is None:
        shapes["q.weight"] = (H * a.d_head, d)
    else:
        shapes["q_a.weight"] = (m.q_rank, d)
        if a.qkv_bias:
            shapes["q_a.bias"] = (m.q_rank,)
        shapes["q_a_norm.weight"] = (m.q_rank,)
        shapes["q_b.weight"] = (H * a.d_head, m.q_rank)
    shapes["kv_a.weight"] = (m.kv_rank + m.rope_dim, d)
    if a.qkv_bias:
        shapes["kv_a.bias"] = (m.kv_rank + m.rope_dim,)
    shapes["kv_a_norm.weight"] = (m.kv_rank,)
    shapes["kv_b.weight"] = (H * (m.nope_dim + m.v_dim), m.kv_rank)
    shapes["o.weight"] = (d, H * m.v_dim)
    if a.out_bias:
        shapes["o.bias"] = (d,)
    return shapes


def mlp_shapes(cfg: "ModelConfig", spec: "MlpSpec | None" = None) -> Shapes:
    """Dense (up, down), gated (gate, up, down) or experts (`expert_shapes`). `spec`: the
    layer's MLP (default: layer 0's)."""
    m = spec or cfg.layer(0).mlp
    if m.kind == "experts":
        return expert_shapes(cfg, m)
    d = cfg.d_model
    shapes: Shapes = {}
    for part in ("gate", "up") if m.kind == "gated" else ("up",):
        shapes[f"{part}.weight"] = (m.d_mlp, d)
        if m.bias:
            shapes[f"{part}.bias"] = (m.d_mlp,)
    shapes["down.weight"] = (d, m.d_mlp)
    if m.bias:
        shapes["down.bias"] = (d,)
    return shapes


def expert_shapes(cfg: "ModelConfig", m: "MlpSpec") -> Shapes:
    """A mixture of experts (`kinds.ExpertSpec`, `parts.experts`): the router (one logit
    per expert), the routed experts as 3-D [experts, out, in] tensors (gate, up of width
    `d_mlp`, down back to d), with gpt-oss's biases [experts, out]; the shared expert(s)
    as one gated MLP `shared.*` of width `d_shared`, and Qwen2-MoE's `shared_gate` [1, d];
    Gemma 4's router scales (`router.scale` [d], `router.expert_scale` [E]) and its dense
    MLP beside the experts (`gate`, `up`, `down` of width `d_dense`) with their norms."""
    e = m.experts
    assert e is not None  # internal invariant: kind "experts" carries its ExpertSpec
    d, E, w = cfg.d_model, e.n_experts, m.d_mlp
    shapes: Shapes = {"router.weight": (E, d)}
    if e.router_bias:
        shapes["router.bias"] = (E,)
    if e.router == "sigmoid_grouped":  # DeepSeek-V3's score-correction bias: loaded, not counted (NOT_COUNTED)
        shapes["router.score_bias"] = (E,)
    if e.router_norm:  # Gemma 4: the router's input scale per dimension
        shapes["router.scale"] = (d,)
    if e.expert_scale:  # Gemma 4: each expert's scale on its routing weight
        shapes["router.expert_scale"] = (E,)
    for part, out, inp in (("gate", w, d), ("up", w, d), ("down", d, w)):
        shapes[f"experts.{part}.weight"] = (E, out, inp)
        if e.expert_bias:
            shapes[f"experts.{part}.bias"] = (E, out)
    if e.d_shared:
        for part, out, inp in (("gate", e.d_shared, d), ("up", e.d_shared, d), ("down", d, e.d_shared)):
            shapes[f"shared.{part}.weight"] = (out, inp)
    if e.shared_gate:
        shapes["shared_gate.weight"] = (1, d)
    if e.d_dense:  # Gemma 4: the dense MLP beside the experts (a gated MLP's names) and the norms of both
        for part, out, inp in (("gate", e.d_dense, d), ("up", e.d_dense, d), ("down", d, e.d_dense)):
            shapes[f"{part}.weight"] = (out, inp)
        for norm in ("dense_post_norm", "experts_norm", "experts_post_norm"):
            shapes.update(_prefixed(norm, norm_shapes(cfg)))
    return shapes


# Tensors the model loads and declares like parameters that are not counted as parameters:
# transformers keeps them as (persistent) buffers, outside num_parameters() (DeepSeek-V3's
# e_score_correction_bias, which routing adjusts without gradients).
NOT_COUNTED = (".router.score_bias", ".layer_scalar", "logits_bias")  # and Gemma 4's per-layer output scalar


# What each wiring holds, in order: its norms around "attn" and "mlp" (see parts.block).
WIRING_ORDER = {
    "pre": ("attn_norm", "attn", "mlp_norm", "mlp"),
    "post": ("attn_norm", "attn", "mlp_norm", "mlp"),
    "parallel": ("attn_norm", "attn", "mlp_norm", "mlp"),
    "parallel_shared": ("attn_norm", "attn", "mlp"),
    "sandwich": ("attn_norm", "attn", "post_attn_norm", "mlp_norm", "mlp", "post_mlp_norm"),
    "post_sublayer": ("attn", "post_attn_norm", "mlp", "post_mlp_norm"),
    "pre_no_attn_norm": ("attn", "mlp_norm", "mlp"),  # ModernBERT's layer 0: the embedding norm precedes it
    # Gemma 4's MoE layers: as sandwich, but the MLP slot also reads the un-normed residual
    "sandwich_moe": ("attn_norm", "attn", "post_attn_norm", "mlp_norm", "mlp", "post_mlp_norm"),
}
WIRING_NORMS = {wiring: tuple(p for p in parts if p.endswith("norm")) for wiring, parts in WIRING_ORDER.items()}


def block_parts(spec: "LayerSpec") -> tuple[str, ...]:
    """What a block of kind `spec` holds, in order: its wiring's parts, and a decoder
    layer's cross-attention with its norm between the self-attention and the MLP (T5, BART)."""
    parts = WIRING_ORDER[spec.wiring]
    if spec.cross is None:
        return parts
    at = parts.index("mlp_norm")
    return parts[:at] + ("cross_norm", "cross") + parts[at:]


def block_shapes(cfg: "ModelConfig", spec: "LayerSpec | None" = None) -> Shapes:
    """One block of kind `spec` (default: layer 0's), names relative to it: its wiring's
    norms, attention and MLP."""
    spec = spec or cfg.layer(0)
    shapes: Shapes = {}
    for part in block_parts(spec):
        if part == "attn":
            shapes.update(_prefixed("attn", attention_shapes(cfg, spec.attn)))
        elif part == "cross":
            shapes.update(_prefixed("cross", attention_shapes(cfg, spec.cross)))
        elif part == "mlp":
            shapes.update(_prefixed("mlp", mlp_shapes(cfg, spec.mlp)))
        else:
            shapes.update(_prefixed(part, norm_shapes(cfg)))
    if spec.per_layer is not None:  # Gemma 4: the per-layer input's gate, after the MLP
        p = spec.per_layer.width
        shapes["ple_gate.weight"] = (p, cfg.d_model)
        shapes["ple_proj.weight"] = (cfg.d_model, p)
        shapes.update(_prefixed("ple_norm", norm_shapes(cfg)))
    if spec.out_scalar:  # Gemma 4's layer_scalar: loaded, not counted (NOT_COUNTED)
        shapes["layer_scalar"] = (1,)
    return shapes


def kind_counts(cfg: "ModelConfig") -> list[tuple["LayerSpec", int, int]]:
    """Each distinct layer kind, how many layers are of it, and one such block's
    parameters: counting a model sums count × numel, never enumerating its layers."""
    from math import prod

    return [(spec, count, sum(prod(shape) for shape in block_shapes(cfg, spec).values()))
            for spec, count in cfg.stack.kinds()]


def embedding_shapes(cfg: "ModelConfig") -> Shapes:
    d = cfg.d_model
    shapes: Shapes = {"embed.tok.weight": (cfg.vocab_size, cfg.d_embed)}
    if cfg.d_embed != d:  # OPT-350m: narrow embeddings projected to the width
        shapes["embed.proj_in.weight"] = (d, cfg.d_embed)
    if cfg.positions in ("learned", "sinusoidal"):  # sinusoidal: counted as transformers does, computed, not loaded
        shapes["embed.pos.weight"] = (cfg.n_ctx + cfg.pos_offset, d)
    if cfg.n_types:
        shapes["embed.types.weight"] = (cfg.n_types, d)
    if cfg.embed_norm:
        shapes.update(_prefixed("embed.norm", norm_shapes(cfg)))
    relative = stack_relative(cfg)
    if relative is not None:  # the stack's one relative position table (T5, MPNet), shared by its layers
        shapes["relative.weight"] = (relative.table_rows, cfg.n_heads)
    if cfg.decoder is not None:  # the decoder's own positions, embedding norm and relative table; tokens shared
        if cfg.positions in ("learned", "sinusoidal"):
            shapes["decoder.embed.pos.weight"] = (cfg.n_ctx + cfg.pos_offset, d)
        if cfg.embed_norm:
            shapes.update(_prefixed("decoder.embed.norm", norm_shapes(cfg)))
        dec_relative = stack_relative(cfg, cfg.decoder)
        if dec_relative is not None:
            shapes["decoder.relative.weight"] = (dec_relative.table_rows, cfg.decoder.layer(0).attn.n_heads)
    per_layer = stack_per_layer(cfg)
    if per_layer is not None:  # Gemma 4: every layer's input, one table and one projection for all
        packed = cfg.n_layers * per_layer.width
        shapes["per_layer.tok.weight"] = (per_layer.vocab, packed)
        shapes["per_layer.proj.weight"] = (packed, d)
        shapes.update(_prefixed("per_layer.norm", norm_shapes(cfg, per_layer.width)))
    return shapes


def stack_per_layer(cfg: "ModelConfig") -> "PerLayerSpec | None":
    """The per-layer input embeddings the stack owns (`kinds.PerLayerSpec`), or None: the
    layers that take one all name the same (config_checks holds them to it)."""
    for spec, _ in cfg.stack.kinds():
        if spec.per_layer is not None:
            return spec.per_layer
    return None


def stack_relative(cfg: "ModelConfig", stack: "Stack | None" = None) -> "RelativeSpec | None":
    """The relative position bias a stack owns (`kinds.RelativeSpec`, parts.relative), or
    None: the layers that take one all name the same (config_checks holds them to it).
    `stack`: the model's (the encoder's) unless another is named (an encoder-decoder's decoder)."""
    for spec, _ in (stack or cfg.stack).kinds():
        if spec.attn.relative is not None:
            return spec.attn.relative
    return None


def head_shapes(cfg: "ModelConfig") -> Shapes:
    """After the blocks: final norm, OPT's project_out, the task heads a checkpoint may
    carry (BERT's pooler, MLM and NSP heads, a sequence classifier) and the unembedding
    (absent when tied)."""
    d, v = cfg.d_model, cfg.vocab_size
    shapes: Shapes = {}
    if cfg.final_norm:
        shapes.update(_prefixed("final_norm", norm_shapes(cfg)))
        if cfg.decoder is not None:  # each stack ends in its own norm (T5, mBART)
            shapes.update(_prefixed("decoder.final_norm", norm_shapes(cfg)))
    if cfg.d_embed != d:
        shapes["proj_out.weight"] = (cfg.d_embed, d)
    if "pooler" in cfg.heads:
        shapes["pooler.weight"] = (d, d)
        shapes["pooler.bias"] = (d,)
    if "mlm" in cfg.heads or "mlm_no_dense_bias" in cfg.heads:
        shapes["mlm.dense.weight"] = (d, d)
        if "mlm" in cfg.heads:
            shapes["mlm.dense.bias"] = (d,)
        shapes.update(_prefixed("mlm.norm", norm_shapes(cfg)))
        shapes["mlm.bias"] = (v,)
    if "nsp" in cfg.heads:
        shapes["nsp.weight"] = (2, d)
        shapes["nsp.bias"] = (2,)
    if "sequence_classifier" in cfg.heads:  # RoBERTa's classifier.dense/out_proj, DistilBERT's pre_classifier/classifier
        shapes["classifier.dense.weight"] = (d, d)
        shapes["classifier.dense.bias"] = (d,)
        shapes["classifier.out.weight"] = (cfg.n_labels, d)
        shapes["classifier.out.bias"] = (cfg.n_labels,)
    if cfg.lm_head and not cfg.tied_embeddings:
        shapes["unembed.weight"] = (v, cfg.d_embed)
    if cfg.lm_head and cfg.unembed_bias:
        shapes["unembed.bias"] = (v,)
    if "logits_bias" in cfg.heads:  # BART's final_logits_bias: loaded, not counted (NOT_COUNTED)
        shapes["logits_bias"] = (1, v)  # as stored: (1, vocab)
    return shapes


def model_shapes(cfg: "ModelConfig") -> Shapes:
    """Every parameter of the model by our name, in load order. Tied unembeddings are absent."""
    shapes = embedding_shapes(cfg)
    layer = 0
    for spec, count in cfg.stack.runs:
        block = block_shapes(cfg, spec)
        for i in range(layer, layer + count):
            shapes.update(_prefixed(f"blocks.{i}", block))
        layer += count
    layer = 0
    for spec, count in cfg.decoder.runs if cfg.decoder is not None else ():
        block = block_shapes(cfg, spec)
        for i in range(layer, layer + count):
            shapes.update(_prefixed(f"decoder.blocks.{i}", block))
        layer += count
    shapes.update(head_shapes(cfg))
    return shapes


def required_count(cfg: "ModelConfig") -> int:
    """Parameters a checkpoint must hold for the model to run (embeddings, every block,
    the final norm; not the optional heads), by arithmetic: a config declaring more than
    a checkpoint stores is refused before anything is built."""
    from math import prod

    blocks = sum(count * numel for _, count, numel in kind_counts(cfg))
    if cfg.decoder is not None:
        blocks += sum(count * sum(prod(shape) for shape in block_shapes(cfg, spec).values())
                      for spec, count in cfg.decoder.kinds())
    final = sum(prod(shape) for shape in norm_shapes(cfg).values()) if cfg.final_norm else 0
    final *= 2 if cfg.decoder is not None else 1  # the decoder's own final norm
    if cfg.positions == "sinusoidal":  # computed tables no checkpoint needs to hold (Marian)
        final -= (2 if cfg.decoder is not None else 1) * cfg.n_ctx * cfg.d_model
    return sum(prod(shape) for shape in embedding_shapes(cfg).values()) + blocks + final


# Tensors the model can run without: the output head (attention needs no logits) and the
# task heads it never uses. A checkpoint without them still loads; `logits` then says so.
OPTIONAL_PREFIXES = ("unembed.", "proj_out.", "pooler.", "mlm.", "nsp.", "classifier.", "logits_bias")
