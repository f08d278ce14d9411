"""Tiny random-weight DeepSeek-V3 checkpoints (multi-head latent attention), built offline
with transformers' DeepseekV3ForCausalLM by the recipe of tests/tiny_models.py (`_build`:
eager attention, float32, weights redrawn at std 0.25, saved by transformers itself).

Every setting a naive port could get wrong is set to a value that shows it:

- the value width (v_head_dim 6) differs from the query/key width (nope 8 + rope 4 = 12),
  and `kv_lora_rank` (10) from both, so a swapped split or a square assumption fails;
- RoPE turns only the last 4 of each head's 12 query/key dimensions, laid out in
  adjacent pairs (`rope_interleave`, DeepSeek's default), with a non-default base;
- `deepseek_yarn`: YaRN stretched 4× over 32 original positions with mscale 0.7 and
  mscale_all_dim 1.3, so cos/sin carry mscale(4, 0.7)/mscale(4, 1.3) ≠ 1 and the score
  scale mscale(4, 1.3)² ≠ 1; `deepseek_plain_q` has no query rank (a plain q_proj) and
  rotate-half RoPE (`rope_interleave` false), with attention biases;
- `deepseek_dense` and `deepseek_yarn` make every layer dense (first_k_dense_replace =
  num_hidden_layers); `deepseek_moe` (with YaRN too) keeps one dense layer, then experts with grouped
  sigmoid routing: 8 experts in 4 groups, 2 groups kept, 3 experts per token, a
  non-zero score-correction bias, routed_scaling_factor 2.5 and one shared expert.

`DEEPSEEK_TEXT` (tests/tiny_models_kinds.KINDS_TEXT) is 90+ tokens in these tokenizers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tiny_models import SEED, _build, _vocab_size, llama3_tokenizer, rewrite_config
from tiny_models_kinds import KINDS_TEXT

DEEPSEEK_TEXT = KINDS_TEXT
THETA = 5000.0
YARN = {"rope_type": "yarn", "rope_theta": THETA, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.7, "mscale_all_dim": 1.3}
CORRECTION_STD = 0.3  # the score-correction bias: large enough to change some choices


def _config(tok: Any, **changes: Any) -> Any:
    from transformers import DeepseekV3Config

    kwargs: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
        n_routed_experts=8, routed_scaling_factor=2.5, kv_lora_rank=10, q_lora_rank=12, qk_rope_head_dim=4,
        v_head_dim=6, qk_nope_head_dim=8, n_group=4, topk_group=2, num_experts_per_tok=3, first_k_dense_replace=1,
        norm_topk_prob=True, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_interleave=True, rope_parameters={"rope_type": "default", "rope_theta": THETA},
        bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=tok.token_to_id("<|end_of_text|>"),
        pad_token_id=None, num_mtp_layers=0,  # no next-token-prediction module (a test adds one)
    )
    kwargs.update(changes)
    return DeepseekV3Config(**kwargs)


def _save(config: Any, folder: Path, seed: int) -> Path:
    from transformers import DeepseekV3ForCausalLM

    tok = llama3_tokenizer()
    path = _build(config, DeepseekV3ForCausalLM, Path(folder), tok, seed)
    return path


def _with_correction_bias(path: Path, seed: int) -> None:
    """The routers' score-correction bias is a buffer transformers zeroes: give it values."""
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    tensors = load_file(str(file))
    gen = torch.Generator().manual_seed(seed + 1)
    for name in list(tensors):
        if name.endswith("e_score_correction_bias"):
            tensors[name] = torch.randn(tensors[name].shape, generator=gen) * CORRECTION_STD
    save_file(tensors, str(file), metadata={"format": "pt"})


def _hub_rope(raw: dict[str, Any]) -> None:
    """config.json as DeepSeek-V3's own: `rope_theta` and `rope_scaling` at the top level."""
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = None if params.get("rope_type") == "default" else {
        **{k: v for k, v in params.items() if k != "rope_type"}, "type": params["rope_type"]}


def deepseek_dense(folder: Path, seed: int = SEED) -> Path:
    tok = llama3_tokenizer()
    path = _save(_config(tok, first_k_dense_replace=3), folder, seed)
    rewrite_config(path, _hub_rope)
    return path


def deepseek_plain_q(folder: Path, seed: int = SEED) -> Path:
    tok = llama3_tokenizer()
    path = _save(_config(tok, first_k_dense_replace=2, num_hidden_layers=2, q_lora_rank=None, rope_interleave=False,
                         attention_bias=True), folder, seed)
    return path


def deepseek_yarn(folder: Path, seed: int = SEED) -> Path:
    tok = llama3_tokenizer()
    path = _save(_config(tok, rope_parameters=dict(YARN), first_k_dense_replace=3), folder, seed)
    rewrite_config(path, _hub_rope)
    return path


def deepseek_moe(folder: Path, seed: int = SEED) -> Path:
    tok = llama3_tokenizer()
    path = _save(_config(tok, rope_parameters=dict(YARN)), folder, seed)
    _with_correction_bias(path, seed)
    rewrite_config(path, _hub_rope)
    return path


DEEPSEEK_BUILDERS: dict[str, Callable[..., Path]] = {
    "deepseek_dense": deepseek_dense,
    "deepseek_plain_q": deepseek_plain_q,
    "deepseek_yarn": deepseek_yarn,
    "deepseek_moe": deepseek_moe,
}
