"""Tiny random-weight Gemma 4 checkpoints (`gemma4_text`, Gemma4ForCausalLM), built offline
with tests/tiny_models.py's recipe (eager attention, float32, every parameter redrawn at
std 0.25 by `reinit`, saved by transformers with a trained tokenizer), plus each block's
`layer_scalar` buffer redrawn away from 1 (reinit draws parameters only).

Every setting a naive port could get wrong is set to show it:
- 5 layers of kinds local, global, local, local, global; the last two (`num_kv_shared_layers`
  2) read the keys and values of layers 2 (local) and 1 (global): the last earlier layer of
  their own kind, not simply the layer before;
- a window of 8 and KINDS_TEXT (90+ tokens): every local layer cuts off most of each row;
- global heads of 32 where local ones are 16, proportional RoPE turning half of the global
  frequencies, RoPE bases 500 (local) and 20000 (global), both non-default;
- `gemma4`: per-layer input embeddings of width 8 and a double-wide MLP on the KV-shared
  layers; `gemma4_keqv`: `attention_k_eq_v` (global values are the key projection) with one
  global key/value head where local layers have two, no per-layer inputs;
- a final logit soft-cap of 3 (the Hub's 30 would hardly bend these logits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tiny_models import SEED, _save, _vocab_size, mistral_tokenizer, reinit

WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
N_SHARED = 2
SOURCES = [None, None, None, 2, 1]  # each layer's key/value owner
LOCAL_THETA, GLOBAL_THETA = 500.0, 20000.0
PLE_WIDTH = 8
FINAL_SOFTCAP = 3.0
INIT_STD = 0.25


def _config(tok: Any, **extra: Any) -> Any:
    from transformers import Gemma4TextConfig

    vocab = _vocab_size(tok)
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        max_position_embeddings=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        tie_word_embeddings=True, sliding_window=WINDOW, layer_types=list(LAYER_TYPES),
        num_kv_shared_layers=N_SHARED, final_logit_softcapping=FINAL_SOFTCAP,
        vocab_size_per_layer_input=vocab, hidden_size_per_layer_input=0,
        pad_token_id=tok.token_to_id("<unk>"), bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_THETA},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": GLOBAL_THETA},
        },
    )
    kwargs.update(extra)
    return Gemma4TextConfig(**kwargs)


def _build(config: Any, folder: Path, tok: Any, seed: int) -> Path:
    from transformers import Gemma4ForCausalLM

    config.initializer_range = INIT_STD
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma4ForCausalLM(config).to(torch.float32).eval()
    reinit(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:  # a buffer, saved with the weights: away from 1
            layer.layer_scalar.copy_(0.5 + torch.rand(1, generator=gen))
    model.tie_weights()
    return _save(model, Path(folder), tok)


def gemma4(folder: Path, seed: int = SEED) -> Path:
    """Per-layer inputs (width 8) and double-wide MLPs on the KV-shared layers."""
    tok = mistral_tokenizer()
    return _build(_config(tok, hidden_size_per_layer_input=PLE_WIDTH, use_double_wide_mlp=True), folder, tok, seed)


def gemma4_keqv(folder: Path, seed: int = SEED + 7) -> Path:
    """`attention_k_eq_v` with one global key/value head (local layers: two)."""
    tok = mistral_tokenizer()
    return _build(_config(tok, attention_k_eq_v=True, num_global_key_value_heads=1), folder, tok, seed)


GEMMA4_BUILDERS: dict[str, Callable[[Path], Path]] = {"gemma4": gemma4, "gemma4_keqv": gemma4_keqv}
