"""ModernBERT: a pre-norm bidirectional encoder with rotary positions and two kinds of
layer. Every `global_attn_every_n_layers`-th layer (0, 3, 6, … by default) is global: it
sees every key and rotates with `global_rope_theta` (160,000 on ModernBERT-base). The
rest are local: a query sees the keys within `local_attention // 2` positions on either
side (64 for `local_attention` 128), rotating with `local_rope_theta` (10,000). Fused
`Wqkv`, a GeGLU MLP with a fused `Wi`, LayerNorms without a bias (`norm_bias` false),
no biases elsewhere (`attention_bias`, `mlp_bias`), an embedding norm, a final norm,
and no norm before the first layer's attention (the embedding norm just ran).
ModernBertForMaskedLM adds a head (dense, GELU, norm) and a decoder tied to the token
table, with a bias.

After transformers' configuration_modernbert.py / modeling_modernbert.py (5.x):
  * layer kinds: `layer_types`, else `global_attn_every_n_layers` (default 3; the key is
    no longer stored by ModernBertConfig, but the Hub's files carry it);
  * RoPE per kind: `rope_parameters` nested by kind, else the legacy `global_rope_theta`
    and `local_rope_theta` (transformers merges a top-level `rope_scaling` into both);
  * the local mask is |i − j| ≤ local_attention // 2 (`sliding_window_bidirectional_overlay`
    with `config.sliding_window = local_attention // 2`); our rule for a bidirectional
    window W keeps |i − j| < W, so W = local_attention // 2 + 1, and every reader names it
    as the user knows it ("local, ±64 tokens", `kinds.kind_words`);
  * `Wqkv` holds q rows, then k, then v (`view(…, 3, heads, d_head)`); `Wi` the activated
    half first, then the gate it multiplies (`input, gate = Wi(x).chunk(2)`), which is our
    gated MLP's gate, then up;
  * `hidden_activation` is the MLP's; `classifier_activation` the MLM head's (not run here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures._common import checkpoint_dtype, layer_kind
from attnscope.config import ModelConfig, _number, _positive_int, _shown
from attnscope.errors import ConfigError
from attnscope.kinds import LayerSpec, RopeSpec, Stack

MODEL_TYPES = ("modernbert",)
PREFIXES = ("model.",)
DESCRIPTION = ("ModernBERT: pre-norm encoder, RoPE, global layers and local ones (±local_attention/2 tokens, "
               "own RoPE base), GeGLU, no biases")

WEIGHTS: dict[str, str | None] = {
    "embeddings.tok_embeddings.weight": "embed.tok.weight",
    "embeddings.norm.weight": "embed.norm.weight",
    "embeddings.norm.bias": "embed.norm.bias",
    "layers.{layer}.attn_norm.weight": "blocks.{layer}.attn_norm.weight",
    "layers.{layer}.attn_norm.bias": "blocks.{layer}.attn_norm.bias",
    "layers.{layer}.attn.Wqkv.weight": "blocks.{layer}.attn.qkv_proj.weight",
    "layers.{layer}.attn.Wqkv.bias": "blocks.{layer}.attn.qkv_proj.bias",
    "layers.{layer}.attn.Wo.weight": "blocks.{layer}.attn.o.weight",
    "layers.{layer}.attn.Wo.bias": "blocks.{layer}.attn.o.bias",
    "layers.{layer}.mlp_norm.weight": "blocks.{layer}.mlp_norm.weight",
    "layers.{layer}.mlp_norm.bias": "blocks.{layer}.mlp_norm.bias",
    "layers.{layer}.mlp.Wi.weight": "blocks.{layer}.mlp.gate_up.weight",
    "layers.{layer}.mlp.Wi.bias": "blocks.{layer}.mlp.gate_up.bias",
    "layers.{layer}.mlp.Wo.weight": "blocks.{layer}.mlp.down.weight",
    "layers.{layer}.mlp.Wo.bias": "blocks.{layer}.mlp.down.bias",
    "final_norm.weight": "final_norm.weight",
    "final_norm.bias": "final_norm.bias",
    # ModernBertForMaskedLM: head (dense, act, norm), then the decoder (tied) and its bias
    "head.dense.weight": "mlm.dense.weight",
    "head.dense.bias": "mlm.dense.bias",
    "head.norm.weight": "mlm.norm.weight",
    "head.norm.bias": "mlm.norm.bias",
    "decoder.weight": "unembed.weight",
    "decoder.bias": "mlm.bias",
}

# ModernBertConfig's defaults: what a config.json may leave out.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
    "num_attention_heads": 12, "hidden_activation": "gelu", "max_position_embeddings": 8192,
    "norm_eps": 1e-5, "norm_bias": False, "attention_bias": False, "mlp_bias": False,
    "decoder_bias": True, "classifier_bias": False, "local_attention": 128, "global_attn_every_n_layers": 3,
    "tie_word_embeddings": True,
}
GLOBAL_THETA, LOCAL_THETA = 160_000.0, 10_000.0  # ModernBertConfig.default_theta
_KINDS = ("full_attention", "sliding_attention")
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                "silu": "silu", "swish": "silu"}
_FLAGS = ("norm_bias", "attention_bias", "mlp_bias", "decoder_bias", "classifier_bias", "tie_word_embeddings")


def local_window(local_attention: int) -> int:
    """Our rule's window (keys less than W away) for ModernBERT's `local_attention`: a query
    sees local_attention // 2 keys on either side, so W = local_attention // 2 + 1."""
    return local_attention // 2 + 1


def _layer_types(raw: dict[str, Any], n_layers: int) -> list[str]:
    """`layer_types`, else every `global_attn_every_n_layers`-th layer global (from layer 0)."""
    types = raw.get("layer_types")
    if types is None:
        every = raw["global_attn_every_n_layers"]
        if not _positive_int(every):
            raise ConfigError(f"modernbert global_attn_every_n_layers must be a positive integer, got {_shown(every)}")
        return ["sliding_attention" if i % every else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"modernbert layer_types must list one type per layer ({n_layers}), got {_shown(types)}")
    for t in types:
        if t not in _KINDS:
            raise ConfigError(f"unsupported modernbert layer type {_shown(t)}", hint=f"supported: {', '.join(_KINDS)}")
    return types


def _thetas(raw: dict[str, Any]) -> dict[str, float]:
    """Each kind's RoPE base, as ModernBertConfig.convert_rope_params_to_dict reads it:
    nested `rope_parameters`, then `global_rope_theta` / `local_rope_theta`. Only default
    (unscaled) RoPE, which every published ModernBERT uses."""
    params = raw.get("rope_parameters") or {}
    if not isinstance(params, dict) or (params and not set(params) & set(_KINDS)):
        raise ConfigError(f"modernbert rope_parameters must be an object per layer kind ({', '.join(_KINDS)}), "
                          f"got {_shown(params)}")
    scaling = raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConfigError(f"modernbert rope_scaling must be an object, got {_shown(scaling)}")
    legacy = {"full_attention": raw.get("global_rope_theta", GLOBAL_THETA),
              "sliding_attention": raw.get("local_rope_theta", LOCAL_THETA)}
    out: dict[str, float] = {}
    for kind in _KINDS:
        entry = params.get(kind) or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"modernbert rope_parameters[{kind!r}] must be an object, got {_shown(entry)}")
        entry = {**entry, **(scaling or {})}
        rope_type = entry.get("rope_type", entry.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"unsupported modernbert rope scaling {_shown(rope_type)}", hint="supported: default")
        theta = entry.get("rope_theta", legacy[kind])
        if not _number(theta) or theta < 1:
            raise ConfigError(f"modernbert {kind} rope_theta must be a finite number of at least 1, got {_shown(theta)}")
        out[kind] = float(theta)
    return out


def _heads(raw: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """The task heads and whether there is an unembedding: ModernBertForMaskedLM's MLM
    head (its dense transform biased only with `classifier_bias`), else none (the bare
    model; a classifier's own head is not one of ours and is left unread)."""
    archs = raw.get("architectures") or ["ModernBertModel"]
    if not isinstance(archs, list):
        raise ConfigError(f"modernbert architectures must be a list, got {_shown(archs)}")
    if not any(isinstance(a, str) and "MaskedLM" in a for a in archs):
        return (), False
    if not raw["decoder_bias"]:
        raise ConfigError("modernbert without a decoder bias (decoder_bias false) is not supported",
                          hint="every published ModernBertForMaskedLM has one")
    return ("mlm",) if raw["classifier_bias"] else ("mlm_no_dense_bias",), True


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    raw = {**DEFAULTS, **raw}
    for key in _FLAGS:
        if not isinstance(raw[key], bool):
            raise ConfigError(f"modernbert {key} must be true or false, got {_shown(raw[key])}")
    act = raw["hidden_activation"]
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise ConfigError(f"unsupported modernbert hidden_activation {_shown(act)}",
                          hint=f"supported: {', '.join(_ACTIVATIONS)}")
    local = raw["local_attention"]
    if not _positive_int(local):
        raise ConfigError(f"modernbert local_attention must be a positive integer up to 2**31, got {_shown(local)}")
    eps = raw["norm_eps"]
    if not _number(eps) or eps < 0:
        raise ConfigError(f"modernbert norm_eps must be a finite non-negative number, got {_shown(eps)}")
    heads, lm_head = _heads(raw)
    thetas = _thetas(raw)
    bias = raw["attention_bias"]
    cfg = ModelConfig(
        name=name,
        family="modernbert",
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        d_mlp=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        n_ctx=raw["max_position_embeddings"],
        causal=False,
        positions="rope",
        rope_theta=thetas["full_attention"],
        norm="layernorm" if raw["norm_bias"] else "layernorm_no_bias",
        norm_eps=float(eps),
        embed_norm=True,
        final_norm=True,
        act=_ACTIVATIONS[act],
        layer_template=layer_kind("pre", mlp="gated", mlp_bias=raw["mlp_bias"], qkv_bias=bias, out_bias=bias),
        lm_head=lm_head,
        tied_embeddings=raw["tie_word_embeddings"],
        heads=heads,
        dtype=checkpoint_dtype(raw),
    )
    types = _layer_types(raw, cfg.n_layers)
    base = cfg.layer(0)
    kinds: dict[str, LayerSpec] = {
        "full_attention": base.with_attn(rope=RopeSpec(thetas["full_attention"], cfg.d_head)),
        "sliding_attention": base.with_attn(window=local_window(local),
                                            rope=RopeSpec(thetas["sliding_attention"], cfg.d_head)),
    }
    # layer 0 has no norm before its attention: a kind of its own, whatever its mask
    first = replace(kinds[types[0]], wiring="pre_no_attn_norm")
    return replace(cfg, kinds=Stack.of(first if i == 0 else kinds[t] for i, t in enumerate(types)))


def stored_parts(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes inside one stored tensor: `Wqkv` cut in three equal
    row blocks (q, k, v), `Wi` in two (gate, up), by arithmetic on shapes alone."""
    d = cfg.n_heads * cfg.d_head
    if ".attn.qkv_proj." in name and shape and shape[0] == 3 * d:
        return {name.replace(".qkv_proj.", f".{part}."): (d, *shape[1:]) for part in "qkv"}
    if ".mlp.gate_up." in name and shape and shape[0] == 2 * cfg.d_mlp:
        return {name.replace(".gate_up.", f".{part}."): (cfg.d_mlp, *shape[1:]) for part in ("gate", "up")}
    return {name: shape}


def split(name: str, tensor: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The fused `Wqkv` into q, k, v rows and `Wi` into gate (the activated half) and up
    rows. A tensor whose rows do not add up is passed on whole, for the loader to refuse
    by name."""
    parts = stored_parts(name, tuple(tensor.shape), cfg)
    if len(parts) == 1:
        return {name: tensor}
    pieces = tensor.split([shape[0] for shape in parts.values()], dim=0)  # (rows, d_model) -> per part
    return dict(zip(parts, pieces))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's modern-bert (gguf-py MODEL_TENSORS[MODERN_BERT]; convert_hf_to_gguf.py's
# ModernBertModel; src/models/modern-bert.cpp). The tensors keep ModernBERT's fusions:
# attn_qkv is Wqkv, ffn_up is Wi (the activated half first: ggml's GEGLU), and layer 0
# has no attn_norm. The converter writes `attention.sliding_window` = local_attention
# (llama.cpp's symmetric window: |i - j| <= local_attention / 2) and
# `attention.sliding_window_pattern` = global_attn_every_n_layers (llama.cpp counts it
# dense-first: layer il is local unless il % period == 0); the local layers' RoPE base is
# `rope.freq_base_swa`, else the global `rope.freq_base` (else 10,000), as llama.cpp reads
# them. The MLP's width comes from ffn_down (ffn_up holds twice it).

GGUF_ARCHS = ("modern-bert",)

GGUF_WEIGHTS: dict[str, str | None] = {
    "token_embd.weight": "embed.tok.weight",
    "token_embd_norm.weight": "embed.norm.weight",
    "token_embd_norm.bias": "embed.norm.bias",
    "output_norm.weight": "final_norm.weight",
    "output_norm.bias": "final_norm.bias",
    **{f"blk.{{layer}}.{g}.{p}": f"blocks.{{layer}}.{ours}.{p}"
       for g, ours in (("attn_norm", "attn_norm"), ("attn_qkv", "attn.qkv_proj"), ("attn_output", "attn.o"),
                       ("ffn_norm", "mlp_norm"), ("ffn_up", "mlp.gate_up"), ("ffn_down", "mlp.down"))
       for p in ("weight", "bias")},
}


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A config.json-style dict from `modern-bert.*` metadata and the tensor table."""
    from attnscope.architectures.llama import gguf_value

    def get(suffix: str, default: Any = KeyError) -> Any:
        return gguf_value(meta, f"{arch}.{suffix}", default)

    if get("attention.causal", False) is not False:
        raise ConfigError(f"a causal {arch} GGUF is not supported")
    act = meta.get(f"{arch}.hidden_act", "gelu")
    if act not in ("gelu", "geglu"):
        raise ConfigError(f"a {arch} GGUF with hidden_act {_shown(act)} is not supported", hint="supported: gelu")
    n_layers = get("block_count")
    down = shapes.get("blk.0.ffn_down.weight")
    raw: dict[str, Any] = {
        "model_type": "modernbert",
        "architectures": ["ModernBertModel"],
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": get("attention.head_count"),
        "intermediate_size": down[1] if down and len(down) == 2 else get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "norm_eps": get("attention.layer_norm_epsilon"),
        "norm_bias": "blk.0.ffn_norm.bias" in shapes,
        "attention_bias": "blk.0.attn_qkv.bias" in shapes,
        "mlp_bias": "blk.0.ffn_up.bias" in shapes,
        "hidden_activation": "gelu",
    }
    theta = get("rope.freq_base", 10000.0)  # checked with the config's own bases (_thetas)
    window = get("attention.sliding_window", 0)
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 3)
    if not window:  # no local layers
        raw["layer_types"] = ["full_attention"] * n_layers if _positive_int(n_layers) else n_layers
        raw["local_attention"] = 1
    else:
        raw["local_attention"] = window
        if isinstance(pattern, list):  # one flag per layer: true = local
            raw["layer_types"] = ["sliding_attention" if flag else "full_attention" for flag in pattern]
        else:
            raw["global_attn_every_n_layers"] = pattern
    raw["global_rope_theta"] = theta
    raw["local_rope_theta"] = get("rope.freq_base_swa", theta)
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    return split(name, tensor, cfg)
