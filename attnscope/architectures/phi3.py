"""Phi-3, Phi-3.5 and Phi-4-mini (`phi3`): Llama's pre-RMSNorm blocks with SwiGLU, plus
fused projections, partial rotary, `longrope` and a sliding window.

Quirks, as transformers' modeling_phi3.py and modeling_rope_utils.py have them:

- q, k and v come fused in one `qkv_proj` (rows: H·d of q, then H_kv·d of k, then v), and
  the MLP's gate and up in one `gate_up_proj` (gate rows first); `split` cuts them into
  our q/k/v and gate/up, so the per-head sites stay as every other family's.
- `partial_rotary_factor` (Phi-4-mini: 0.75, 96 of 128 dimensions) rotates the first
  `int(d_head · factor)` dimensions of each head; the rest pass through.
- `longrope` divides each rotary frequency by its own factor, from a short set or a long
  one chosen for the *whole pass* (long when its last position + 1 exceeds
  `original_max_position_embeddings`, which at the top level of config.json overrides the
  one inside `rope_scaling`), and multiplies cos and sin by an attention factor
  (`parts.positions.Rotary`). "su" and "yarn" are older names for it.
- `sliding_window`, when set, applies on every layer (Phi-3-mini-4k: 2047 keys, the query
  included). The layers are all of one kind, so the flat config describes them.

This is not Phi-1/2 (`phi`, architectures/phi.py): parallel blocks, LayerNorm, biases.
"""

from __future__ import annotations

from typing import Any, Callable

from attnscope.architectures import llama
from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError, ConfigError

MODEL_TYPES = ("phi3",)
PREFIXES = ("model.",)
DESCRIPTION = "Phi-3, Phi-3.5, Phi-4-mini: fused qkv and gate/up, partial rotary, longrope, sliding window"

# Llama's names, without its biases (Phi-3 has none) and with q/k/v and gate/up fused.
_FUSED = (".q_proj.", ".k_proj.", ".v_proj.", ".gate_proj.", ".up_proj.")
WEIGHTS: dict[str, str | None] = {
    **{hf: ours for hf, ours in llama.WEIGHTS.items()
       if not hf.endswith(".bias") and not any(part in hf for part in _FUSED)},
    "layers.{layer}.self_attn.qkv_proj.weight": "blocks.{layer}.attn.qkv_proj.weight",
    "layers.{layer}.mlp.gate_up_proj.weight": "blocks.{layer}.mlp.gate_up.weight",
}

_LONGROPE_NAMES = ("longrope", "su", "yarn")  # Phi3Config renames the older two to longrope
_ORIGINAL_CONTEXT = 4096  # Phi3Config's default original_max_position_embeddings


def _rope(raw: dict[str, Any]) -> tuple[float, float, dict[str, Any] | None]:
    """(base, partial rotary factor, longrope dict or None) as Phi3Config reads them:
    `rope_scaling` if set, else `rope_parameters`; keys inside it win over the top-level
    `rope_theta` / `partial_rotary_factor`, but the top-level (or default)
    `original_max_position_embeddings` wins over the one inside."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling must be an object, got {params!r}")
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    if not 0 < partial <= 1:
        raise ConfigError(f"partial_rotary_factor must lie in (0, 1], got {partial!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, partial, None
    if kind not in _LONGROPE_NAMES:
        raise ConfigError(f"unsupported phi3 rope scaling {kind!r}", hint="supported: longrope (su, yarn)")
    scaling: dict[str, Any] = {
        "rope_type": "longrope",
        "short_factor": params.get("short_factor"),
        "long_factor": params.get("long_factor"),
        "original_max_position_embeddings": raw.get("original_max_position_embeddings", _ORIGINAL_CONTEXT),
    }
    for key in ("factor", "attention_factor"):
        if params.get(key) is not None:
            scaling[key] = params[key]
    return theta, partial, scaling


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    act = raw.get("hidden_act", "silu")
    if act not in llama._ACTIVATIONS:
        raise ConfigError(f"unsupported phi3 hidden_act {act!r}")
    n_heads = raw["num_attention_heads"]
    d_head = raw.get("head_dim") or raw["hidden_size"] // n_heads
    theta, partial, scaling = _rope(raw)
    return ModelConfig(
        name=name,
        family="phi3",
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        d_head=d_head,
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw.get("max_position_embeddings", 4096),
        causal=True,
        positions="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        act=llama._ACTIVATIONS[act],
        layer_template=layer_kind(mlp="gated"),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=int(d_head * partial),
        sliding_window=raw.get("sliding_window"),
        dtype=checkpoint_dtype(raw),
    )


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes inside one stored tensor (fused ones cut as `split`
    cuts them), by arithmetic on shapes alone, for counting what a checkpoint holds."""
    if name.endswith(".attn.qkv_proj.weight"):
        rows = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head)
        if shape[0] == sum(rows):
            base = name.replace(".qkv_proj.", ".{}.")
            return {base.format(part): (n, *shape[1:]) for part, n in zip("qkv", rows)}
    if name.endswith(".mlp.gate_up.weight") and shape[0] == 2 * cfg.d_mlp:
        return {name.replace(".gate_up.", f".{part}."): (cfg.d_mlp, *shape[1:]) for part in ("gate", "up")}
    return {name: shape}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The fused `qkv_proj` into q, k, v rows and `gate_up_proj` into gate, up rows. A
    tensor whose rows do not add up is passed on whole, for the loader to refuse by name."""
    parts = stored_parts(name, tuple(tensor.shape), cfg)
    if len(parts) == 1:
        return {name: tensor}
    pieces = tensor.split([shape[0] for shape in parts.values()], dim=0)  # (rows, d_model) -> per part
    return dict(zip(parts, pieces))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's phi3 architecture (gguf-py constants.MODEL_TENSORS[PHI3]; the converter is
# Phi3MiniModel): the fused attn_qkv (or separate attn_q/k/v) and the fused ffn_up (gate
# rows first) keep HF's row order; RoPE is NEOX, so nothing is permuted. The rotary width
# is `rope.dimension_count`, the window `attention.sliding_window` (0: none, Phi-4), and
# longrope's factor sets are the tensors rope_factors_long / rope_factors_short, with the
# attention factor the converter computed in `rope.scaling.attn_factor`.

GGUF_ARCHS = ("phi3",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "blk.{layer}.attn_norm.weight": "blocks.{layer}.attn_norm.weight",
    "blk.{layer}.attn_qkv.weight": "blocks.{layer}.attn.qkv_proj.weight",
    "blk.{layer}.attn_q.weight": "blocks.{layer}.attn.q.weight",
    "blk.{layer}.attn_k.weight": "blocks.{layer}.attn.k.weight",
    "blk.{layer}.attn_v.weight": "blocks.{layer}.attn.v.weight",
    "blk.{layer}.attn_output.weight": "blocks.{layer}.attn.o.weight",
    "blk.{layer}.ffn_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "blk.{layer}.ffn_up.weight": "blocks.{layer}.mlp.gate_up.weight",
    "blk.{layer}.ffn_down.weight": "blocks.{layer}.mlp.down.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "unembed.weight",
    "rope_factors_long.weight": None,  # longrope's factor sets: read into the config, not parameters
    "rope_factors_short.weight": None,
}

GGUF_CONFIG_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict from `phi3.*` metadata (the factor sets are added by
    `gguf_config_tensors`, from the tensors)."""

    def get(suffix: str, default: Any = KeyError) -> Any:
        return llama.gguf_value(meta, f"{arch}.{suffix}", default)

    hidden, heads = get("embedding_length"), get("attention.head_count")
    raw: dict[str, Any] = {
        "model_type": "phi3",
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "hidden_act": "silu",
    }
    original = get("rope.scaling.original_context_length", None)
    if original is not None:
        raw["original_max_position_embeddings"] = original
    window = get("attention.sliding_window", 0)
    if window:
        raw["sliding_window"] = window
    dims = get("rope.dimension_count", None)
    if dims and isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and dims != hidden // heads:
        d_head = hidden // heads
        # config_from_hf takes int(d_head · factor); a factor a half-step above keeps `dims` exact
        raw["partial_rotary_factor"] = dims / d_head if int(d_head * (dims / d_head)) == dims else (dims + 0.5) / d_head
    attn_factor = get("rope.scaling.attn_factor", None)
    if attn_factor is not None:
        raw["_attn_factor"] = attn_factor  # kept for gguf_config_tensors, with the factor sets
    return raw


def gguf_config_tensors(raw: dict[str, Any], read: Callable[[str], list[float] | None]) -> dict[str, Any]:
    """longrope from the factor tensors (both or neither), with the converter's attention
    factor; a GGUF without them has default RoPE."""
    attn_factor = raw.pop("_attn_factor", None)
    long, short = read("rope_factors_long.weight"), read("rope_factors_short.weight")
    if long is None and short is None:
        return raw
    if long is None or short is None:
        raise CheckpointError("a phi3 GGUF holds one of rope_factors_long and rope_factors_short but not the other",
                              hint="convert the model again with llama.cpp")
    raw["rope_scaling"] = {"rope_type": "longrope", "long_factor": long, "short_factor": short}
    if attn_factor is not None:
        raw["rope_scaling"]["attention_factor"] = attn_factor
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    return split(name, tensor, cfg)
