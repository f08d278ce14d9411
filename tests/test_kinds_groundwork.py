"""Groundwork for issue 24 (layers by kind), checked against transformers itself.

(a) Every tiny checkpoint of tests/tiny_models_kinds.py loads in transformers with every
    tensor used and none missing, and runs a pass of 90+ tokens in which every sliding
    layer's window is crossed: its attention is zero beyond the window, while the model's
    global layers do reach beyond it. The settings each builder promises (mixed layer kinds,
    two RoPE bases, partial rotary with long factors, a layer without RoPE, multipliers)
    are the ones transformers reads back from its config.json.
(b) Each real config.json in tests/data/real_configs carries the parameter count that
    transformers gives on the meta device, and the issue's published figures come out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import tiny_models
import tiny_models_kinds as kinds

REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"

# The figures issue 24 names; each must equal transformers' own count.
PUBLISHED = {
    "phi-3-mini-4k": 3_821_079_552,
    "gemma-3-1b": 999_885_952,
    "olmo-2-7b": 7_298_617_344,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache: dict[str, tuple[Path, Any]] = {}

    def get(name: str) -> tuple[Path, Any]:
        if name not in cache:
            folder = kinds.KIND_BUILDERS[name](tmp_path_factory.mktemp(name))
            cache[name] = (folder, tiny_models.load_reference(folder))  # asserts nothing missing or unused
        return cache[name]

    return get


def _text_config(model: Any) -> Any:
    return getattr(model.config, "text_config", model.config)


@torch.no_grad()
def _attention(model: Any, ids: list[int]) -> torch.Tensor:
    """transformers' attention probabilities, (L, H, n, n); as tiny_models.reference_attention
    but for a multimodal model too (its layer count lives in `text_config`)."""
    out = model(torch.tensor([ids]), output_attentions=True)
    assert len(out.attentions) == _text_config(model).num_hidden_layers
    return torch.stack([a[0] for a in out.attentions])  # L x (H, n, n) -> (L, H, n, n)


def _sliding_layers(model: Any) -> list[bool]:
    """Which layers transformers windows, as its config says."""
    cfg = _text_config(model)
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    if types is not None and getattr(cfg, "model_type", "") != "smollm3":
        return [t == "sliding_attention" for t in types]
    if cfg.model_type == "phi3":
        return [cfg.sliding_window is not None] * n
    return [False] * n


@pytest.mark.parametrize("name", sorted(kinds.KIND_BUILDERS))
def test_builder_loads_and_crosses_its_windows(built: Any, name: str) -> None:
    folder, model = built(name)
    ids = tiny_models.plain_tokenizer(folder).encode(kinds.KINDS_TEXT).ids
    window = kinds.WINDOWS[name]
    assert len(ids) >= 90 and (window is None or len(ids) > window)
    attn = _attention(model, ids)  # (L, H, n, n)
    n = len(ids)
    assert attn.shape[2:] == (n, n) and torch.isfinite(attn).all()
    assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[:3]), atol=1e-5)
    sliding = _sliding_layers(model)
    assert len(sliding) == attn.shape[0]
    if window is None:
        assert not any(sliding)
        return
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    beyond = k <= q - window  # keys a window of `window` tokens leaves out (transformers' rule)
    for layer, is_sliding in enumerate(sliding):
        mass = attn[layer][:, beyond].abs().max().item()
        if is_sliding:
            assert mass == 0.0, (name, layer)
        else:
            assert mass > 1e-3, (name, layer)
    assert any(sliding), name


def test_gemma3_kinds_and_bases(built: Any) -> None:
    for name, types in (
        ("gemma3", kinds.GEMMA3_LAYER_TYPES),
        ("gemma3_legacy", ["sliding_attention", "full_attention"] * 2),
        ("gemma3_multimodal", kinds.GEMMA3_LAYER_TYPES),
    ):
        _, model = built(name)
        cfg = _text_config(model)
        assert cfg.layer_types == types
        assert cfg.query_pre_attn_scalar == kinds.GEMMA3_QUERY_SCALAR != cfg.head_dim
        assert cfg.rope_parameters["full_attention"]["rope_theta"] == kinds.GEMMA3_GLOBAL_THETA
        assert cfg.rope_parameters["sliding_attention"]["rope_theta"] == kinds.GEMMA3_LOCAL_THETA
    raw = json.loads((built("gemma3_legacy")[0] / "config.json").read_text())
    assert "layer_types" not in raw and raw["sliding_window_pattern"] == 2 and "rope_local_base_freq" in raw


def test_phi4_mini_partial_rotary_and_long_factors(built: Any) -> None:
    folder, model = built("phi4_mini")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["rope_scaling"]["type"] == "longrope" and raw["partial_rotary_factor"] == kinds.PHI4_ROTARY
    rotary = model.model.rotary_emb
    dim = int(16 * kinds.PHI4_ROTARY)  # head size 16
    base = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    short = 1.0 / (torch.tensor(kinds.PHI4_SHORT_FACTOR) * 10000.0**base)
    long = 1.0 / (torch.tensor(kinds.PHI4_LONG_FACTOR) * 10000.0**base)
    factor = kinds.PHI4_CONTEXT / kinds.PHI4_ORIGINAL_CONTEXT
    assert rotary.attention_scaling == pytest.approx(math.sqrt(1 + math.log(factor) / math.log(kinds.PHI4_ORIGINAL_CONTEXT)))
    with torch.no_grad():
        model(torch.tensor([list(range(kinds.PHI4_ORIGINAL_CONTEXT))]))  # 32 positions: short factors
        assert torch.allclose(rotary.inv_freq, short)
        model(torch.tensor([list(range(kinds.PHI4_ORIGINAL_CONTEXT + 1))]))  # 33: long factors
        assert torch.allclose(rotary.inv_freq, long)
    assert _text_config(built("phi3")[1]).sliding_window == kinds.PHI3_WINDOW


def test_olmo_smollm3_granite_settings(built: Any) -> None:
    olmo2 = built("olmo2")[1]
    attn = olmo2.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (32,) and attn.k_norm.weight.shape == (16,)  # whole projections
    assert _text_config(built("olmo3")[1]).layer_types == kinds.OLMO3_LAYER_TYPES
    smol = built("smollm3")[1]
    assert smol.config.no_rope_layers == kinds.SMOLLM3_NO_ROPE_LAYERS
    assert [layer.self_attn.use_rope for layer in smol.model.layers] == kinds.SMOLLM3_NO_ROPE_LAYERS
    gran = built("granite")[1].config
    for key, value in kinds.GRANITE_MULTIPLIERS.items():
        assert getattr(gran, key) == value


@pytest.mark.parametrize("path", sorted(REAL_CONFIGS.glob("*.json")), ids=lambda p: p.stem)
def test_real_config_count_is_transformers_own(path: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    raw = json.loads(path.read_text())
    expected = raw.pop("_num_parameters")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(tmp_path)
        with torch.device("meta"):  # the class the file names (an encoder's MaskedLM), else a causal LM
            import transformers

            named = getattr(transformers, (raw.get("architectures") or [""])[0], None)
            model = named(config) if named is not None else AutoModelForCausalLM.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    assert model.num_parameters() == expected
    if path.stem in PUBLISHED:
        assert expected == PUBLISHED[path.stem]


def test_every_published_figure_has_its_config() -> None:
    names = {p.stem for p in REAL_CONFIGS.glob("*.json")}
    assert set(PUBLISHED) <= names
    assert {"gemma-3-270m", "gemma-3-1b", "phi-3-mini-4k", "phi-4-mini", "olmo-2-7b", "smollm3-3b", "granite-3.3-2b"} <= names
