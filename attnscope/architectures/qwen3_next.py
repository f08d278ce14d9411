"""Qwen3-Next (Qwen3-Next-80B-A3B): Qwen3.5's hybrid of Gated DeltaNet linear layers and
gated softmax layers (see qwen3_5.py; plain RoPE, partial), with Qwen2-MoE's experts in the
MLP slot: a softmax router over `num_experts` picks `num_experts_per_tok`, renormalised
where `norm_topk_prob`; every token also visits a shared expert of
`shared_expert_intermediate_size` behind sigmoid(`shared_expert_gate` · x). Which layers
hold experts: Qwen2-MoE's rule (`decoder_sparse_step`, `mlp_only_layers`).

Its linear layers store two fused projections grouped per key head: `in_proj_qkvz`, for
each key head, its q (d_k rows), k (d_k), then the values and the norm gates z of the
value heads it serves (each n_v/n_k × d_v rows); `in_proj_ba`, for each key head, the
write strengths b then the decay inputs a of its value heads. They are cut into ours
(`qkv`, `z`, `b`, `a`) on load (`split`) and when counting (`stored_parts`).
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures import mixtral, qwen2_moe, qwen3_5
from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError
from attnscope.kinds import ExpertSpec

MODEL_TYPES = ("qwen3_next",)
PREFIXES = ("model.",)
DESCRIPTION = ("Qwen3-Next: Qwen3.5's linear + gated softmax layers, routed experts + a sigmoid-gated "
               "shared expert")

_LINEAR = "layers.{layer}.linear_attn."
LINEAR_QKV = True  # as qwen3_5's: the GGUF's attn_qkv is whole

WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in qwen3_5.WEIGHTS.items() if ".in_proj_" not in k},
    _LINEAR + "in_proj_qkvz.weight": "blocks.{layer}.attn.qkvz.weight",
    _LINEAR + "in_proj_ba.weight": "blocks.{layer}.attn.ba.weight",
    **mixtral.expert_weights("mlp", "gate", {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
    "layers.{layer}.mlp.shared_expert.gate_proj.weight": "blocks.{layer}.mlp.shared.gate.weight",
    "layers.{layer}.mlp.shared_expert.up_proj.weight": "blocks.{layer}.mlp.shared.up.weight",
    "layers.{layer}.mlp.shared_expert.down_proj.weight": "blocks.{layer}.mlp.shared.down.weight",
    "layers.{layer}.mlp.shared_expert_gate.weight": "blocks.{layer}.mlp.shared_gate.weight",
}
WEIGHTS = qwen3_5.with_mtp(WEIGHTS)  # the multi-token-prediction module (`mtp.*`): named, not loaded


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    text = {**qwen3_5.TEXT_DEFAULTS, "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
            "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2, **raw}
    cfg = qwen3_5.hybrid(qwen3_5.gated_config(text, name, "qwen3_next"), text)
    experts = ExpertSpec(n_experts=qwen2_moe.n_experts(text, 512), top_k=text.get("num_experts_per_tok", 10),
                         norm_topk_prob=text.get("norm_topk_prob", True),
                         d_shared=text.get("shared_expert_intermediate_size", 512), n_shared=1, shared_gate=True)
    return qwen3_5.mtp_module(qwen2_moe.moe_stack(cfg, text, experts, text.get("moe_intermediate_size", 512)), text)


def _linear_sizes(name: str, cfg: ModelConfig) -> tuple[int, int, int, int]:
    """(key heads, value heads per key head, d_k, d_v) of the layer a fused tensor belongs to."""
    m = cfg.layer(int(name.split(".")[1])).attn.linear
    if m is None:
        raise CheckpointError(f"{name} belongs to a linear-attention layer, "
                              "but config.json makes that layer full attention")
    return m.n_k_heads, m.n_v_heads // m.n_k_heads, m.d_k, m.d_v


def _fused_rows(name: str, cfg: ModelConfig) -> list[tuple[str, int]]:
    """Each key head's rows of a fused tensor, in order, as (our part, rows)."""
    _, r, dk, dv = _linear_sizes(name, cfg)
    if name.endswith(".attn.qkvz.weight"):
        return [("q", dk), ("k", dk), ("v", r * dv), ("z", r * dv)]
    return [("b", r), ("a", r)]


def _is_fused(name: str) -> bool:
    return name.endswith((".attn.qkvz.weight", ".attn.ba.weight"))


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The fused projections as our parts (by shapes alone), the conv as (channels, kernel),
    transformers 5's fused experts cut in two."""
    if _is_fused(name) and len(shape) == 2:
        hk = _linear_sizes(name, cfg)[0]
        rows = dict(_fused_rows(name, cfg))
        prefix = name.rsplit(".", 2)[0]
        if name.endswith(".qkvz.weight"):
            return {f"{prefix}.qkv.weight": (hk * (rows["q"] + rows["k"] + rows["v"]), shape[1]),
                    f"{prefix}.z.weight": (hk * rows["z"], shape[1])}
        return {f"{prefix}.b.weight": (hk * rows["b"], shape[1]), f"{prefix}.a.weight": (hk * rows["a"], shape[1])}
    out: dict[str, tuple[int, ...]] = {}
    for part, part_shape in qwen3_5.stored_parts(name, shape, cfg).items():
        out.update(mixtral.stored_parts(part, part_shape, cfg))
    return out


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The fused projections regrouped from per-key-head order into ours: qkv = every q,
    every k, every v (value heads in order), z; b, a (transformers'
    fix_query_key_value_ordering). The conv and fused experts as qwen3_5 and Mixtral cut them."""
    if not _is_fused(name):
        out: dict[str, Any] = {}
        for part, t in qwen3_5.split(name, tensor, cfg).items():
            out.update(mixtral.split(part, t, cfg))
        return out
    import torch

    hk = _linear_sizes(name, cfg)[0]
    rows = _fused_rows(name, cfg)
    per_head = sum(n for _, n in rows)
    if tensor.dim() != 2 or tensor.shape[0] != hk * per_head:
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)} but config.json implies "
                              f"{hk * per_head} rows", hint="the weights and config.json belong to different models")
    grouped = tensor.view(hk, per_head, tensor.shape[1])
    parts: dict[str, Any] = {}
    at = 0
    for part, n in rows:
        parts[part] = grouped[:, at:at + n].reshape(hk * n, tensor.shape[1])
        at += n
    prefix = name.rsplit(".", 2)[0]
    if "q" in parts:
        return {f"{prefix}.qkv.weight": torch.cat([parts["q"], parts["k"], parts["v"]]),
                f"{prefix}.z.weight": parts["z"]}
    return {f"{prefix}.b.weight": parts["b"], f"{prefix}.a.weight": parts["a"]}


# --------------------------------------------------------------------------- GGUF
# llama.cpp's qwen3next (convert_hf_to_gguf.py's Qwen3NextModel, on Qwen2MoeModel; gguf-py's
# MODEL_TENSORS[QWEN3NEXT]). Qwen3NextModel.modify_tensors regroups in_proj_qkvz itself:
# `attn_qkv` holds every q, every k, every v (value heads in the checkpoint's grouped
# order: no tiled reorder, that is Qwen3.5's subclass) and `attn_gate` every z, which are
# our `qkv` and `z` as they are; `in_proj_ba` passes through fused per key head as `ssm_ba`
# (cut into b and a by `split`, as from safetensors). A_log (−exp), dt_bias (renamed
# ssm_dt.bias), the squeezed conv and the norms + 1 as Qwen3.5's (qwen3_5.gguf_norm_and_decay).
# Qwen2MoeModel merges the experts into `ffn_{gate,up,down}_exps`, the router is
# `ffn_gate_inp`, the shared expert `ffn_*_shexp` behind `ffn_gate_inp_shexp`; metadata
# expert_count, expert_used_count, expert_feed_forward_length,
# expert_shared_feed_forward_length. A layer holding a dense `ffn_gate` is one of
# `mlp_only_layers` (llama.cpp's own qwen3next has none).

GGUF_ARCHS = ("qwen3next",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **{k: v for k, v in qwen3_5.GGUF_WEIGHTS.items() if ".ssm_beta." not in k and ".ssm_alpha." not in k},
    "blk.{layer}.ssm_ba.weight": "blocks.{layer}.attn.ba.weight",
    "blk.{layer}.ffn_gate_shexp.weight": "blocks.{layer}.mlp.shared.gate.weight",
    "blk.{layer}.ffn_up_shexp.weight": "blocks.{layer}.mlp.shared.up.weight",
    "blk.{layer}.ffn_down_shexp.weight": "blocks.{layer}.mlp.shared.down.weight",
    "blk.{layer}.ffn_gate_inp_shexp.weight": "blocks.{layer}.mlp.shared_gate.weight",
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures import llama

    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    raw = qwen3_5.gguf_linear_config(meta, arch, shapes, llama.config_from_gguf(meta, arch, shapes))
    dense = sorted({int(n.split(".")[1]) for n in shapes
                    if n.startswith("blk.") and n.endswith(".ffn_gate.weight") and n.split(".")[1].isdigit()})
    raw.update(model_type="qwen3_next", num_experts=get("expert_count"), num_experts_per_tok=get("expert_used_count"),
               moe_intermediate_size=get("expert_feed_forward_length"),
               shared_expert_intermediate_size=get("expert_shared_feed_forward_length"),
               norm_topk_prob=get("expert_weights_norm", True), decoder_sparse_step=1, mlp_only_layers=dense)
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    tensor = qwen3_5.gguf_norm_and_decay(name, tensor)
    if name.endswith(".mlp.shared_gate.weight") and tensor.dim() == 1:
        tensor = tensor.reshape(1, -1)
    if name.endswith(".attn.ba.weight"):
        return split(name, tensor, cfg)
    return {name: tensor}
