"""Tiny random-weight checkpoints of the families whose layers differ in kind (issue 24):
Gemma 3, Phi-3 / Phi-4-mini, OLMo 2, OLMo 3, SmolLM3 and Granite, built offline.

The same recipe as tests/tiny_models.py (`_build`: eager attention, float32, weights
redrawn by `reinit` at std 0.25, saved by transformers itself with a trained tokenizer), so
the parity tests of the layer-kinds redesign can run these against transformers exactly as
they run the older families. Every setting that a naive port could get wrong is set to a
value that shows it:

- windows are short (8 to 40 tokens) and `KINDS_TEXT` tokenizes to 90+ tokens in every
  tokenizer here, so every sliding layer cuts off most of each row;
- layer kinds follow no default pattern (Gemma 3 local, global, local, local; OLMo 3
  sliding, full, sliding, sliding; SmolLM3 RoPE on layers 0, 2, 3 but not 1), so a reader
  that falls back to `sliding_window_pattern` 6, OLMo 3's every-fourth rule or SmolLM3's
  `no_rope_layer_interval` 4 disagrees on some layer;
- every RoPE base is a non-default one, and Gemma 3's local and global bases differ;
- Gemma 3's `query_pre_attn_scalar` (24) is not its head size (16);
- Phi-4-mini's rotary covers 12 of 16 dimensions, with `longrope` trained for 32 positions
  and stretched to 128, so 90 tokens select the long factors (and a text under 33 tokens the
  short ones);
- Granite's four multipliers are far from 1.

`KIND_BUILDERS` lists them by the name tests use; `WINDOWS` gives each builder's window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tiny_models import (
    LLAMA3_SPECIALS,
    SEED,
    SENTENCES,
    _build,
    _vocab_size,
    gpt2_tokenizer,
    llama3_tokenizer,
    mistral_tokenizer,
    rewrite_config,
)

# One text that is 90+ tokens in every tokenizer of this file (the tests check it), longer
# than every window here.
KINDS_TEXT = " ".join(SENTENCES)

GEMMA3_WINDOW = 8
GEMMA3_QUERY_SCALAR = 24
GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
GEMMA3_GLOBAL_THETA = 20000.0  # the Hub default is 1e6: a reader that drops the key shows
GEMMA3_LOCAL_THETA = 500.0  # the Hub default is 1e4; and it differs from the global base

PHI3_WINDOW = 40
PHI4_ROTARY = 0.75  # Phi-4-mini's partial_rotary_factor: 12 of 16 dimensions rotate
PHI4_ORIGINAL_CONTEXT = 32
PHI4_CONTEXT = 128
# One factor per rotated frequency (12 / 2): short ones near 1, long ones growing, both
# away from 1 so that either set being dropped shows.
PHI4_SHORT_FACTOR = [1.0, 1.1, 1.2, 1.3, 1.5, 1.7]
PHI4_LONG_FACTOR = [1.0, 1.5, 2.5, 4.0, 6.0, 9.0]

OLMO_THETA = 5000.0
OLMO3_WINDOW = 8
OLMO3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]

SMOLLM3_NO_ROPE_LAYERS = [1, 0, 1, 1]  # 1 = this layer uses RoPE, 0 = it does not
SMOLLM3_THETA = 2000.0

GRANITE_MULTIPLIERS = {
    "embedding_multiplier": 12.0,
    "attention_multiplier": 0.3,  # the score scale itself, in place of 1/sqrt(8) = 0.354
    "residual_multiplier": 0.22,
    "logits_scaling": 8.0,  # logits are divided by it
}

# The window of each builder's sliding layers (None: no window).
WINDOWS: dict[str, int | None] = {
    "gemma3": GEMMA3_WINDOW,
    "gemma3_legacy": GEMMA3_WINDOW,
    "gemma3_multimodal": GEMMA3_WINDOW,
    "phi3": PHI3_WINDOW,
    "phi4_mini": None,
    "olmo2": None,
    "olmo3": OLMO3_WINDOW,
    "smollm3": None,
    "granite": None,
}


# -------------------------------------------------------------------------- Gemma 3


def _gemma3_text_config(tok: Any, n_layers: int, layer_types: list[str] | None) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        query_pre_attn_scalar=GEMMA3_QUERY_SCALAR, sliding_window=GEMMA3_WINDOW, layer_types=layer_types,
        pad_token_id=tok.token_to_id("<unk>"), bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": GEMMA3_GLOBAL_THETA},
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_THETA},
        },
    )


def gemma3(folder: Path, seed: int = SEED, legacy_config: bool = False) -> Path:
    """Gemma 3 (`gemma3_text`, Gemma3ForCausalLM): width 32, 4 query heads of 16 on 2
    key/value heads, q/k RMSNorm over each head (`1 + weight`, before RoPE), scores scaled
    by 1/sqrt(24), embeddings times sqrt(32), four norms per block, tied unembedding, no
    soft-capping. Local layers see a window of 8 and rotate with base 500; global layers
    see everything and rotate with base 20000.

    By default 4 layers of `GEMMA3_LAYER_TYPES` (local, global, local, local), written to
    config.json as `layer_types` and nested `rope_parameters`. `legacy_config` writes the
    file as gemma-3-1b's is instead: no `layer_types`, `sliding_window_pattern` 2 (so
    local, global, local, global), `rope_theta` and `rope_local_base_freq` at the top level."""
    from transformers import Gemma3ForCausalLM

    tok = mistral_tokenizer()
    config = _gemma3_text_config(tok, 4, None if legacy_config else GEMMA3_LAYER_TYPES)
    if legacy_config:
        config.layer_types = ["sliding_attention", "full_attention"] * 2
    path = _build(config, Gemma3ForCausalLM, Path(folder), tok, seed)
    if legacy_config:
        def legacy(raw: dict[str, Any]) -> None:
            params = raw.pop("rope_parameters")
            raw["rope_theta"] = params["full_attention"]["rope_theta"]
            raw["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
            raw.pop("layer_types")
            raw.pop("_sliding_window_pattern", None)
            raw["sliding_window_pattern"] = 2
            raw["torch_dtype"] = raw.pop("dtype")

        rewrite_config(path, legacy)
    return path


def gemma3_multimodal(folder: Path, seed: int = SEED) -> Path:
    """A `gemma3` checkpoint (Gemma3ForConditionalGeneration) whose text tower is
    `gemma3`'s (4 layers of `GEMMA3_LAYER_TYPES`), with a one-layer SigLIP vision tower of
    width 16 (28-pixel images, patches of 14) and the multimodal projector, as the Hub's
    gemma-3-4b and larger ship: weights under `model.language_model.`, `model.vision_tower.`
    and `model.multi_modal_projector.`, config under `text_config`. Text-only passes never
    touch the vision tower."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    tok = mistral_tokenizer()
    text = _gemma3_text_config(tok, 4, GEMMA3_LAYER_TYPES)
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14, vision_use_head=False,
    )
    # The special image tokens must lie inside the tiny vocabulary.
    n = text.vocab_size
    config = Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=1,
        boi_token_index=n - 3, eoi_token_index=n - 2, image_token_index=n - 1,
    )
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    return _build(config, Gemma3ForConditionalGeneration, Path(folder), tok, seed)


# ------------------------------------------------------------------- Phi-3 / Phi-4


def phi3(folder: Path, seed: int = SEED) -> Path:
    """Phi-3-mini-4k in small: width 32, 2 layers, 4 heads of 8 (no grouping, as the real
    one), fused `qkv_proj` (q rows, then k, then v) and `gate_up_proj` (gate rows, then up),
    full rotary with base 10000, a sliding window of 40 on every layer, untied. config.json
    is written as the Hub's file is: `rope_theta` at the top level, `rope_scaling` null."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tok = mistral_tokenizer()
    config = Phi3Config(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        original_max_position_embeddings=256, rms_norm_eps=1e-5, sliding_window=PHI3_WINDOW,
        tie_word_embeddings=False, pad_token_id=tok.token_to_id("<unk>"),
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    path = _build(config, Phi3ForCausalLM, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        params = raw.pop("rope_parameters")
        raw["rope_theta"] = params["rope_theta"]
        raw["rope_scaling"] = None
        raw["torch_dtype"] = raw.pop("dtype")

    rewrite_config(path, hub)
    return path


def phi4_mini(folder: Path, seed: int = SEED) -> Path:
    """Phi-4-mini in small: width 64, 2 layers, 4 query heads of 16 on 2 key/value heads,
    rotary on the first 12 of each head's 16 dimensions (`partial_rotary_factor` 0.75),
    `longrope` trained for 32 positions and stretched to 128 (6 short and 6 long factors;
    attention factor sqrt(1 + ln 4 / ln 32) on cos and sin), no window, tied. config.json is
    written as Phi-4-mini-instruct's is: `rope_scaling` {"type": "longrope", ...},
    `partial_rotary_factor`, `rope_theta` and `original_max_position_embeddings` at the top
    level."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tok = mistral_tokenizer()
    config = Phi3Config(
        vocab_size=_vocab_size(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=PHI4_CONTEXT,
        original_max_position_embeddings=PHI4_ORIGINAL_CONTEXT, rms_norm_eps=1e-5,
        sliding_window=None, tie_word_embeddings=True, pad_token_id=tok.token_to_id("<unk>"),
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": PHI4_ROTARY,
            "short_factor": PHI4_SHORT_FACTOR, "long_factor": PHI4_LONG_FACTOR,
        },
    )
    path = _build(config, Phi3ForCausalLM, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        params = raw.pop("rope_parameters")
        raw["rope_theta"] = params["rope_theta"]
        raw["partial_rotary_factor"] = params["partial_rotary_factor"]
        raw["rope_scaling"] = {
            "long_factor": params["long_factor"], "short_factor": params["short_factor"], "type": "longrope",
        }
        raw["torch_dtype"] = raw.pop("dtype")

    rewrite_config(path, hub)
    return path


# ------------------------------------------------------------------------- OLMo 2 / 3


def _olmo_kwargs(tok: Any) -> dict[str, Any]:
    eot = tok.token_to_id("<|endoftext|>")
    return dict(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=eot, bos_token_id=None, eos_token_id=eot,
    )


def olmo2(folder: Path, seed: int = SEED) -> Path:
    """OLMo 2: width 32, 2 layers, 4 query heads on 2 key/value heads, RMSNorm over the
    whole q projection (32) and the whole k projection (16) before the split into heads,
    no norm before attention or MLP but one after each (inside the residual branch),
    RoPE base 5000, untied. config.json is written as OLMo-2-1124-7B's is (`rope_theta`)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    tok = gpt2_tokenizer()
    config = Olmo2Config(
        num_hidden_layers=2, rope_parameters={"rope_type": "default", "rope_theta": OLMO_THETA},
        **_olmo_kwargs(tok),
    )
    path = _build(config, Olmo2ForCausalLM, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        raw["rope_theta"] = raw.pop("rope_parameters")["rope_theta"]
        raw["rope_scaling"] = None
        raw["torch_dtype"] = raw.pop("dtype")

    rewrite_config(path, hub)
    return path


def olmo3(folder: Path, seed: int = SEED) -> Path:
    """OLMo 3: OLMo 2's block, 4 layers of `OLMO3_LAYER_TYPES` (sliding, full, sliding,
    sliding; not OLMo 3's every-fourth default), a window of 8 on the sliding layers, both
    kinds with RoPE base 5000. config.json keeps `layer_types` and the nested
    `rope_parameters` (a top-level `rope_theta` would reach only the full layers: transformers
    gives sliding layers 500000 then)."""
    from transformers import Olmo3Config, Olmo3ForCausalLM

    tok = gpt2_tokenizer()
    config = Olmo3Config(
        num_hidden_layers=4, layer_types=OLMO3_LAYER_TYPES, sliding_window=OLMO3_WINDOW,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": OLMO_THETA},
            "sliding_attention": {"rope_type": "default", "rope_theta": OLMO_THETA},
        },
        **_olmo_kwargs(tok),
    )
    return _build(config, Olmo3ForCausalLM, Path(folder), tok, seed)


# ----------------------------------------------------------------------------- SmolLM3


def smollm3(folder: Path, seed: int = SEED) -> Path:
    """SmolLM3: Llama's block (width 32, 4 layers, 4 query heads on 2 key/value heads,
    RoPE base 2000, tied) with layer 1 left without RoPE: `no_rope_layers` [1, 0, 1, 1],
    where 1 means the layer rotates. The list is written to config.json, and it is not the
    `no_rope_layer_interval` default (which would leave layer 3 unrotated)."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    tok = llama3_tokenizer()
    bos, eos = LLAMA3_SPECIALS
    config = SmolLM3Config(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=True, no_rope_layers=SMOLLM3_NO_ROPE_LAYERS,
        use_sliding_window=False, pad_token_id=None, bos_token_id=tok.token_to_id(bos),
        eos_token_id=tok.token_to_id(eos), rope_parameters={"rope_type": "default", "rope_theta": SMOLLM3_THETA},
    )
    return _build(config, SmolLM3ForCausalLM, Path(folder), tok, seed)


# ----------------------------------------------------------------------------- Granite


def granite(folder: Path, seed: int = SEED) -> Path:
    """Granite 3: Llama's block (width 32, 2 layers, 4 query heads on 2 key/value heads,
    tied) with embeddings times 12, scores times 0.3 (in place of 1/sqrt(head size)),
    each sublayer's output times 0.22 before the residual add, and logits divided by 8.
    config.json is written as granite-3.3-2b's is (`rope_theta` 10^7 at the top level)."""
    from transformers import GraniteConfig, GraniteForCausalLM

    tok = gpt2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    config = GraniteConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, rope_parameters={"rope_type": "default", "rope_theta": 10000000.0},
        **GRANITE_MULTIPLIERS,
    )
    path = _build(config, GraniteForCausalLM, Path(folder), tok, seed)

    def hub(raw: dict[str, Any]) -> None:
        raw["rope_theta"] = raw.pop("rope_parameters")["rope_theta"]
        raw["rope_scaling"] = None
        raw["torch_dtype"] = raw.pop("dtype")

    rewrite_config(path, hub)
    return path


# Every builder, by the name the tests use.
KIND_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "gemma3": gemma3,
    "gemma3_legacy": lambda folder: gemma3(folder, legacy_config=True),
    "gemma3_multimodal": gemma3_multimodal,
    "phi3": phi3,
    "phi4_mini": phi4_mini,
    "olmo2": olmo2,
    "olmo3": olmo3,
    "smollm3": smollm3,
    "granite": granite,
}
