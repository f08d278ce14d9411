"""ModelConfig carries no family-specific boolean: a family's quirk lives in its layer kind.

Two guards: (1) every boolean field of ModelConfig is on an explicit allow-list of
model-wide, generic switches, each with its reason, so a new `some_family_quirk: bool`
fails here; (2) every family's layer 0 kind says what its old model-wide booleans meant
(GPT-NeoX parallel, Phi parallel with one shared norm, BERT post-norm, Gemma 2 sandwich,
OLMo 2 norms after the sublayers, Qwen3 per-head q/k norm, …), and Gemma's old
`embed_scale` is exactly `embed_multiplier = √d_model`, rounded as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest
import torch

from attnscope import config as cfgmod
from attnscope.architectures._common import layer_kind
from attnscope.config import ModelConfig, from_hf_config, preset
from attnscope.errors import ConfigError
from attnscope.kinds import LayerSpec

# The only booleans ModelConfig may have, and why each is model-wide rather than a layer's.
ALLOWED_BOOLEANS = {
    "causal": "decoder or encoder: decides the cache, generation and every layer's default mask at once",
    "embed_norm": "a norm on the summed embeddings happens once, before any layer (BERT, BLOOM)",
    "final_norm": "a norm after the last block happens once, after every layer",
    "lm_head": "whether the model has an unembedding at all: one per model",
    "tied_embeddings": "whether that unembedding is the token embedding: one per model",
    "unembed_bias": "a bias on the one unembedding (Phi, GPT-J): one per model",
}


def _is_bool_field(f: dataclasses.Field[Any]) -> bool:
    return f.type in ("bool", bool) or isinstance(f.default, bool)


def test_modelconfig_has_no_boolean_outside_the_allow_list() -> None:
    booleans = {f.name for f in dataclasses.fields(ModelConfig) if _is_bool_field(f)}
    assert booleans == set(ALLOWED_BOOLEANS), (
        f"booleans not on the allow-list: {sorted(booleans - set(ALLOWED_BOOLEANS))} "
        "(a family's quirk belongs in its layer kind: architectures._common.layer_kind)")
    assert set(cfgmod._BOOLEANS) == set(ALLOWED_BOOLEANS)  # the ones __post_init__ type-checks
    assert all(reason for reason in ALLOWED_BOOLEANS.values())


# Small config.json dicts for the families without a preset.
_LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 96, "vocab_size": 50, "max_position_embeddings": 128}
_RAW = {
    "gemma2": {**_LLAMA, "model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    "qwen3": {**_LLAMA, "model_type": "qwen3", "head_dim": 16},
    "gpt_neox_sequential": {"model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 50,
                            "use_parallel_residual": False},
    "opt_post": {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "ffn_dim": 256, "vocab_size": 50, "do_layer_norm_before": False, "enable_bias": False},
    "bert_mlm": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 256, "vocab_size": 50, "architectures": ["BertForPreTraining"]},
}


def _config(name: str) -> ModelConfig:
    return from_hf_config(_RAW[name], name=name) if name in _RAW else preset(name)


def _old_meaning(**old: bool) -> tuple[str, str, bool, bool, bool, str | None]:
    """What the removed booleans said about a layer, as ModelConfig.wiring and
    _derived_stack read them: (wiring, MLP kind, MLP bias, qkv bias, out bias, q/k norm)."""
    if old.get("post_norm"):
        wiring = "post"
    elif old.get("parallel"):
        wiring = "parallel_shared" if old.get("shared_norm") else "parallel"
    else:
        wiring = "sandwich" if old.get("post_norms") else "pre"
    return (wiring, "gated" if old.get("gated_mlp") else "dense", old.get("mlp_bias", False),
            old.get("qkv_bias", False), old.get("out_bias", False), "head" if old.get("qk_norm") else None)


_BIASES = dict(qkv_bias=True, out_bias=True, mlp_bias=True)
# name: (the old booleans the family set, the layer-0 kind they now are); OLMo 2's kind was
# never a boolean (its readers passed kinds), so it is stated directly.
CASES: dict[str, tuple[str, str, bool, bool, bool, str | None]] = {
    "gpt2": _old_meaning(**_BIASES),
    "bert-base": _old_meaning(post_norm=True, **_BIASES),
    "bert_mlm": _old_meaning(post_norm=True, **_BIASES),
    "llama3-8b": _old_meaning(gated_mlp=True),
    "qwen2-0.5b": _old_meaning(gated_mlp=True, qkv_bias=True),
    "qwen3": _old_meaning(gated_mlp=True, qk_norm=True),
    "gemma-2b": _old_meaning(gated_mlp=True),
    "gemma2": _old_meaning(gated_mlp=True, post_norms=True),
    "gemma-3-1b": _old_meaning(gated_mlp=True, post_norms=True, qk_norm=True),
    "pythia-160m": _old_meaning(parallel=True, **_BIASES),
    "gpt_neox_sequential": _old_meaning(**_BIASES),
    "opt-125m": _old_meaning(**_BIASES),
    "opt_post": _old_meaning(post_norm=True),
    "phi-2": _old_meaning(parallel=True, shared_norm=True, **_BIASES),
    "phi-3-mini-4k": _old_meaning(gated_mlp=True),
    "olmo-2-7b": ("post_sublayer", "gated", False, False, False, "projection"),
    "smollm3-3b": _old_meaning(gated_mlp=True),
    "granite-3.3-2b": _old_meaning(gated_mlp=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_familys_layer_kind_says_what_its_booleans_meant(name: str) -> None:
    layer = _config(name).layer(0)
    got = (layer.wiring, layer.mlp.kind, layer.mlp.bias, layer.attn.qkv_bias, layer.attn.out_bias, layer.attn.qk_norm)
    assert got == CASES[name]


def test_named_wirings() -> None:
    """The wirings the brief names, by family."""
    assert _config("pythia-160m").layer(0).wiring == "parallel"
    assert _config("phi-2").layer(0).wiring == "parallel_shared"
    assert _config("bert-base").layer(0).wiring == "post"
    assert _config("gemma2").layer(0).wiring == "sandwich"
    assert _config("olmo-2-7b").layer(0).wiring == "post_sublayer"
    assert _config("qwen3").layer(0).attn.qk_norm == "head"


def test_task_heads_and_the_compatibility_names() -> None:
    """BERT's pooler / MLM / NSP are one tuple of task heads; the old names still read."""
    base, pretraining = _config("bert-base"), _config("bert_mlm")
    assert base.heads == ("pooler",) and (base.pooler, base.mlm_head, base.nsp_head) == (True, False, False)
    assert pretraining.heads == ("pooler", "mlm", "nsp") and pretraining.nsp_head
    assert _config("pythia-160m").parallel is True and _config("phi-2").shared_norm is True
    assert _config("gemma2").post_norms and _config("qwen3").qk_norm and _config("llama3-8b").gated_mlp
    with pytest.raises(ConfigError, match="task heads"):
        replace(base, heads=("pooler", "classifier"))


def test_the_template_is_checked_and_replace_rederives() -> None:
    cfg = _config("llama3-8b")
    assert isinstance(cfg.layer_template, LayerSpec) and cfg.layer_template == layer_kind(mlp="gated")
    wider = replace(cfg, d_mlp=cfg.d_mlp * 2, act="gelu_tanh")  # sizes come from the flat fields
    assert (wider.layer(0).mlp.d_mlp, wider.layer(0).mlp.act, wider.layer(0).mlp.kind) == (cfg.d_mlp * 2, "gelu_tanh", "gated")
    for bad, words in ((layer_kind("diagonal"), "unsupported layer kind"), (layer_kind(qk_norm="sideways"), "q/k norm"),
                       (replace(layer_kind(), residual_scale=0.0), "residual scale"), ("pre", "LayerSpec")):
        with pytest.raises(ConfigError, match=words):
            replace(cfg, layer_template=bad)


@pytest.mark.parametrize("name", ["gemma-2b", "gemma2", "gemma-3-1b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gemmas_multiplier_is_the_old_embed_scale_exactly(name: str, dtype: torch.dtype) -> None:
    """The old `embed_scale` multiplied by torch.tensor(d_model ** 0.5, dtype); the
    multiplier is the same number through the same rounding, bit for bit."""
    from attnscope.model import Embedding

    cfg = replace(_config(name), vocab_size=50, n_ctx=128)
    assert cfg.embed_multiplier == cfg.d_model ** 0.5 and cfg.embed_scale
    embed = Embedding(cfg).to(dtype)
    torch.nn.init.normal_(embed.tok.weight, std=2.0)
    ids = torch.arange(50)
    old = embed.tok(ids) * torch.tensor(cfg.d_model ** 0.5, dtype=dtype)
    assert torch.equal(embed(ids, 0), old)
