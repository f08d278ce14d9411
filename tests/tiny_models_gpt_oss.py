"""A tiny random-weight gpt-oss (issue 25), built offline with tests/tiny_models.py's
recipe (`_build`: eager attention, float32, weights redrawn at std 0.25, saved by
transformers itself with a trained tokenizer).

Settings chosen to show what a naive port gets wrong:
- sinks redrawn at std 2.5, so each head's sink takes a visible share of every row;
- `layer_types` sliding, full, full, sliding (not the default alternation), with a window
  of 12, shorter than `GPT_OSS_TEXT` (90+ tokens);
- YaRN with factor 4 over 32 original positions (128 in all, `truncate` false), a base of 5000;
- 4 experts of width 16, top 2 over biased router logits; expert biases nonzero (every
  bias is redrawn); `swiglu_limit` 1.5, below the gate and up values' spread (std ≈ 1
  and more), so the clamp acts on many of them.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import SEED, SENTENCES, _build, _vocab_size, gpt2_tokenizer

GPT_OSS_TEXT = " ".join(SENTENCES)
GPT_OSS_WINDOW = 12
GPT_OSS_LAYER_TYPES = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]
GPT_OSS_LIMIT = 1.5
GPT_OSS_ROPE = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 32}
SINK_STD = 2.5


def gpt_oss(folder: Path, seed: int = SEED) -> Path:
    """gpt-oss: width 32, 4 layers, 4 query heads of 16 (head_dim ≠ width / heads) on 2
    key/value heads, q/k/v/o biases, sinks, 4 experts of width 16, top 2, untied."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    tok = gpt2_tokenizer()
    config = GptOssConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=GPT_OSS_WINDOW, layer_types=GPT_OSS_LAYER_TYPES,
        rope_parameters=dict(GPT_OSS_ROPE), swiglu_limit=GPT_OSS_LIMIT, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    folder = _build(config, GptOssForCausalLM, Path(folder), tok, seed)
    # sinks of a few units: rows then sum visibly below 1 (reinit drew them at std 0.25)
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed + 1)
    for name in sorted(tensors):
        if name.endswith(".self_attn.sinks"):
            tensors[name] = torch.randn(tensors[name].shape, generator=gen) * SINK_STD
    save_file(tensors, str(path), metadata={"format": "pt"})
    return folder
