"""The layer kinds themselves (attnscope.kinds, ModelConfig.stack): run-length stacks and
their look-ups against a plain per-layer list, the kinds derived from flat fields against
the fields, a family's own kinds checked like any config value, and the words a kind is
named by (mask-demo names SmolLM3's unrotated layers)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnscope.cli import app
from attnscope.architectures._common import layer_kind
from attnscope.config import ModelConfig, preset
from attnscope.errors import ConfigError
from attnscope.kinds import AttnSpec, LayerSpec, MlpSpec, RopeSpec, Stack, freeze, kind_words, thaw
from attnscope.parts import block_shapes, kind_counts, model_shapes, required_count

MLP = MlpSpec("gated", 64, "silu")
ROPE = RopeSpec(10000.0, 16)


def spec(window: int | None = None, rope: RopeSpec | None = ROPE) -> LayerSpec:
    return LayerSpec(AttnSpec(4, 2, 16, window=window, rope=rope), MLP)


@given(st.lists(st.sampled_from([None, 4, 8]), min_size=1, max_size=60))
@settings(max_examples=100, deadline=None)
def test_stack_equals_its_per_layer_list(windows: list[int | None]) -> None:
    layers = [spec(w) for w in windows]
    stack = Stack.of(layers)
    assert len(stack) == len(layers) and list(stack) == layers
    assert [stack.layer(i) for i in range(len(layers))] == layers
    assert all(a[0] != b[0] for a, b in zip(stack.runs, stack.runs[1:]))  # runs are maximal
    assert sum(c for _, c in stack.kinds()) == len(layers)
    assert {s for s, _ in stack.kinds()} == set(layers)


def test_freeze_and_thaw() -> None:
    scaling = {"rope_type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0],
               "original_max_position_embeddings": 32}
    frozen = freeze(scaling)
    hash(frozen)
    assert thaw(frozen) == {**scaling, "short_factor": (1.0, 2.0), "long_factor": (3.0, 4.0)}
    assert RopeSpec(1e4, 16, frozen).scaling_type == "longrope"


def test_derived_kinds_follow_the_flat_fields() -> None:
    cfg = ModelConfig(family="llama", d_model=64, n_layers=5, n_heads=4, n_kv_heads=2, d_mlp=96, vocab_size=50,
                      n_ctx=128, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu",
                      rope_theta=5e5, sliding_window=8, layer_windows=[8, None, 8, 8, None])
    assert [cfg.layer(i).attn.window for i in range(5)] == [8, None, 8, 8, None]
    assert len(cfg.stack.kinds()) == 2 and len(cfg.stack.runs) == 4
    a = cfg.layer(1).attn
    assert (a.n_heads, a.n_kv_heads, a.d_head, a.rope) == (4, 2, 16, RopeSpec(5e5, 16))
    assert cfg.layer(0).mlp == MlpSpec("gated", 96, "silu") and cfg.layer(0).wiring == "pre"
    # replace() re-derives: a stale stack cannot survive a changed field
    assert replace(cfg, layer_windows=None, sliding_window=None).stack.runs[0][1] == 5


def test_counting_sums_kinds() -> None:
    """Two kinds with different shapes (a q/k norm over the projection in one): the count
    is the sum of each kind's block times its layers, equal to enumerating every layer."""
    base = spec()
    normed = LayerSpec(replace(base.attn, qk_norm="projection"), MLP, "post_sublayer")
    layers = [base, normed, normed, base, normed]
    cfg = ModelConfig(family="llama", d_model=64, n_layers=5, n_heads=4, n_kv_heads=2, d_mlp=64, vocab_size=50,
                      n_ctx=128, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu",
                      kinds=Stack.of(layers))
    from math import prod

    enumerated = sum(prod(s) for name, s in model_shapes(cfg).items() if name.startswith("blocks."))
    assert sum(count * numel for _, count, numel in kind_counts(cfg)) == enumerated
    assert "blocks.1.attn.q_norm.weight" in model_shapes(cfg) and "blocks.0.attn.q_norm.weight" not in model_shapes(cfg)
    assert model_shapes(cfg)["blocks.1.attn.k_norm.weight"] == (2 * 16,)  # over the whole k projection
    assert "blocks.1.attn_norm.weight" not in model_shapes(cfg)  # post_sublayer: no norm before
    assert set(block_shapes(cfg, normed)) >= {"post_attn_norm.weight", "post_mlp_norm.weight"}
    assert required_count(cfg) > enumerated


def test_a_deep_stack_counts_by_arithmetic() -> None:
    layers = [spec(8), spec(None)] * 50_000
    start = time.perf_counter()
    cfg = ModelConfig(family="llama", d_model=64, n_layers=100_000, n_heads=4, n_kv_heads=2, d_mlp=64,
                      vocab_size=50, n_ctx=128, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu",
                      kinds=Stack.of(layers))
    total = required_count(cfg)
    assert time.perf_counter() - start < 5  # 10^5 runs: each looked up once, never per parameter
    assert cfg.layer(99_999).attn.window is None and cfg.layer(99_998).attn.window == 8
    assert total > 0


@pytest.mark.parametrize("bad, words", [
    (lambda s: replace(s, attn=replace(s.attn, window=0)), "sliding windows"),
    (lambda s: replace(s, attn=replace(s.attn, n_heads=8)), "different head counts"),
    (lambda s: replace(s, attn=replace(s.attn, qk_norm="sideways")), "q/k norm"),
    (lambda s: replace(s, attn=replace(s.attn, scale=float("nan"))), "scale"),
    (lambda s: replace(s, residual_scale=-1.0), "residual scale"),
    (lambda s: replace(s, wiring="diagonal"), "unsupported layer kind"),
    (lambda s: replace(s, mlp=replace(s.mlp, act="swoosh")), "MLP"),
    (lambda s: replace(s, attn=replace(s.attn, rope=RopeSpec(0.5, 16))), "rope_theta"),
    (lambda s: replace(s, attn=replace(s.attn, rope=RopeSpec(1e4, 17))), "rotary dimension"),
])
def test_a_familys_kinds_are_checked(bad: Callable[[LayerSpec], LayerSpec], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ModelConfig(family="llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64, vocab_size=50,
                    n_ctx=128, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu",
                    kinds=Stack.of([spec(), bad(spec())]))


def test_kinds_must_cover_every_layer() -> None:
    with pytest.raises(ConfigError, match="cover"):
        ModelConfig(family="llama", d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=64, vocab_size=50,
                    n_ctx=128, kinds=Stack.of([spec(), spec()]))


def test_kind_words() -> None:
    assert kind_words(True, None) == "global"
    assert kind_words(True, 4096) == "local, window 4096"
    assert kind_words(False, None) == "bidirectional encoder"
    assert kind_words(True, None, no_rope=True) == "global, no RoPE"
    assert spec(rope=None).attn.words(rope_model=True) == "global, no RoPE"
    assert spec(rope=None).attn.words() == "global"  # GPT-2, BERT: positions are learned, not a quirk
    assert preset("gpt2").layer(0).attn.words(rope_model=preset("gpt2").positions == "rope") == "global"


def test_mask_demo_names_an_unrotated_layer(tmp_path_factory: pytest.TempPathFactory) -> None:
    import tiny_models_kinds as kinds_models

    folder = kinds_models.smollm3(tmp_path_factory.mktemp("smollm3"))
    raw = json.loads((folder / "config.json").read_text())
    runner = CliRunner()
    words = []
    for layer in range(raw["num_hidden_layers"]):
        res = runner.invoke(app, ["mask-demo", "the cat sat on the mat", "-m", str(folder), "--layer", str(layer),
                                  "--json"])
        assert res.exit_code == 0, res.output
        words.append(json.loads(res.stdout)["layer_kind"])
    rotates = raw.get("no_rope_layers")
    assert rotates is not None
    assert [w.endswith("no RoPE") for w in words] == [not r for r in rotates[:len(words)]]


def test_fused_phi3_tensors_count_where_they_belong(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Phi-3's qkv_proj and gate_up_proj are cut by the family's own stored_parts, so
    `params --model` files them under attention and MLP, none under 'other'."""
    import tiny_models_kinds as kinds_models

    folder = kinds_models.phi4_mini(tmp_path_factory.mktemp("phi4"))
    res = CliRunner().invoke(app, ["params", "--model", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    raw = json.loads((folder / "config.json").read_text())
    L, D, H = raw["num_hidden_layers"], raw["hidden_size"], raw["num_attention_heads"]
    dh = raw.get("head_dim") or D // H
    kv, F = raw["num_key_value_heads"], raw["intermediate_size"]
    rows = doc["rows"]
    assert rows["other"] == 0
    assert (rows["query"], rows["key"], rows["value"]) == (L * H * dh * D, L * kv * dh * D, L * kv * dh * D)
    assert rows["gate"] == rows["up"] == L * F * D
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert doc["total"] == ref.num_parameters()


@pytest.mark.parametrize("model_type", ["gemma3_text", "smollm3"])
def test_a_deep_config_of_a_kinds_family_reads_at_once(model_type: str) -> None:
    from attnscope.config import from_hf_config

    raw = {"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 100_000, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64, "vocab_size": 100,
           "max_position_embeddings": 128}
    start = time.perf_counter()
    cfg = from_hf_config(raw)
    required_count(cfg)
    assert time.perf_counter() - start < 3
    assert len(cfg.stack.runs) > 1
