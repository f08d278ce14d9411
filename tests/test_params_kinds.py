"""`params` and `--dry-run` read layers by kind (issue 24): counts sum each kind's block
times its layers, `params` shows a block per kind where kinds differ, `--context N` gives
each kind's KV cache (a window caps what its layers keep), and the real models' presets
count what transformers counts."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from attnscope import config as cfgmod
from attnscope import estimate
from attnscope import params as pm
from attnscope.architectures._common import layer_kind
from attnscope.config import ModelConfig
from attnscope.kinds import Stack

cli = pytest.importorskip("attnscope.cli")
app = cli.app

REAL = Path(__file__).resolve().parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": ""}
# The preset for each real config file (tests/data/real_configs, each with transformers' count).
PRESET_FILES = {
    "gemma-3-270m": "gemma-3-270m.json",
    "gemma-3-1b": "gemma-3-1b.json",
    "phi-3-mini-4k": "phi-3-mini-4k.json",
    "phi-4-mini": "phi-4-mini.json",
    "olmo-2-7b": "olmo-2-7b.json",
    "smollm3-3b": "smollm3-3b.json",
    "granite-3.3-2b": "granite-3.3-2b.json",
}
# Keys a preset may leave out of its config.json: none of them sizes or wires anything.
UNREAD = {"_num_parameters", "_name_or_path", "auto_map", "transformers_version", "bos_token_id", "eos_token_id",
          "pad_token_id", "use_cache", "initializer_range", "attention_dropout", "embd_pdrop", "resid_pdrop",
          "cache_implementation", "_sliding_window_pattern"}


def run(*args: str, columns: int = 200) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, "COLUMNS": str(columns)})


def run_json(*args: str) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- a hand-built mix

D, H, KV, DH, V, F, F_WIDE = 64, 4, 2, 16, 100, 128, 256


def mixed() -> ModelConfig:
    """12 layers in three kinds: local (window 8), local (window 32) with a wider MLP, global.
    Layers: 0-3 w8, 4 global, 5-7 w32-wide, 8-10 w8, 11 global."""
    base = ModelConfig(family="llama", d_model=D, n_layers=12, n_heads=H, n_kv_heads=KV, d_mlp=F, vocab_size=V,
                       n_ctx=4096, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu",
                       tied_embeddings=False, name="mixed")
    g = base.layer(0)
    w8 = g.with_attn(window=8)
    w32 = replace(g.with_attn(window=32), mlp=replace(g.mlp, d_mlp=F_WIDE))
    layers = [w8] * 4 + [g] + [w32] * 3 + [w8] * 3 + [g]
    return replace(base, kinds=Stack.of(layers))


def block_params(d_mlp: int) -> int:
    """One pre-norm gated block, from the shapes alone: q, o (H heads), k, v (KV heads),
    gate, up, down, and two RMSNorm weights."""
    return 2 * D * H * DH + 2 * D * KV * DH + 3 * D * d_mlp + 2 * D


def test_mixed_kinds_count_each_kind_by_its_layers():
    cfg = mixed()
    rep = pm.report(cfg)
    small, wide = block_params(F), block_params(F_WIDE)
    blocks = 9 * small + 3 * wide  # w8 (7 layers) and global (2) share a shape; w32 (3) is wider
    assert rep.total_full == blocks + 2 * V * D + D  # untied embedding and unembedding, final norm
    assert sum(pm.declared_counts(cfg).values()) == rep.total_full
    assert sum(pm.param_shapes(cfg)[n][0] * (pm.param_shapes(cfg)[n][1] if len(pm.param_shapes(cfg)[n]) > 1 else 1)
               for n in pm.param_shapes(cfg)) == rep.total_full  # the model's own list agrees
    rows = {k.label: k for k in rep.kinds}
    assert set(rows) == {"local, window 8, MLP 128", "global, MLP 128", "local, window 32, MLP 256"}
    assert rows["local, window 8, MLP 128"].ranges == [[0, 3], [8, 10]]
    assert rows["local, window 8, MLP 128"].n_layers == 7
    assert rows["global, MLP 128"].ranges == [[4, 4], [11, 11]]
    assert rows["local, window 32, MLP 256"].block["total"] == wide
    assert rows["local, window 32, MLP 256"].total == 3 * wide
    assert sum(k.total for k in rep.kinds) == blocks
    assert rep.mlp_total == 9 * 3 * D * F + 3 * 3 * D * F_WIDE
    assert rep.attention_total == 12 * (2 * D * H * DH + 2 * D * KV * DH)


def test_mixed_kinds_cache_is_capped_by_each_window():
    cfg = mixed()
    n = 100
    ctx = pm.context_report(cfg, n, "bfloat16")
    per_layer_token = 2 * KV * DH  # a key and a value per kv head
    expected = {  # label: (layers, positions kept)
        "local, window 8, MLP 128": (7, 8),
        "global, MLP 128": (2, n),
        "local, window 32, MLP 256": (3, 32),
    }
    got = {c.label: c for c in ctx.kv_kinds}
    assert set(got) == set(expected)
    for label, (layers, kept) in expected.items():
        c = got[label]
        assert (c.n_layers, c.tokens) == (layers, kept)
        assert c.values_per_token == layers * per_layer_token
        assert c.values == layers * kept * per_layer_token
        assert c.bytes == 2 * c.values  # bfloat16
    total = sum(layers * kept * per_layer_token for layers, kept in expected.values())
    assert ctx.kv_cache_total == total and ctx.kv_cache_bytes == 2 * total
    assert ctx.kv_cache_per_token == 12 * per_layer_token
    # Below every window nothing is capped: every layer keeps every token.
    short = pm.context_report(cfg, 5)
    assert short.kv_cache_total == 12 * per_layer_token * 5


def test_mixed_kinds_render_a_block_and_a_cache_row_per_kind():
    from rich.console import Console

    from attnscope.render.params import params_report

    cfg = mixed()
    console = Console(width=80, record=True, color_system=None)
    params_report(console, pm.report(cfg), pm.context_report(cfg, 100))
    text = console.export_text()
    assert "Per block, by layer kind" in text
    assert "layers 0-3, 8-10 (7): local, window 8, MLP 128" in text
    assert "layers 4, 11 (2): global, MLP 128" in text
    assert f"{block_params(F_WIDE):,}" in text
    assert "3 layers, local, window 32, MLP 256: 32 kept" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_one_kind_keeps_the_plain_block_table():
    result = run("params", "--config", "llama3-8b")
    assert result.exit_code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "Per block" in lines and not any("by layer kind" in line for line in lines)


def test_ranges_text_elides_after_three():
    assert pm.ranges_text([(0, 4), (6, 10), (12, 16), (18, 22)]) == "0-4, 6-10, 12-16 …"
    assert pm.ranges_text([(5, 5), (11, 11)]) == "5, 11"


# --------------------------------------------------------------------------- depth stays arithmetic


def deep(alternating: bool) -> ModelConfig:
    base = ModelConfig(family="llama", d_model=D, n_layers=100_000, n_heads=H, n_kv_heads=KV, d_mlp=F,
                       vocab_size=V, n_ctx=4096, positions="rope", norm="rmsnorm", layer_template=layer_kind(mlp="gated"), act="silu")
    g = base.layer(0)
    local = replace(g.with_attn(window=16), mlp=replace(g.mlp, d_mlp=F_WIDE))
    runs = ((local, 1), (g, 1)) * 50_000 if alternating else ((local, 60_000), (g, 40_000))
    return replace(base, kinds=Stack(runs))


@pytest.mark.parametrize("alternating", [False, True], ids=["two-runs", "100k-runs"])
def test_100k_layers_in_two_kinds_count_at_once(alternating):
    start = time.perf_counter()
    cfg = deep(alternating)
    rep = pm.report(cfg)
    ctx = pm.context_report(cfg, 1000)
    doc = pm.report_dict(rep, ctx)
    elapsed = time.perf_counter() - start
    local, glob = (50_000, 50_000) if alternating else (60_000, 40_000)
    assert rep.total_full == local * block_params(F_WIDE) + glob * block_params(F) + V * D + D  # tied
    assert ctx.kv_cache_total == 2 * KV * DH * (local * 16 + glob * 1000)
    assert [k["n_layers"] for k in doc["kinds"]] == [local, glob]
    assert elapsed < 5, elapsed  # arithmetic: well under a second here; 5 s only guards a hang


def test_100k_layer_config_file_counts_through_the_cli(tmp_path):
    # Gemma 2 alternates local and global layers: 100,000 runs of one layer each, the most
    # runs a 10^5-layer config can have.
    raw = {"model_type": "gemma2", "hidden_size": D, "num_hidden_layers": 100_000, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": DH, "intermediate_size": F, "vocab_size": V,
           "max_position_embeddings": 4096, "sliding_window": 16}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    start = time.perf_counter()
    doc = run_json("params", "--config", str(path), "--context", "1000")
    elapsed = time.perf_counter() - start
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert set(kinds) == {"local, window 16", "global"}
    assert kinds["local, window 16"]["layers"][:2] == [[0, 0], [2, 2]]
    assert kinds["global"]["layers"][-1] == [99_999, 99_999]
    assert kinds["global"]["n_layers"] == kinds["local, window 16"]["n_layers"] == 50_000
    cache = {k["kind"]: k for k in doc["context"]["kv_cache"]["kinds"]}
    assert cache["local, window 16"]["tokens"] == 16 and cache["global"]["tokens"] == 1000
    assert doc["context"]["kv_cache"]["values"] == 50_000 * 2 * KV * DH * (16 + 1000)
    assert elapsed < 20, elapsed  # about a second, reading the config included; 20 s guards a hang


# --------------------------------------------------------------------------- JSON rows per kind


def test_json_carries_the_kinds_and_their_caches():
    doc = run_json("params", "--config", "gemma-3-1b", "--context", "4096")
    kinds = doc["kinds"]
    assert [k["kind"] for k in kinds] == ["local, window 512, RoPE base 10,000", "global, RoPE base 1,000,000"]
    assert kinds[0]["layers"] == [[0, 4], [6, 10], [12, 16], [18, 22], [24, 25]]
    assert kinds[1]["layers"] == [[5, 5], [11, 11], [17, 17], [23, 23]]
    assert [k["n_layers"] for k in kinds] == [22, 4]
    assert sum(k["total"] for k in kinds) == 26 * doc["block"]["total"]  # both kinds share a shape here
    kv = doc["context"]["kv_cache"]
    per_layer_token = 2 * 1 * 256  # one kv head of 256
    assert [(k["n_layers"], k["tokens"]) for k in kv["kinds"]] == [(22, 512), (4, 4096)]
    assert kv["values"] == per_layer_token * (22 * 512 + 4 * 4096) == sum(k["values"] for k in kv["kinds"])
    assert kv["bytes"] == 4 * kv["values"]  # float32 by default


def test_a_model_wide_window_caps_the_whole_cache():
    # Mistral 7B's 4,096-token window: at 8,192 tokens each layer keeps 4,096 positions.
    kv = run_json("params", "--config", "mistral-7b", "--context", "8192")["context"]["kv_cache"]
    assert kv["values_per_token"] == 32 * 2 * 8 * 128
    assert kv["values"] == 32 * 2 * 8 * 128 * 4096
    assert len(kv["kinds"]) == 1 and kv["kinds"][0]["tokens"] == 4096


# --------------------------------------------------------------------------- --dry-run per kind


def test_dry_run_plan_takes_the_largest_kind():
    cfg = mixed()
    n = 50
    p = estimate.plan(cfg, 1000, n, "float32", 12, H, 3, False, False)
    wide = n * (4 * D + (H + 2 * KV) * DH + 2 * H * DH + 3 * F_WIDE) * 4  # the w32 kind's MLP is the widest
    assert p.activations == wide
    narrow = replace(cfg, kinds=None)  # the same model with every layer of the narrow kind
    assert estimate.plan(narrow, 1000, n, "float32", 12, H, 3, False, False).activations < wide


# --------------------------------------------------------------------------- presets of real models


@pytest.mark.parametrize("name", list(PRESET_FILES))
def test_real_presets_count_what_transformers_counts(name):
    raw = json.loads((REAL / PRESET_FILES[name]).read_text())
    doc = run_json("params", "--config", name)
    assert doc["convention"] == "full"
    assert doc["total"] == raw["_num_parameters"], name


def test_published_figures():
    # The published figures, through the presets.
    for name, total in (("phi-3-mini-4k", 3_821_079_552), ("gemma-3-1b", 999_885_952), ("olmo-2-7b", 7_298_617_344)):
        assert run_json("params", "--config", name)["total"] == total


@pytest.mark.parametrize("name", list(PRESET_FILES))
def test_real_presets_are_the_config_files(name):
    raw = json.loads((REAL / PRESET_FILES[name]).read_text())
    preset = cfgmod.PRESETS[name]
    assert {k: v for k, v in raw.items() if k not in UNREAD} == preset


def test_list_shows_the_real_presets_within_80_columns():
    result = run("params", "--list", columns=80)
    assert result.exit_code == 0, result.stderr
    for name in PRESET_FILES:
        assert name in result.stdout, name
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    names = [p["name"] for p in run_json("params", "--list")["presets"]]
    assert set(PRESET_FILES) <= set(names)
