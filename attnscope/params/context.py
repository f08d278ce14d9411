"""What a context of n tokens costs, per layer kind: attention-pattern entries, the KV
cache (a window caps what a kind's layers keep; `AttnSpec.cache_tokens`,
`bytes_per_token`, after vLLM's per-layer KV-cache specs; a linear layer keeps a fixed
state instead, `AttnSpec.fixed_state_values`, whatever n) and forward FLOPs per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnscope.config import ModelConfig
from attnscope.parts import stack_per_layer
from attnscope.params.counting import DTYPE_BYTES, declared_counts, inactive, kind_labels, layer_ranges


@dataclass(frozen=True)
class KindCache:
    """One layer kind's KV cache at a context: each layer keeps `tokens` positions
    (`AttnSpec.cache_tokens`: a window caps it) of `bytes_per_token` each."""

    label: str
    ranges: list[list[int]]
    n_layers: int
    tokens: int  # positions one layer of this kind keeps
    values_per_token: int  # K and V values one position costs, all layers of this kind
    values: int  # all layers of this kind, at their cached positions (plus their fixed state)
    bytes: int
    state_values: int = 0  # a linear kind: the fixed state all its layers keep, whatever the context


@dataclass
class ContextReport:
    """What a context of n tokens costs: pattern entries, KV cache, forward FLOPs."""

    n: int
    dtype: str
    bytes_per_value: int
    pattern_per_head: int  # n² entries
    pattern_per_block: int
    pattern_total: int
    kv_cache_per_token: int  # values (K and V, every layer and kv head) one position costs where it is kept
    kv_cache_total: int  # values held at n tokens: each kind's layers keep at most their window
    kv_cache_bytes: int
    pattern_bytes: int
    flops_per_token: int  # forward FLOPs per token at context n (2 per multiply-add)
    kv_kinds: list[KindCache] = field(default_factory=list)  # the cache per layer kind, summing to the totals


def context_report(cfg: ModelConfig, n: int, dtype: str = "float32") -> ContextReport:
    width = DTYPE_BYTES[dtype]
    per_head = n * n
    per_block = per_head * cfg.n_heads
    pattern_total = 0
    labels, ranges = kind_labels(cfg), layer_ranges(cfg)
    caches = []
    attn_flops = 0
    for spec, count in cfg.stack.kinds():
        a = spec.attn
        tokens = a.cache_tokens(n)
        per_token = count * a.bytes_per_token(1)  # values: bytes at one byte a value
        state = count * a.fixed_state_values  # a linear layer's recurrent state and conv tail
        held = per_token * tokens + state
        caches.append(KindCache(labels[spec], ranges[spec], count, tokens, per_token, held, held * width, state))
        if a.linear is not None:
            # the gated delta rule for one token, per value head: decay the d_k × d_v state,
            # predict v from it (S k), write the outer product, read S q: 7 · d_k · d_v FLOPs
            attn_flops += count * a.linear.n_v_heads * 7 * a.linear.d_k * a.linear.d_v
        else:
            # QK^T and pattern·V for the token at position n: 2 * keys * (d_head + d_value) per
            # head (latent attention's values are narrower), over the keys its layer sees.
            attn_flops += count * a.n_heads * 2 * tokens * (a.d_head + a.d_value)
        pattern_total += count * a.n_heads * per_head  # the kernel scores every key, then masks
    weights = declared_counts(cfg)
    matmul_params = sum(weights[r] for r in ("key", "query", "value", "output", "latent", "linear", "gate", "up",
                                              "down", "router"))
    matmul_params -= inactive(cfg)[0]  # a token runs only its top-k routed experts
    per_layer = stack_per_layer(cfg)
    if per_layer is not None:  # Gemma 4: its per-layer projection and gates multiply; its table is looked up
        matmul_params += weights["per_layer"] - per_layer.vocab * cfg.n_layers * per_layer.width
    if cfg.lm_head:
        matmul_params += weights["embedding"]  # the unembedding matmul, tied or not
    kv_values = sum(c.values for c in caches)
    return ContextReport(
        n=n,
        dtype=dtype,
        bytes_per_value=width,
        pattern_per_head=per_head,
        pattern_per_block=per_block,
        pattern_total=pattern_total,
        kv_cache_per_token=sum(c.values_per_token for c in caches),
        kv_cache_total=kv_values,
        kv_cache_bytes=kv_values * width,
        pattern_bytes=pattern_total * width,
        flops_per_token=2 * matmul_params + attn_flops,  # 2 FLOPs per weight, plus attention's
        kv_kinds=caches,
    )
