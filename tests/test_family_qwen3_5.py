"""Qwen3.5 and Qwen3-Next (issue 26: the "linear" layer kind, parts/deltanet.py,
architectures/qwen3_5.py and qwen3_next.py) against transformers.

Three tiny random checkpoints from tests/tiny_models_qwen3_5.py: Qwen3.5 text, the
multimodal Qwen3.5's text tower (weights under `model.language_model.`, a vision tower
beside them), and Qwen3-Next (fused per-key-head projections, experts with a gated shared
expert). Their layers are linear, full, linear, linear; texts of 90+ tokens.

Every expected number comes from transformers (eager attention):
- the softmax (full) layer's pattern to 1e-5 in float32 (`ATOL`): both sides compute the
  same softmax in float32 over inputs equal to float32 rounding;
- logits against a float64 reference to 1e-4 relative (`LOGITS_RTOL`); transformers' delta
  rule computes in float32 whatever the weights' dtype, so the reference's linear layers
  carry float32 rounding (~1e-6 relative per layer), far below the bound;
- each linear layer's hidden attention M: Σ_j M[t, j] v_j is transformers' own kernel
  output (the input of its gated norm, hooked) to 1e-5 relative (`M_RTOL`), the bound
  tests/test_linear_attention.py derives for float32 sums over ~100 terms;
- token by token through our cache equals one full pass (`STEP_RTOL`, ours against ours,
  float32: the recurrence runs the same steps, the softmax layer sums in another order);
- the real configs' counts equal transformers' num_parameters() on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models_qwen3_5 as tq
from family_checks import references, rel, run_hooked
from tiny_models_qwen3_5 import ids_of, text_layers
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from attnscope.hooks import Capture, attn_site
from attnscope.kinds import LinearSpec

NAMES = ["qwen3_5", "qwen3_5_mm", "qwen3_next"]
ATOL = 1e-5
LOGITS_RTOL = 1e-4
M_RTOL = 1e-5
STEP_RTOL = 1e-5
LINEAR, FULL = [0, 2, 3], [1]
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[..., Any]:
    return references(folder)


# ------------------------------------------------------------------ the checkpoints and configs


def test_checkpoints_carry_the_quirks(folder: Callable, reference: Callable) -> None:
    for name in NAMES:
        layers = text_layers(reference(name))
        assert [layer.layer_type if hasattr(layer, "layer_type") else layer.block_type for layer in layers] == \
            tq.LAYER_TYPES
        assert len(ids_of(folder(name))) >= 90
    kinds = [type(layer.mlp).__name__ for layer in text_layers(reference("qwen3_next"))]
    assert kinds == ["Qwen3NextMLP", "Qwen3NextSparseMoeBlock", "Qwen3NextMLP", "Qwen3NextSparseMoeBlock"]
    raw = json.loads((folder("qwen3_5_mm") / "config.json").read_text())
    assert raw["model_type"] == "qwen3_5" and raw["text_config"]["rope_parameters"]["mrope_section"] == [1, 1, 0]


def test_config_reads_every_quirk(ours: Callable) -> None:
    for name in NAMES:
        cfg = ours(name).config
        assert [cfg.layer(i).attn.kind for i in range(4)] == ["linear", "softmax", "linear", "linear"]
        lin, full = cfg.layer(0).attn, cfg.layer(1).attn
        assert lin.linear == LinearSpec(n_k_heads=2, n_v_heads=4, d_k=12, d_v=8, conv_kernel=4, norm_eps=1e-6)
        assert (lin.n_heads, lin.n_kv_heads, lin.d_head, lin.rope, lin.out_gate) == (4, 2, 12, None, False)
        assert full.out_gate and full.qk_norm == "head" and full.rope.rotary_dim == 4 and full.rope.theta == tq.THETA
        assert cfg.norm_offset == 1.0 and cfg.d_head == 16
        assert [s.stochastic for s in ours(name).sites] == [False, True, False, False]
    assert ours("qwen3_5_mm").config.tied_embeddings and not ours("qwen3_5").config.tied_embeddings
    cfg = ours("qwen3_next").config
    assert [cfg.layer(i).mlp.kind for i in range(4)] == ["gated", "experts", "gated", "experts"]
    e = cfg.layer(1).mlp.experts
    assert (e.n_experts, e.top_k, e.norm_topk_prob, e.d_shared, e.shared_gate) == (4, 2, True, 24, True)


# ------------------------------------------------------------------ attention, logits, M


@pytest.mark.parametrize("name", NAMES)
def test_softmax_attention_matches_transformers(name: str, folder: Callable, ours: Callable,
                                                reference: Callable) -> None:
    """The full layer's every head, given the same residual stream: ours entering block 1
    (after a linear layer, whose float32 sums run in another order than transformers'
    chunked kernel) fed to transformers' own norm and gated attention. Its pattern comes
    from the queries' partial RoPE under the text model's multimodal sections and the
    per-head (1 + w) norms; the output gate after it is checked too (the layer's output)."""
    from attnscope.parts.positions import Rotary

    ids, insp = ids_of(folder(name)), ours(name)
    T = len(ids)
    cap = insp.capture(ids, {attn_site(1): ["pattern", "result"], "blocks.1": ["resid_pre"]})
    model = reference(name)
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    layer = text_layers(model)[1]
    h = cap.get("blocks.1", "resid_pre")[None]  # (1, T, d)
    with torch.no_grad():
        cos, sin = inner.rotary_emb(h, torch.arange(T)[None])
        # the multimodal sections on text: plain RoPE over the rotated dims (ours)
        ours_cos, ours_sin = Rotary(insp.config.layer(1).attn.rope, insp.config.n_ctx).tables_at(torch.arange(T))
        assert float((cos[0] - ours_cos).abs().max()) < 1e-6 and float((sin[0] - ours_sin).abs().max()) < 1e-6
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        out, want = layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=(cos, sin),
                                    attention_mask=mask)
    got = cap.get(attn_site(1), "pattern")
    assert got.dtype == torch.float32 and got.shape == want[0].shape == (4, T, T)
    assert float((got - want[0]).abs().max()) < ATOL
    # the heads' shares (after the gate) sum to the layer's output, transformers' o_proj(gate ⊙ z)
    assert rel(cap.get(attn_site(1), "result").sum(0), out[0]) < STEP_RTOL


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    ids = ids_of(folder(name))
    with torch.no_grad():
        ref = reference(name, True)(torch.tensor([ids])).logits[0]
    got = ours(name).logits(ids)
    assert got.dtype == torch.float32
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref, rtol=LOGITS_RTOL, atol=LOGITS_RTOL * scale)


@pytest.mark.parametrize("name", NAMES)
def test_hidden_attention_reproduces_the_kernel_output(name: str, folder: Callable, ours: Callable,
                                                       reference: Callable) -> None:
    """Each linear layer's M (reported as its pattern) times its values (reported as `v`)
    is transformers' own core output, the input of its gated norm, to 1e-5 relative; the
    rows are signed and do not sum to 1; M is causal."""
    ids = ids_of(folder(name))
    model = reference(name)
    seen: dict[int, torch.Tensor] = {}
    handles = [text_layers(model)[i].linear_attn.norm.register_forward_pre_hook(
        lambda module, args, i=i: seen.__setitem__(i, args[0].detach().clone())) for i in LINEAR]
    run_hooked(model, ids, handles)
    cap = ours(name).capture(ids, {attn_site(i): ["pattern", "v", "z"] for i in LINEAR})
    T = len(ids)
    for i in LINEAR:
        m, v = cap.get(attn_site(i), "pattern"), cap.get(attn_site(i), "v")  # (H_v, T, T), (H_v, T, d_v)
        assert m.shape == (4, T, T) and v.shape == (4, T, 8)
        assert torch.equal(m.triu(1), torch.zeros_like(m))
        core = seen[i].view(T, 4, 8).transpose(0, 1)  # (T·H_v, d_v) -> (H_v, T, d_v)
        assert rel(m.double() @ v.double(), core) < M_RTOL
        assert rel(cap.get(attn_site(i), "z"), core) < M_RTOL
        assert float(m.min()) < 0 and float((m.sum(-1) - 1).abs().max()) > 0.1


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_token_by_token_equals_full_pass(name: str, folder: Callable, ours: Callable) -> None:
    """Stepping one token at a time through the cache (each linear layer carrying its
    conv tail and recurrent state, and its transported keys while patterns are asked)
    gives the full pass's logits and every layer's pattern, softmax and linear."""
    insp, ids = ours(name), ids_of(folder(name))
    wanted = {attn_site(i): ["pattern"] for i in range(4)}
    cache, stepped = insp.new_cache(), Capture(wanted)
    logits = torch.cat([insp.step([i], cache, stepped) for i in ids])
    full = insp.capture(ids, wanted)
    assert rel(logits, insp.logits(ids)) < STEP_RTOL
    for i in range(4):
        a, b = stepped.get(attn_site(i), "pattern"), full.get(attn_site(i), "pattern")
        assert a.shape == b.shape and rel(a, b) < STEP_RTOL
    state = cache.states[0]
    assert state.recurrent.shape == (4, 12, 8) and state.conv.shape == (3, 2 * 2 * 12 + 4 * 8)
    assert state.keys.shape == (4, len(ids), 12) and cache.states[1] is None  # the full layer keeps K/V
    # without patterns asked, the state is fixed: no transported keys, whatever the length
    plain = insp.new_cache()
    plain_logits = torch.cat([insp.step(ids[j:j + 7], plain) for j in range(0, len(ids), 7)])
    assert rel(plain_logits, logits) < STEP_RTOL and plain.states[0].keys is None


def test_a_pattern_asked_late_is_refused(folder: Callable, ours: Callable) -> None:
    """A cache stepped without patterns kept no transported keys: asking for a linear
    layer's pattern afterwards is one clear error, never rows missing their past."""
    from attnscope.errors import InputError

    insp, ids = ours("qwen3_5"), ids_of(folder("qwen3_5"))
    cache = insp.new_cache()
    insp.step(ids[:10], cache)
    with pytest.raises(InputError, match="kept from the first token"):
        insp.step(ids[10:12], cache, Capture({attn_site(0): ["pattern"]}))


def test_packed_texts_equal_separate_passes(folder: Callable, ours: Callable) -> None:
    """A packed pass (corpus batches): each text's linear layers start afresh, so every
    text's logits and M rows are its own pass's."""
    from attnscope.parts.attention import Packing

    insp, ids = ours("qwen3_5"), ids_of(folder("qwen3_5"))
    a, b = ids[:40], ids[40:95]
    packed = torch.tensor(a + b)
    packing = Packing(torch.cat([torch.arange(len(a)), torch.arange(len(b))]),
                      torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)]))
    cap = Capture({attn_site(0): ["pattern"]})
    x = insp.model(packed, cap, packing=packing)
    got = insp.model.logits(x)
    for part, rows in ((a, slice(0, len(a))), (b, slice(len(a), len(a) + len(b)))):
        assert rel(got[rows], insp.logits(part)) < STEP_RTOL
        alone = insp.capture(part, {attn_site(0): ["pattern"]}).get(attn_site(0), "pattern")
        m = cap.get(attn_site(0), "pattern")[:, rows, rows]
        assert rel(m, alone) < STEP_RTOL
    assert float(cap.get(attn_site(0), "pattern")[:, len(a):, :len(a)].abs().max()) == 0.0


# ------------------------------------------------------------------ counts, memory, configs


@pytest.mark.parametrize("name", ["qwen3.5-0.8b", "qwen3-next-80b-a3b"])
def test_real_config_counts(name: str) -> None:
    """Counts equal transformers' num_parameters() on the meta device (the files'
    `_num_parameters`, recomputed by tests/test_kinds_groundwork.py), from the file, the
    preset and the CLI."""
    from attnscope.cli import app
    from attnscope.config import preset
    from attnscope.params import report

    raw = json.loads((REAL / f"{name}.json").read_text())
    expected = raw.pop("_num_parameters")
    assert report(from_hf_config(raw, name=name)).total_full == expected
    assert report(preset(name)).total_full == expected
    result = CliRunner().invoke(app, ["params", "--config", str(REAL / f"{name}.json"), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["full"] == expected


def test_the_multimodal_file_counts_its_text_tower() -> None:
    """The Hub's multimodal `qwen3_5` file (text tower under `text_config`) reads as the
    text model: the same layers and count."""
    from attnscope.params import report

    text = json.loads((REAL / "qwen3.5-0.8b.json").read_text())
    expected = text.pop("_num_parameters")
    mm = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5", "tie_word_embeddings": True,
          "text_config": {k: v for k, v in text.items() if k != "architectures"},
          "vision_config": {"depth": 12, "hidden_size": 768, "num_heads": 12, "out_hidden_size": 1024}}
    cfg = from_hf_config(mm, name="qwen3.5-0.8b")
    assert report(cfg).total_full == expected and cfg.stack == from_hf_config(text).stack


def test_context_keeps_a_fixed_state_for_linear_layers() -> None:
    """`params --context N`: softmax layers keep N positions, linear layers a state of
    H_v·d_k·d_v + (K−1)·channels values that does not grow with N."""
    from attnscope.config import preset
    from attnscope.params import context_report

    cfg = preset("qwen3-next-80b-a3b")
    small, large = context_report(cfg, 1000), context_report(cfg, 8000)
    lin = [k for k in small.kv_kinds if "linear" in k.label]
    assert len(lin) == 1 and lin[0].n_layers == 36 and lin[0].tokens == 0
    per_layer = 32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128)
    assert lin[0].state_values == lin[0].values == 36 * per_layer
    assert [k.values for k in large.kv_kinds if "linear" in k.label] == [36 * per_layer]
    full = [k for k in large.kv_kinds if "linear" not in k.label]
    assert [(k.n_layers, k.tokens, k.values) for k in full] == [(12, 8000, 12 * 8000 * 2 * 2 * 256)]
    assert large.kv_cache_total == 36 * per_layer + 12 * 8000 * 2 * 2 * 256
    result = CliRunner().invoke(__import__("attnscope.cli", fromlist=["app"]).app,
                                ["params", "--config", "qwen3.5-0.8b", "--context", "4096"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "fixed state" in result.stdout and "Linear attention" in result.stdout


@pytest.mark.parametrize("change, words", [
    ({"linear_num_value_heads": 3}, "multiple of"),
    ({"linear_num_key_heads": 0}, "linear_num_key_heads"),
    ({"linear_conv_kernel_dim": 0}, "linear_conv_kernel_dim"),
    ({"linear_key_head_dim": 10**9}, "linear_key_head_dim"),
    ({"layer_types": ["linear_attention", "sliding_attention"]}, "layer type"),
    ({"layer_types": ["linear_attention"]}, "one type per layer"),
    ({"full_attention_interval": 0}, "full_attention_interval"),
    ({"attn_output_gate": "yes"}, "attn_output_gate"),
    ({"head_dim": None}, "head_dim"),
])
def test_bad_configs_are_one_config_error(change: dict[str, Any], words: str) -> None:
    raw = {"model_type": "qwen3_5_text", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 16, "vocab_size": 64,
           "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
           "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, **change}
    if raw.get("layer_types") is None and "layer_types" in change:
        del raw["layer_types"]
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw, name="bad")


def test_attend_on_a_hybrid(folder: Callable) -> None:
    """`attend` on the tiny Qwen3.5 runs, and names a linear layer as such."""
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", "The fluffy creature sat on the mat.", "--model",
                                      str(folder("qwen3_5"))], env=ENV)
    assert result.exit_code == 0, result.output
    assert "linear" in result.stdout


def test_mask_demo_final_step_is_each_layers_own_pattern(folder: Callable, ours: Callable) -> None:
    """`mask-demo --json` with no --kind: on the softmax layer its masked softmax, on a
    linear layer its hidden attention M (one signed step, no mask to choose), each equal
    to the layer's own pattern; the layer map names the linear layers."""
    from attnscope.cli import app

    text = "The fluffy creature sat on the mat and looked at the moon."
    insp = ours("qwen3_5")
    ids = insp.tokenize(text).ids
    cap = insp.capture(ids, {attn_site(i): ["pattern"] for i in range(4)})
    for layer in range(4):
        for head in range(4):
            result = CliRunner().invoke(app, ["mask-demo", text, "--model", str(folder("qwen3_5")), "--layer",
                                              str(layer), "--head", str(head), "--json"], env=ENV)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            last = torch.tensor(doc["steps"][-1]["matrix"])
            want = cap.get(attn_site(layer), "pattern")[head]
            assert float((last - want).abs().max()) < ATOL
            assert (doc["layer_kind"] == "linear (gated delta rule)") == (layer in LINEAR)
            assert (len(doc["steps"]) == 1 and doc["steps"][0]["signed"]) == (layer in LINEAR)
            assert "linear (gated delta rule) on layers 0, 2, 3" in doc["layer_map"]
    result = CliRunner().invoke(app, ["mask-demo", text, "--model", str(folder("qwen3_5")), "--layer", "0",
                                      "--kind", "padding"], env=ENV)
    assert result.exit_code != 0 and "no softmax to mask" in result.output


@pytest.mark.parametrize("measure, words", [("norm", "output gate"), ("alti", "layer 0 is linear"),
                                            ("value-zeroing", "layer 0 is linear")])
def test_measures_that_would_ignore_the_gate_are_refused(measure: str, words: str, folder: Callable) -> None:
    """norm's ‖α f_h(x_j)‖ and the mixing measures read W_O without the per-query output
    gate: on a gated layer they are one line, never numbers that leave the gate out."""
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", "The fluffy creature sat on the mat.", "--model",
                                      str(folder("qwen3_5")), "--measure", measure, "--layer", "1"], env=ENV)
    assert result.exit_code != 0
    assert words in result.output and "Traceback" not in result.output


def test_dry_run_counts_the_linear_layers_working_set() -> None:
    """--dry-run's chunk for a linear kind holds its transported keys (H_v × n × d_k,
    twice while appending) and its fixed state, float32: growing with n, never n²·H."""
    from attnscope.config import preset
    from attnscope.estimate import plan

    cfg = preset("qwen3.5-0.8b")
    lin = cfg.layer(0).attn.linear
    for n in (512, 4096):
        p = plan(cfg, 0, n, "float32", 1, 1, 3, False, False)
        assert p.attention_chunk >= (2 * lin.n_v_heads * n * lin.d_k + lin.state_values) * 4


@pytest.mark.parametrize("name", ["qwen3.5-0.8b", "qwen3-next-80b-a3b"])
def test_params_rows_cover_the_new_weights(name: str) -> None:
    """params' rows: a linear kind's weights per value head and per q/k head sum, × heads,
    to its attention weights; the gated softmax layers' per-query-head share includes the
    gate's rows (W_Q + W_V↑ + W_gate)."""
    from attnscope.cli import app
    from attnscope.config import preset
    from attnscope.params import report
    from attnscope.render.params import linear_head_shares

    cfg = preset(name)
    rep = report(cfg)
    kind = next(k for k in rep.kinds if k.spec.attn.linear is not None)
    lin = kind.spec.attn.linear
    per_v, per_k = linear_head_shares(cfg.d_model, lin)
    assert lin.n_v_heads * per_v + lin.n_k_heads * per_k == kind.block["attention"]
    assert rep.head.gate and rep.head.per_query_head == 3 * cfg.d_model * cfg.d_head
    text = CliRunner().invoke(app, ["params", "--config", name], env=ENV).stdout
    for words in ("W_gate (output gate)", "per value head", "per q/k head", f"{per_v:,}", "Linear attention"):
        assert words in text, words


_FUZZ_BASES: dict[str, dict[str, Any]] = {
    "qwen3_5_text": {"model_type": "qwen3_5_text", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 16, "vocab_size": 64,
                     "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
                     "linear_value_head_dim": 4, "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}},
    "qwen3_5": {"model_type": "qwen3_5", "text_config": {"hidden_size": 32, "num_hidden_layers": 2,
                                                         "num_attention_heads": 4, "head_dim": 8,
                                                         "layer_types": ["linear_attention", "full_attention"]}},
    "qwen3_next": {"model_type": "qwen3_next", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 16, "vocab_size": 64,
                   "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
                   "linear_value_head_dim": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                   "shared_expert_intermediate_size": 8, "mlp_only_layers": [0]},
}
_FUZZ_KEYS = sorted({k for base in _FUZZ_BASES.values() for k in base if k != "model_type"}
                    | {"attn_output_gate", "attention_bias", "layer_types", "partial_rotary_factor", "rms_norm_eps",
                       "tie_word_embeddings", "decoder_sparse_step", "norm_topk_prob", "hidden_act"})


def _mutated(values: Any) -> Any:
    from hypothesis import strategies as st

    @st.composite
    def make(draw: Any) -> dict[str, Any]:
        raw = json.loads(json.dumps(draw(st.sampled_from(sorted(_FUZZ_BASES)).map(_FUZZ_BASES.get))))
        target = raw["text_config"] if raw["model_type"] == "qwen3_5" and draw(st.booleans()) else raw
        for key in draw(st.lists(st.sampled_from(_FUZZ_KEYS), max_size=3, unique=True)):
            if draw(st.booleans()) and key in target:
                del target[key]
            else:
                target[key] = draw(values)
        return raw

    return make()


def test_readers_raise_only_config_errors_and_accepted_configs_build() -> None:
    """Any value in any key (the top level or a multimodal file's text_config): one
    ConfigError, or a config the model and its count can be built from."""
    from hypothesis import HealthCheck, given, settings

    from test_fuzz import builds, config_values

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=_mutated(config_values))
    def check(raw: dict[str, Any]) -> None:
        try:
            cfg = from_hf_config(raw, name="fuzz")
        except ConfigError as exc:
            assert exc.message
            return
        builds(cfg)

    check()
