"""nomic-bert (nomic-embed-text v1 / v1.5): BERT's post-LayerNorm encoder with rotary
positions instead of a position table, a fused `Wqkv`, a SwiGLU MLP (`fc11` the up
projection, `fc12` the gate, `fc2` down: transformers' conversion mapping names them so),
token types and an embedding LayerNorm (`emb_ln`), and no biases in the released models.

Checkpoints on the Hub keep the names of Nomic's own code (`encoder.layers.N.attn.Wqkv`,
`mlp.fc11`, `norm1`, `emb_ln`), which transformers (5.x, `NomicBertModel`) still saves;
its own module names (`layers.N.self_attn.q_proj`, `post_attention_layernorm`, ...) are
accepted too. config.json comes in two styles: Nomic's (`n_embd`, `n_layer`, `n_head`,
`n_inner`, `rotary_emb_base`, `rotary_emb_fraction`, `activation_function: swiglu`,
`qkv_proj_bias`, `mlp_fc1_bias`) and transformers' (`hidden_size`, ..., `rope_parameters`);
transformers' keys win where both are present, as transformers reads only those. RoPE
turns the two halves of each head (`rotary_emb_interleaved: false`, transformers'
`rotate_half`); its base defaults to 1000 (NomicBertConfig's `default_theta`).

llama.cpp's `nomic-bert` GGUF architecture is the same model under gguf-py's names.
"""

from __future__ import annotations

from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind, rope_settings, rotary_dim
from attnscope.architectures.llama import gguf_value
from attnscope.config import ModelConfig
from attnscope.errors import ConfigError

MODEL_TYPES = ("nomic_bert",)
PREFIXES = ("nomic_bert.", "bert.")
DESCRIPTION = "nomic-bert (nomic-embed-text): BERT with RoPE, fused Wqkv, SwiGLU, post-LayerNorm, bidirectional"

_LAYERS = {  # Nomic's names (what the Hub's files and transformers' save_pretrained hold)
    "attn.Wqkv": "attn.qkv",
    "attn.out_proj": "attn.o",
    "mlp.fc11": "mlp.up",
    "mlp.fc12": "mlp.gate",
    "mlp.fc1": "mlp.up",  # the dense (GELU) variant
    "mlp.fc2": "mlp.down",
    "norm1": "attn_norm",
    "norm2": "mlp_norm",
}
_NATIVE = {  # transformers' module names
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.up_proj": "mlp.up",
    "mlp.gate_proj": "mlp.gate",
    "mlp.down_proj": "mlp.down",
    "post_attention_layernorm": "attn_norm",
    "post_mlp_layernorm": "mlp_norm",
}
_TOP = {
    "embeddings.word_embeddings": "embed.tok",
    "embeddings.token_type_embeddings": "embed.types",
    "emb_ln": "embed.norm",
    "embeddings.LayerNorm": "embed.norm",
    "pooler.dense": "pooler",
    "cls.predictions.transform.dense": "mlm.dense",
    "cls.predictions.transform.layer_norm": "mlm.norm",
    "cls.predictions.transform.LayerNorm": "mlm.norm",
    "cls.predictions.decoder": "unembed",
}

WEIGHTS: dict[str, str | None] = {
    **{f"encoder.layers.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for hf, ours in _LAYERS.items() for p in ("weight", "bias")},
    **{f"layers.{{layer}}.{hf}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for hf, ours in _NATIVE.items() for p in ("weight", "bias")},
    **{f"{hf}.{p}": f"{ours}.{p}" for hf, ours in _TOP.items() for p in ("weight", "bias")},
    "cls.predictions.bias": "mlm.bias",
    "cls.predictions.decoder.bias": "mlm.bias",
}

# Nomic's activation_function: the gated ones, and plain GELU (fc1, fc2)
_NOMIC_ACTIVATIONS = {"swiglu": ("gated", "silu"), "geglu": ("gated", "gelu"), "gelu": ("dense", "gelu")}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def _first(raw: dict[str, Any], *keys: str, default: Any = KeyError) -> Any:
    """The first of `keys` the config holds (transformers' key first, then Nomic's)."""
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    if default is KeyError:
        raise KeyError(keys[0])
    return default


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    for key, words in (("prenorm", "pre-LayerNorm blocks (prenorm)"), ("parallel_block", "parallel blocks"),
                       ("use_rms_norm", "RMSNorm"), ("rotary_emb_interleaved", "interleaved rotary dimensions"),
                       ("rotary_scaling_factor", "dynamic NTK RoPE scaling (rotary_scaling_factor)"),
                       ("rotary_emb_scale_base", "xPos rotary scaling (rotary_emb_scale_base)"),
                       ("causal", "a causal nomic-bert")):
        if raw.get(key) not in (None, False):
            raise ConfigError(f"nomic-bert with {words} is not supported", hint="attnscope reads nomic-embed-text's layout")
    if raw.get("moe_every_n_layers"):
        raise ConfigError("nomic-bert with experts (nomic-embed-text-v2-moe) is not supported")
    if "activation_function" in raw:
        nomic_act = raw["activation_function"]
        if nomic_act not in _NOMIC_ACTIVATIONS:
            raise ConfigError(f"unsupported nomic-bert activation_function {nomic_act!r}",
                              hint=f"supported: {', '.join(_NOMIC_ACTIVATIONS)}")
        mlp, act = _NOMIC_ACTIVATIONS[nomic_act]
    else:
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"unsupported nomic-bert hidden_act {hidden_act!r}")
        mlp, act = "gated", _ACTIVATIONS[hidden_act]
    qkv_bias = bool(raw.get("qkv_proj_bias", False))  # Nomic's out_proj has a bias exactly when Wqkv does
    fc1_bias, fc2_bias = bool(raw.get("mlp_fc1_bias", False)), bool(raw.get("mlp_fc2_bias", False))
    if fc1_bias != fc2_bias:
        raise ConfigError("nomic-bert with a bias on one MLP projection but not the other is not supported")
    d_model, n_heads = _first(raw, "hidden_size", "n_embd"), _first(raw, "num_attention_heads", "n_head")
    d_head = raw.get("head_dim") or (d_model // n_heads if isinstance(d_model, int) and isinstance(n_heads, int)
                                     and n_heads > 0 else 0)
    given = (raw.get("rope_theta"), raw.get("rotary_emb_base"), (raw.get("rope_parameters") or {}).get("rope_theta")
             if isinstance(raw.get("rope_parameters"), dict) else None)
    theta, scaling = rope_settings(raw) if any(v is not None for v in given) else (1000.0, None)
    if scaling is not None:
        raise ConfigError("nomic-bert with rope scaling is not supported")
    fraction = raw.get("rotary_emb_fraction", 1.0)
    archs = raw.get("architectures") or ["NomicBertModel"]
    mlm = any("MaskedLM" in a or "PreTraining" in a for a in archs)
    return ModelConfig(
        name=name,
        family="nomic_bert",
        d_model=d_model,
        n_layers=_first(raw, "num_hidden_layers", "n_layer"),
        n_heads=n_heads,
        d_head=raw.get("head_dim") or 0,
        d_mlp=_first(raw, "intermediate_size", "n_inner"),
        vocab_size=raw["vocab_size"],
        # transformers and llama.cpp both take 2,048 for v1.5 (n_positions 8,192 is what
        # Nomic's dynamic NTK scaling stretches to, which neither applies)
        n_ctx=_first(raw, "max_position_embeddings", "max_trained_positions", "n_positions", default=2048),
        causal=False,
        positions="rope",
        rope_theta=theta,
        rotary_dim=rotary_dim({"partial_rotary_factor": fraction}, d_head) if isinstance(d_head, int) else 0,
        n_types=raw.get("type_vocab_size", 2),
        norm="layernorm",
        norm_eps=float(_first(raw, "layer_norm_eps", "layer_norm_epsilon", default=1e-12)),
        embed_norm=True,
        final_norm=False,
        act=act,
        layer_template=layer_kind("post", mlp=mlp, qkv_bias=qkv_bias, out_bias=qkv_bias, mlp_bias=fc1_bias),
        lm_head=mlm,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)),
        heads=("mlm",) if mlm else (),
        dtype=checkpoint_dtype(raw),
    )


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """Nomic's fused Wqkv: q, k and v stacked on the output dimension (transformers'
    conversion mapping cuts it in three equal chunks)."""
    if ".attn.qkv." in name:
        q, k, v = tensor.chunk(3, dim=0)  # (3 * H * dh, ...) -> 3 x (H * dh, ...)
        return {name.replace(".qkv.", f".{part}."): t for part, t in zip("qkv", (q, k, v))}
    return {name: tensor}


# --------------------------------------------------------------------------- GGUF
# llama.cpp's nomic-bert (gguf-py MODEL_TENSORS[NOMIC_BERT]; convert_hf_to_gguf.py's
# NomicBertModel, which asserts swiglu, no biases, prenorm false, full non-interleaved
# rotary and writes n_positions 2,048 as the context). Its tensors keep Nomic's layout:
# Wqkv fused (attn_qkv), fc11 as ffn_up, fc12 as ffn_gate; llama.cpp rotates NEOX-style
# (rotate_half), so nothing is permuted.

GGUF_ARCHS = ("nomic-bert",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "token_types.weight": "embed.types.weight",
    "token_embd_norm.weight": "embed.norm.weight",
    "token_embd_norm.bias": "embed.norm.bias",
    **{f"blk.{{layer}}.{g}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for g, ours in (("attn_qkv", "attn.qkv"), ("attn_output", "attn.o"), ("attn_output_norm", "attn_norm"),
                       ("ffn_up", "mlp.up"), ("ffn_gate", "mlp.gate"), ("ffn_down", "mlp.down"),
                       ("layer_output_norm", "mlp_norm"))
       for p in ("weight", "bias")},
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A Nomic-style config dict from `nomic-bert.*` metadata; the biases and the token
    types are read from the tensor table. A missing RoPE base is llama.cpp's 10,000."""
    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    if get("attention.causal", False) is not False:
        raise ConfigError(f"a causal {arch} GGUF is not supported")
    if get("expert_count", 0):
        raise ConfigError(f"a {arch} GGUF with experts is not supported")
    types = shapes.get("token_types.weight")
    return {
        "model_type": "nomic_bert",
        "architectures": ["NomicBertModel"],
        "n_embd": get("embedding_length"),
        "n_layer": get("block_count"),
        "n_head": get("attention.head_count"),
        "n_inner": get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "layer_norm_epsilon": get("attention.layer_norm_epsilon"),
        "rotary_emb_base": get("rope.freq_base", 10000.0),
        "rotary_emb_fraction": 1.0,
        "activation_function": "swiglu" if "blk.0.ffn_gate.weight" in shapes else "gelu",
        "qkv_proj_bias": "blk.0.attn_qkv.bias" in shapes,
        "mlp_fc1_bias": "blk.0.ffn_up.bias" in shapes,
        "mlp_fc2_bias": "blk.0.ffn_down.bias" in shapes,
        "type_vocab_size": types[0] if types else 0,
    }


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    return split(name, tensor, cfg)
