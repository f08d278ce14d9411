"""Gemma 4's MoE block (`enable_moe_block`: gemma-4-26B-A4B) against transformers.

A tiny random Gemma4ForCausalLM with the MoE block on every layer (tests/tiny_models_gemma4's
recipe: 5 layers local, global, local, then two KV-shared layers reading layers 2 and 1; a
window of 8; global values from the key projection; double-wide dense MLPs on the shared
layers), 4 experts of width 24, 2 per token, beside a dense MLP of 48. Every parameter is
redrawn (std 0.25; norms 1 + noise), and then the router's own scales away from their
initial ones: `router.scale` 1 + N(0, 0.25), `per_expert_scale` in [0.5, 1.5), the router
projection at std 1 so that the top-k choices stand clear of float32 noise. On KINDS_TEXT
(91 tokens, every window crossed), checked here:

1. attention equals transformers' eager attention (float32) to 1e-5, every layer and head;
2. logits equal transformers' float64 ones to 1e-4 relative; token by token (and a prefill
   then steps) through our KVCache equals the full pass;
3. each token's experts equal transformers' router choices and its weights theirs (the
   renormalised top-k times each expert's scale), on every layer; the routes the blocks
   report (`--view experts`, `Inspector.capture`) are those;
4. `mask-demo --json`'s last step is each layer's pattern;
5. counts: the tiny checkpoint's and the real gemma-4-26b-a4b config's (preset and file)
   equal transformers' `num_parameters()` on the meta device, the active count is the
   total less the 120 routed experts a token skips in each of the 30 layers;
6. the GGUF form (llama.cpp's `gemma4` with `ffn_gate_up_exps`, the router's scales as
   `ffn_gate_inp.scale` and `ffn_down_exps.scale`), written by an independent port of
   convert_hf_to_gguf.py's Gemma4Model: every tensor equal to the safetensors load, the
   same attention and logits as transformers; `params --model` counts it as transformers;
7. bad MoE configs and hand-built kinds: one ConfigError each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from family_checks import reference_run, run_hooked, worst
import tiny_models as tm
import tiny_models_gemma4 as g4
from tiny_models_gemma4 import write_gguf as write_gemma4_moe_gguf
import tiny_models_kinds as kinds
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from test_family_gemma4 import check_against_full_pass
from test_logits_cache import LOGITS_RTOL, assert_logits_close

REAL = Path(__file__).parent / "data" / "real_configs" / "gemma-4-26b-a4b.json"
N_EXPERTS, TOP_K, MOE_WIDTH = 4, 2, 24
DENSE_WIDTH = 48  # g4's intermediate_size (96 on the double-wide KV-shared layers)
# float32 against transformers' float32: both carry float32 rounding through five layers
ATOL = 1e-5
# A token's k-th and (k+1)-th router probabilities closer than this could swap under float32
# rounding in either implementation; the test asks that none are (the routes are then a
# claim, not luck), and measures the closest pair.
MARGIN = 1e-5
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def build_moe(folder: Path, seed: int = tm.SEED + 11) -> Path:
    """The tiny Gemma 4 with the MoE block on every layer (see the module's docstring)."""
    from transformers import Gemma4ForCausalLM

    tok = tm.mistral_tokenizer()
    config = g4._config(tok, enable_moe_block=True, num_experts=N_EXPERTS, top_k_experts=TOP_K,
                        moe_intermediate_size=MOE_WIDTH, attention_k_eq_v=True, num_global_key_value_heads=1,
                        use_double_wide_mlp=True)
    config.initializer_range = g4.INIT_STD
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma4ForCausalLM(config).to(torch.float32).eval()
    tm.reinit(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.layer_scalar.copy_(0.5 + torch.rand(1, generator=gen))  # a buffer: away from 1
            layer.router.scale.copy_(1 + 0.25 * torch.randn(config.hidden_size, generator=gen))
            layer.router.per_expert_scale.copy_(0.5 + torch.rand(N_EXPERTS, generator=gen))
            layer.router.proj.weight.copy_(torch.randn(N_EXPERTS, config.hidden_size, generator=gen))
    model.tie_weights()
    return tm._save(model, Path(folder), tok)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_moe(tmp_path_factory.mktemp("gemma4_moe"))


@pytest.fixture(scope="module")
def ours(folder: Path) -> Any:
    from attnscope.api import load

    return load(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(folder: Path) -> Any:
    """transformers' model in float32, its experts run eagerly (Gemma4TextExperts' own loop
    over the chosen experts: the grouped-mm kernel takes no float64)."""
    model = tm.load_reference(folder)
    model.config._experts_implementation = "eager"
    return model


@pytest.fixture(scope="module")
def ref64(reference: Any) -> Any:
    return copy.deepcopy(reference).double().eval()


@pytest.fixture(scope="module")
def ids(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(kinds.KINDS_TEXT).ids


def run_cli(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


# ---------------------------------------------------------------------- config


def test_layer_kinds_are_transformers(ours: Any, reference: Any) -> None:
    """Every layer: the sandwich_moe wiring, experts of transformers' count, width and top-k,
    the dense MLP beside them as wide as transformers' (double on the KV-shared layers), the
    Gemma 4 router (its input norm and scales); nothing else changed from Gemma 4's kinds."""
    cfg = ours.config
    layers = reference.model.layers
    for i, layer in enumerate(layers):
        spec = cfg.layer(i)
        e = spec.mlp.experts
        assert spec.wiring == "sandwich_moe" and spec.mlp.kind == "experts" and e is not None, i
        assert (e.n_experts, e.top_k, spec.mlp.d_mlp) == (layer.experts.num_experts, reference.config.top_k_experts,
                                                         layer.experts.intermediate_dim), i
        assert e.d_dense == layer.mlp.intermediate_size == DENSE_WIDTH * (2 if g4.SOURCES[i] is not None else 1), i
        assert e.router == "softmax_topk" and e.norm_topk_prob and e.router_norm and e.expert_scale, i
        assert not e.d_shared and not e.router_bias and not e.expert_bias, i
        assert spec.attn.kv_source == g4.SOURCES[i] and spec.out_scalar, i
    # the parameters each block holds are transformers' (by count; names are the table's)
    for i, block in enumerate(ours.model.blocks):
        mine = sum(p.numel() for n, p in block.named_parameters() if not n.endswith("layer_scalar"))
        assert mine == sum(p.numel() for p in layers[i].parameters()), i


# ---------------------------------------------------------------------- parity


def test_attention_matches_transformers(ids: list[int], ours: Any, reference: Any) -> None:
    """Every layer and head, float32 against transformers' eager float32, on 91 tokens."""
    assert len(ids) >= 90 and len(ids) > 2 * g4.WINDOW
    _, want = reference_run(reference, ids)
    att = ours.attention(kinds.KINDS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    assert att.layers == list(range(len(g4.LAYER_TYPES))) and att.heads == list(range(4))
    assert worst(att.probs, want) <= ATOL
    # the MoE block is on the path: the layers after the first see its output (a wrong block
    # would move every later pattern far beyond ATOL; here, layer 4 against layer 1's owner)
    assert worst(att.probs[4], att.probs[1]) > 1e-2


def test_logits_match_transformers(ids: list[int], ours: Any, ref64: Any) -> None:
    want, _ = reference_run(ref64, ids)
    assert_logits_close(ours.logits(ids), want, LOGITS_RTOL, "gemma4 moe")
    assert float(want.abs().max()) < g4.FINAL_SOFTCAP


def test_one_token_at_a_time_is_one_full_pass(ids: list[int], ours: Any, ref64: Any, reference: Any) -> None:
    check_against_full_pass("gemma4_moe", ours, ref64, reference, ids, [[i] for i in ids])


def test_prefill_then_steps_is_one_full_pass(ids: list[int], ours: Any, ref64: Any, reference: Any) -> None:
    cut = g4.WINDOW + 3
    pieces = [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]]
    check_against_full_pass("gemma4_moe", ours, ref64, reference, ids, pieces)


# ---------------------------------------------------------------------- routes


def their_routes(model: Any, ids: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: transformers' Gemma4TextRouter output (probabilities over all experts,
    top-k weights after its scales, top-k experts) for every token."""
    routes: dict[int, Any] = {}
    handles = [layer.router.register_forward_hook(
        lambda module, args, out, i=i: routes.__setitem__(i, tuple(t.detach() for t in out)))
        for i, layer in enumerate(model.model.layers)]
    run_hooked(model, ids, handles)
    return routes


def test_routes_equal_transformers_router(ids: list[int], ours: Any, reference: Any) -> None:
    """Each token's experts (in transformers' order: best first) and weights, every layer,
    as the blocks report them (what `--view experts` and `Inspector.capture` read)."""
    from attnscope.routing import moe_layers, route

    theirs = their_routes(reference, ids)
    routes = route(ours, ids)
    assert routes.layers == moe_layers(ours.config) == sorted(theirs) == list(range(len(g4.LAYER_TYPES)))
    closest = 1.0
    for row, layer in enumerate(routes.layers):
        probs, their_weights, their_experts = theirs[layer]
        top = probs.topk(TOP_K + 1, dim=-1).values
        closest = min(closest, float((top[:, TOP_K - 1] - top[:, TOP_K]).min()))
        assert torch.equal(routes.experts[row], their_experts), layer
        torch.testing.assert_close(routes.weights[row], their_weights.float(), rtol=0, atol=1e-6)
        # the expert scales are on: the weights no longer sum to 1, and every expert is used
        assert float((routes.weights[row].sum(-1) - 1).abs().max()) > 1e-2, layer
        assert set(routes.experts[row].flatten().tolist()) == set(range(N_EXPERTS)), layer
    assert closest > MARGIN, closest  # no near-tie: equality of the choices is a real check
    site = "blocks.3.mlp"
    cap = ours.capture(ids, {site: ["routes", "route_weights"]})
    assert torch.equal(cap.get(site, "routes"), routes.experts[3])


def test_experts_view(folder: Path, ids: list[int], ours: Any) -> None:
    """`attend --view experts`: every layer's routes in --json; the table for the last."""
    from attnscope.routing import route

    routes = route(ours, ids)
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder), "--device", "cpu", "--view", "experts",
                     "--layer", "0-4", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["moe_layers"] == list(range(5)) and doc["ids"] == ids
    assert doc["routes"] == routes.experts.tolist()
    assert torch.equal(torch.tensor(doc["route_weights"]), routes.weights)
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder), "--device", "cpu", "--view", "experts")
    assert result.exit_code == 0, result.output
    assert "layer 4" in result.stdout and "Traceback" not in result.output


# ---------------------------------------------------------------------- mask-demo and CLI


def test_mask_demo_last_step_is_the_layers_attention(folder: Path, ids: list[int], reference: Any) -> None:
    _, want = reference_run(reference, ids)
    for layer in range(len(g4.LAYER_TYPES)):
        head = (layer + 1) % 4
        result = run_cli("mask-demo", kinds.KINDS_TEXT, "--model", str(folder), "--layer", str(layer),
                         "--head", str(head), "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        step = json.loads(result.stdout)["steps"][-1]
        assert step["name"] == "masked_softmax", layer
        assert worst(torch.tensor(step["matrix"], dtype=torch.float64), want[layer, head]) <= ATOL, layer


def test_attend_cli(folder: Path) -> None:
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_alti_decomposition_reproduces_the_attention_half(ids: list[int], ours: Any) -> None:
    """`--measure alti` on the sandwich_moe wiring (a sandwich up to the MLP): Σ_j T_i(x_j) +
    the biases is the residual stream after the attention (what the block's MLP norm reads;
    the attention itself is transformers', tested above), every layer, float64 (the bound of
    test_measures_mixing: (n + H·d_head + d)·2^-53 of n·max|T| + max|y|)."""
    from attnscope.hooks import Capture, attn_site, block_site
    from attnscope.measures import mixing

    m = copy.copy(ours)
    m.model = copy.deepcopy(ours.model).double()
    n = len(ids)
    cap = Capture({**{block_site(i): ["resid_pre"] for i in range(m.n_layers)},
                   **{attn_site(i): ["v", "pattern"] for i in range(m.n_layers)}})
    m.run(ids, cap)
    real: dict[int, torch.Tensor] = {}
    handles = [block.mlp_norm.register_forward_hook(
        lambda _m, inp, out, i=i: real.__setitem__(i, inp[0].detach())) for i, block in enumerate(m.model.blocks)]
    m.run(ids, None)
    for h in handles:
        h.remove()
    assert mixing.unsupported(m.model, "alti", range(m.n_layers)) is None
    for i in range(m.n_layers):
        layer = mixing._Layer(m.model.blocks[i], cap.get(block_site(i), "resid_pre"), cap.get(attn_site(i), "v"))
        t, bias = mixing.decompose(layer, cap.get(attn_site(i), "pattern").double(), 0)
        y = t.sum(1) + bias
        spec = m.config.layer(i).attn
        scale = n * float(t.abs().max()) + float(real[i].abs().max())
        bound = (n + spec.n_heads * spec.d_head + m.config.d_model) * 2.0**-53 * scale
        assert float((y - real[i]).abs().max()) <= bound, i


def test_mixing_measures_run_from_the_cli(folder: Path) -> None:
    for measure in ("alti", "value-zeroing"):
        result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder), "--device", "cpu", "--measure", measure,
                         "--layer", "3")
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output


# ---------------------------------------------------------------------- counts


def test_tiny_counts_equal_the_checkpoint(folder: Path, reference: Any) -> None:
    from attnscope.config import load_config
    from attnscope.params import report

    rep = report(load_config(folder))
    assert rep.total_full == reference.num_parameters()
    routed = 3 * MOE_WIDTH * 32  # one expert's gate, up and down
    assert rep.active_full == rep.total_full - len(g4.LAYER_TYPES) * (N_EXPERTS - TOP_K) * routed
    result = run_cli("params", "--model", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == reference.num_parameters()


def test_real_config_counts() -> None:
    """gemma-4-26b-a4b (file and preset): transformers' meta-device count, and the active
    count less 30 layers × 120 unvisited experts × (3 × 704 × 2816)."""
    from attnscope.config import load_config, preset
    from attnscope.params import report

    expected = json.loads(REAL.read_text())["_num_parameters"]
    assert expected == 25_233_141_760
    active = expected - 30 * (128 - 8) * 3 * 704 * 2816
    assert active == 3_822_530_560
    for cfg in (load_config(REAL), preset("gemma-4-26b-a4b")):
        rep = report(cfg)
        assert (rep.total_full, rep.active_full) == (expected, active)
    for target in (str(REAL), "gemma-4-26b-a4b"):
        result = run_cli("params", "--config", target, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert (doc["total"], doc["active"]) == (expected, active)
    text = run_cli("params", "--config", "gemma-4-26b-a4b").stdout
    assert "Dense MLP beside the experts (gate, up, down; width 2,112)" in text and f"{active:,}" in text
    assert "17,842,176" in text  # 3 × 2112 × 2816


def test_real_config_is_transformers_own_count_on_meta() -> None:
    """Recount the file with transformers here (the kinds groundwork test does it for every file)."""
    from transformers import AutoModelForCausalLM, Gemma4TextConfig

    raw = json.loads(REAL.read_text())
    expected = raw.pop("_num_parameters")
    hf = Gemma4TextConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    assert model.num_parameters() == expected
    cfg = from_hf_config(raw)
    layer = model.model.layers[0]
    assert cfg.layer(0).mlp.experts.d_dense == layer.mlp.intermediate_size == 2112  # type: ignore[union-attr]
    assert cfg.layer(0).mlp.d_mlp == layer.experts.intermediate_dim == 704


# ---------------------------------------------------------------------- GGUF


def test_gguf_names_the_moe_tensors() -> None:
    """gguf-py's own table for gemma4 names the fused experts, the router and the four MoE
    norms as the port writes them (what a real converter run produces)."""
    gguf = pytest.importorskip("gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, 1)
    for hf, want in (("model.layers.0.experts.gate_up_proj.weight", "blk.0.ffn_gate_up_exps.weight"),
                     ("model.layers.0.experts.down_proj.weight", "blk.0.ffn_down_exps.weight"),
                     ("model.layers.0.router.proj.weight", "blk.0.ffn_gate_inp.weight"),
                     ("model.layers.0.pre_feedforward_layernorm_2.weight", "blk.0.pre_ffw_norm_2.weight"),
                     ("model.layers.0.post_feedforward_layernorm_1.weight", "blk.0.post_ffw_norm_1.weight"),
                     ("model.layers.0.post_feedforward_layernorm_2.weight", "blk.0.post_ffw_norm_2.weight")):
        assert names.get_name(hf, try_suffixes=(".weight",)) == want, hf


def test_gguf_equals_the_same_weights(folder: Path, ids: list[int], reference: Any, tmp_path: Path) -> None:
    """The GGUF form: the same layer kinds, every tensor equal to the safetensors load (the
    fused gate_up cut alike), attention and logits equal to transformers' on the same weights
    (transformers reads no gemma4 GGUF), and the same routes."""
    pytest.importorskip("gguf")
    from attnscope.api import load
    from attnscope.architectures import gemma4, to_ours
    from attnscope.routing import route
    from attnscope.sources.gguf import gguf_config, iter_gguf_tensors, read_gguf

    path = write_gemma4_moe_gguf(tmp_path / "moe.gguf", reference)
    f = read_gguf(path)
    cfg = from_hf_config(gguf_config(f), name="tiny")
    want = from_hf_config(json.loads((folder / "config.json").read_text()))
    assert list(cfg.stack) == list(want.stack)
    mine = dict(iter_gguf_tensors(f, cfg, gemma4))
    theirs: dict[str, torch.Tensor] = {}
    for hf_name, tensor in reference.state_dict().items():
        theirs.update(to_ours(gemma4, hf_name, tensor, cfg))
    theirs.pop("unembed.weight", None)  # tied
    assert sorted(mine) == sorted(theirs)
    assert {"blocks.0.mlp.experts.gate.weight", "blocks.0.mlp.experts.up.weight", "blocks.0.mlp.router.scale",
            "blocks.0.mlp.router.expert_scale", "blocks.0.mlp.experts_post_norm.weight"} <= set(mine)
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key
    gate_up = reference.model.layers[0].experts.gate_up_proj.detach()
    assert torch.equal(mine["blocks.0.mlp.experts.gate.weight"], gate_up[:, :MOE_WIDTH])  # gate rows first
    insp = load(str(path), device="cpu", dtype="float32")
    logits, attn = reference_run(reference, ids)
    assert worst(insp.attention_ids(ids).probs, attn) <= ATOL
    assert_logits_close(insp.logits(ids), logits.double(), LOGITS_RTOL, "gemma4 moe gguf logits")
    their = their_routes(reference, ids)
    assert torch.equal(route(insp, ids).experts, torch.stack([their[i][2] for i in range(len(g4.LAYER_TYPES))]))
    result = run_cli("params", "--model", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == reference.num_parameters()


# ---------------------------------------------------------------------- bad input

_RAW = {"model_type": "gemma4_text", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 64,
        "sliding_window": 8, "hidden_size_per_layer_input": 0, "enable_moe_block": True, "num_experts": 4,
        "top_k_experts": 2, "moe_intermediate_size": 16}


@pytest.mark.parametrize("edit, words", [
    ({"num_experts": None}, "num_experts must be an integer.*enable_moe_block needs"),
    ({"top_k_experts": 0}, "top_k_experts must be an integer"),
    ({"top_k_experts": 5}, "must not exceed num_experts"),
    ({"moe_intermediate_size": "704"}, "moe_intermediate_size must be an integer"),
    ({"num_experts": 2**20, "top_k_experts": 2}, "number of experts must be a positive integer up to"),
    ({"enable_moe_block": "yes"}, "enable_moe_block must be true or false"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_moe_configs_are_one_config_error(edit: dict[str, Any], words: str) -> None:
    raw = {**_RAW, **edit}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)
    with pytest.raises(ConfigError, match=words):
        from_hf_config({"model_type": "gemma4", "text_config": raw})


def test_hand_built_kinds_are_refused() -> None:
    """The sandwich_moe wiring and a dense MLP beside experts go together; a dense MLP
    beside experts does not also take a shared expert; the new fields are checked."""
    from dataclasses import replace

    from attnscope.kinds import Stack

    cfg = from_hf_config(_RAW)
    layers = list(cfg.stack)
    e = layers[0].mlp.experts
    bad_kinds = [
        (replace(layers[0], wiring="sandwich"), "go together"),
        (replace(layers[0], mlp=replace(layers[0].mlp, experts=replace(e, d_dense=0))), "go together"),
        (replace(layers[0], mlp=replace(layers[0].mlp, experts=replace(e, d_shared=8))), "not both"),
        (replace(layers[0], mlp=replace(layers[0].mlp, experts=replace(e, d_dense=-1))), "dense MLP width"),
        (replace(layers[0], mlp=replace(layers[0].mlp, experts=replace(e, router_norm=1))), "router_norm"),
        (replace(layers[0], mlp=replace(layers[0].mlp, experts=replace(e, expert_scale=None))), "expert_scale"),
    ]
    for kind, words in bad_kinds:
        with pytest.raises(ConfigError, match=words):
            replace(cfg, kinds=Stack.of([kind] + layers[1:]))


def test_a_gguf_lacking_the_used_count_is_one_line(reference: Any, tmp_path: Path) -> None:
    """An MoE gemma4 GGUF without expert_used_count: one line naming the key, no traceback."""
    pytest.importorskip("gguf")
    path = write_gemma4_moe_gguf(tmp_path / "no-used-count.gguf", reference, used_count=False)
    for args in (["params", "--model", str(path)], ["attend", "hello", "--model", str(path), "--device", "cpu"]):
        result = run_cli(*args)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert "lacks 'gemma4.expert_used_count'" in result.output, result.output


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_KEYS = ["enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size", "intermediate_size",
         "use_double_wide_mlp", "num_kv_shared_layers", "text_config"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=3), nested=st.booleans())
def test_any_moe_value_is_a_config_or_one_error(changes: dict[str, Any], nested: bool) -> None:
    raw = {**_RAW, **changes}
    if nested:
        raw = {"model_type": "gemma4", "text_config": {k: v for k, v in raw.items() if k != "text_config"}}
    try:
        cfg = from_hf_config(raw, "fuzz")
    except ConfigError:
        return
    for i in range(cfg.n_layers):  # MoE layers always carry the dense MLP and the wiring together
        spec = cfg.layer(i)
        assert (spec.wiring == "sandwich_moe") == (spec.mlp.kind == "experts")
