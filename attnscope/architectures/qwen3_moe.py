"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's layers (per-head q/k RMSNorm before
RoPE, no q/k/v biases unless `attention_bias`, an explicit `head_dim`) with routed experts
in the MLP slot of the sparse layers, chosen as Qwen2-MoE chooses them
(`decoder_sparse_step`, `mlp_only_layers`), and no shared expert. The router's softmax
over all `num_experts` picks `num_experts_per_tok`, renormalised where `norm_topk_prob`
(true in the published configs). A window only with `use_sliding_window`, then on every
layer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama, mixtral, qwen2_moe, qwen3
from attnscope.config import ModelConfig
from attnscope.kinds import ExpertSpec

MODEL_TYPES = ("qwen3_moe",)
PREFIXES = ("model.",)
DESCRIPTION = "Qwen3-MoE: Qwen3 layers (q/k norm), routed experts (softmax, top-k, norm_topk_prob), sparse step"

WEIGHTS: dict[str, str | None] = {
    **qwen3.WEIGHTS,  # dense layers (mlp_only_layers) keep mlp.gate_proj/up_proj/down_proj
    **mixtral.expert_weights("mlp", "gate", {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
}

stored_parts = mixtral.stored_parts
split = mixtral.split


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    cfg = llama.config_from_hf(raw, name)
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    cfg = replace(cfg, family="qwen3_moe", sliding_window=window,
                  layer_template=cfg.layer_template.with_attn(qk_norm="head"))
    experts = ExpertSpec(n_experts=qwen2_moe.n_experts(raw, 128), top_k=raw.get("num_experts_per_tok", 8),
                         norm_topk_prob=raw.get("norm_topk_prob", False))
    return qwen2_moe.moe_stack(cfg, raw, experts, raw.get("moe_intermediate_size", 768))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's qwen3moe (convert_hf_to_gguf.py's Qwen3MoeModel is Qwen2MoeModel's): Qwen3's
# tensors with the router `ffn_gate_inp` and the experts merged into `ffn_{gate,up,down}_exps`
# (in llama's table); `expert_count`, `expert_used_count`, `expert_feed_forward_length`
# (the experts' width) beside `feed_forward_length` (a dense layer's). llama.cpp
# renormalises qwen3moe's top-k weights unless `expert_weights_norm` says otherwise; a
# layer holding a dense `ffn_gate` instead of experts is one of `mlp_only_layers`.

GGUF_ARCHS = ("qwen3moe",)

GGUF_WEIGHTS: dict[str, str | None] = dict(qwen3.GGUF_WEIGHTS)


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    raw = llama.config_from_gguf(meta, arch, shapes)
    # the dense layers, from the tensor table (never a loop over a declared layer count)
    dense = sorted({int(name.split(".")[1]) for name in shapes
                    if name.startswith("blk.") and name.endswith(".ffn_gate.weight") and name.split(".")[1].isdigit()})
    raw.update(
        model_type="qwen3_moe",
        num_experts=llama.gguf_value(meta, f"{arch}.expert_count"),
        num_experts_per_tok=llama.gguf_value(meta, f"{arch}.expert_used_count"),
        moe_intermediate_size=llama.gguf_value(meta, f"{arch}.expert_feed_forward_length"),
        norm_topk_prob=llama.gguf_value(meta, f"{arch}.expert_weights_norm", True),
        mlp_only_layers=dense,
    )
    return raw
