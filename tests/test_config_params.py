"""Library tests for `attnscope.config` and `attnscope.params`: parameter counts against
public numbers and against transformers itself, and the errors bad configs raise.

Every exact number here comes from a public source, never from attnscope's own output:
  * 3Blue1Brown, "How might LLMs store facts" (Deep Learning, chapter 7), the running
    tally of GPT-3's weights: embedding 617,558,016; key, query, value and output
    14,495,514,624 each; up- and down-projection 57,982,058,496 each; unembedding
    617,558,016; total 175,181,291,520. Per head and per block are the same video's
    (chapter 6, "Attention in transformers"): 4 x 12,288 x 128 = 6,291,456 per head.
  * The counts transformers' `num_parameters()` gives for the published checkpoints, as
    quoted on their model cards and in papers (GPT-2 124M, BERT-base 110M, ...).
  * Everything else: transformers built on the meta device from the same config
    (rule 7 of STYLE.md: test against the reference implementation).

The config dicts below are copied from the published config.json files on the Hugging
Face Hub (fields that do not affect shapes, such as dropout, kept where short).
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from typing import Any

import pytest

from attnscope.config import PRESETS, ModelConfig, from_hf_config, load_config, preset, preset_convention
from attnscope.errors import ConfigError, UnknownPresetError, UnsupportedArchitectureError, UsageError
from attnscope.params import param_shapes, report

# --------------------------------------------------------------------------- published configs

GPT2 = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}

GPT2_MEDIUM = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 1024,
    "n_head": 16,
    "n_layer": 24,
    "n_positions": 1024,
    "n_special": 0,
    "predict_special_tokens": True,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}

# bert-base-uncased publishes `"architectures": ["BertForMaskedLM"]`; its well-known
# 109,482,240 is BertModel's count (encoder + pooler), so that test names BertModel.
BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
}

ALL_MINILM_L6_V2 = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "transformers_version": "4.8.2",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
}

LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}

META_LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.34.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}

# From memory of the published files; their counts are checked against transformers only.
QWEN2_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 131072,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

LLAMA3_ROPE_SCALING = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": dict(LLAMA3_ROPE_SCALING),
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def with_(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))  # deep copy: the module-level dicts stay pristine
    out.update(changes)
    return out


# --------------------------------------------------------------------------- GPT-3 as 3b1b counts it

# 3Blue1Brown's tally of GPT-3 (d_model 12,288, 96 layers of 96 heads of 128, vocab 50,257).
GPT3_VIDEO_ROWS = {
    "embedding": 617_558_016,
    "key": 14_495_514_624,
    "query": 14_495_514_624,
    "value": 14_495_514_624,
    "output": 14_495_514_624,
    "up": 57_982_058_496,
    "down": 57_982_058_496,
    "unembedding": 617_558_016,
}
GPT3_VIDEO_TOTAL = 175_181_291_520


@pytest.fixture(scope="module")
def gpt3_3b1b():
    return report(preset("gpt3"), convention="3b1b")


def test_gpt3_headlines_the_video_convention():
    assert preset_convention("gpt3") == "3b1b"
    assert preset_convention("GPT3 ") == "3b1b"
    assert preset_convention("gpt2") == "full"


def test_gpt3_per_head(gpt3_3b1b):
    # W_Q, W_K, W_V↓ (12,288 x 128 each) and W_V↑ (128 x 12,288).
    assert gpt3_3b1b.head.per_head == 6_291_456
    assert gpt3_3b1b.head.per_query_head + gpt3_3b1b.head.per_kv_head == 6_291_456


def test_gpt3_attention_and_mlp(gpt3_3b1b):
    assert gpt3_3b1b.attention_per_block == 603_979_776
    assert gpt3_3b1b.attention_total == 57_982_058_496
    assert gpt3_3b1b.mlp_per_block == 1_207_959_552


def test_gpt3_total(gpt3_3b1b):
    assert gpt3_3b1b.convention == "3b1b"
    assert gpt3_3b1b.total == GPT3_VIDEO_TOTAL
    assert gpt3_3b1b.total_3b1b == GPT3_VIDEO_TOTAL


def test_gpt3_rows_match_the_video_tally(gpt3_3b1b):
    for row, expected in GPT3_VIDEO_ROWS.items():
        if row == "unembedding":
            continue  # tied in the model; the video counts it again (checked by the total)
        assert gpt3_3b1b.rows[row] == expected, row
    assert gpt3_3b1b.rows["gate"] == 0
    assert sum(GPT3_VIDEO_ROWS.values()) == GPT3_VIDEO_TOTAL  # the tally itself adds up


def test_gpt3_175b_is_the_same_preset():
    assert report(preset("gpt3-175b"), "3b1b").total == GPT3_VIDEO_TOTAL


def test_convention_only_changes_the_headline(gpt3_3b1b):
    full = report(preset("gpt3"), convention="full")
    assert full.total == full.total_full == gpt3_3b1b.total_full
    assert full.total_3b1b == GPT3_VIDEO_TOTAL
    # full drops the second copy of the tied unembedding and adds positions, biases, norms
    assert full.total_full != GPT3_VIDEO_TOTAL


# --------------------------------------------------------------------------- published full counts

PUBLISHED_TOTALS = [
    # (id, config dict, total as transformers' num_parameters() reports it)
    ("gpt2", GPT2, 124_439_808),
    ("gpt2-medium", GPT2_MEDIUM, 354_823_168),
    ("bert-base-uncased/BertModel", with_(BERT_BASE_UNCASED, architectures=["BertModel"]), 109_482_240),
    ("all-MiniLM-L6-v2", ALL_MINILM_L6_V2, 22_713_216),
    ("Llama-2-7b-hf", LLAMA_2_7B, 6_738_415_616),
    ("Meta-Llama-3-8B", META_LLAMA_3_8B, 8_030_261_248),
    ("Mistral-7B-v0.1", MISTRAL_7B_V01, 7_241_732_096),
]


@pytest.mark.parametrize("raw,expected", [p[1:] for p in PUBLISHED_TOTALS], ids=[p[0] for p in PUBLISHED_TOTALS])
def test_published_full_counts(raw, expected):
    cfg = from_hf_config(with_(raw))
    rep = report(cfg)
    assert rep.convention == "full"
    assert rep.total == rep.total_full == expected
    assert sum(prod(shape) for shape in param_shapes(cfg).values()) == expected


@pytest.mark.parametrize(
    "name,raw",
    [
        ("gpt2", GPT2),
        ("gpt2-medium", GPT2_MEDIUM),
        ("all-minilm-l6-v2", ALL_MINILM_L6_V2),
        ("llama2-7b", LLAMA_2_7B),
        ("llama3-8b", META_LLAMA_3_8B),
        ("mistral-7b", MISTRAL_7B_V01),
        ("qwen2-0.5b", QWEN2_0_5B),
        ("llama3.2-1b", LLAMA_3_2_1B),
    ],
)
def test_presets_match_the_published_configs(name, raw):
    assert report(preset(name)).total_full == report(from_hf_config(with_(raw))).total_full


def test_bert_base_preset_is_bertmodel():
    assert report(preset("bert-base")).total_full == 109_482_240


def test_published_configs_read_their_shapes():
    cfg = from_hf_config(with_(LLAMA_3_2_1B))
    assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (2048, 32, 8, 64)
    assert cfg.tied_embeddings is True
    assert cfg.attention_kind == "grouped-query" and cfg.group_size == 4
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "llama3"
    assert cfg.rope_scaling["factor"] == 32.0

    mistral = from_hf_config(with_(MISTRAL_7B_V01))
    assert mistral.sliding_window == 4096
    qwen = from_hf_config(with_(QWEN2_0_5B))
    assert qwen.sliding_window is None  # use_sliding_window is false
    assert qwen.qkv_bias and not qwen.out_bias and not qwen.mlp_bias

    gpt2 = from_hf_config(with_(GPT2))
    assert (gpt2.d_model, gpt2.n_layers, gpt2.n_heads, gpt2.d_mlp, gpt2.n_ctx) == (768, 12, 12, 3072, 1024)
    assert gpt2.attention_kind == "multi-head"


# --------------------------------------------------------------------------- against transformers


def _hf(kind: str, **kwargs: Any) -> tuple[Any, Any]:
    """A transformers config and the model class to build from it."""
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls = {
        "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
        "bert": ("BertConfig", "BertModel"),
        "bert-mlm": ("BertConfig", "BertForMaskedLM"),
        "bert-pretraining": ("BertConfig", "BertForPreTraining"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }[kind]
    return getattr(transformers, config_cls)(**kwargs), getattr(transformers, model_cls)


def _meta_model(hf_config: Any, model_cls: Any) -> Any:
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        return model_cls(hf_config)


def _published_kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    kwargs = with_(raw)
    kwargs.pop("model_type", None)
    kwargs.pop("transformers_version", None)
    return kwargs


_TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=96, vocab_size=101)
_TINY_GPT2 = dict(n_embd=48, n_layer=2, n_head=4, vocab_size=97, n_positions=40)
_TINY_BERT = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80, vocab_size=97,
                  max_position_embeddings=40)

HF_CASES = [
    # published configs
    ("gpt2", "gpt2", _published_kwargs(GPT2)),
    ("gpt2-medium", "gpt2", _published_kwargs(GPT2_MEDIUM)),
    ("bert-base-uncased/BertModel", "bert", _published_kwargs(with_(BERT_BASE_UNCASED, architectures=["BertModel"]))),
    ("bert-base-uncased/as-published", "bert-mlm", _published_kwargs(BERT_BASE_UNCASED)),
    ("all-MiniLM-L6-v2", "bert", _published_kwargs(ALL_MINILM_L6_V2)),
    ("Llama-2-7b-hf", "llama", _published_kwargs(LLAMA_2_7B)),
    ("Meta-Llama-3-8B", "llama", _published_kwargs(META_LLAMA_3_8B)),
    ("Mistral-7B-v0.1", "mistral", _published_kwargs(MISTRAL_7B_V01)),
    ("Qwen2-0.5B", "qwen2", _published_kwargs(QWEN2_0_5B)),
    ("Llama-3.2-1B", "llama", _published_kwargs(LLAMA_3_2_1B)),
    # GPT-3 175B, shaped as Table 2.1 of Brown et al. (2020) describes it
    ("gpt3-175b", "gpt2", dict(n_embd=12288, n_layer=96, n_head=96, n_inner=4 * 12288, vocab_size=50257,
                               n_positions=2048)),
    # small variants
    ("gpt2/n_inner", "gpt2", dict(_TINY_GPT2, n_inner=100)),
    ("gpt2/untied", "gpt2", dict(_TINY_GPT2, tie_word_embeddings=False)),
    ("bert/BertForMaskedLM", "bert-mlm", dict(_TINY_BERT, architectures=["BertForMaskedLM"])),
    # the next-sentence head (cls.seq_relationship) is a stored parameter too
    ("bert/BertForPreTraining", "bert-pretraining", dict(_TINY_BERT, architectures=["BertForPreTraining"])),
    ("bert/type_vocab_size=1", "bert", dict(_TINY_BERT, type_vocab_size=1)),
    ("llama/mha", "llama", dict(_TINY_LLAMA)),
    ("llama/gqa", "llama", dict(_TINY_LLAMA, num_key_value_heads=2)),
    ("llama/mqa", "llama", dict(_TINY_LLAMA, num_key_value_heads=1)),
    ("llama/head_dim", "llama", dict(_TINY_LLAMA, head_dim=16, num_key_value_heads=4)),
    ("llama/tied", "llama", dict(_TINY_LLAMA, num_key_value_heads=2, tie_word_embeddings=True)),
    ("llama/attention_bias", "llama", dict(_TINY_LLAMA, num_key_value_heads=2, attention_bias=True)),
    ("llama/mlp_bias", "llama", dict(_TINY_LLAMA, mlp_bias=True)),
    ("llama/both_biases_head_dim", "llama", dict(_TINY_LLAMA, head_dim=12, num_key_value_heads=2,
                                                   attention_bias=True, mlp_bias=True)),
    ("mistral/gqa", "mistral", dict(_TINY_LLAMA, num_key_value_heads=2, sliding_window=16)),
    ("qwen2/bias_tied", "qwen2", dict(_TINY_LLAMA, num_key_value_heads=2, tie_word_embeddings=True)),
    ("qwen2/bias_untied", "qwen2", dict(_TINY_LLAMA, num_key_value_heads=2, tie_word_embeddings=False)),
    ("qwen2/mqa", "qwen2", dict(_TINY_LLAMA, num_key_value_heads=1)),
]


@pytest.mark.parametrize("kind,kwargs", [c[1:] for c in HF_CASES], ids=[c[0] for c in HF_CASES])
def test_full_count_matches_transformers(kind, kwargs):
    hf_config, model_cls = _hf(kind, **kwargs)
    model = _meta_model(hf_config, model_cls)
    expected = model.num_parameters()

    cfg = from_hf_config(hf_config.to_dict())  # both sides read the same config
    assert report(cfg).total_full == expected
    assert sum(prod(shape) for shape in param_shapes(cfg).values()) == expected


@pytest.mark.parametrize(
    "kind,kwargs",
    [c[1:] for c in HF_CASES if c[1] in ("llama", "mistral", "qwen2")],
    ids=[c[0] for c in HF_CASES if c[1] in ("llama", "mistral", "qwen2")],
)
def test_llama_family_shapes_match_transformers(kind, kwargs):
    """Not just the total: the multiset of parameter shapes is the same (llama-family
    layers are nn.Linear, so transformers' shapes are ours, with no transposes)."""
    hf_config, model_cls = _hf(kind, **kwargs)
    model = _meta_model(hf_config, model_cls)
    theirs = sorted(tuple(p.shape) for p in model.parameters())
    ours = sorted(param_shapes(from_hf_config(hf_config.to_dict())).values())
    assert ours == theirs


def test_published_dict_and_transformers_dict_agree():
    """Feeding the published config.json as it is, or transformers' re-serialisation of it,
    gives the same ModelConfig shape."""
    pytest.importorskip("transformers")
    for kind, raw in (("llama", LLAMA_3_2_1B), ("qwen2", QWEN2_0_5B), ("mistral", MISTRAL_7B_V01), ("gpt2", GPT2)):
        hf_config, _ = _hf(kind, **_published_kwargs(raw))
        ours, theirs = from_hf_config(with_(raw)), from_hf_config(hf_config.to_dict())
        for attr in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "vocab_size",
                     "tied_embeddings", "qkv_bias", "out_bias", "mlp_bias", "rope_theta", "sliding_window"):
            assert getattr(ours, attr) == getattr(theirs, attr), (kind, attr)


def test_random_llama_configs_match_transformers():
    """Property test: any small llama-family shape counts as transformers counts it."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    pytest.importorskip("transformers")

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(
        kind=st.sampled_from(["llama", "mistral", "qwen2"]),
        n_kv=st.integers(1, 4),
        group=st.integers(1, 4),
        d_head=st.sampled_from([4, 8, 12]),
        per_head_width=st.sampled_from([2, 4, 6]),
        d_mlp=st.integers(1, 64),
        vocab=st.integers(3, 300),
        layers=st.integers(1, 3),
        tied=st.booleans(),
        attn_bias=st.booleans(),
        mlp_bias=st.booleans(),
    )
    def check(kind, n_kv, group, d_head, per_head_width, d_mlp, vocab, layers, tied, attn_bias, mlp_bias):
        # transformers insists that the heads divide the width even with head_dim set
        kwargs = dict(hidden_size=n_kv * group * per_head_width, num_hidden_layers=layers, num_attention_heads=n_kv * group,
                      num_key_value_heads=n_kv, head_dim=d_head, intermediate_size=d_mlp, vocab_size=vocab,
                      tie_word_embeddings=tied)
        if kind == "llama":
            kwargs.update(attention_bias=attn_bias, mlp_bias=mlp_bias)
        hf_config, model_cls = _hf(kind, **kwargs)
        expected = _meta_model(hf_config, model_cls).num_parameters()
        assert report(from_hf_config(hf_config.to_dict())).total_full == expected

    check()


# --------------------------------------------------------------------------- heads under GQA / MQA


@pytest.mark.parametrize("n_kv", [1, 2, 4, 8])
def test_per_head_counts_by_formula(n_kv):
    d, n_heads, dh = 64, 8, 16  # d_head deliberately != d / n_heads
    cfg = from_hf_config(with_(
        {"model_type": "llama", "hidden_size": d, "num_hidden_layers": 3, "num_attention_heads": n_heads,
         "intermediate_size": 96, "vocab_size": 50},
        num_key_value_heads=n_kv, head_dim=dh,
    ))
    rep = report(cfg)
    # W_Q (d x dh) and its share of the output W_V↑ (dh x d); W_K and W_V↓ (d x dh each).
    assert rep.head.per_query_head == 2 * d * dh
    assert rep.head.per_kv_head == 2 * d * dh
    assert rep.attention_per_block == n_heads * 2 * d * dh + n_kv * 2 * d * dh
    assert rep.attention_total == 3 * rep.attention_per_block
    if n_kv == n_heads:
        assert cfg.attention_kind == "multi-head"
        assert rep.head.per_head == 4 * d * dh
    else:
        assert cfg.attention_kind == ("multi-query" if n_kv == 1 else "grouped-query")
        assert rep.head.per_head is None  # a K,V pair serves several query heads
    # The attention rows are the per-head counts, summed over layers.
    assert rep.rows["query"] + rep.rows["output"] == 3 * n_heads * rep.head.per_query_head
    assert rep.rows["key"] + rep.rows["value"] == 3 * n_kv * rep.head.per_kv_head


def test_llama3_8b_gqa_numbers():
    rep = report(from_hf_config(with_(META_LLAMA_3_8B)))
    assert rep.head.per_head is None
    assert rep.head.per_query_head == 2 * 4096 * 128
    assert rep.head.per_kv_head == 2 * 4096 * 128
    # 32 query heads and 8 kv heads: q and o are 4096 x 4096, k and v are 4096 x 1024.
    assert rep.attention_per_block == 2 * 4096 * 4096 + 2 * 4096 * 1024
    assert rep.mlp_per_block == 3 * 4096 * 14336


# --------------------------------------------------------------------------- rope: both config styles


def _rope_fields(cfg: ModelConfig) -> tuple[Any, Any]:
    return cfg.rope_theta, cfg.rope_scaling


_TINY_LLAMA_RAW = {"model_type": "llama", **_TINY_LLAMA, "max_position_embeddings": 131072}


def test_rope_old_and_new_style_agree_llama3_scaling():
    old = from_hf_config(with_(_TINY_LLAMA_RAW, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE_SCALING)))
    new = from_hf_config(with_(_TINY_LLAMA_RAW, rope_parameters={**LLAMA3_ROPE_SCALING, "rope_theta": 500000.0}))
    assert old.rope_theta == new.rope_theta == 500000.0
    assert old.rope_scaling is not None and old.rope_scaling["rope_type"] == "llama3"
    assert _rope_fields(old) == _rope_fields(new)


def test_rope_old_and_new_style_agree_default():
    old = from_hf_config(with_(_TINY_LLAMA_RAW, rope_theta=1000000.0, rope_scaling=None))
    new = from_hf_config(with_(_TINY_LLAMA_RAW, rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}))
    assert _rope_fields(old) == _rope_fields(new) == (1000000.0, None)


def test_rope_defaults_when_absent():
    assert _rope_fields(from_hf_config(with_(_TINY_LLAMA_RAW))) == (10000.0, None)


def test_rope_transformers_serialisation_agrees_with_published():
    """transformers 5 writes `rope_parameters`; the published file has the old keys."""
    pytest.importorskip("transformers")
    hf_config, _ = _hf("llama", **_published_kwargs(LLAMA_3_2_1B))
    new_style = hf_config.to_dict()
    assert "rope_parameters" in new_style
    assert _rope_fields(from_hf_config(new_style)) == _rope_fields(from_hf_config(with_(LLAMA_3_2_1B)))


def test_unsupported_rope_scaling_is_a_config_error():
    with pytest.raises(ConfigError, match="yarn"):
        from_hf_config(with_(_TINY_LLAMA_RAW, rope_scaling={"rope_type": "yarn", "factor": 4.0}))


# --------------------------------------------------------------------------- bad input


def _text(exc: pytest.ExceptionInfo) -> str:
    return f"{exc.value.message} {exc.value.hint or ''}"


def test_config_json_not_json(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "gpt2", "n_embd": 768,', encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "config.json" in exc.value.message and "JSON" in exc.value.message


def test_config_json_not_an_object(tmp_path: Path):
    (tmp_path / "config.json").write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(ConfigError, match="object"):
        load_config(tmp_path)


def test_config_folder_without_config_json(tmp_path: Path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_load_config_file_and_folder_agree(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2), encoding="utf-8")
    assert report(load_config(tmp_path)).total_full == 124_439_808
    assert report(load_config(tmp_path / "config.json")).total_full == 124_439_808


@pytest.mark.parametrize(
    "raw,field",
    [
        ({k: v for k, v in GPT2.items() if k != "n_layer"}, "n_layer"),
        ({k: v for k, v in GPT2.items() if k != "n_embd"}, "n_embd"),
        ({k: v for k, v in META_LLAMA_3_8B.items() if k != "hidden_size"}, "hidden_size"),
        ({k: v for k, v in META_LLAMA_3_8B.items() if k != "intermediate_size"}, "intermediate_size"),
        ({k: v for k, v in ALL_MINILM_L6_V2.items() if k != "num_attention_heads"}, "num_attention_heads"),
        ({k: v for k, v in ALL_MINILM_L6_V2.items() if k != "vocab_size"}, "vocab_size"),
    ],
    ids=["gpt2-n_layer", "gpt2-n_embd", "llama-hidden_size", "llama-intermediate_size", "bert-heads", "bert-vocab"],
)
def test_missing_field_names_it(raw, field):
    with pytest.raises(ConfigError) as exc:
        from_hf_config(with_(raw))
    assert field in exc.value.message


@pytest.mark.parametrize(
    "raw,bad",
    [
        (with_(GPT2, n_embd=0), 0),
        (with_(GPT2, n_layer=-1), -1),
        (with_(GPT2, n_head=0), 0),
        (with_(GPT2, vocab_size=0), 0),
        (with_(GPT2, n_inner=-5), -5),
        (with_(GPT2, n_positions=-1024), -1024),
        (with_(META_LLAMA_3_8B, hidden_size=-4096), -4096),
        (with_(META_LLAMA_3_8B, num_key_value_heads=-8), -8),
        (with_(META_LLAMA_3_8B, intermediate_size=0), 0),
        (with_(META_LLAMA_3_8B, head_dim=-64), -64),
        (with_(ALL_MINILM_L6_V2, num_hidden_layers=0), 0),
        (with_(ALL_MINILM_L6_V2, hidden_size=384.0), 384.0),
        (with_(ALL_MINILM_L6_V2, hidden_size="384"), "384"),
        (with_(ALL_MINILM_L6_V2, num_hidden_layers=True), True),
    ],
    ids=lambda v: None if isinstance(v, dict) else repr(v),
)
def test_bad_sizes_are_config_errors(raw, bad):
    with pytest.raises(ConfigError) as exc:
        from_hf_config(raw)
    assert repr(bad) in exc.value.message or str(bad) in exc.value.message


@pytest.mark.parametrize(
    "raw",
    [with_(GPT2, n_embd=100, n_head=3), with_(ALL_MINILM_L6_V2, hidden_size=384, num_attention_heads=5),
     with_(LLAMA_2_7B, num_attention_heads=31)],
    ids=["gpt2", "bert", "llama"],
)
def test_heads_not_dividing_width(raw):
    with pytest.raises(ConfigError) as exc:
        from_hf_config(raw)
    heads = raw.get("n_head", raw.get("num_attention_heads"))
    width = raw.get("n_embd", raw.get("hidden_size"))
    assert str(heads) in exc.value.message and str(width) in exc.value.message


def test_explicit_head_dim_need_not_divide_width():
    cfg = from_hf_config(with_(_TINY_LLAMA_RAW, num_attention_heads=6, head_dim=16))  # 6 x 16 != 64
    assert cfg.d_head == 16


def test_kv_heads_not_dividing_heads():
    with pytest.raises(ConfigError) as exc:
        from_hf_config(with_(META_LLAMA_3_8B, num_key_value_heads=3))
    assert "3" in exc.value.message and "32" in exc.value.message


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as exc:
        from_hf_config({"model_type": "umt5", "hidden_size": 64})
    assert "umt5" in exc.value.message
    text = _text(exc)
    for supported in ("gpt2", "bert", "llama", "mistral", "qwen2"):
        assert supported in text
    assert isinstance(exc.value, ConfigError)  # one except clause catches all config trouble


def test_missing_model_type():
    raw = with_(GPT2)
    del raw["model_type"]
    with pytest.raises(ConfigError) as exc:
        from_hf_config(raw)
    assert "model_type" in exc.value.message
    assert "gpt2" in _text(exc)


def test_unsupported_activation():
    with pytest.raises(ConfigError, match="swiglu_magic"):
        from_hf_config(with_(LLAMA_2_7B, hidden_act="swiglu_magic"))


def test_config_errors_are_never_bare_python_errors():
    """Nonsense values must come back as ConfigError, never TypeError/KeyError/ValueError."""
    for raw in (
        with_(GPT2, n_embd=None),
        with_(GPT2, n_inner="lots"),
        with_(META_LLAMA_3_8B, num_attention_heads=None),
        with_(META_LLAMA_3_8B, rms_norm_eps="tiny"),
        with_(META_LLAMA_3_8B, rope_theta="big"),
        with_(ALL_MINILM_L6_V2, layer_norm_eps=[1e-12]),
    ):
        with pytest.raises(ConfigError):
            from_hf_config(raw)


@pytest.mark.parametrize("typo,suggestion", [("gpt-3", "gpt3"), ("gtp2", "gpt2"), ("llama3-8", "llama3-8b")])
def test_unknown_preset_suggests_close_names(typo, suggestion):
    with pytest.raises(UnknownPresetError) as exc:
        preset(typo)
    assert typo in exc.value.message
    assert suggestion in (exc.value.hint or "")
    assert isinstance(exc.value, UsageError) and exc.value.exit_code == 2


def test_unknown_preset_without_close_names_points_at_list():
    with pytest.raises(UnknownPresetError) as exc:
        preset("zzzzzzzz")
    assert "--list" in (exc.value.hint or "")


def test_preset_names_are_case_and_space_insensitive():
    assert report(preset(" GPT2 ")).total_full == 124_439_808


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = preset(name)
    rep = report(cfg, preset_convention(name))
    assert rep.total > 0
    assert rep.total_full == sum(prod(s) for s in param_shapes(cfg).values())
    assert "_convention" not in PRESETS[name] or PRESETS[name]["_convention"] == "3b1b"


def test_readme_lists_every_supported_family():
    """The README's family table stays current with the registry."""
    from pathlib import Path

    from attnscope.architectures import ARCHITECTURES

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for model_type in ARCHITECTURES:
        assert f"| `{model_type}` |" in readme, model_type


@pytest.mark.parametrize("name,expected", [
    # Published totals (the figures, from each model's config.json).
    ("pythia-160m", 162_322_944),
    ("opt-125m", 125_239_296),
    ("phi-2", 2_779_683_840),
    ("gemma-2b", 2_506_172_416),
])
def test_new_family_presets_meet_published_counts(name, expected):
    assert report(preset(name)).total_full == expected
