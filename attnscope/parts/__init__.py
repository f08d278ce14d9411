"""The model's parts, and the parameter shapes each part declares.

This file stays free of torch, so that `params` and `--dry-run` can read the same
declarations as the model without importing it: each part's torch module (in the
sibling modules `attention`, `positions`, `mlp`, `norms`, `block`) holds exactly the
parameters declared here under the same relative names, and `model.build` checks that
invariant on every build. `model_shapes(cfg)` is the one list the model, the loading
checks, `params` and `--dry-run` all read.

Shapes are nn.Linear's (out, in). Blocks are declared once (`block_shapes`, names relative
to the block) and repeated `n_layers` times, so counting a model of any depth is
arithmetic and never enumerates its layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnscope.config import ModelConfig

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
    names = ("weight", "bias") if cfg.norm == "layernorm" else ("weight",)
    return {name: (width,) for name in names}


def _prefixed(prefix: str, shapes: Shapes) -> Shapes:
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def attention_shapes(cfg: "ModelConfig") -> Shapes:
    """Projections q, k, v (to per-head vectors) and o (heads back to the residual)."""
    d, dh = cfg.d_model, cfg.d_head
    q_out, kv_out = cfg.n_heads * dh, cfg.n_kv_heads * dh
    shapes: Shapes = {}
    for part, out in (("q", q_out), ("k", kv_out), ("v", kv_out)):
        shapes[f"{part}.weight"] = (out, d)
        if cfg.qkv_bias:
            shapes[f"{part}.bias"] = (out,)
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dimensions
        shapes.update(_prefixed("q_norm", norm_shapes(cfg, dh)))
        shapes.update(_prefixed("k_norm", norm_shapes(cfg, dh)))
    shapes["o.weight"] = (d, q_out)
    if cfg.out_bias:
        shapes["o.bias"] = (d,)
    return shapes


def mlp_shapes(cfg: "ModelConfig") -> Shapes:
    """Dense (up, down) or gated (gate, up, down)."""
    d = cfg.d_model
    shapes: Shapes = {}
    for part in ("gate", "up") if cfg.gated_mlp else ("up",):
        shapes[f"{part}.weight"] = (cfg.d_mlp, d)
        if cfg.mlp_bias:
            shapes[f"{part}.bias"] = (cfg.d_mlp,)
    shapes["down.weight"] = (d, cfg.d_mlp)
    if cfg.mlp_bias:
        shapes["down.bias"] = (d,)
    return shapes


# The norms each wiring holds, in order (see parts.block for the wirings themselves).
WIRING_NORMS = {
    "pre": ("attn_norm", "mlp_norm"),
    "post": ("attn_norm", "mlp_norm"),
    "parallel": ("attn_norm", "mlp_norm"),
    "parallel_shared": ("attn_norm",),
    "sandwich": ("attn_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm"),
}


def block_shapes(cfg: "ModelConfig") -> Shapes:
    """One block, names relative to it: its wiring's norms, attention and MLP."""
    norms = WIRING_NORMS[cfg.wiring]
    shapes: Shapes = {}
    shapes.update(_prefixed(norms[0], norm_shapes(cfg)))
    shapes.update(_prefixed("attn", attention_shapes(cfg)))
    for name in norms[1:]:
        if name == "post_mlp_norm":
            shapes.update(_prefixed("mlp", mlp_shapes(cfg)))
        shapes.update(_prefixed(name, norm_shapes(cfg)))
    if "post_mlp_norm" not in norms:
        shapes.update(_prefixed("mlp", mlp_shapes(cfg)))
    return shapes


def embedding_shapes(cfg: "ModelConfig") -> Shapes:
    d = cfg.d_model
    shapes: Shapes = {"embed.tok.weight": (cfg.vocab_size, cfg.d_embed)}
    if cfg.d_embed != d:  # OPT-350m: narrow embeddings projected to the width
        shapes["embed.proj_in.weight"] = (d, cfg.d_embed)
    if cfg.positions == "learned":
        shapes["embed.pos.weight"] = (cfg.n_ctx + cfg.pos_offset, d)
    if cfg.n_types:
        shapes["embed.types.weight"] = (cfg.n_types, d)
    if cfg.embed_norm:
        shapes.update(_prefixed("embed.norm", norm_shapes(cfg)))
    return shapes


def head_shapes(cfg: "ModelConfig") -> Shapes:
    """After the blocks: final norm, OPT's project_out, the task heads a checkpoint may
    carry (BERT's pooler, MLM and NSP heads) and the unembedding (absent when tied)."""
    d, v = cfg.d_model, cfg.vocab_size
    shapes: Shapes = {}
    if cfg.final_norm:
        shapes.update(_prefixed("final_norm", norm_shapes(cfg)))
    if cfg.d_embed != d:
        shapes["proj_out.weight"] = (cfg.d_embed, d)
    if cfg.pooler:
        shapes["pooler.weight"] = (d, d)
        shapes["pooler.bias"] = (d,)
    if cfg.mlm_head:
        shapes["mlm.dense.weight"] = (d, d)
        shapes["mlm.dense.bias"] = (d,)
        shapes.update(_prefixed("mlm.norm", norm_shapes(cfg)))
        shapes["mlm.bias"] = (v,)
    if cfg.nsp_head:
        shapes["nsp.weight"] = (2, d)
        shapes["nsp.bias"] = (2,)
    if cfg.lm_head and not cfg.tied_embeddings:
        shapes["unembed.weight"] = (v, cfg.d_embed)
    if cfg.lm_head and cfg.unembed_bias:
        shapes["unembed.bias"] = (v,)
    return shapes


def model_shapes(cfg: "ModelConfig") -> Shapes:
    """Every parameter of the model by our name, in load order. Tied unembeddings are absent."""
    shapes = embedding_shapes(cfg)
    block = block_shapes(cfg)
    for i in range(cfg.n_layers):
        shapes.update(_prefixed(f"blocks.{i}", block))
    shapes.update(head_shapes(cfg))
    return shapes


def required_count(cfg: "ModelConfig") -> int:
    """Parameters a checkpoint must hold for the model to run (embeddings, every block,
    the final norm; not the optional heads), by arithmetic: a config declaring more than
    a checkpoint stores is refused before anything is built."""
    from math import prod

    block = sum(prod(shape) for shape in block_shapes(cfg).values())
    final = sum(prod(shape) for shape in norm_shapes(cfg).values()) if cfg.final_norm else 0
    return sum(prod(shape) for shape in embedding_shapes(cfg).values()) + cfg.n_layers * block + final


# Tensors the model can run without: the output head (attention needs no logits) and the
# task heads it never uses. A checkpoint without them still loads; `logits` then says so.
OPTIONAL_PREFIXES = ("unembed.", "proj_out.", "pooler.", "mlm.", "nsp.")
