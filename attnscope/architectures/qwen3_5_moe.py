"""Qwen3.5-MoE (`qwen3_5_moe_text`, and the text tower of the multimodal `qwen3_5_moe`:
Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B): Qwen3.5's hybrid of Gated DeltaNet linear layers
and gated softmax layers (qwen3_5.py, unchanged: the same separate in_proj_qkv / z / b / a,
partial RoPE, (1 + w) norms) with Qwen3-Next's experts (qwen3_next.py) in the MLP slot of
EVERY layer, as transformers' Qwen3_5MoeSparseMoeBlock computes it:

  * the router (Qwen3_5MoeTopKRouter): a softmax over all `num_experts`, the top
    `num_experts_per_tok`, always renormalised to sum 1 — the text config has no
    `norm_topk_prob`, no `decoder_sparse_step`, no `mlp_only_layers` and no
    `intermediate_size` (transformers deletes them), so a file that names them changes
    nothing: no layer is dense;
  * every token also visits one shared expert of `shared_expert_intermediate_size` behind
    sigmoid(`shared_expert_gate` · x);
  * checkpoints hold the routed experts fused (transformers 5: `mlp.experts.gate_up_proj`
    [E, 2w, d], gate rows first, and `down_proj` [E, d, w]) or one tensor per expert
    (`mlp.experts.{e}.gate_proj.weight`, the published files), both read as Qwen3-Next's.

Checkpoints: `model.layers.…` (Qwen3_5MoeForCausalLM) or `model.language_model.layers.…`
with `lm_head.weight` at the top (Qwen3_5MoeForConditionalGeneration); the vision tower
and the multi-token-prediction module (`mtp.`) are not part of the text model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import mixtral, qwen2_moe, qwen3_5, qwen3_next
from attnscope.config import ModelConfig
from attnscope.kinds import ExpertSpec, LayerSpec, Stack

MODEL_TYPES = ("qwen3_5_moe_text", "qwen3_5_moe")
PREFIXES = qwen3_5.PREFIXES
DESCRIPTION = ("Qwen3.5-MoE: Qwen3.5's linear + gated softmax layers, routed experts + a sigmoid-gated "
               "shared expert in every layer")

LINEAR_QKV = True  # as qwen3_5's: our attn.qkv is the linear layers' whole in_proj_qkv

# Qwen3.5's table without its dense MLP (no layer has one), with Qwen3-Next's experts:
# the router, the routed experts (fused or per expert) and the gated shared expert.
_DENSE_MLP = tuple(f"layers.{{layer}}.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))
WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in qwen3_5.WEIGHTS.items() if k not in _DENSE_MLP},
    **{k: v for k, v in qwen3_next.WEIGHTS.items() if ".mlp." in k and k not in _DENSE_MLP},
}
WEIGHTS = qwen3_5.with_mtp(WEIGHTS)  # the multi-token-prediction module (`mtp.*`): named, not loaded

# Qwen3_5MoeTextConfig's defaults (Qwen3.5-35B-A3B's sizes): what a config.json may leave out.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40, "num_attention_heads": 16,
    "num_key_value_heads": 2, "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "num_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
}

# the conv squeezed (qwen3_5) and transformers 5's fused gate_up cut in two (mixtral), as
# Qwen3-Next reads them (its own fused in_proj_qkvz / in_proj_ba never occur here)
stored_parts = qwen3_next.stored_parts
split = qwen3_next.split


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text tower's settings (qwen3_5.text_config), with Qwen3.5-MoE's defaults where
    the file leaves a key out."""
    text = qwen3_5.text_config(raw, "qwen3_5_moe")
    given = raw.get("text_config") if raw.get("model_type") == "qwen3_5_moe" else raw
    given = given if isinstance(given, dict) else {}
    return {**text, **{k: v for k, v in TEXT_DEFAULTS.items() if k not in given}}


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    text = text_config(raw)
    width = text.get("moe_intermediate_size")
    # the flat d_mlp is the routed experts' width, the only MLP width the model has
    cfg = qwen3_5.hybrid(qwen3_5.gated_config({**text, "intermediate_size": width}, name, "qwen3_5_moe"), text)
    experts = ExpertSpec(n_experts=qwen2_moe.n_experts(text, 256), top_k=text.get("num_experts_per_tok"),
                         norm_topk_prob=True, d_shared=text.get("shared_expert_intermediate_size"), n_shared=1,
                         shared_gate=True)
    # experts in every layer, whatever the file says of dense layers (transformers reads none)
    kinds: dict[LayerSpec, LayerSpec] = {}
    specs = [kinds.setdefault(spec, mixtral.experts_spec(spec, width, experts))
             for spec in (cfg.layer(i) for i in range(cfg.n_layers))]
    return qwen3_5.mtp_module(replace(cfg, kinds=Stack.of(specs)), text)


# --------------------------------------------------------------------------- GGUF
# llama.cpp's qwen35moe (convert_hf_to_gguf.py's Qwen3_5MoeTextModel: _Qwen35MtpMixin,
# _Qwen35MRopeMixin, _LinearAttentionVReorderBase → Qwen3NextModel → Qwen2MoeModel; gguf-py's
# MODEL_TENSORS[QWEN35MOE]). Its linear and softmax layers are written as qwen35's (the tiled
# value-head reorder, A_log as −exp(A_log), norms + 1 but the gated one: undone by
# qwen3_5.gguf_tensor). Qwen2MoeModel: the per-expert tensors stacked, or the fused gate_up_proj
# cut into gate and up, as `ffn_{gate,up,down}_exps` [E, out, in]; the router `ffn_gate_inp`;
# the shared expert `ffn_*_shexp` behind `ffn_gate_inp_shexp` (declared {n_embd}: one dimension).
# Metadata: expert_count, expert_used_count, expert_feed_forward_length,
# expert_shared_feed_forward_length; no feed_forward_length (the text config has no
# intermediate_size). A file converted with its MTP layer (block_count one more than the
# text model's, `nextn_predict_layers`, `blk.N.nextn.*`) is read as its main stack, the MTP
# layer never read (sources/gguf.py, gguf_mtp_layers).

GGUF_ARCHS = ("qwen35moe",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in qwen3_5.GGUF_WEIGHTS.items() if not k.endswith(("ffn_gate.weight", "ffn_up.weight",
                                                                       "ffn_down.weight"))},
    **{k: v for k, v in qwen3_next.GGUF_WEIGHTS.items() if "_shexp." in k},
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures import llama

    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    ff = f"{arch}.feed_forward_length"
    if ff not in meta and f"{arch}.expert_feed_forward_length" in meta:  # the converter writes none
        meta = {**meta, ff: meta[f"{arch}.expert_feed_forward_length"]}
    raw = qwen3_5.config_from_gguf(meta, arch, shapes)
    raw.update(model_type="qwen3_5_moe_text", num_experts=get("expert_count"),
               num_experts_per_tok=get("expert_used_count"), moe_intermediate_size=get("expert_feed_forward_length"),
               shared_expert_intermediate_size=get("expert_shared_feed_forward_length"))
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """qwen35's changes undone (qwen3_5.gguf_tensor); a one-dimensional shared-expert gate as
    transformers' (1, d)."""
    if name.endswith(".mlp.shared_gate.weight") and tensor.dim() == 1:
        tensor = tensor.reshape(1, -1)
    return qwen3_5.gguf_tensor(name, tensor, cfg, arch)
