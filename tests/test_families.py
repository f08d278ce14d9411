"""The six families added after the first five: Pythia (gpt_neox), OPT, Phi, Gemma, Gemma 2
and Qwen3, plus checkpoints whose config.json uses the keys written before transformers 5.

Every expected number comes from transformers (rule 7 of STYLE.md): attention from the
model class config.json names, loaded with `attn_implementation="eager"` in float32 and
asked for `output_attentions=True`; parameter counts from the same classes built on the
meta device. The first group checks the tiny checkpoints themselves, so that a parity
pass means something: each quirk under test (partial rotary, the parallel residual,
Gemma 2's soft-capping, score scale and windows, the old config keys) changes the
reference's attention, and the checkpoints load strictly.

The published configs below are written from memory of the Hub's config.json files;
each is first checked against transformers' own count, then ours against it.
"""

from __future__ import annotations

import json
import shutil
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import tiny_models as tm

ATOL = 1e-5
ALL = list(tm.FAMILY_BUILDERS)
TEXTS = {"short": tm.SHORT_TEXT, "long": tm.LONG_TEXT}
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}

# The model_type each checkpoint's config.json names.
MODEL_TYPE = {
    "gpt_neox": "gpt_neox",
    "gpt_neox_sequential": "gpt_neox",
    "opt": "opt",
    "opt_post_ln": "opt",
    "phi": "phi",
    "phi_legacy": "phi",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma2_default_types": "gemma2",
    "gemma2_legacy": "gemma2",
    "qwen3": "qwen3",
    "llama_legacy": "llama",
}
GEMMA2 = ["gemma2", "gemma2_default_types", "gemma2_legacy"]
LEGACY = ["gpt_neox_sequential", "phi_legacy", "gemma2_legacy", "llama_legacy"]


def assert_attention_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL, what: str = "") -> None:
    """Equal to `atol` everywhere; on failure, name the worst layer, head, query and key
    and every (layer, head) over tolerance with its own worst difference."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert ours.dtype == torch.float32, f"{what}: dtype {ours.dtype}, want float32"
    assert torch.isfinite(ours).all(), f"{what}: non-finite probabilities"
    diff = (ours.float() - ref.float()).abs()  # (L, H, n, n)
    worst = float(diff.max())
    if worst > atol:
        l, h, i, j = (int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        per_head = diff.amax(dim=(-2, -1))  # (L, H)
        bad = [f"L{a}H{b}:{float(per_head[a, b]):.2g}" for a, b in (per_head > atol).nonzero().tolist()]
        pytest.fail(
            f"{what}: attention differs by {worst:.3g} > {atol:g} at layer {l} head {h} "
            f"query {i} key {j} (ours {float(ours[l, h, i, j]):.6g}, reference "
            f"{float(ref[l, h, i, j]):.6g}); heads over tolerance: {' '.join(bad)}"
        )


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


def saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def edited_copy(folder: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    tm.rewrite_config(copy, edit)
    return copy


def config_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def long_ids(name: str, family_tokenizer: Callable) -> list[int]:
    return family_tokenizer(name).encode(tm.LONG_TEXT).ids


# ---------------------------------------------------------------- the checkpoints


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_loads_strictly_in_transformers(
    name: str, family_build: Callable, family_reference: Callable, family_tokenizer: Callable
) -> None:
    folder = family_build(name)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert config_json(folder)["model_type"] == MODEL_TYPE[name]
    model = family_reference(name)  # asserts no missing and no unexpected keys
    assert model.config._attn_implementation == "eager"
    assert model.config.vocab_size >= family_tokenizer(name).get_vocab_size(with_added_tokens=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_weights_are_not_defaults(name: str, family_build: Callable) -> None:
    """Norm scales away from 1 (Gemma's stored offsets too) and biases away from 0."""
    with safe_open(str(family_build(name) / "model.safetensors"), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            assert t.dtype == torch.float32, key
            if t.ndim == 1 and key.endswith("weight"):
                assert (t - 1).abs().max() > 0.1, f"{key} is still ones"
            elif key.endswith("bias"):
                assert t.abs().max() > 0.1, f"{key} is still zeros"
            else:
                assert 0.15 < float(t.std()) < 0.35, key


@pytest.mark.parametrize(
    "name, present, absent",
    [
        ("gpt_neox", ["gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0.attention.query_key_value.bias",
                      "embed_out.weight", "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.bias"],
         ["gpt_neox.layers.0.attention.rotary_emb.inv_freq", "gpt_neox.layers.0.attention.bias"]),
        ("opt", ["model.decoder.embed_positions.weight", "model.decoder.final_layer_norm.weight",
                 "model.decoder.layers.0.self_attn.out_proj.bias"],
         ["lm_head.weight", "model.decoder.project_in.weight", "model.decoder.project_out.weight"]),
        ("opt_post_ln", ["model.decoder.project_in.weight", "model.decoder.project_out.weight",
                         "model.decoder.layers.1.final_layer_norm.weight"],
         ["lm_head.weight", "model.decoder.final_layer_norm.weight"]),
        ("phi", ["model.layers.0.self_attn.dense.bias", "model.layers.0.self_attn.q_proj.bias", "model.layers.0.mlp.fc1.bias",
                 "model.final_layernorm.bias", "lm_head.bias", "lm_head.weight"],
         ["model.layers.0.post_attention_layernorm.weight"]),
        ("gemma", ["model.layers.0.mlp.gate_proj.weight", "model.norm.weight"], ["lm_head.weight", "model.layers.0.self_attn.q_proj.bias"]),
        ("gemma2", ["model.layers.2.pre_feedforward_layernorm.weight", "model.layers.2.post_feedforward_layernorm.weight",
                    "model.layers.0.post_attention_layernorm.weight"], ["lm_head.weight"]),
        ("qwen3", ["model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight", "lm_head.weight"],
         ["model.layers.0.self_attn.q_proj.bias"]),
    ],
)
def test_checkpoint_key_names(name: str, present: list[str], absent: list[str], family_build: Callable) -> None:
    keys = saved_shapes(family_build(name))
    assert not [k for k in present if k not in keys], sorted(keys)
    assert not [k for k in absent if k in keys], sorted(keys)


def test_checkpoint_shapes(family_build: Callable) -> None:
    neox = saved_shapes(family_build("gpt_neox"))
    assert neox["gpt_neox.layers.0.attention.query_key_value.weight"] == (3 * 32, 32)
    opt = saved_shapes(family_build("opt"))
    assert opt["model.decoder.embed_positions.weight"] == (64 + 2, 32)  # OPT's offset of 2
    post = saved_shapes(family_build("opt_post_ln"))
    vocab = post["model.decoder.embed_tokens.weight"][0]
    assert post["model.decoder.embed_tokens.weight"] == (vocab, 16)  # word_embed_proj_dim
    assert post["model.decoder.project_in.weight"] == (32, 16)
    assert post["model.decoder.project_out.weight"] == (16, 32)
    assert post["model.decoder.embed_positions.weight"] == (66, 32)
    gemma = saved_shapes(family_build("gemma"))
    assert gemma["model.layers.0.self_attn.q_proj.weight"] == (4 * 16, 32)  # 4 x 16 != 32
    assert gemma["model.layers.0.self_attn.k_proj.weight"] == (1 * 16, 32)  # multi-query
    assert gemma["model.layers.0.self_attn.o_proj.weight"] == (32, 4 * 16)
    gemma2 = saved_shapes(family_build("gemma2"))
    assert gemma2["model.layers.0.self_attn.k_proj.weight"] == (2 * 16, 32)
    qwen3 = saved_shapes(family_build("qwen3"))
    assert qwen3["model.layers.0.self_attn.q_norm.weight"] == (16,)  # one scale per head dim
    assert qwen3["model.layers.0.self_attn.k_proj.weight"] == (2 * 16, 32)


def test_configs_as_written(family_build: Callable) -> None:
    """Which keys each config.json carries: the new ones as transformers 5 writes them,
    the old ones as the Hub's files have them."""
    current = config_json(family_build("gpt_neox"))
    assert current["rope_parameters"]["partial_rotary_factor"] == 0.25 and current["use_parallel_residual"] is True
    assert "rotary_pct" not in current and "dtype" in current
    neox = config_json(family_build("gpt_neox_sequential"))
    assert neox["rotary_pct"] == 0.5 and neox["rotary_emb_base"] == tm.NEOX_THETA
    assert neox["use_parallel_residual"] is False
    assert "rope_parameters" not in neox and "dtype" not in neox and neox["torch_dtype"] == "float32"
    phi = config_json(family_build("phi_legacy"))
    assert phi["partial_rotary_factor"] == 0.5 and phi["rope_theta"] == 10000.0 and "rope_parameters" not in phi
    post = config_json(family_build("opt_post_ln"))
    assert post["do_layer_norm_before"] is False and post["word_embed_proj_dim"] == 16 and post["hidden_size"] == 32
    assert config_json(family_build("opt"))["do_layer_norm_before"] is True
    g2 = config_json(family_build("gemma2"))
    assert g2["layer_types"] == tm.GEMMA2_LAYER_TYPES
    assert g2["attn_logit_softcapping"] == tm.GEMMA2_SOFTCAP and g2["query_pre_attn_scalar"] == tm.GEMMA2_QUERY_SCALAR
    assert g2["head_dim"] == 16 and g2["sliding_window"] == tm.GEMMA2_WINDOW
    assert "layer_types" not in config_json(family_build("gemma2_default_types"))
    for name in ("gemma2_legacy", "llama_legacy"):
        raw = config_json(family_build(name))
        assert "rope_theta" in raw and "torch_dtype" in raw, name
        assert "rope_parameters" not in raw and "dtype" not in raw and "layer_types" not in raw, name
    assert config_json(family_build("gemma2_legacy"))["rope_theta"] == tm.GEMMA2_LEGACY_THETA
    assert config_json(family_build("llama_legacy"))["rope_theta"] == 500000.0
    gemma = config_json(family_build("gemma"))
    assert gemma["num_key_value_heads"] == 1 and gemma["head_dim"] * gemma["num_attention_heads"] != gemma["hidden_size"]


@pytest.mark.parametrize(
    "name, want",
    [
        ("gpt_neox_sequential", {"rope_type": "default", "rope_theta": tm.NEOX_THETA, "partial_rotary_factor": 0.5}),
        ("phi_legacy", {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        ("gemma2_legacy", {"rope_type": "default", "rope_theta": tm.GEMMA2_LEGACY_THETA}),
        ("llama_legacy", {"rope_type": "default", "rope_theta": 500000.0}),
    ],
)
def test_legacy_configs_load_identically(
    name: str, want: dict[str, Any], family_build: Callable, family_reference: Callable, family_tokenizer: Callable, tmp_path: Path
) -> None:
    """transformers reads the old keys as meant, and attends exactly as it does from the
    same config saved with the new keys."""
    from transformers import AutoConfig

    folder = family_build(name)
    legacy = family_reference(name)
    assert dict(legacy.config.rope_parameters) == want
    current = tmp_path / "current"
    shutil.copytree(folder, current)
    AutoConfig.from_pretrained(folder).save_pretrained(current)
    raw = config_json(current)
    assert raw["rope_parameters"] == want and "rope_theta" not in raw and "rotary_pct" not in raw
    ids = long_ids(name, family_tokenizer)
    assert torch.equal(tm.reference_attention(legacy, ids), tm.reference_attention(tm.load_reference(current), ids))


@pytest.mark.parametrize("name", ["gemma2_default_types", "gemma2_legacy"])
def test_gemma2_default_alternation(name: str, family_reference: Callable) -> None:
    """With no `layer_types` in config.json, transformers alternates sliding, full, ..."""
    assert family_reference(name).config.layer_types == ["sliding_attention", "full_attention"]
    assert family_reference("gemma2").config.layer_types == tm.GEMMA2_LAYER_TYPES


def _changes_reference(name: str, edit: Callable[[dict[str, Any]], None], family_build: Callable,
                       family_reference: Callable, family_tokenizer: Callable, tmp_path: Path) -> float:
    ids = long_ids(name, family_tokenizer)
    base = tm.reference_attention(family_reference(name), ids)
    other = tm.reference_attention(tm.load_reference(edited_copy(family_build(name), tmp_path, edit)), ids)
    return float((base - other).abs().max())


def _set_rope(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["rope_parameters"][key] = value

    return edit


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw.update(changes)

    return edit


@pytest.mark.parametrize(
    "name, edit",
    [
        ("gpt_neox", _set_rope("partial_rotary_factor", 1.0)),
        ("gpt_neox", _set(use_parallel_residual=False)),
        ("gpt_neox_sequential", _set(rotary_pct=1.0)),
        ("gpt_neox_sequential", _set(rotary_emb_base=10000.0)),
        ("gpt_neox_sequential", _set(use_parallel_residual=True)),
        ("phi", _set_rope("partial_rotary_factor", 1.0)),
        ("gemma2", _set(attn_logit_softcapping=None)),
        ("gemma2", _set(query_pre_attn_scalar=16)),
        ("gemma2", _set(layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
        ("gemma2_default_types", _set(sliding_window=64)),
        ("gemma2_legacy", _set(rope_theta=10000.0)),
        ("llama_legacy", _set(rope_theta=10000.0)),
    ],
    ids=["neox-partial-rotary", "neox-parallel", "neox-rotary_pct", "neox-rotary_emb_base", "neox-sequential",
         "phi-partial-rotary", "gemma2-softcap", "gemma2-query_pre_attn_scalar", "gemma2-layer_types",
         "gemma2-window", "gemma2-rope_theta", "llama-rope_theta"],
)
def test_quirk_changes_the_reference(name: str, edit: Callable, family_build: Callable, family_reference: Callable,
                                     family_tokenizer: Callable, tmp_path: Path) -> None:
    """Each quirk matters on these weights and this text: an implementation that ignores
    it fails the parity tests below."""
    assert _changes_reference(name, edit, family_build, family_reference, family_tokenizer, tmp_path) > 0.05


@pytest.mark.parametrize("name", GEMMA2)
def test_gemma2_windows_cut_the_reference(name: str, family_reference: Callable, family_tokenizer: Callable) -> None:
    """Exactly 0 outside the window (and after the query) on sliding layers; on full
    layers every key up to the query has weight, the ones beyond the window included."""
    ids = long_ids(name, family_tokenizer)
    n, w = len(ids), tm.GEMMA2_WINDOW
    assert n > 2 * w
    ref = family_reference(name)
    att = tm.reference_attention(ref, ids)  # (L, H, n, n)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    future = j > i
    outside = future | (i - j >= w)  # the window holds the query and the w - 1 keys before it
    kinds = ref.config.layer_types
    assert "sliding_attention" in kinds and "full_attention" in kinds
    for layer, kind in enumerate(kinds):
        a = att[layer]  # (H, n, n)
        assert float(a[..., future].abs().max()) == 0.0, layer
        if kind == "sliding_attention":
            assert float(a[..., outside].abs().max()) == 0.0, f"layer {layer}: weight outside the window"
            assert float(a[..., ~outside].min()) > 0.0, layer
        else:
            assert float(a[..., outside & ~future].min()) > 0.0, f"layer {layer}: full layer cut like a window"


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("text", TEXTS.values(), ids=list(TEXTS))
@pytest.mark.parametrize("name", ALL)
def test_ids_match_tokenizers(name: str, text: str, family_inspector: Callable, family_tokenizer: Callable) -> None:
    """Special tokens from the post-processor (OPT's `</s>`, Gemma's `<s>`), no padding."""
    want = family_tokenizer(name).encode(text).ids
    toks = family_inspector(name).tokenize(text)
    assert toks.ids == want
    assert len(toks.labels) == len(toks.offsets) == len(toks.special) == len(want)


@pytest.mark.parametrize("name", ALL)
def test_config_matches_transformers(name: str, family_inspector: Callable, family_reference: Callable) -> None:
    cfg, hf = family_inspector(name).config, family_reference(name).config
    assert cfg.family == hf.model_type == MODEL_TYPE[name]
    assert cfg.n_layers == hf.num_hidden_layers
    assert cfg.n_heads == hf.num_attention_heads
    assert cfg.n_kv_heads == getattr(hf, "num_key_value_heads", hf.num_attention_heads)
    assert cfg.n_ctx == hf.max_position_embeddings
    assert cfg.vocab_size == hf.vocab_size


@pytest.mark.parametrize("text", TEXTS.values(), ids=list(TEXTS))
@pytest.mark.parametrize("name", ALL)
def test_attention_matches_transformers(name: str, text: str, family_inspector: Callable,
                                        family_reference: Callable, family_tokenizer: Callable) -> None:
    m = family_inspector(name)
    want_ids = family_tokenizer(name).encode(text).ids
    att = m.attention(text)
    assert att.tokens is not None and att.tokens.ids == want_ids
    n, L, H = len(want_ids), family_reference(name).config.num_hidden_layers, family_reference(name).config.num_attention_heads
    assert att.layers == list(range(L)) and att.heads == list(range(H))
    assert att.probs.device.type == "cpu"
    assert tuple(att.probs.shape) == (L, H, n, n)
    ref = tm.reference_attention(family_reference(name), want_ids)
    assert_attention_close(att.probs, ref, what=f"{name} {text!r}")


@pytest.mark.parametrize("name", ALL)
def test_attention_ids_full_context(name: str, family_inspector: Callable, family_reference: Callable) -> None:
    """Random ids filling every position (64): OPT's last learned position (row 65), the
    windows sliding all the way, RoPE at every position."""
    ref = family_reference(name)
    n = ref.config.max_position_embeddings
    ids = random_ids(n, ref.config.vocab_size, seed=1)
    att = family_inspector(name).attention_ids(ids)
    assert_attention_close(att.probs, tm.reference_attention(ref, ids), what=f"{name} n={n}")


@pytest.mark.parametrize("name", ALL)
def test_chunked_attention_matches_transformers(name: str, family_inspector: Callable, family_reference: Callable,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries in chunks of 5 (64 positions: the last chunk is short, chunk edges fall
    inside Gemma 2's windows): the same patterns as transformers'."""
    import attnscope.parts as model_module

    ref = family_reference(name)
    n = ref.config.max_position_embeddings
    ids = random_ids(n, ref.config.vocab_size, seed=4)
    monkeypatch.setattr(model_module, "CHUNK_BYTES", 4 * ref.config.num_attention_heads * n * 5)
    monkeypatch.setattr(model_module, "MIN_CHUNK_ROWS", 1)
    att = family_inspector(name).attention_ids(ids)
    assert_attention_close(att.probs, tm.reference_attention(ref, ids), what=f"{name} n={n} chunks of 5")


@pytest.mark.parametrize("name", ["gemma2", "gemma2_default_types"])
def test_gemma2_selection_keeps_layer_kinds(name: str, family_inspector: Callable, family_reference: Callable,
                                            family_tokenizer: Callable) -> None:
    """Asking for one layer gives that layer's kind of mask, not the first layer's."""
    m = family_inspector(name)
    ids = long_ids(name, family_tokenizer)
    ref = tm.reference_attention(family_reference(name), ids)  # (L, H, n, n)
    for layer in range(ref.shape[0]):
        att = m.attention(tm.LONG_TEXT, layers=[layer], heads=[1, 3])
        assert_attention_close(att.probs, ref[[layer]][:, [1, 3]], what=f"{name} layer {layer}")


# ---------------------------------------------------------------------- params


def _meta_count(hf_config: Any) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return model.num_parameters()


def _hf_config(raw: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[raw["model_type"]].from_dict(json.loads(json.dumps(raw)))


def run_params_json(*args: str) -> dict[str, Any]:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["params", *args, "--json"], env=ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ALL)
def test_params_match_transformers(name: str, family_build: Callable) -> None:
    """transformers' count = the tensors stored (tied weights once) = our arithmetic on
    transformers' config = our arithmetic on the config.json as written = `params --model`."""
    from transformers import AutoConfig

    from attnscope.config import from_hf_config
    from attnscope.params import report

    folder = family_build(name)
    hf = AutoConfig.from_pretrained(folder)
    expected = _meta_count(hf)
    assert sum(prod(s) for s in saved_shapes(folder).values()) == expected  # the checkpoint holds exactly these
    assert report(from_hf_config(hf.to_dict())).total_full == expected
    assert report(from_hf_config(config_json(folder))).total_full == expected
    doc = run_params_json("--model", str(folder))
    assert doc["total"] == doc["totals"]["full"] == expected


# From memory of the published config.json files on the Hub.
PYTHIA_160M = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}

OPT_125M = {
    "_name_or_path": "facebook/opt-125m",
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 3072,
    "hidden_size": 768,
    "init_std": 0.02,
    "layerdrop": 0.0,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "prefix": "</s>",
    "torch_dtype": "float16",
    "transformers_version": "4.21.0.dev0",
    "use_cache": True,
    "vocab_size": 50272,
    "word_embed_proj_dim": 768,
}

OPT_350M = {
    "_name_or_path": "facebook/opt-350m",
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "do_layer_norm_before": False,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 4096,
    "hidden_size": 1024,
    "init_std": 0.02,
    "layerdrop": 0.0,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "pad_token_id": 1,
    "prefix": "</s>",
    "torch_dtype": "float16",
    "transformers_version": "4.20.0.dev0",
    "use_cache": True,
    "vocab_size": 50272,
    "word_embed_proj_dim": 512,
}

PHI_2 = {
    "_name_or_path": "microsoft/phi-2",
    "architectures": ["PhiForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 50256,
    "embd_pdrop": 0.0,
    "eos_token_id": 50256,
    "hidden_act": "gelu_new",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 10240,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "phi",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "partial_rotary_factor": 0.4,
    "qk_layernorm": False,
    "resid_pdrop": 0.1,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.37.0",
    "use_cache": True,
    "vocab_size": 51200,
}

GEMMA_2B = {
    "architectures": ["GemmaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "head_dim": 256,
    "hidden_act": "gelu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 16384,
    "max_position_embeddings": 8192,
    "model_type": "gemma",
    "num_attention_heads": 8,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.38.0.dev0",
    "use_cache": True,
    "vocab_size": 256000,
}

GEMMA_2_2B = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "initializer_range": 0.02,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "torch_dtype": "float32",
    "transformers_version": "4.42.4",
    "use_cache": True,
    "vocab_size": 256000,
}

QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

PUBLISHED = [
    # (id, config dict, total as transformers' num_parameters() reports it)
    ("pythia-160m", PYTHIA_160M, 162_322_944),
    ("opt-125m", OPT_125M, 125_239_296),
    ("opt-350m", OPT_350M, 331_196_416),
    ("phi-2", PHI_2, 2_779_683_840),
    ("gemma-2b", GEMMA_2B, 2_506_172_416),
    ("gemma-2-2b", GEMMA_2_2B, 2_614_341_888),
    ("Qwen3-0.6B", QWEN3_0_6B, 596_049_920),
]


@pytest.mark.parametrize("raw, expected", [p[1:] for p in PUBLISHED], ids=[p[0] for p in PUBLISHED])
def test_published_configs_match_transformers(raw: dict[str, Any], expected: int) -> None:
    """The dicts above are what transformers counts to the published totals."""
    assert _meta_count(_hf_config(raw)) == expected


@pytest.mark.parametrize("raw", [p[1] for p in PUBLISHED], ids=[p[0] for p in PUBLISHED])
def test_published_full_counts(raw: dict[str, Any]) -> None:
    from attnscope.config import from_hf_config
    from attnscope.params import param_shapes, report

    expected = _meta_count(_hf_config(raw))
    cfg = from_hf_config(json.loads(json.dumps(raw)))
    assert cfg.family == raw["model_type"]
    rep = report(cfg)
    assert rep.total_full == expected
    assert sum(prod(shape) for shape in param_shapes(cfg).values()) == expected


# ------------------------------------------------------------------------ mask-demo


@pytest.mark.parametrize("name", ["gemma2", "gemma2_default_types"])
def test_mask_demo_shows_sliding_and_full_layers(name: str, family_build: Callable) -> None:
    """On Gemma 2, whose layers mix two kinds, the demo names both: a sliding-window one
    and a full-attention one (the default layer, the last, is sliding in `gemma2` and
    full in `gemma2_default_types`)."""
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["mask-demo", "--model", str(family_build(name))], env=ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    out = result.stdout.lower()
    head = "\n".join(result.stdout.splitlines()[:8])
    assert "sliding" in out, f"no sliding-window layer mentioned:\n{head}"
    assert "full" in out, f"no full-attention layer mentioned:\n{head}"
