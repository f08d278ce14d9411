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


def write_gguf(path: Path, model: Any, used_count: bool = True) -> Path:
    """A tiny `gemma4` GGUF as convert_hf_to_gguf.py's Gemma4Model writes one, ported here
    independently: norms as they are, `layer_scalar` as blk.N.layer_output_scale.weight, the
    per-layer tensors by gguf-py's names, key lengths global and local, one sliding-window
    flag and one key/value head count and MLP width per layer, shared_kv_layers, and the
    global RoPE as rope_freqs (1 per turning frequency, 1e30 per standing one). Its
    vocabulary is a SentencePiece one (tokenizer model "llama"); llama.cpp's own "gemma4"
    tokenizer model is tested in test_gguf_real_forms.

    With `enable_moe_block` (a 26B-A4B-like model) also the MoE keys (expert_count,
    expert_used_count unless `used_count` is False: an incomplete file,
    expert_feed_forward_length) and the MoE tensors after filter_tensors (".weight" added to
    the fused experts) and modify_tensors (router.scale as `ffn_gate_inp.scale`,
    per_expert_scale as `ffn_down_exps.scale`)."""
    import gguf
    import tiny_gguf as tg

    cfg = model.config
    L = cfg.num_hidden_layers
    moe = bool(getattr(cfg, "enable_moe_block", False))
    vocab = tg.gemma_vocab().pad(cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, L)
    w = gguf.GGUFWriter(path, "gemma4")
    w.add_name("tiny-gemma4-moe" if moe else "tiny-gemma4")
    swa = [t == "sliding_attention" for t in cfg.layer_types]
    first_shared = L - cfg.num_kv_shared_layers
    w.add_block_count(L)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length([cfg.intermediate_size * (2 if cfg.use_double_wide_mlp and i >= first_shared else 1)
                               for i in range(L)])
    if moe:
        w.add_expert_count(cfg.num_experts)
        if used_count:  # (left out: an incomplete file)
            w.add_expert_used_count(cfg.top_k_experts)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    attns = [layer.self_attn for layer in model.model.layers]  # head sizes and counts are per layer
    w.add_head_count_kv([cfg.num_attention_heads // a.num_key_value_groups for a in attns])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    global_dim = next(a.head_dim for a, s in zip(attns, swa) if not s)
    local_dim = next(a.head_dim for a, s in zip(attns, swa) if s)
    w.add_key_length(global_dim)
    w.add_value_length(global_dim)
    w.add_key_length_swa(local_dim)
    w.add_value_length_swa(local_dim)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(cfg.rope_parameters["sliding_attention"]["rope_theta"])
    w.add_rope_dimension_count(global_dim)
    w.add_rope_dimension_count_swa(local_dim)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_sliding_window(cfg.sliding_window)
    w.add_sliding_window_pattern(swa)
    w.add_shared_kv_layers(cfg.num_kv_shared_layers)
    w.add_embedding_length_per_layer_input(cfg.hidden_size_per_layer_input or 0)
    w.add_tokenizer_model(vocab.model)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_scores(vocab.scores)
    for key, value in vocab.ids.items():
        getattr(w, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                    "pad": "add_pad_token_id"}[key])(value)
    rot = int(global_dim * cfg.rope_parameters["full_attention"]["partial_rotary_factor"] / 2)
    tensors = [("rope_freqs.weight", torch.tensor([1.0] * rot + [1e30] * (global_dim // 2 - rot)))]
    for name, t in model.state_dict().items():
        if name.startswith("lm_head."):
            continue  # tied
        bid = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if name.endswith("layer_scalar") or (".experts." in name and not name.endswith(".weight")):
            name += ".weight"  # Gemma4Model.filter_tensors
        if name.endswith("router.scale"):  # Gemma4Model.modify_tensors
            gguf_name = f"blk.{bid}.ffn_gate_inp.scale"
        elif name.endswith(".per_expert_scale"):
            gguf_name = f"blk.{bid}.ffn_down_exps.scale"
        else:
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        tensors.append((gguf_name, t.detach().float()))
    for name, t in tensors:
        w.add_tensor(name, t.numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
