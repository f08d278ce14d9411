"""Gemma 4 (`gemma4_text`, and the text tower of `gemma4` checkpoints) against transformers.

The tiny checkpoints of tests/tiny_models_gemma4.py (5 layers: local, global, local, then
two KV-shared layers reading layers 2 and 1; global heads twice as wide with proportional
RoPE; `gemma4`: per-layer input embeddings and double-wide shared MLPs; `gemma4_keqv`:
global values from the key projection, one global key/value head) on KINDS_TEXT (91
tokens, every window of 8 crossed). Checked here:

1. attention equals transformers' eager attention (float32) to 1e-5, every layer and head;
2. logits equal transformers' float64 ones to 1e-4 relative; token by token through our
   KVCache equals the full pass (logits and patterns), and the cache holds nothing for the
   KV-shared layers;
3. `mask-demo --json`'s last step equals each layer's pattern, and names its kind;
4. the real configs' counts (gemma-4-e2b, gemma-4-31b) equal transformers' `_num_parameters`,
   and `params --context` gives KV-shared layers no cache of their own;
5. the CLI: `attend --model`, `params --config`; a `gemma4` file's `text_config`; bad
   configs as one ConfigError each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from typer.testing import CliRunner

from family_checks import cached, reference_run, worst
import tiny_models as tm
import tiny_models_gemma4 as g4
from tiny_models_gemma4 import write_gguf as write_gemma4_gguf
import tiny_models_kinds as kinds
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from test_logits_cache import LOGITS_RTOL, PATTERN_ATOL, PatternChunks, assert_logits_close

NAMES = list(g4.GEMMA4_BUILDERS)
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
REAL = ["gemma-4-e2b", "gemma-4-31b"]
# Attention probabilities in float32, ours against transformers' float32: both carry float32
# rounding through five layers (measured: under 1e-6, see the report).
ATOL = 1e-5
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: g4.GEMMA4_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    return cached(lambda name: tm.load_reference(folder(name)))


@pytest.fixture(scope="module")
def ref64(reference: Callable[[str], Any]) -> Callable[[str], Any]:
    return cached(lambda name: copy.deepcopy(reference(name)).double().eval())


def ids_of(folder: Path, text: str = kinds.KINDS_TEXT) -> list[int]:
    return tm.plain_tokenizer(folder).encode(text).ids


def run_cli(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("name", NAMES)
def test_layer_kinds_are_transformers(name: str, ours: Callable, reference: Callable) -> None:
    """Each layer's window, head size, key/value heads, RoPE, key/value owner and MLP width
    are the ones transformers builds."""
    cfg = ours(name).config
    hf = reference(name).config
    layers = reference(name).model.layers
    assert cfg.family == "gemma4" and cfg.n_layers == hf.num_hidden_layers == len(g4.LAYER_TYPES)
    assert cfg.norm_offset == 0.0 and cfg.final_softcap == g4.FINAL_SOFTCAP and cfg.tied_embeddings
    for i, kind in enumerate(hf.layer_types):
        spec = cfg.layer(i)
        attn, their = spec.attn, layers[i].self_attn
        assert attn.window == (hf.sliding_window if kind == "sliding_attention" else None), i
        assert attn.d_head == their.head_dim and attn.group_size == their.num_key_value_groups, i
        assert attn.scale == their.scaling == 1.0 and attn.qk_norm == "head" and attn.softcap is None
        assert attn.kv_source == g4.SOURCES[i] and their.is_kv_shared_layer == (g4.SOURCES[i] is not None), i
        assert attn.k_eq_v == (their.v_proj is None if not their.is_kv_shared_layer else False), i
        assert spec.mlp.d_mlp == layers[i].mlp.intermediate_size, i
        assert attn.rope is not None and attn.rope.rotary_dim == attn.d_head
        assert attn.rope.theta == hf.rope_parameters[kind]["rope_theta"], i
        assert spec.wiring == "sandwich" and spec.out_scalar
        assert (spec.per_layer is not None) == bool(hf.hidden_size_per_layer_input), i
    # the shared layers' kinds: their owners' mask and heads, no key/value weights of their own
    names = {n for n, _ in ours(name).model.blocks[3].named_parameters()}
    assert not any(n.startswith(("attn.k.", "attn.v.", "attn.k_norm")) for n in names), names


def test_proportional_rope_is_transformers() -> None:
    """Gemma 4's global RoPE: half-width exponents over the whole head, the rest standing still."""
    from transformers import Gemma4TextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from attnscope.kinds import RopeSpec, freeze
    from attnscope.parts.positions import rope_inv_freq

    for share, factor in ((0.25, 1.0), (0.5, 2.0), (1.0, 1.0)):
        hf = Gemma4TextConfig(head_dim=16, global_head_dim=64, num_hidden_layers=2, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": share, "factor": factor,
                               "rope_theta": 1e6}})
        want, _ = ROPE_INIT_FUNCTIONS["proportional"](hf, layer_type="full_attention")
        scaling = {"rope_type": "proportional", "partial_rotary_factor": share, "factor": factor}
        spec = RopeSpec(1e6, 64, freeze(scaling))
        torch.testing.assert_close(rope_inv_freq(spec, 128), want, rtol=0, atol=0)


def test_multimodal_text_config_and_hub_keys() -> None:
    """A `gemma4` file's text tower, as the Hub writes it (`global_head_dim`,
    `num_global_key_value_heads`): the same kinds as transformers' config reads them, and the
    counts of its text model on the meta device."""
    from transformers import AutoModelForCausalLM, Gemma4Config

    from attnscope.params import report

    text = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 8, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "global_head_dim": 32, "attention_k_eq_v": True,
            "num_global_key_value_heads": 1, "num_kv_shared_layers": 2, "hidden_size_per_layer_input": 4,
            "vocab_size": 100, "vocab_size_per_layer_input": 100, "use_double_wide_mlp": True,
            "use_bidirectional_attention": "vision"}
    raw = {"model_type": "gemma4", "text_config": text}
    cfg = from_hf_config(raw)
    hf = Gemma4Config.from_dict(json.loads(json.dumps(raw))).text_config
    assert [cfg.layer(i).attn.window for i in range(8)] == [
        hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
    modes = hf.kv_sharing_modes
    assert [cfg.layer(i).attn.kv_source is not None for i in range(8)] == [m == "reuse" for m in modes]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    assert report(cfg).total_full == model.num_parameters()
    for i, layer in enumerate(model.model.layers):
        assert cfg.layer(i).attn.d_head == layer.self_attn.head_dim
        assert cfg.layer(i).attn.group_size == layer.self_attn.num_key_value_groups


@pytest.mark.parametrize("edit, words", [
    ({"enable_moe_block": True}, "enable_moe_block"),
    ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
    ({"num_kv_shared_layers": 4}, "must leave a layer"),
    ({"num_kv_shared_layers": -1}, "num_kv_shared_layers must be an integer"),
    ({"layer_types": ["full_attention"] * 2 + ["sliding_attention", "full_attention"], "num_kv_shared_layers": 2},
     "no earlier layer of its kind"),
    ({"layer_types": ["sliding_attention"]}, "layer_types must list"),
    ({"layer_types": ["chunked_attention"] * 4}, "layer_types must list"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e6}}}, "per layer kind"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6},
                          "sliding_attention": {"rope_theta": 1e4}}}, "unsupported gemma4 rope type"),
    ({"rope_parameters": {"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 2,
                                             "rope_theta": 1e6},
                          "sliding_attention": {"rope_theta": 1e4}}}, "partial_rotary_factor"),
    ({"global_head_dim": 0}, "global_head_dim must be an integer"),
    ({"attention_k_eq_v": True, "num_global_key_value_heads": 3}, "head counts|key/value heads"),
    ({"attention_k_eq_v": "yes"}, "attention_k_eq_v must be true or false"),
    ({"hidden_size_per_layer_input": 2**20}, "per-layer inputs need a width"),
    ({"per_layer_config": {"9": {"head_dim": 8}}}, "per_layer_config must map"),
    ({"per_layer_config": {"1": {"sliding_window": 8}}}, "per_layer_config must map"),
    ({"per_layer_config": [1]}, "per_layer_config must be an object"),
    ({"final_logit_softcapping": "x"}, "final_logit_softcapping"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_configs_are_one_config_error(edit: dict[str, Any], words: str) -> None:
    raw = {"model_type": "gemma4_text", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 64,
           "sliding_window": 8, "hidden_size_per_layer_input": 4, "vocab_size_per_layer_input": 64, **edit}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)
    with pytest.raises(ConfigError, match=words):  # the same under a multimodal file's text_config
        from_hf_config({"model_type": "gemma4", "text_config": raw})


def test_hand_built_shared_kinds_are_refused() -> None:
    """A KV-shared kind must read an earlier layer that owns its keys, with its heads and mask."""
    from dataclasses import replace

    from attnscope.kinds import Stack

    raw = {"model_type": "gemma4_text", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 64,
           "sliding_window": 8, "num_kv_shared_layers": 1, "hidden_size_per_layer_input": 0,
           "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}
    cfg = from_hf_config(raw)
    layers = list(cfg.stack)
    for source, words in ((3, "earlier layer"), (0, "cannot lend"), (True, "earlier layer")):
        bad = layers[:3] + [layers[3].with_attn(kv_source=source)]
        with pytest.raises(ConfigError, match=words):
            replace(cfg, kinds=Stack.of(bad))
    # per-layer key/value heads and head sizes are a kind's own; query head counts are not
    for change, words in (({"n_heads": 4}, r"different head counts \(of queries\)"),
                          ({"n_kv_heads": 3}, "head counts"), ({"d_head": 2**31}, "head counts")):
        bad = [layers[0].with_attn(**change)] + layers[1:]
        with pytest.raises(ConfigError, match=words):
            replace(cfg, kinds=Stack.of(bad))


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, float32 against transformers' eager float32, on 91 tokens."""
    ids = ids_of(folder(name))
    ref = reference(name)
    assert len(ids) >= 90 and len(ids) > 2 * g4.WINDOW
    att = ours(name).attention(kinds.KINDS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    _, want = reference_run(ref, ids)
    assert att.layers == list(range(len(g4.LAYER_TYPES))) and att.heads == list(range(4))
    assert worst(att.probs, want) <= ATOL
    # the windows really cut; a shared layer's pattern is its own, not its owner's
    n = len(ids)
    beyond = torch.arange(n)[None, :] <= torch.arange(n)[:, None] - g4.WINDOW  # (n, n)
    for layer, kind in enumerate(g4.LAYER_TYPES):
        mass = float(att.probs[layer][:, beyond].abs().max())
        assert (mass == 0.0) if kind == "sliding_attention" else (mass > 1e-3), (layer, kind)
    for layer, source in enumerate(g4.SOURCES):
        if source is not None:
            assert worst(att.probs[layer], att.probs[source]) > 1e-2, layer


@pytest.mark.parametrize("name", NAMES)
def test_one_layer_selection_keeps_its_kind(name: str, folder: Callable, ours: Callable,
                                            reference: Callable) -> None:
    """A KV-shared layer asked alone still reads its owner's keys (the run passes the owner)."""
    ids = ids_of(folder(name))
    _, want = reference_run(reference(name), ids)
    for layer in range(want.shape[0]):
        att = ours(name).attention_ids(ids, layers=[layer], heads=[1, 3])
        assert worst(att.probs, want[[layer]][:, [1, 3]]) <= ATOL, layer


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, ref64: Callable) -> None:
    ids = ids_of(folder(name))
    want, _ = reference_run(ref64(name), ids)
    got = ours(name).logits(ids)
    assert_logits_close(got, want, LOGITS_RTOL, name)
    assert float(want.abs().max()) < g4.FINAL_SOFTCAP  # the soft-cap is on


# Stepped against full, both ours in float64: the same sums in other shapes (measured 3e-13
# of logits of scale 2.9). In float32 the two differ by float32 rounding alone, and on the
# `gemma4` checkpoint that rounding is large: transformers' own float32 patterns lie 4.2e-5
# from the float64 ones (its per-layer inputs and layer scalars grow the activations; ours
# in float32 equal transformers' float32 bit for bit), our stepped ones 6.2e-5. So the
# float32 steps are held to the float64 full pass within twice transformers' own float32
# error on the same text (never below PATTERN_ATOL), measured in the test itself.
STEP64_RTOL = 1e-10


def check_against_full_pass(name: str, insp: Any, ref: Any, ref32: Any, ids: list[int],
                            pieces: list[list[int]]) -> None:
    """Feed `pieces` (which join to `ids`) through one cache: in float64 the logits and
    patterns are the full pass's; in float32, transformers'."""
    assert [i for piece in pieces for i in piece] == ids
    n, L, H = len(ids), insp.n_layers, insp.n_heads
    insp64 = copy.copy(insp)
    insp64.model = copy.deepcopy(insp.model).double()
    results = {}
    for what, model in (("float64", insp64), ("float32", insp)):
        cache = model.new_cache()
        hook = PatternChunks()
        rows = [model.step(piece, cache, hook) for piece in pieces]
        results[what] = torch.cat(rows), hook.full(L, H, n)  # (T, vocab), (L, H, T, T)
        for layer, source in enumerate(g4.SOURCES):  # nothing cached of a KV-shared layer's own
            assert (cache.k[layer] is None) == (source is not None), (what, layer)
    whole = PatternChunks()
    insp64.run(ids, whole)
    full_logits, full_patterns = insp64.logits(ids), whole.full(L, H, n)
    stepped, patterns = results["float64"]
    assert stepped.dtype == torch.float64
    scale = float(full_logits.abs().max())
    torch.testing.assert_close(stepped, full_logits, rtol=STEP64_RTOL, atol=STEP64_RTOL * scale)
    torch.testing.assert_close(patterns.double(), full_patterns.double(), rtol=0, atol=STEP64_RTOL)
    ref_logits, _ = reference_run(ref, ids)
    stepped, patterns = results["float32"]
    assert_logits_close(stepped, ref_logits, LOGITS_RTOL, f"{name}: stepped logits vs transformers")
    _, their32 = reference_run(ref32, ids)
    allowed = max(PATTERN_ATOL, 2 * worst(their32, full_patterns))  # transformers' own float32 error, twice
    assert worst(patterns, full_patterns) <= allowed, (worst(patterns, full_patterns), allowed)


@pytest.mark.parametrize("name", NAMES)
def test_one_token_at_a_time_is_one_full_pass(name: str, folder: Callable, ours: Callable, ref64: Callable,
                                              reference: Callable) -> None:
    ids = ids_of(folder(name))
    check_against_full_pass(name, ours(name), ref64(name), reference(name), ids, [[i] for i in ids])


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_steps_is_one_full_pass(name: str, folder: Callable, ours: Callable, ref64: Callable,
                                             reference: Callable) -> None:
    """A prefix longer than the window, three tokens at once, then one at a time."""
    ids = ids_of(folder(name))
    cut = g4.WINDOW + 3
    pieces = [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]]
    check_against_full_pass(name, ours(name), ref64(name), reference(name), ids, pieces)


def test_cache_holds_nothing_for_shared_layers(folder: Callable, ours: Callable) -> None:
    """After 90 tokens: owners keep their own (a local one its window), the KV-shared layers
    nothing, and a shared layer's step still reads its owner's keys."""
    insp = ours("gemma4")
    ids = ids_of(folder("gemma4"))
    cache = insp.new_cache()
    hook = PatternChunks()
    insp.step(ids[:-1], cache)
    insp.step(ids[-1:], cache, hook)
    keys = {layer: value.shape[-1] for layer, _, _, value in hook.chunks}
    for layer, (kind, source) in enumerate(zip(g4.LAYER_TYPES, g4.SOURCES)):
        if source is not None:
            assert cache.k[layer] is None and cache.v[layer] is None, layer
        else:
            assert cache.k[layer] is not None
            held = cache.k[layer].shape[1]
            assert held == (g4.WINDOW if kind == "sliding_attention" else len(ids)), layer
        if kind == "sliding_attention":  # the window's keys (the owner's cache) and the new one
            assert keys[layer] <= g4.WINDOW + 1, layer
        else:
            assert keys[layer] == len(ids), layer


# ---------------------------------------------------------------------- mask-demo


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, ours: Callable,
                                                     reference: Callable) -> None:
    """No --kind: every layer's last step is the model's own pattern (ours and transformers',
    both float32: their float64 differs by float32's own rounding, see STEP64_RTOL), and the
    demo names the layer's kind, KV-shared ones with their owner."""
    ids = ids_of(folder(name))
    _, want = reference_run(reference(name), ids)  # (L, H, T, T)
    mine = ours(name).attention_ids(ids).probs
    for layer, (kind, source) in enumerate(zip(g4.LAYER_TYPES, g4.SOURCES)):
        window = g4.WINDOW if kind == "sliding_attention" else None
        head = layer % 4
        result = run_cli("mask-demo", kinds.KINDS_TEXT, "--model", str(folder(name)), "--layer", str(layer),
                         "--head", str(head), "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        where = f"{name} layer {layer} head {head}"
        assert doc["window"] == window and doc["own_mask"] is True, where
        words = "global" if window is None else f"local, window {window}"
        if source is not None:
            words += f", KV-shared from layer {source}"
        assert doc["layer_kind"] == words, where
        assert "KV-shared (an earlier layer's keys and values) on layers 3, 4" in doc["layer_map"], where
        assert doc["d_head"] == (16 if window else 32), where  # the layer's own head size
        assert doc["steps"][0]["title"] == "Scores  q·k", where  # scale 1: q and k are RMS-normed
        step = doc["steps"][-1]
        assert step["name"] == "masked_softmax", where
        got = torch.tensor(step["matrix"], dtype=torch.float64)  # (T, T)
        assert worst(got, want[layer, head]) <= ATOL, where
        assert worst(got, mine[layer, head]) <= ATOL, where


# ---------------------------------------------------------------------- counts


@pytest.mark.parametrize("preset", REAL)
def test_real_config_counts(preset: str) -> None:
    """The count `params --config FILE` gives equals transformers' `_num_parameters`, and so
    does the preset's."""
    from attnscope.config import load_config, preset as named
    from attnscope.params import report

    path = REAL_CONFIGS / f"{preset}.json"
    expected = json.loads(path.read_text())["_num_parameters"]
    assert report(load_config(path)).total_full == expected
    assert report(named(preset)).total_full == expected
    result = run_cli("params", "--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == expected


def test_context_gives_shared_layers_no_cache() -> None:
    """gemma-4-e2b at 4,096 tokens: 15 layers keep keys and values (12 local ones 512 of
    them, 3 global ones all), the 20 KV-shared layers none of their own."""
    from attnscope.config import load_config
    from attnscope.params.context import context_report

    cfg = load_config(REAL_CONFIGS / "gemma-4-e2b.json")
    ctx = context_report(cfg, 4096, "bfloat16")
    shared = [k for k in ctx.kv_kinds if "KV-shared" in k.label]
    assert sum(k.n_layers for k in shared) == 20 and all(k.values == 0 and k.bytes == 0 for k in shared)
    # 1 key/value head of 256 (local) or 512 (global), K and V
    local, glob = 12 * 2 * 256 * 512, 3 * 2 * 512 * 4096
    assert ctx.kv_cache_total == local + glob
    result = run_cli("params", "--config", str(REAL_CONFIGS / "gemma-4-e2b.json"), "--context", "4096", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["context"]["kv_cache"]["values"] == local + glob


@pytest.mark.parametrize("name", NAMES)
def test_tiny_counts_equal_the_checkpoint(name: str, folder: Callable, reference: Callable) -> None:
    from attnscope.config import load_config
    from attnscope.params import report

    assert report(load_config(folder(name))).total_full == reference(name).num_parameters()


# ---------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", NAMES)
def test_attend_cli(name: str, folder: Callable) -> None:
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder(name)), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


@pytest.mark.parametrize("name", NAMES)
def test_queries_and_keys_of_every_kind(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """`Inspector.qk` on each layer: the keys repeated for that layer's own groups (global
    layers of `gemma4_keqv` have one key/value head where local ones have two; a KV-shared
    layer's keys are its owner's), so softmax of the masked q·kᵀ is transformers' pattern."""
    ids = ids_of(folder(name))
    _, want = reference_run(reference(name), ids)
    n = len(ids)
    for layer, kind in enumerate(g4.LAYER_TYPES):
        _, q, k, scale = ours(name).qk(kinds.KINDS_TEXT, layer)
        assert q.shape == k.shape == (4, n, ours(name).config.layer(layer).attn.d_head), layer
        diff = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        hidden = (diff < 0) | ((diff >= g4.WINDOW) if kind == "sliding_attention" else False)
        scores = (q.double() @ k.double().transpose(-2, -1) * scale).masked_fill(hidden, float("-inf"))
        assert worst(scores.softmax(-1), want[layer]) <= ATOL, layer


def test_blocks_add_up_to_the_model() -> None:
    """gemma-4-e2b: every kind's block total × its layers, plus the embeddings, the per-layer
    table and projection and the final norm, is the model's count (the per-layer gates are
    in the blocks, the `per_layer` row holds them all)."""
    from attnscope.config import preset
    from attnscope.params import report

    cfg = preset("gemma-4-e2b")
    rep = report(cfg)
    outside = 262144 * 1536 + 262144 * 35 * 256 + 35 * 256 * 1536 + 256 + 1536  # tok, table, projection, norms
    assert sum(kind.total for kind in rep.kinds) + outside == rep.total_full
    gates = sum(kind.n_layers * kind.block["per_layer"] for kind in rep.kinds)
    assert gates == 35 * 2 * 1536 * 256
    assert rep.rows["per_layer"] == gates + 262144 * 35 * 256 + 35 * 256 * 1536


def test_multimodal_checkpoint_reads_its_text_tower(folder: Callable, ours: Callable, tmp_path: Path) -> None:
    """A `gemma4` checkpoint (Gemma4ForConditionalGeneration): the text settings under
    `text_config`, the text weights under `model.language_model.`, beside a vision tower
    attnscope does not read; the same attention and logits as the text-only folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    from attnscope.api import load

    src = folder("gemma4")
    dst = tmp_path / "multimodal"
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    renamed = {"model.language_model." + k[len("model."):]: v for k, v in tensors.items()}
    renamed["model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight"] = torch.zeros(4, 4)
    save_file(renamed, str(dst / "model.safetensors"), metadata={"format": "pt"})

    def wrap(raw: dict[str, Any]) -> None:
        text = dict(raw)
        raw.clear()
        raw.update({"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
                    "text_config": text, "tie_word_embeddings": True})

    tm.rewrite_config(dst, wrap)
    insp = load(str(dst), device="cpu", dtype="float32")
    ids = ids_of(src)
    assert worst(insp.attention_ids(ids).probs, ours("gemma4").attention_ids(ids).probs) == 0.0
    assert worst(insp.logits(ids), ours("gemma4").logits(ids)) == 0.0


def test_value_zeroing_refuses_per_layer_gates(folder: Callable) -> None:
    """Value zeroing replays a block's wiring after its attention; Gemma 4's per-layer input
    gate reads an input the replay does not have: one line, not a wrong figure. ALTI (which
    decomposes attention and its norm only) and the norm measure run."""
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder("gemma4")), "--measure", "value-zeroing",
                     "--device", "cpu")
    assert result.exit_code != 0 and "per-layer input gate" in result.output, result.output
    assert "Traceback" not in result.output
    for measure in ("alti", "norm"):
        result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder("gemma4")), "--measure", measure,
                         "--layer", "4", "--device", "cpu")
        assert result.exit_code == 0, result.output
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder("gemma4_keqv")), "--measure",
                     "value-zeroing", "--layer", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output


# Any JSON value in any of the keys Gemma 4's reader takes: a ModelConfig or one ConfigError,
# never another exception (a file's text_config alike).
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_KEYS = ["layer_types", "num_kv_shared_layers", "global_head_dim", "num_global_key_value_heads", "attention_k_eq_v",
         "hidden_size_per_layer_input", "vocab_size_per_layer_input", "use_double_wide_mlp", "rope_parameters",
         "per_layer_config", "final_logit_softcapping", "sliding_window", "enable_moe_block",
         "use_bidirectional_attention", "head_dim", "num_key_value_heads", "text_config", "tie_word_embeddings"]
_LAYER_RAW = {"model_type": "gemma4_text", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "global_head_dim": 32,
              "vocab_size": 64, "sliding_window": 8, "hidden_size_per_layer_input": 4,
              "vocab_size_per_layer_input": 64, "num_kv_shared_layers": 1}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=3), nested=st.booleans())
def test_any_value_is_a_config_or_one_error(changes: dict[str, Any], nested: bool) -> None:
    raw = {**_LAYER_RAW, **changes}
    if nested:
        raw = {"model_type": "gemma4", "text_config": {k: v for k, v in raw.items() if k != "text_config"}}
    try:
        cfg = from_hf_config(raw, "fuzz")
    except ConfigError:
        return
    for i in range(cfg.n_layers):  # every KV-shared layer reads an earlier owner of its own kind
        a = cfg.layer(i).attn
        if a.kv_source is not None:
            owner = cfg.layer(a.kv_source).attn
            assert a.kv_source < i and owner.kv_source is None and owner.window == a.window


# ---------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("name", NAMES)
def test_gguf_equals_the_same_weights(name: str, folder: Callable, reference: Callable, tmp_path: Path) -> None:
    """The GGUF form of each tiny checkpoint: the same layer kinds, every tensor equal to the
    safetensors folder's, and attention and logits equal to transformers' on the same weights
    (transformers reads no gemma4 GGUF)."""
    pytest.importorskip("gguf")
    from attnscope.api import load
    from attnscope.architectures import gemma4, to_ours
    from attnscope.sources.gguf import gguf_config, iter_gguf_tensors, read_gguf

    model = reference(name)
    path = write_gemma4_gguf(tmp_path / f"{name}.gguf", model)
    f = read_gguf(path)
    cfg = from_hf_config(gguf_config(f), name="tiny")
    want = from_hf_config(json.loads((folder(name) / "config.json").read_text()))
    assert list(cfg.stack) == list(want.stack)
    mine = dict(iter_gguf_tensors(f, cfg, gemma4))
    theirs: dict[str, torch.Tensor] = {}
    for hf_name, tensor in model.state_dict().items():
        theirs.update(to_ours(gemma4, hf_name, tensor, cfg))
    theirs.pop("unembed.weight", None)  # tied
    assert sorted(mine) == sorted(theirs)
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key
    insp = load(str(path), device="cpu", dtype="float32")
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    logits, attn = reference_run(model, ids)
    assert worst(insp.attention_ids(ids).probs, attn) <= ATOL
    assert_logits_close(insp.logits(ids), logits.double(), LOGITS_RTOL, f"{name} gguf logits")


def test_gguf_params_and_llama_cpp_tokenizer(reference: Callable, tmp_path: Path) -> None:
    """`params --model` counts a gemma4 GGUF as transformers counts the model; a file with
    a tokenizer model attnscope does not build ("gemma") is refused by `attend` in one line."""
    pytest.importorskip("gguf")
    from gguf import GGUFReader

    model = reference("gemma4")
    path = write_gemma4_gguf(tmp_path / "tiny.gguf", model)
    result = run_cli("params", "--model", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == model.num_parameters()
    data = bytearray(path.read_bytes())
    # the key, its value type (u32) and the string's length (u64), then the string
    at = bytes(data).index(b"tokenizer.ggml.model") + len(b"tokenizer.ggml.model") + 4 + 8
    assert bytes(data[at:at + 5]) == b"llama"
    data[at:at + 5] = b"gemma"  # same length: the header stays valid
    assert str(GGUFReader(bytes_path(tmp_path, data)).fields["tokenizer.ggml.model"].contents()) == "gemma"
    odd = tmp_path / "gemma-tokenizer.gguf"
    odd.write_bytes(bytes(data))
    result = run_cli("attend", "hello", "--model", str(odd), "--device", "cpu")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "tokenizer model 'gemma' is not supported" in result.output, result.output


def bytes_path(folder: Path, data: bytes) -> Path:
    path = folder / "check.gguf"
    path.write_bytes(bytes(data))
    return path


_GGUF_META = {"gemma4.block_count": 4, "gemma4.embedding_length": 32, "gemma4.attention.head_count": 4,
              "gemma4.attention.head_count_kv": [2, 2, 2, 1], "gemma4.feed_forward_length": [48, 48, 48, 96],
              "gemma4.context_length": 128, "gemma4.attention.layer_norm_rms_epsilon": 1e-6,
              "gemma4.attention.key_length": 32, "gemma4.attention.key_length_swa": 16,
              "gemma4.attention.sliding_window": 8,
              "gemma4.attention.sliding_window_pattern": [True, False, True, False],
              "gemma4.attention.shared_kv_layers": 1, "gemma4.embedding_length_per_layer_input": 4,
              "gemma4.rope.freq_base": 1e6, "gemma4.final_logit_softcapping": 30.0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(sorted(_GGUF_META)), _JSON, max_size=3))
def test_any_gguf_metadata_is_a_config_or_one_error(changes: dict[str, Any]) -> None:
    """Any value in a gemma4 GGUF's keys: a config, or a ConfigError (a missing key is the
    KeyError gguf_config turns into one CheckpointError line)."""
    from attnscope.architectures import gemma4

    shapes = {"per_layer_token_embd.weight": (64, 16), "blk.1.attn_v.weight": (64, 32)}
    try:
        raw = gemma4.config_from_gguf({**_GGUF_META, **changes}, "gemma4", shapes)
        from_hf_config({**raw, "vocab_size": 64})
    except (ConfigError, KeyError):
        return


def test_context_flops_count_the_per_layer_matmuls() -> None:
    """Forward FLOPs per token: the per-layer projection (d → layers × width) and each
    layer's gate and projection are multiplications (2 FLOPs a weight); the per-layer table
    is a lookup."""
    from dataclasses import replace

    from attnscope.config import preset
    from attnscope.params.context import context_report

    cfg = preset("gemma-4-e2b")
    plain = replace(cfg, kinds=type(cfg.stack).of(replace(spec, per_layer=None) for spec in cfg.stack))
    gained = context_report(cfg, 4096).flops_per_token - context_report(plain, 4096).flops_per_token
    assert gained == 2 * (1536 * 35 * 256 + 35 * 2 * 1536 * 256)
