"""Tiny random-weight Qwen3.5 and Qwen3-Next checkpoints (hybrids of Gated DeltaNet linear
layers and gated softmax layers), built offline with transformers by the recipe of
tests/tiny_models.py (`_build`: eager attention, float32, weights redrawn at std 0.25,
saved by transformers itself with a trained tokenizer).

Settings chosen so that a naive port fails:
- `layer_types` mixes linear and full layers out of the default 3:1 order
  (linear, full, linear, linear), so a rule-based guess of the kinds is caught;
- value heads (4) twice the key heads (2) in the linear layers, key width (12) ≠ value
  width (8) ≠ the softmax head width (16), so a swapped split or a missed grouping fails;
- softmax layers: 4 query heads on 2 key/value heads of 16 with partial RoPE (0.25 × 16 =
  4 dims) at a non-default base, per-head q/k norm and the output gate; the text model's
  multimodal RoPE sections stay in the config (`mrope_section`), as the Hub's files have them;
- decays spread from ~1 (A_log ≈ −4) to fast forgetting (A_log ≈ +1.5), norms (1 + w) and
  the gated norm's plain scale redrawn around 1;
- `qwen3_5_mm`: the multimodal wrapper's text tower (`qwen3_5` with `text_config`, weights
  under `model.language_model.`), with its small vision tower saved beside it;
- `qwen3_next`: Qwen3-Next's fused in_proj_qkvz / in_proj_ba grouped per key head, experts
  (4 of width 16, top 2, renormalised) with a sigmoid-gated shared expert on layers 1 and 3
  (`decoder_sparse_step` 1, `mlp_only_layers` [0, 2] dense).

`QWEN_TEXT` is 90+ tokens in these tokenizers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tiny_models import SEED, _build, _vocab_size, gpt2_tokenizer
from tiny_models_kinds import KINDS_TEXT

QWEN_TEXT = KINDS_TEXT
THETA = 20000.0
LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]


def _text_settings(tok: Any) -> dict[str, Any]:
    return dict(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=40, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=12, linear_value_head_dim=8,
        linear_conv_kernel_dim=4, layer_types=list(LAYER_TYPES), rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": THETA, "partial_rotary_factor": 0.25,
                         "mrope_section": [1, 1, 0], "mrope_interleaved": True},
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )


@torch.no_grad()
def _decays(model: torch.nn.Module, seed: int) -> None:
    """A_log across (−4, 1.5): per-token decays from ≈1 (keep) to fast forgetting."""
    gen = torch.Generator().manual_seed(seed + 7)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.copy_(torch.rand(p.shape, generator=gen) * 5.5 - 4.0)


def _finish(folder: Path, model_cls: type, seed: int) -> Path:
    """Redraw the decays in the saved checkpoint (transformers' own save, once more)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = model_cls.from_pretrained(folder, dtype=torch.float32)
    _decays(model, seed)
    model.save_pretrained(folder)
    return folder


def qwen3_5(folder: Path, seed: int = SEED) -> Path:
    """Qwen3.5 text (Qwen3_5ForCausalLM): width 32, 4 layers (linear, full, linear, linear)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    tok = gpt2_tokenizer()
    config = Qwen3_5TextConfig(**_text_settings(tok))
    _build(config, Qwen3_5ForCausalLM, Path(folder), tok, seed)
    return _finish(Path(folder), Qwen3_5ForCausalLM, seed)


def qwen3_5_mm(folder: Path, seed: int = SEED + 1) -> Path:
    """The multimodal Qwen3.5 (Qwen3_5ForConditionalGeneration): the same text tower under
    `text_config` (tied embeddings this time), a 1-layer vision tower of width 16."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tok = gpt2_tokenizer()
    text = {**_text_settings(tok), "tie_word_embeddings": True}
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4, temporal_patch_size=2,
                  spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16)
    config = Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=True,
                           image_token_id=1, video_token_id=2, vision_start_token_id=3, vision_end_token_id=4)
    _build(config, Qwen3_5ForConditionalGeneration, Path(folder), tok, seed)
    return _finish(Path(folder), Qwen3_5ForConditionalGeneration, seed)


def qwen3_next(folder: Path, seed: int = SEED + 2) -> Path:
    """Qwen3-Next: the same layer types, experts on layers 1 and 3 with a gated shared expert."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    tok = gpt2_tokenizer()
    settings = _text_settings(tok)
    settings["rope_parameters"] = {"rope_type": "default", "rope_theta": THETA, "partial_rotary_factor": 0.25}
    config = Qwen3NextConfig(**settings, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                             shared_expert_intermediate_size=24, norm_topk_prob=True, decoder_sparse_step=1,
                             mlp_only_layers=[0, 2])
    _build(config, Qwen3NextForCausalLM, Path(folder), tok, seed)
    return _finish(Path(folder), Qwen3NextForCausalLM, seed)


def qwen3_5_mixed(folder: Path, seed: int = SEED + 3) -> Path:
    """Qwen3.5 text whose layers differ in head count, as the real sizes do (16 value heads
    in the linear layers, 8 query heads in the softmax ones): 4 value heads, 2 query heads
    on 1 key/value head."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    tok = gpt2_tokenizer()
    config = Qwen3_5TextConfig(**{**_text_settings(tok), "num_attention_heads": 2, "num_key_value_heads": 1})
    _build(config, Qwen3_5ForCausalLM, Path(folder), tok, seed)
    return _finish(Path(folder), Qwen3_5ForCausalLM, seed)


QWEN3_5_BUILDERS: dict[str, Callable[..., Path]] = {"qwen3_5": qwen3_5, "qwen3_5_mm": qwen3_5_mm,
                                                    "qwen3_next": qwen3_next, "qwen3_5_mixed": qwen3_5_mixed}


def ids_of(folder: Path) -> list[int]:
    """QWEN_TEXT's ids under the folder's tokenizer (`tiny_models.plain_tokenizer`)."""
    from tiny_models import plain_tokenizer

    return plain_tokenizer(folder).encode(QWEN_TEXT).ids


def text_layers(model: Any) -> Any:
    """transformers' decoder layers: the text model's, in a multimodal wrapper too."""
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers
