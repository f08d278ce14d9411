"""Presets: model shapes by name, as Hugging Face config.json dicts, read through the same
`config.from_hf_config()` path as a real checkpoint's config (gpt-fast's plain dict of
dicts, looked up by exact name). The mixture-of-experts and hybrid ones live in
`presets_models` and are merged in last."""

from __future__ import annotations

from typing import Any

from attnscope.presets_models import MOE_PRESETS, _gpt_oss  # noqa: F401  (re-exported)

# Presets: Hugging Face config.json dicts. GPT-3 sizes are from Table 2.1 of Brown et al.
# (2020), "Language Models are Few-Shot Learners": d_ff = 4 * d_model, context 2,048 and
# GPT-2's 50,257-token vocabulary. Two rows are inconsistent as printed; we read them as:
#   * XL: "24 heads of 128" cannot make d_model 2,048; we keep d_model 2,048 (which gives
#     the table's 1.3B) and use 16 heads of 128.
#   * 13B: d_model 5,140 is not divisible by 40 heads; 40 heads of 128 make 5,120, which
#     gives the table's 13B, so we read 5,120.
def _gpt3(d_model: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_embd": d_model,
        "n_layer": n_layers,
        "n_head": n_heads,
        "n_inner": 4 * d_model,
        "vocab_size": 50257,
        "n_positions": 2048,
        "activation_function": "gelu_new",
        "_convention": "3b1b",
    }


def _gpt2(d_model: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_embd": d_model,
        "n_layer": n_layers,
        "n_head": n_heads,
        "vocab_size": 50257,
        "n_positions": 1024,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    }


def _bert(d_model: int, n_layers: int, n_heads: int, d_mlp: int, vocab: int = 30522) -> dict[str, Any]:
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "intermediate_size": d_mlp,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }


def _llama(model_type: str = "llama", **kw: Any) -> dict[str, Any]:
    base = {"model_type": model_type, "hidden_act": "silu", "tie_word_embeddings": False}
    base.update(kw)
    return base


PRESETS: dict[str, dict[str, Any]] = {
    "gpt3": _gpt3(12288, 96, 96),
    "gpt3-small": _gpt3(768, 12, 12),
    "gpt3-medium": _gpt3(1024, 24, 16),
    "gpt3-large": _gpt3(1536, 24, 16),
    "gpt3-xl": _gpt3(2048, 24, 16),
    "gpt3-2.7b": _gpt3(2560, 32, 32),
    "gpt3-6.7b": _gpt3(4096, 32, 32),
    "gpt3-13b": _gpt3(5120, 40, 40),
    "gpt3-175b": _gpt3(12288, 96, 96),
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "bert-base": _bert(768, 12, 12, 3072),
    "bert-large": _bert(1024, 24, 16, 4096),
    "all-minilm-l6-v2": _bert(384, 6, 12, 1536),
    # RoBERTa's table keeps padding_idx + 1 = 2 rows ahead of position 0: 514 rows, 512 positions.
    "roberta-base": {
        "model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50265,
        "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    },
    "xlm-roberta-base": {
        "model_type": "xlm-roberta", "architectures": ["XLMRobertaForMaskedLM"], "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 250002,
        "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "position_embedding_type": "absolute",
    },
    # answerdotai/ModernBERT-base (tests/data/real_configs/modernbert-base.json), less the keys no reader uses.
    "modernbert-base": {
        "model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"], "hidden_size": 768,
        "num_hidden_layers": 22, "num_attention_heads": 12, "intermediate_size": 1152, "vocab_size": 50368,
        "max_position_embeddings": 8192, "hidden_activation": "gelu", "norm_eps": 1e-05, "norm_bias": False,
        "attention_bias": False, "mlp_bias": False, "decoder_bias": True, "classifier_bias": False,
        "global_attn_every_n_layers": 3, "local_attention": 128, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
    },
    # sentence-transformers/all-mpnet-base-v2 (tests/data/real_configs/all-mpnet-base-v2.json) as the
    # MPNetModel its weights are (the Hub file names MPNetForMaskedLM, inherited from microsoft/mpnet-base).
    # Encoder-decoders (attnscope.seq2seq): google-t5/t5-small (tests/data/real_configs/t5-small.json) and
    # google/flan-t5-small (v1.1: gated-gelu, an untied head; 76,961,152 as transformers 4 counts it).
    "t5-small": {
        "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 512, "d_kv": 64, "d_ff": 2048,
        "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8, "vocab_size": 32128, "n_positions": 512,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "relu",
        "layer_norm_epsilon": 1e-6, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
    },
    "flan-t5-small": {
        "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 512, "d_kv": 64, "d_ff": 1024,
        "num_layers": 8, "num_decoder_layers": 8, "num_heads": 6, "vocab_size": 32128, "n_positions": 512,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
        "tie_word_embeddings": False, "torch_dtype": "float32",
    },
    # facebook/bart-base (tests/data/real_configs/bart-base.json) as the BartModel its weights are.
    "bart-base": {
        "model_type": "bart", "architectures": ["BartModel"], "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
        "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
        "vocab_size": 50265, "max_position_embeddings": 1024, "activation_function": "gelu", "scale_embedding": False,
        "decoder_start_token_id": 2, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32",
    },
    # facebook/mbart-large-cc25 (tests/data/real_configs/mbart-large-cc25.json): pre-norm, final norms per stack,
    # embeddings × √d_model, the head tied to the shared table; 610,851,840 as transformers counts it.
    "mbart-large-cc25": {
        "model_type": "mbart", "architectures": ["MBartForConditionalGeneration"], "d_model": 1024,
        "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16, "decoder_attention_heads": 16,
        "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096, "vocab_size": 250027, "max_position_embeddings": 1024,
        "activation_function": "gelu", "scale_embedding": True, "normalize_before": True,
        "add_final_layer_norm": True, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "torch_dtype": "float32",
    },
    # Helsinki-NLP/opus-mt-en-de (tests/data/real_configs/opus-mt-en-de.json), the OPUS-MT layout: post-norm,
    # sinusoidal positions, swish, embeddings × √d_model, one table shared by both stacks and the head; 74,410,496.
    "opus-mt-en-de": {
        "model_type": "marian", "architectures": ["MarianMTModel"], "d_model": 512, "encoder_layers": 6,
        "decoder_layers": 6, "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048, "vocab_size": 58101, "max_position_embeddings": 512, "activation_function": "swish",
        "scale_embedding": True, "decoder_start_token_id": 58100, "pad_token_id": 58100, "bos_token_id": 0,
        "eos_token_id": 0,
    },
    "all-mpnet-base-v2": {
        "model_type": "mpnet", "architectures": ["MPNetModel"], "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30527, "max_position_embeddings": 514,
        "relative_attention_num_buckets": 32, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "pad_token_id": 1,
        "torch_dtype": "float32",
    },
    "distilbert-base-uncased": {
        "model_type": "distilbert", "architectures": ["DistilBertForMaskedLM"], "dim": 768, "n_layers": 6,
        "n_heads": 12, "hidden_dim": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
        "activation": "gelu", "sinusoidal_pos_embds": False, "pad_token_id": 0,
    },
    "llama2-7b": _llama(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    "llama3-8b": _llama(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0,
    ),
    "llama3.2-1b": _llama(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ),
    "mistral-7b": _llama(
        "mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
        max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
    ),
    "qwen2-0.5b": _llama(
        "qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "pythia-160m": {
        "model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "use_parallel_residual": True, "tie_word_embeddings": False,
    },
    "opt-125m": {
        "model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048, "do_layer_norm_before": True,
        "word_embed_proj_dim": 768, "activation_function": "relu",
    },
    "phi-2": {
        "model_type": "phi", "hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
        "intermediate_size": 10240, "vocab_size": 51200, "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "tie_word_embeddings": False,
    },
    "gemma-2b": {
        "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 16384, "vocab_size": 256000,
        "max_position_embeddings": 8192, "hidden_act": "gelu",
    },
    # Real checkpoints' config.json (tests/data/real_configs, where each file's provenance is recorded),
    # less the keys no reader uses (token ids, dropout, initializer range, transformers' version).
    "gemma-3-270m": {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": None,
        "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 640, "intermediate_size": 2048,
        "layer_types": [
            "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
            "full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "sliding_attention", "full_attention",
        ],
        "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
        "num_hidden_layers": 18, "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512,
        "torch_dtype": "bfloat16", "use_bidirectional_attention": False, "vocab_size": 262144,
    },
    "gemma-3-1b": {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": None,
        "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152, "intermediate_size": 6912, "max_position_embeddings": 32768,
        "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
        "vocab_size": 262144,
    },
    "phi-3-mini-4k": {
        "architectures": ["Phi3ForCausalLM"], "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
        "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "attention_bias": False, "vocab_size": 32064,
    },
    "phi-4-mini": {
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "full_attn_mod": 1, "hidden_act": "silu",
        "hidden_size": 3072, "intermediate_size": 8192, "interpolate_factor": 1, "lm_head_bias": False,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "phi3", "num_attention_heads": 24,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.75, "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "long_factor": [
                1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
                2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
                5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
                11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
                25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93,
                32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
            ],
            "short_factor": [
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
            ],
            "type": "longrope",
        },
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "vocab_size": 200064,
    },
    "olmo-2-7b": {
        "architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "olmo2",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-06,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 100352,
    },
    "smollm3-3b": {
        "architectures": ["SmolLM3ForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 11008, "max_position_embeddings": 65536, "model_type": "smollm3",
        "no_rope_layer_interval": 4, "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 4,
        "pretraining_tp": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 5000000.0,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
        "vocab_size": 128256,
    },
    "granite-3.3-2b": {
        "architectures": ["GraniteForCausalLM"], "model_type": "granite", "attention_bias": False,
        "attention_multiplier": 0.015625, "embedding_multiplier": 12.0, "hidden_size": 2048,
        "intermediate_size": 8192, "logits_scaling": 8.0, "max_position_embeddings": 131072, "mlp_bias": False,
        "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "residual_multiplier": 0.22,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000000.0, "tie_word_embeddings": True,
        "vocab_size": 49159,
    },
    "nomic-embed-text-v1.5": {
        "activation_function": "swiglu", "architectures": ["NomicBertModel"], "causal": False,
        "layer_norm_epsilon": 1e-12, "max_position_embeddings": 2048, "max_trained_positions": 2048,
        "mlp_fc1_bias": False, "mlp_fc2_bias": False, "model_type": "nomic_bert", "n_embd": 768, "n_head": 12,
        "n_inner": 3072, "n_layer": 12, "n_positions": 8192, "prenorm": False, "qkv_proj_bias": False,
        "rope_parameters": {"rope_theta": 1000.0, "rope_type": "default"}, "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None, "type_vocab_size": 2, "vocab_size": 30528,
    },
    **MOE_PRESETS,
}
