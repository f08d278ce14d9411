"""Qwen3.5-MoE (issue 26: architectures/qwen3_5_moe.py) against transformers.

Two tiny random checkpoints built here with transformers (tests/tiny_models.py's recipe:
weights redrawn at std 0.25, eager attention, float32, the decays spread as
tests/tiny_models_qwen3_5.py spreads them), on Qwen3.5's tiny layer settings (linear,
full, linear, linear; 4 value heads over 2 key heads; partial RoPE):
- `moe`: Qwen3_5MoeForCausalLM (`qwen3_5_moe_text`), its experts saved one tensor per
  expert as transformers writes them (the published form);
- `moe_mm`: Qwen3_5MoeForConditionalGeneration (`qwen3_5_moe`: the text tower under
  `text_config`, weights under `model.language_model.`, a vision tower beside them, tied
  embeddings), its experts rewritten fused (`gate_up_proj` [E, 2w, d], `down_proj`), the
  other form transformers 5 reads.
Both: 4 experts of width 16, top 2, a shared expert of 24 behind its sigmoid gate, in every
layer. Texts of 90+ tokens.

Every expected number comes from transformers (eager attention, eager experts):
- the softmax layer's pattern to 1e-5 in float32 (`ATOL`), given the same residual input
  (the linear layer before it sums in another order than transformers' chunked kernel:
  tests/test_family_qwen3_5.py), every head;
- logits against a float64 reference to 1e-4 relative (`LOGITS_RTOL`);
- each linear layer's hidden attention M: Σ_j M[t, j] v_j is transformers' kernel output
  (the input of its gated norm) to 1e-5 relative (`M_RTOL`);
- token by token through our cache equals one full pass (`STEP_RTOL`, ours against ours);
- `attend --view experts --json` routes: each token's experts equal transformers' router's
  choice in every layer (tokens whose k-th and (k+1)-th probabilities lie within float32
  noise left out, at most 10 %), the weights to 1e-5 and summing to 1 (always renormalised);
- the real config's count (Qwen3.5-35B-A3B's text tower) equals transformers'
  num_parameters() on the meta device (the file's `_num_parameters`), total and active;
- the GGUF form (llama.cpp's `qwen35moe`), written here by a port of the converter, loads
  into every parameter of the safetensors load and the same patterns and logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
import tiny_models_qwen3_5 as tq
from family_checks import cached, references, rel, run_hooked
from tiny_models_qwen3_5 import ids_of, text_layers
from attnscope.architectures import qwen3_5_moe
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from attnscope.hooks import Capture, attn_site

NAMES = ["moe", "moe_mm"]
ATOL = 1e-5
LOGITS_RTOL = 1e-4
M_RTOL = 1e-5
STEP_RTOL = 1e-5
WEIGHT_ATOL = 1e-5  # routing weights: a softmax and a renormalisation in float32
MARGIN = 1e-4  # a token's k-th and (k+1)-th router probabilities further apart than float32 noise
LINEAR = [0, 2, 3]
E, K, W, SHARED = 4, 2, 16, 24
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


# ------------------------------------------------------------------ the checkpoints


def _moe_settings(tok: Any) -> dict[str, Any]:
    text = tq._text_settings(tok)
    del text["intermediate_size"]  # Qwen3_5MoeTextConfig has none: every layer holds experts
    return {**text, "num_experts": E, "num_experts_per_tok": K, "moe_intermediate_size": W,
            "shared_expert_intermediate_size": SHARED}


def build_moe(folder: Path, seed: int = tm.SEED + 11) -> Path:
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    tok = tm.gpt2_tokenizer()
    tm._build(Qwen3_5MoeTextConfig(**_moe_settings(tok)), Qwen3_5MoeForCausalLM, folder, tok, seed)
    return tq._finish(folder, Qwen3_5MoeForCausalLM, seed)


def _fuse_experts(folder: Path) -> None:
    """Rewrite the per-expert tensors as transformers 5's fused gate_up_proj / down_proj."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    layers = sorted({n.split(".mlp.experts.")[0] for n in state if ".mlp.experts." in n})
    for prefix in layers:
        part = {p: torch.stack([state.pop(f"{prefix}.mlp.experts.{e}.{p}_proj.weight") for e in range(E)])
                for p in ("gate", "up", "down")}
        state[f"{prefix}.mlp.experts.gate_up_proj"] = torch.cat([part["gate"], part["up"]], dim=1)
        state[f"{prefix}.mlp.experts.down_proj"] = part["down"]
    save_file(state, path, metadata={"format": "pt"})


def build_moe_mm(folder: Path, seed: int = tm.SEED + 12) -> Path:
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    tok = tm.gpt2_tokenizer()
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4, temporal_patch_size=2,
                  spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16)
    config = Qwen3_5MoeConfig(text_config={**_moe_settings(tok), "tie_word_embeddings": True}, vision_config=vision,
                              tie_word_embeddings=True, image_token_id=1, video_token_id=2, vision_start_token_id=3,
                              vision_end_token_id=4)
    tm._build(config, Qwen3_5MoeForConditionalGeneration, folder, tok, seed)
    tq._finish(folder, Qwen3_5MoeForConditionalGeneration, seed)
    _fuse_experts(folder)
    return folder


BUILDERS = {"moe": build_moe, "moe_mm": build_moe_mm}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[..., Any]:
    return references(folder, text_config=True)


# ------------------------------------------------------------------ checkpoints and configs


def test_checkpoints_carry_the_quirks(folder: Callable, reference: Callable) -> None:
    from safetensors import safe_open

    for name in NAMES:
        layers = text_layers(reference(name))
        assert [layer.block_type for layer in layers] == tq.LAYER_TYPES
        assert {type(layer.mlp).__name__ for layer in layers} == {"Qwen3_5MoeSparseMoeBlock"}
        assert len(ids_of(folder(name))) >= 90
    with safe_open(folder("moe") / "model.safetensors", "pt") as f:
        assert "model.layers.0.mlp.experts.3.up_proj.weight" in f.keys()
    with safe_open(folder("moe_mm") / "model.safetensors", "pt") as f:
        assert f.get_slice("model.language_model.layers.2.mlp.experts.gate_up_proj").get_shape() == [E, 2 * W, 32]
        assert not any(".experts.0." in k for k in f.keys())
    raw = json.loads((folder("moe_mm") / "config.json").read_text())
    assert raw["model_type"] == "qwen3_5_moe" and raw["text_config"]["model_type"] == "qwen3_5_moe_text"


def test_config_reads_every_quirk(ours: Callable) -> None:
    from attnscope.kinds import ExpertSpec, LinearSpec

    for name in NAMES:
        cfg = ours(name).config
        assert cfg.family == "qwen3_5_moe"
        assert [cfg.layer(i).attn.kind for i in range(4)] == ["linear", "softmax", "linear", "linear"]
        assert cfg.layer(0).attn.linear == LinearSpec(n_k_heads=2, n_v_heads=4, d_k=12, d_v=8, conv_kernel=4,
                                                      norm_eps=1e-6)
        full = cfg.layer(1).attn
        assert full.out_gate and full.qk_norm == "head" and full.rope.rotary_dim == 4 and full.rope.theta == tq.THETA
        for i in range(4):
            mlp = cfg.layer(i).mlp
            assert (mlp.kind, mlp.d_mlp) == ("experts", W)
            assert mlp.experts == ExpertSpec(n_experts=E, top_k=K, norm_topk_prob=True, d_shared=SHARED, n_shared=1,
                                             shared_gate=True)
        assert cfg.norm_offset == 1.0 and cfg.d_mlp == W
    assert ours("moe_mm").config.tied_embeddings and not ours("moe").config.tied_embeddings


def test_dense_layer_keys_change_nothing() -> None:
    """transformers' Qwen3_5MoeTextConfig has no norm_topk_prob, decoder_sparse_step,
    mlp_only_layers or intermediate_size: a file naming them still routes every layer,
    renormalised, with the experts' width."""
    raw = json.loads((REAL / "qwen3.5-35b-a3b.json").read_text())
    raw.pop("_num_parameters")
    plain = from_hf_config(raw)
    odd = from_hf_config({**raw, "norm_topk_prob": False, "decoder_sparse_step": 2, "mlp_only_layers": [0, 1],
                          "intermediate_size": 99999})
    assert odd.stack == plain.stack and odd.d_mlp == plain.d_mlp == 512


# ------------------------------------------------------------------ attention, logits, M


@pytest.mark.parametrize("name", NAMES)
def test_softmax_attention_matches_transformers(name: str, folder: Callable, ours: Callable,
                                                reference: Callable) -> None:
    """The full layer's every head given the same residual stream (ours entering block 1,
    fed to transformers' own norm and gated attention), and the gated output."""
    ids, insp = ids_of(folder(name)), ours(name)
    T = len(ids)
    cap = insp.capture(ids, {attn_site(1): ["pattern", "result"], "blocks.1": ["resid_pre"]})
    model = reference(name)
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    layer = text_layers(model)[1]
    h = cap.get("blocks.1", "resid_pre")[None]  # (1, T, d)
    with torch.no_grad():
        cos, sin = inner.rotary_emb(h, torch.arange(T)[None])
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        out, want = layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=(cos, sin),
                                    attention_mask=mask)
    got = cap.get(attn_site(1), "pattern")
    assert got.dtype == torch.float32 and got.shape == want[0].shape == (4, T, T)
    assert float((got - want[0]).abs().max()) < ATOL
    assert rel(cap.get(attn_site(1), "result").sum(0), out[0]) < STEP_RTOL


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """To 1e-4 relative to the float64 reference; and no further from it than twice
    transformers' own float32 run is (both are float32 sums of the same terms in other
    orders: the tiny multimodal model's float32 noise alone is ~9e-5 of its scale)."""
    ids = ids_of(folder(name))
    with torch.no_grad():
        ref = reference(name, True)(torch.tensor([ids])).logits[0]
        theirs = reference(name)(torch.tensor([ids])).logits[0]
    got = ours(name).logits(ids)
    assert got.dtype == torch.float32
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref, rtol=LOGITS_RTOL, atol=LOGITS_RTOL * scale)
    assert float((got.double() - ref).abs().max()) <= 2 * float((theirs.double() - ref).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_hidden_attention_reproduces_the_kernel_output(name: str, folder: Callable, ours: Callable,
                                                       reference: Callable) -> None:
    """Each linear layer's M times its values is transformers' own core output (the input
    of its gated norm) to 1e-5 relative; M is causal, signed, rows not summing to 1."""
    ids = ids_of(folder(name))
    model = reference(name)
    seen: dict[int, torch.Tensor] = {}
    handles = [text_layers(model)[i].linear_attn.norm.register_forward_pre_hook(
        lambda module, args, i=i: seen.__setitem__(i, args[0].detach().clone())) for i in LINEAR]
    run_hooked(model, ids, handles)
    cap = ours(name).capture(ids, {attn_site(i): ["pattern", "v"] for i in LINEAR})
    T = len(ids)
    for i in LINEAR:
        m, v = cap.get(attn_site(i), "pattern"), cap.get(attn_site(i), "v")
        assert m.shape == (4, T, T) and v.shape == (4, T, 8)
        assert torch.equal(m.triu(1), torch.zeros_like(m))
        core = seen[i].view(T, 4, 8).transpose(0, 1)
        assert rel(m.double() @ v.double(), core) < M_RTOL
        assert float(m.min()) < 0 and float((m.sum(-1) - 1).abs().max()) > 0.1
    assert [s.stochastic for s in ours(name).sites] == [False, True, False, False]


def test_token_by_token_equals_full_pass(folder: Callable, ours: Callable) -> None:
    """One token at a time through the cache (each token routed alone) gives the full
    pass's logits and every layer's pattern."""
    insp, ids = ours("moe"), ids_of(folder("moe"))
    wanted = {attn_site(i): ["pattern"] for i in range(4)}
    cache, stepped = insp.new_cache(), Capture(wanted)
    logits = torch.cat([insp.step([i], cache, stepped) for i in ids])
    full = insp.capture(ids, wanted)
    assert rel(logits, insp.logits(ids)) < STEP_RTOL
    for i in range(4):
        a, b = stepped.get(attn_site(i), "pattern"), full.get(attn_site(i), "pattern")
        assert a.shape == b.shape and rel(a, b) < STEP_RTOL
    assert cache.states[0].recurrent.shape == (4, 12, 8) and cache.states[1] is None


# ------------------------------------------------------------------ routes


def _their_routes(model: Any, ids: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: transformers' router (probabilities over all experts, top-k weights,
    top-k experts) for every token, caught at each layer's `mlp.gate`."""
    routes: dict[int, Any] = {}
    handles = []
    for i, layer in enumerate(text_layers(model)):
        def catch(module: Any, args: Any, out: Any, i: int = i) -> None:
            logits, weights, chosen = out
            routes[i] = (torch.softmax(logits.float(), dim=-1), weights.float(), chosen)

        handles.append(layer.mlp.gate.register_forward_hook(catch))
    run_hooked(model, ids, handles)
    return routes


@pytest.mark.parametrize("name", NAMES)
def test_experts_view_routes_equal_transformers(name: str, folder: Callable, reference: Callable) -> None:
    from attnscope.cli import app

    ids = ids_of(folder(name))
    result = CliRunner().invoke(app, ["attend", tq.QWEN_TEXT, "--model", str(folder(name)), "--device", "cpu",
                                      "--view", "experts", "--layer", "all", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["moe_layers"] == [0, 1, 2, 3] and doc["ids"] == ids
    experts, weights = torch.tensor(doc["routes"]), torch.tensor(doc["route_weights"])
    assert experts.shape == weights.shape == (4, len(ids), K)
    theirs = _their_routes(reference(name), ids)
    for layer, (probs, their_weights, their_experts) in theirs.items():
        top = probs.topk(K + 1, dim=-1).values
        clear = (top[:, K - 1] - top[:, K]) > MARGIN
        assert int(clear.sum()) >= 0.9 * len(ids), f"layer {layer}: too many near-ties"
        mine_sorted, order = experts[layer].sort(dim=-1)
        theirs_sorted, their_order = their_experts.sort(dim=-1)
        assert torch.equal(mine_sorted[clear], theirs_sorted[clear]), f"layer {layer}: experts differ"
        got, want = weights[layer].gather(1, order)[clear], their_weights.gather(1, their_order)[clear]
        assert float((got - want).abs().max()) < WEIGHT_ATOL
        torch.testing.assert_close(weights[layer].sum(-1), torch.ones(len(ids)))
        assert len(set(experts[layer].flatten().tolist())) > K  # the router spreads tokens


# ------------------------------------------------------------------ counts, CLI, configs


def test_real_config_counts() -> None:
    """Qwen3.5-35B-A3B's text tower: transformers' meta-device num_parameters() (the file's
    `_num_parameters`, recomputed by tests/test_kinds_groundwork.py) from the file, the
    preset and the CLI; active = total less (E − k) routed experts per layer."""
    from attnscope.cli import app
    from attnscope.config import preset
    from attnscope.params import report

    raw = json.loads((REAL / "qwen3.5-35b-a3b.json").read_text())
    expected = raw.pop("_num_parameters")
    per_expert = 3 * 2048 * 512
    active = expected - 40 * (256 - 8) * per_expert
    assert (expected, active) == (34_660_610_688, 3_454_988_928)
    for cfg in (from_hf_config(raw, name="qwen3.5-35b-a3b"), preset("qwen3.5-35b-a3b")):
        rep = report(cfg)
        assert (rep.total_full, rep.active_full) == (expected, active)
    result = CliRunner().invoke(app, ["params", "--config", str(REAL / "qwen3.5-35b-a3b.json"), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["totals"]["full"], doc["active"]) == (expected, active)


def test_the_multimodal_file_counts_its_text_tower() -> None:
    """The Hub's multimodal `qwen3_5_moe` file (the text tower under `text_config`) reads as
    the text model: the same layers and count."""
    from attnscope.params import report

    text = json.loads((REAL / "qwen3.5-35b-a3b.json").read_text())
    expected = text.pop("_num_parameters")
    mm = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
          "tie_word_embeddings": False, "text_config": {k: v for k, v in text.items() if k != "architectures"},
          "vision_config": {"depth": 27, "hidden_size": 1152, "num_heads": 16, "out_hidden_size": 2048}}
    cfg = from_hf_config(mm, name="qwen3.5-35b-a3b")
    assert report(cfg).total_full == expected and cfg.stack == from_hf_config(text).stack


def test_defaults_are_qwen3_5_moe_text_configs() -> None:
    """A file that leaves keys out gets Qwen3_5MoeTextConfig's defaults (transformers' own,
    counted on the meta device), not Qwen3.5's dense ones."""
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    from attnscope.params import report

    small = {"num_hidden_layers": 4, "vocab_size": 512, "num_experts": 8}
    with torch.device("meta"):
        want = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**small)).num_parameters()
    assert report(from_hf_config({"model_type": "qwen3_5_moe_text", **small})).total_full == want
    mm = from_hf_config({"model_type": "qwen3_5_moe", "text_config": small})
    assert report(mm).total_full == want


@pytest.mark.parametrize("change, words", [
    ({"num_experts_per_tok": 9}, "experts per token"),
    ({"num_experts": 0}, "number of experts"),
    ({"moe_intermediate_size": "16"}, "d_mlp"),
    ({"shared_expert_intermediate_size": -1}, "shared expert width"),
    ({"linear_num_value_heads": 3}, "multiple of"),
    ({"layer_types": ["linear_attention"]}, "one type per layer"),
    ({"text_config": 7, "model_type": "qwen3_5_moe"}, "text_config must be an object"),
])
def test_bad_configs_are_one_config_error(change: dict[str, Any], words: str) -> None:
    raw = {"model_type": "qwen3_5_moe_text", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "linear_num_key_heads": 2,
           "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
           "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
           "shared_expert_intermediate_size": 16, **change}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw, name="bad")


def test_readers_raise_only_config_errors_and_accepted_configs_build() -> None:
    """Any value in any key, at the top level or in a multimodal file's text_config: one
    ConfigError, or a config the model and its count can be built from."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from test_fuzz import builds, config_values

    base = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "vocab_size": 64, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_key_head_dim": 8, "linear_value_head_dim": 4, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8, "full_attention_interval": 2}
    keys = sorted(base) + ["layer_types", "attn_output_gate", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
                           "norm_topk_prob", "mlp_only_layers", "intermediate_size", "partial_rotary_factor"]

    @st.composite
    def mutated(draw: Any) -> dict[str, Any]:
        text = dict(base)
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            if draw(st.booleans()) and key in text:
                del text[key]
            else:
                text[key] = draw(config_values)
        if draw(st.booleans()):
            return {"model_type": "qwen3_5_moe", "text_config": text}
        return {"model_type": "qwen3_5_moe_text", **text}

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=mutated())
    def check(raw: dict[str, Any]) -> None:
        try:
            cfg = from_hf_config(raw, name="fuzz")
        except ConfigError as exc:
            assert exc.message
            return
        builds(cfg)

    check()


def test_attend_and_params_from_the_cli(folder: Callable) -> None:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", "The fluffy creature sat on the mat.", "--model",
                                      str(folder("moe_mm"))], env=ENV)
    assert result.exit_code == 0, result.output
    assert "linear" in result.stdout
    result = CliRunner().invoke(app, ["params", "--model", str(folder("moe")), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == tm.load_reference(folder("moe")).num_parameters()
    result = CliRunner().invoke(app, ["params", "--list"], env=ENV)
    assert result.exit_code == 0 and "qwen3.5-35b-a3b" in result.stdout


def test_mask_demo_final_step_is_each_layers_own_pattern(folder: Callable, ours: Callable) -> None:
    """`mask-demo --json` (no --kind): each layer's final step is its own pattern, the
    softmax layer's masked softmax and a linear layer's M."""
    from attnscope.cli import app

    text = "The fluffy creature sat on the mat and looked at the moon."
    insp = ours("moe")
    cap = insp.capture(insp.tokenize(text).ids, {attn_site(i): ["pattern"] for i in range(4)})
    for layer in range(4):
        for head in (0, 3):
            result = CliRunner().invoke(app, ["mask-demo", text, "--model", str(folder("moe")), "--layer", str(layer),
                                              "--head", str(head), "--json"], env=ENV)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            last = torch.tensor(doc["steps"][-1]["matrix"])
            assert float((last - cap.get(attn_site(layer), "pattern")[head]).abs().max()) < ATOL
            assert (doc["layer_kind"] == "linear (gated delta rule)") == (layer in LINEAR)


# ------------------------------------------------------------------ GGUF (llama.cpp's qwen35moe)


def _convert(folder: Path) -> list[tuple[str, torch.Tensor]]:
    """The (GGUF name, tensor) pairs convert_hf_to_gguf.py's Qwen3_5MoeTextModel writes:
    the linear and softmax layers as Qwen3.5's (_LinearAttentionVReorderBase's tiled
    reorder, then Qwen3NextModel's changes: tests/test_gguf_qwen3_5.py's port of them), and
    Qwen2MoeModel's experts: a fused gate_up_proj cut on its rows into gate and up, per-expert
    tensors stacked, all as ffn_{gate,up,down}_exps; names by gguf-py's map."""
    import gguf
    from safetensors.torch import load_file

    from test_gguf_qwen3_5 import _next_changes, _v_reorder

    raw = json.loads((folder / "config.json").read_text())
    hp = raw.get("text_config", raw)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN35MOE, hp["num_hidden_layers"])
    out: list[tuple[str, torch.Tensor]] = []
    per_expert: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in load_file(folder / "model.safetensors").items():
        if name.startswith(("model.visual.", "mtp.")):
            continue  # the vision tower goes to the mmproj file; no MTP layers here
        name = name.replace("model.language_model.", "model.")
        t = t.float()
        if name.endswith("mlp.experts.gate_up_proj"):
            n_ff = t.shape[-2] // 2
            base = name.removesuffix(".gate_up_proj")
            pairs = [(f"{base}.gate_proj.weight", t[..., :n_ff, :]), (f"{base}.up_proj.weight", t[..., n_ff:, :])]
        elif name.endswith("mlp.experts.down_proj"):
            pairs = [(f"{name}.weight", t)]
        elif ".mlp.experts." in name:
            parts = name.split(".")
            per_expert.setdefault((int(parts[2]), parts[6]), {})[int(parts[5])] = t
            continue
        else:
            pairs = _next_changes(_v_reorder(t, name, hp), name, hp)
        for n, x in pairs:
            gname = n if n.startswith("blk.") else names.get_name(n, try_suffixes=(".weight", ".bias"))
            assert gname is not None, n  # internal invariant: gguf-py names every tensor
            out.append((gname, x.contiguous()))
    for (bid, proj), by_expert in sorted(per_expert.items()):
        merged = torch.stack([by_expert[e] for e in sorted(by_expert)])
        out.append((names.get_name(f"model.layers.{bid}.mlp.experts.{proj}.weight", try_suffixes=(".weight",)),
                    merged))
    return out


def write_gguf(folder: Path, path: Path) -> Path:
    """The GGUF with the metadata the converter writes (TextModel, Qwen2MoeModel,
    Qwen3NextModel, _Qwen35MRopeMixin): no feed_forward_length (the text config has no
    intermediate_size), the expert sizes, the ssm sizes, the rotary width and sections."""
    import gguf

    import tiny_gguf as tg

    raw = json.loads((folder / "config.json").read_text())
    hp = raw.get("text_config", raw)
    tok = tm.gpt2_tokenizer()
    vocab = tg.byte_level_vocab(tok, "gpt-2", [], None, tok.id_to_token(0), add_bos=False).pad(hp["vocab_size"])
    w = gguf.GGUFWriter(path, "qwen35moe")
    w.add_name("tiny-qwen35moe")
    w.add_block_count(hp["num_hidden_layers"])
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["vocab_size"])
    w.add_expert_count(hp["num_experts"])
    w.add_expert_used_count(hp["num_experts_per_tok"])
    w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(hp["shared_expert_intermediate_size"])
    w.add_ssm_conv_kernel(hp["linear_conv_kernel_dim"])
    w.add_ssm_state_size(hp["linear_key_head_dim"])
    w.add_ssm_group_count(hp["linear_num_key_heads"])
    w.add_ssm_time_step_rank(hp["linear_num_value_heads"])
    w.add_ssm_inner_size(hp["linear_value_head_dim"] * hp["linear_num_value_heads"])
    w.add_full_attention_interval(hp.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(hp["head_dim"] * hp["rope_parameters"]["partial_rotary_factor"]))
    w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    for name, t in _convert(folder):
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_of(folder: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    pytest.importorskip("gguf")
    out = tmp_path_factory.mktemp("qwen35moe")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_gguf(folder(name), out / f"{name}.gguf")
        return made[name]

    return get


def _loaded(name: str, folder: Callable, gguf_of: Callable) -> tuple[Any, dict[str, torch.Tensor], Any,
                                                                     dict[str, torch.Tensor]]:
    """(safetensors config, its tensors in our names with the experts stacked, GGUF config, its tensors)."""
    from safetensors.torch import load_file

    from attnscope.architectures import to_ours
    from attnscope.sources.gguf import gguf_config, gguf_family, iter_gguf_tensors, read_gguf

    cfg = from_hf_config(json.loads((folder(name) / "config.json").read_text()), name=name)
    ours: dict[str, torch.Tensor] = {}
    for n, t in load_file(folder(name) / "model.safetensors").items():
        if n.startswith("model.visual."):
            continue
        n = n.removeprefix("model.language_model.").removeprefix("model.")
        ours.update(to_ours(qwen3_5_moe, n, t.float(), cfg))
    per_expert: dict[str, dict[int, torch.Tensor]] = {}
    for n in [n for n in ours if n.split(".")[-1].isdigit()]:
        per_expert.setdefault(n.rpartition(".")[0], {})[int(n.rpartition(".")[2])] = ours.pop(n)
    ours.update({n: torch.stack([e[i] for i in sorted(e)]) for n, e in per_expert.items()})
    if cfg.tied_embeddings:
        ours.pop("unembed.weight", None)
    f = read_gguf(gguf_of(name))
    assert gguf_family(f) is qwen3_5_moe
    gcfg = from_hf_config(gguf_config(f), name=name)
    return cfg, ours, gcfg, dict(iter_gguf_tensors(f, gcfg, qwen3_5_moe))


@pytest.mark.parametrize("name", NAMES)
def test_gguf_loads_every_parameter_of_the_safetensors_load(name: str, folder: Callable, gguf_of: Callable) -> None:
    from test_gguf_qwen3_5 import ATOL_A_LOG, eps_as

    cfg, ours, gcfg, from_gguf = _loaded(name, folder, gguf_of)
    assert [eps_as(gcfg.layer(i), cfg.layer(i)) for i in range(4)] == [cfg.layer(i) for i in range(4)]
    assert (gcfg.d_model, gcfg.vocab_size, gcfg.rotary_dim, gcfg.norm_offset, gcfg.tied_embeddings) == \
        (cfg.d_model, cfg.vocab_size, cfg.rotary_dim, cfg.norm_offset, cfg.tied_embeddings)
    assert sorted(from_gguf) == sorted(ours)
    for n, t in ours.items():
        g = from_gguf[n]
        assert g.shape == t.shape, n
        if n.endswith(".attn.a_log"):
            assert float((g - t).abs().max()) <= ATOL_A_LOG, n
        elif n.endswith("norm.weight") and not n.endswith(".attn.norm.weight"):
            assert bool(((g - t).abs() <= 2.0**-24 * torch.exp2(torch.ceil(torch.log2((t + 1).abs())))).all()), n
        else:
            assert torch.equal(g, t), f"{n}: differs by {float((g - t).abs().max()):.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_gguf_patterns_and_logits_equal_the_safetensors_load(name: str, folder: Callable, gguf_of: Callable) -> None:
    from attnscope.model import build as build_model

    cfg, ours, gcfg, from_gguf = _loaded(name, folder, gguf_of)
    ids = ids_of(folder(name))

    def run(c: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = build_model(c, tensors.items(), "cpu", torch.float32)
        capture = Capture({attn_site(i): ["pattern"] for i in range(4)})
        with torch.no_grad():
            logits = model(torch.tensor(ids), capture)
        return logits, [capture.get(attn_site(i), "pattern") for i in range(4)]

    want_logits, want = run(cfg, ours)
    got_logits, got = run(gcfg, from_gguf)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and float((a - b).abs().max()) <= ATOL, f"layer {i}"
    assert float((got_logits - want_logits).abs().max()) <= LOGITS_RTOL * float(want_logits.abs().max())


def test_gguf_counts_as_the_folder(folder: Callable, gguf_of: Callable) -> None:
    from attnscope.cli import app

    counts = []
    for m in (folder("moe"), gguf_of("moe")):
        res = CliRunner().invoke(app, ["params", "--model", str(m), "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        counts.append(json.loads(res.stdout)["total"])
    assert counts[0] == counts[1] == tm.load_reference(folder("moe")).num_parameters()


def test_gguf_without_expert_sizes_is_one_line(folder: Callable, gguf_of: Callable, tmp_path: Path) -> None:
    """A file whose metadata lacks the experts' sizes: one line naming the key."""
    import gguf

    from attnscope.cli import app

    src = gguf.GGUFReader(gguf_of("moe"))
    w = gguf.GGUFWriter(tmp_path / "lacking.gguf", "qwen35moe")
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "qwen35moe.expert_used_count":
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, vtype)
    for t in src.tensors:
        w.add_tensor(t.name, t.data.reshape(tuple(reversed([int(x) for x in t.shape]))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = CliRunner().invoke(app, ["params", "--model", str(tmp_path / "lacking.gguf")], env=ENV)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "expert_used_count" in lines[0], res.output
