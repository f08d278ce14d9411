"""SmolLM3: Llama's block and weight names, with some layers left without RoPE.

`no_rope_layers[i]` is inverted from its name: 1 means layer i *rotates* its queries and
keys, 0 that it does not (transformers' `SmolLM3Attention.use_rope`). Without the list,
every `no_rope_layer_interval`-th layer (default 4: layers 3, 7, 11, ...) goes unrotated.
With `use_sliding_window` and a `sliding_window`, the unrotated layers are the sliding
ones, unless `layer_types` says otherwise (transformers' eager mask follows `layer_types`).
After transformers' configuration_smollm3.py and modeling_smollm3.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnscope.architectures import llama
from attnscope.architectures._common import layer_windows
from attnscope.config import MAX_SIZE, ModelConfig
from attnscope.errors import ConfigError
from attnscope.kinds import Stack

MODEL_TYPES = ("smollm3",)
PREFIXES = ("model.",)
DESCRIPTION = "SmolLM3: Llama layout, some layers without RoPE (no_rope_layers), optional sliding windows"

WEIGHTS: dict[str, str | None] = dict(llama.WEIGHTS)

DEFAULT_THETA = 2_000_000.0  # SmolLM3Config.default_theta, when config.json names no base


def rope_layers(raw: dict[str, Any], n_layers: int) -> list[bool]:
    """Which layers rotate: `no_rope_layers` (1 = rotates), else every
    `no_rope_layer_interval`-th layer does not."""
    flags = raw.get("no_rope_layers")
    if flags is None:
        interval = raw.get("no_rope_layer_interval", 4)
        if isinstance(interval, bool) or not isinstance(interval, int) or not 0 < interval <= MAX_SIZE:
            raise ConfigError(f"config.json's no_rope_layer_interval must be a positive integer, got {interval!r:.60}")
        return [(i + 1) % interval != 0 for i in range(n_layers)]
    # transformers indexes the list by layer, so a longer list is allowed (its docstring says so)
    if not isinstance(flags, list) or len(flags) < n_layers or any(f not in (0, 1) for f in flags[:n_layers]):
        raise ConfigError(f"config.json's no_rope_layers must list 0 or 1 for each of the {n_layers} layers, "
                          f"got {str(flags):.60}", hint="1 means the layer uses RoPE, 0 that it does not")
    return [bool(f) for f in flags[:n_layers]]


def config_from_hf(raw: dict[str, Any], name: str = "") -> ModelConfig:
    params = raw.get("rope_parameters")
    if "rope_theta" not in raw and not (isinstance(params, dict) and "rope_theta" in params):
        raw = {**raw, "rope_theta": DEFAULT_THETA}
    if "max_position_embeddings" not in raw:
        raw = {**raw, "max_position_embeddings": 32768}
    cfg = llama.config_from_hf(raw, name)
    n_layers = cfg.n_layers
    rotates = rope_layers(raw, n_layers)
    window = raw.get("sliding_window")
    default = ["sliding_attention" if raw.get("use_sliding_window") and window is not None and not r
               else "full_attention" for r in rotates]
    windows = layer_windows(raw, n_layers, window, default)
    if windows is not None:
        cfg = replace(cfg, sliding_window=window, layer_windows=windows)
    base = cfg.layer(0).attn.rope
    if all(rotates):
        return cfg
    made: dict[tuple[int, bool], Any] = {}  # one spec per (kind, rotates), not one per layer

    def kind(i: int, r: bool) -> Any:
        layer = cfg.layer(i)
        if (id(layer), r) not in made:
            made[id(layer), r] = layer.with_attn(rope=base if r else None)
        return made[id(layer), r]

    return replace(cfg, kinds=Stack.of(kind(i, bool(r)) for i, r in enumerate(rotates)))


# --------------------------------------------------------------------------- GGUF
# llama.cpp's smollm3 architecture: Llama's tensor names, q/k rows permuted by the
# converter (SmolLM3Model is a LlamaModel: NORM RoPE), and no metadata key for the
# layers without RoPE: llama.cpp hard-codes every fourth (src/models/smollm3.cpp,
# n_no_rope_layer_step = 4), which is SmolLM3Config's default interval.

GGUF_ARCHS = ("smollm3",)

GGUF_WEIGHTS: dict[str, str | None] = dict(llama.GGUF_WEIGHTS)


def config_from_gguf(meta: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    raw = llama.config_from_gguf(meta, arch, shapes)
    raw["model_type"] = "smollm3"
    raw["no_rope_layer_interval"] = 4
    raw["attention_bias"] = "blk.0.attn_q.bias" in shapes
    raw["mlp_bias"] = "blk.0.ffn_up.bias" in shapes
    if "head_dim" not in raw and f"{arch}.rope.dimension_count" in meta:
        raw["head_dim"] = llama.gguf_value(meta, f"{arch}.rope.dimension_count")  # the whole head rotates
    return raw


def gguf_tensor(name: str, tensor: Any, cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """Undo the converter's q/k row permutation, exactly as for llama.cpp's `llama`."""
    return llama.gguf_tensor(name, tensor, cfg, "llama")
