"""Gemma 4's GGUF side (llama.cpp's `gemma4` architecture): `GGUF_ARCHS`, `GGUF_WEIGHTS`,
`config_from_gguf` and the tensor helpers that turn a GGUF file's metadata and tensors into
the Hugging Face-style config and our weight names. Moved out of `gemma4` unchanged to keep
that module short; `gemma4` re-exports every name, so the registry (which skips this
_private module) still finds them on the family module.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures import gemma3
from attnscope.architectures.mixtral import split
from attnscope.config import ModelConfig, _positive_int, _shown
from attnscope.errors import ConfigError

# llama.cpp's gemma4 architecture (convert_hf_to_gguf.py's Gemma4Model over Gemma3Model;
# gguf-py's MODEL_TENSORS[GEMMA4]): norms stored as they are (norm_shift 0), the global head
# size as key_length and the local one as key_length_swa, `sliding_window_pattern` one
# boolean per layer (true: local), `shared_kv_layers`, `embedding_length_per_layer_input`,
# head_count_kv per layer where the global layers have their own, feed_forward_length per
# layer where the KV-shared MLPs are double-wide; the global layers' proportional RoPE as a
# `rope_freqs` tensor of divisors (1 for each turning frequency, 1e30 for each standing
# one); the global base as rope.freq_base (the local one, where the file gives none,
# Gemma4TextConfig's 10^4). A global layer without attn_v takes its values from its keys.
# The MoE block (26B-A4B; Gemma4Model.modify_tensors/filter_tensors): `expert_count`,
# `expert_used_count`, `expert_feed_forward_length`; the router `ffn_gate_inp` with its input
# scale as `ffn_gate_inp.scale` and the per-expert scale as `ffn_down_exps.scale`; the experts'
# fused `ffn_gate_up_exps` [E, 2w, d] (gate rows first, as transformers holds it) and
# `ffn_down_exps`; the norms `pre_ffw_norm_2`, `post_ffw_norm_1`, `post_ffw_norm_2` beside
# Gemma 3's `ffn_norm` and `post_ffw_norm`.
# The tokenizer model llama.cpp writes for Gemma 4 ("gemma4") is built in sources/gguf_tokenizer.

GGUF_ARCHS = ("gemma4",)

GGUF_WEIGHTS: dict[str, str | None] = {
    **gemma3.GGUF_WEIGHTS,
    "blk.{layer}.layer_output_scale.weight": "blocks.{layer}.layer_scalar",
    "per_layer_token_embd.weight": "per_layer.tok.weight",
    "per_layer_model_proj.weight": "per_layer.proj.weight",
    "per_layer_proj_norm.weight": "per_layer.norm.weight",
    "blk.{layer}.inp_gate.weight": "blocks.{layer}.ple_gate.weight",
    "blk.{layer}.proj.weight": "blocks.{layer}.ple_proj.weight",
    "blk.{layer}.post_norm.weight": "blocks.{layer}.ple_norm.weight",
    "blk.{layer}.ffn_gate_inp.scale": "blocks.{layer}.mlp.router.scale",
    "blk.{layer}.ffn_down_exps.scale": "blocks.{layer}.mlp.router.expert_scale",
    "blk.{layer}.ffn_gate_up_exps.weight": "blocks.{layer}.mlp.experts.gate_up.weight",
    "blk.{layer}.post_ffw_norm_1.weight": "blocks.{layer}.mlp.dense_post_norm.weight",
    "blk.{layer}.pre_ffw_norm_2.weight": "blocks.{layer}.mlp.experts_norm.weight",
    "blk.{layer}.post_ffw_norm_2.weight": "blocks.{layer}.mlp.experts_post_norm.weight",
}


def _per_layer(meta: dict[str, Any], key: str, n_layers: int, sizes: bool = True) -> list[Any]:
    """A metadata value given once or once per layer, as a list of one per layer (`sizes`:
    each a positive integer)."""
    value = meta[key]
    values = list(value) if isinstance(value, list) else [value] * n_layers
    if len(values) != n_layers:
        raise ConfigError(f"GGUF {key!r} lists {len(values)} values for {n_layers} layers")
    if sizes and not all(_positive_int(v) for v in values):
        raise ConfigError(f"GGUF {key!r} must hold positive integers, got {_shown(value)}")
    return values


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from attnscope.architectures import llama

    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    n_layers = get("block_count")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 0 < n_layers <= 100_000:
        raise ConfigError(f"GGUF {arch}.block_count must be a positive integer, got {_shown(n_layers)}")
    swa = _per_layer(meta, f"{arch}.attention.sliding_window_pattern", n_layers, sizes=False)
    types = ["sliding_attention" if isinstance(s, (bool, int)) and s == 1 else "full_attention" for s in swa]
    kv = _per_layer(meta, f"{arch}.attention.head_count_kv", n_layers)
    ff = _per_layer(meta, f"{arch}.feed_forward_length", n_layers)
    shared = get("attention.shared_kv_layers", 0)
    local = [i for i, t in enumerate(types) if t == "sliding_attention"] or [0]
    full = [i for i, t in enumerate(types) if t == "full_attention"] or [n_layers - 1]
    raw: dict[str, Any] = {
        "model_type": "gemma4_text",
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": kv[local[0]],
        "head_dim": get("attention.key_length_swa", None) or get("attention.key_length"),
        "global_head_dim": get("attention.key_length"),
        "intermediate_size": ff[0],
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": get("attention.sliding_window"),
        "layer_types": types,
        "num_kv_shared_layers": shared,
        "hidden_size_per_layer_input": get("embedding_length_per_layer_input", 0),
        "final_logit_softcapping": get("final_logit_softcapping", None),
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 1.0,
                               "rope_theta": get("rope.freq_base", 1_000_000.0)},
            "sliding_attention": {"rope_type": "default", "rope_theta": get("rope.freq_base_swa", 10_000.0)}},
    }
    table = shapes.get("per_layer_token_embd.weight")
    if table and len(table) == 2:
        raw["vocab_size_per_layer_input"] = table[0]
    first_shared = n_layers - shared if _positive_int(shared, n_layers - 1) else n_layers
    owners = [i for i in full if i < first_shared]
    raw["attention_k_eq_v"] = bool(owners) and f"blk.{owners[0]}.attn_v.weight" not in shapes
    if raw["attention_k_eq_v"]:
        raw["num_global_key_value_heads"] = kv[full[0]]
    raw["use_double_wide_mlp"] = first_shared < n_layers and ff[first_shared] == 2 * ff[0]
    experts = get("expert_count", None)
    raw["enable_moe_block"] = experts is not None
    if experts is not None:  # the MoE block (26B-A4B): a dense MLP of feed_forward_length beside them
        raw.update(num_experts=experts, top_k_experts=get("expert_used_count"),
                   moe_intermediate_size=get("expert_feed_forward_length"))
    return raw


def gguf_config_tensors(raw: dict[str, Any], read: Any) -> dict[str, Any]:
    """The global layers' share of turning frequencies, from `rope_freqs`: 1 for each that
    turns, 1e30 (standing still) for the rest; anything else is not Gemma 4's proportional RoPE."""
    divisors = read("rope_freqs.weight")
    if divisors is None:
        return raw
    turning = sum(1 for d in divisors if d == 1.0)
    if not divisors or divisors[:turning] != [1.0] * turning or not all(d >= 1e29 for d in divisors[turning:]):
        raise ConfigError("this gemma4 GGUF's rope_freqs are not proportional RoPE's (ones, then 1e30)")
    raw["rope_parameters"]["full_attention"]["partial_rotary_factor"] = turning / len(divisors)
    return raw


def gguf_rope_scaling(factors: list[float], raw: dict[str, Any]) -> dict[str, Any]:
    """`rope_freqs` is read by `gguf_config_tensors` into the global kind's proportional RoPE."""
    return dict(raw["rope_parameters"]["full_attention"])


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """Norms as they are (Gemma 4's scale by w: the converter adds no 1); nothing permuted;
    the experts' fused gate_up cut into gate and up."""
    from attnscope.architectures import llama

    out: dict[str, Any] = {}
    for ours, value in llama.gguf_tensor(name, tensor, cfg, arch).items():
        out.update(split(ours, value, cfg))
    return out
