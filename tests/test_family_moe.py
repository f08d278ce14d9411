"""Mixtral, Qwen2-MoE and Qwen3-MoE (issue 25: attnscope/architectures/mixtral.py,
qwen2_moe.py, qwen3_moe.py on the experts kind, attnscope/parts/experts.py) against
transformers.

Three tiny random checkpoints from tests/tiny_models_moe.py (4 or 6 experts, top 2;
Qwen2-MoE with a gated shared expert, unnormalised weights and dense layers by
`decoder_sparse_step` and `mlp_only_layers`; Qwen3-MoE renormalised with q/k norms and a
dense first layer; Mixtral with a window of 16), each read in both layouts: one 2-D tensor
per expert (as transformers saves them, and as published checkpoints are) and fused 3-D
(transformers 5's `gate_up_proj`/`down_proj`, `tiny_models_moe.fused`).

Every expected number comes from transformers (eager attention and eager experts):
attention in float32 to 1e-5, logits against a float64 reference to 1e-4 relative, each
token's chosen experts and their weights, the real configs' counts (total and active).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from family_checks import Patterns, assert_close, assert_logits_close, cached, references, run_hooked
import tiny_models as tm
import tiny_models_moe as tmoe
from attnscope.config import from_hf_config
from attnscope.errors import CheckpointError, ConfigError
from attnscope.kinds import ExpertSpec

NAMES = ["mixtral", "qwen2_moe", "qwen3_moe"]
LAYOUTS = ["per_expert", "fused"]
ATOL = 1e-5  # attention probabilities, float32 against float32
LOGITS_RTOL = 1e-4  # logits, relative to each entry and to the logits' scale, against float64
STEP_RTOL = 1e-5  # token by token against one full pass, both ours in float32
WEIGHT_ATOL = 1e-5  # a chosen expert's routing weight (a probability), float32 both sides
MARGIN = 1e-4  # a token's k-th and (k+1)-th router probabilities further apart than float32 noise
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`folder(name, layout="per_expert")`: the tiny checkpoint, per-expert or fused."""

    def make(name: str, layout: str = "per_expert") -> Path:
        if layout == "fused":
            return tmoe.fused(folder(name), tmp_path_factory.mktemp(f"{name}_fused"))
        return tmoe.MOE_BUILDERS[name](tmp_path_factory.mktemp(name))

    folder = cached(make)
    return folder


@pytest.fixture(scope="module")
def ours(folder: Callable[..., Path]) -> Callable[..., Any]:
    from attnscope.api import load

    return cached(lambda name, layout="per_expert": load(str(folder(name, layout)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[..., Path]) -> Callable[..., Any]:
    """transformers' model (per-expert folder) in float32, or float64 with `double`; its
    experts run eagerly (the grouped-mm kernel takes no float64)."""
    return references(folder)


def ids_of(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(tmoe.MOE_TEXT).ids


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable, reference: Callable) -> None:
    """What the parity tests rest on: per-expert tensors on disk (and fused ones in the
    fused copy), Mixtral's window shorter than the text, Qwen2-MoE's dense and sparse
    layers and its shared expert, Qwen3-MoE's dense first layer."""
    from safetensors import safe_open

    with safe_open(str(folder("mixtral") / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)
    with safe_open(str(folder("qwen3_moe", "fused") / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.layers.1.mlp.experts.gate_up_proj").get_shape() == [4, 2 * 16, 32]
        assert not any(".experts.0." in k for k in f.keys())
    assert reference("mixtral").config.sliding_window == tmoe.MIXTRAL_WINDOW < len(ids_of(folder("mixtral")))
    kinds = [type(layer.mlp).__name__ for layer in reference("qwen2_moe").model.layers]
    assert kinds == ["Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock", "Qwen2MoeMLP", "Qwen2MoeMLP"]
    kinds = [type(layer.mlp).__name__ for layer in reference("qwen3_moe").model.layers]
    assert kinds == ["Qwen3MoeMLP", "Qwen3MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock"]
    for name in NAMES:
        assert len(ids_of(folder(name))) >= 90


def test_config_reads_every_quirk(ours: Callable) -> None:
    cfg = ours("mixtral").config
    assert cfg.family == "mixtral" and all(cfg.window(i) == tmoe.MIXTRAL_WINDOW for i in range(cfg.n_layers))
    assert all(cfg.layer(i).mlp.kind == "experts" for i in range(cfg.n_layers))
    assert cfg.layer(0).mlp.experts == ExpertSpec(n_experts=4, top_k=2, norm_topk_prob=True)
    assert cfg.layer(0).mlp.d_mlp == 24
    cfg = ours("qwen2_moe").config
    assert [cfg.layer(i).mlp.kind for i in range(4)] == ["gated", "experts", "gated", "gated"]
    assert cfg.layer(0).mlp.d_mlp == 48 and cfg.layer(1).mlp.d_mlp == 16 and cfg.layer(1).attn.qkv_bias
    assert cfg.layer(1).mlp.experts == ExpertSpec(n_experts=6, top_k=2, norm_topk_prob=False, d_shared=40,
                                                  n_shared=1, shared_gate=True)
    cfg = ours("qwen3_moe").config
    assert [cfg.layer(i).mlp.kind for i in range(3)] == ["gated", "experts", "experts"]
    assert cfg.layer(1).attn.qk_norm == "head" and cfg.d_head == 16 and cfg.window(1) is None
    assert cfg.layer(1).mlp.experts == ExpertSpec(n_experts=4, top_k=2, norm_topk_prob=True)


# ------------------------------------------------------------------ attention, logits


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, layout: str, folder: Callable, ours: Callable,
                                        reference: Callable) -> None:
    """Every layer and head, 90+ tokens (past Mixtral's window), both weight layouts."""
    ids = ids_of(folder(name))
    att = ours(name, layout).attention(tmoe.MOE_TEXT)
    assert att.tokens.ids == ids
    assert att.probs.dtype == torch.float32
    assert_close(att.probs, tm.reference_attention(reference(name), ids), ATOL, f"{name} ({layout}) attention")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, layout: str, folder: Callable, ours: Callable,
                                   reference: Callable) -> None:
    ids = ids_of(folder(name))
    with torch.no_grad():
        ref = reference(name, True)(torch.tensor([ids])).logits[0]
    got = ours(name, layout).logits(ids)
    assert got.dtype == torch.float32
    assert_logits_close(got, ref, LOGITS_RTOL, f"{name} ({layout}) logits")


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_equals_full_pass(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Token by token through our KVCache (each step routes one token) gives one full
    pass's logits and patterns, and transformers' float64 logits."""
    insp, ids = ours(name), ids_of(folder(name))
    cache, hook = insp.new_cache(), Patterns(insp.n_layers, insp.n_heads, len(ids))
    logits = torch.cat([insp.step([i], cache, hook) for i in ids])
    full = Patterns(insp.n_layers, insp.n_heads, len(ids))
    insp.run(ids, full)
    assert_logits_close(logits, insp.logits(ids), STEP_RTOL, f"{name} stepped vs full logits")
    assert_close(hook.full, full.full, ATOL, f"{name} stepped vs full patterns")
    with torch.no_grad():
        ref = reference(name, True)(torch.tensor([ids])).logits[0]
    assert_logits_close(logits, ref, LOGITS_RTOL, f"{name} stepped logits vs transformers")


# ------------------------------------------------------------------ routing


def _their_routes(model: Any, ids: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per MoE layer: transformers' router (probabilities over all experts, top-k weights,
    top-k experts) for every token, caught at each layer's `mlp.gate`."""
    routes: dict[int, Any] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or not hasattr(gate, "top_k"):
            continue

        def catch(module: Any, args: Any, out: Any, i: int = i) -> None:
            logits, weights, chosen = out
            routes[i] = (torch.softmax(logits.float(), dim=-1), weights.float(), chosen)

        handles.append(gate.register_forward_hook(catch))
    run_hooked(model, ids, handles)
    return routes


def _our_routes(insp: Any, ids: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per MoE layer: our router's (weights, experts) per token, caught at `mlp.router`."""
    routes: dict[int, Any] = {}
    handles = []
    for i, block in enumerate(insp.model.blocks):
        router = getattr(block.mlp, "router", None)
        if router is not None:
            handles.append(router.register_forward_hook(
                lambda module, args, out, i=i: routes.__setitem__(i, (out[0].detach(), out[1].detach()))))
    try:
        insp.run(ids, None)
    finally:
        for h in handles:
            h.remove()
    return routes


@pytest.mark.parametrize("name", NAMES)
def test_router_choices_match_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Each token's experts and weights in every MoE layer equal transformers' (in float32
    both). A token whose k-th and (k+1)-th probabilities lie within float32 noise of each
    other may flip in either implementation; those few are left out, and must be few."""
    ids = ids_of(folder(name))
    theirs, mine = _their_routes(reference(name), ids), _our_routes(ours(name), ids)
    assert sorted(mine) == sorted(theirs) and mine
    k = ours(name).config.layer(sorted(mine)[0]).mlp.experts.top_k
    for layer, (probs, their_weights, their_experts) in theirs.items():
        weights, experts = mine[layer]
        assert experts.shape == their_experts.shape == (len(ids), k)
        top = probs.topk(k + 1, dim=-1).values
        clear = (top[:, k - 1] - top[:, k]) > MARGIN
        assert int(clear.sum()) >= 0.9 * len(ids), f"{name} layer {layer}: too many near-ties"
        mine_sorted, order = experts.sort(dim=-1)
        theirs_sorted, their_order = their_experts.sort(dim=-1)
        assert torch.equal(mine_sorted[clear], theirs_sorted[clear]), f"{name} layer {layer}: experts differ"
        assert_close(weights.gather(1, order)[clear], their_weights.gather(1, their_order)[clear], WEIGHT_ATOL,
                     f"{name} layer {layer} routing weights")
        if name == "qwen2_moe":  # not renormalised: the k weights sum below 1
            assert float(weights.sum(-1).max()) < 1 - 1e-3
        else:
            torch.testing.assert_close(weights.sum(-1), torch.ones(len(ids), dtype=weights.dtype))


@torch.no_grad()
def test_routed_experts_run_grouped_by_expert(ours: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each expert a token chose runs once per pass, on all of its tokens at once (three
    projections), never once per token or over every expert; the sum equals a per-token
    dense reference."""
    from attnscope.parts.experts import ExpertWeights

    insp = ours("qwen2_moe")
    moe = insp.model.blocks[1].mlp
    x = torch.randn(50, insp.config.d_model, generator=torch.Generator().manual_seed(5))
    weights, chosen = moe.router(x)
    calls: list[tuple[int, int]] = []
    run = ExpertWeights.run

    def counting(self: Any, e: int, h: torch.Tensor) -> torch.Tensor:
        calls.append((e, h.shape[0]))
        return run(self, e, h)

    monkeypatch.setattr(ExpertWeights, "run", counting)
    got = moe.routed(x, weights, chosen)
    used = chosen.unique().tolist()
    assert len(calls) == 3 * len(used) and sorted({e for e, _ in calls}) == used
    assert sum(rows for _, rows in calls) == 3 * chosen.numel()
    monkeypatch.setattr(ExpertWeights, "run", run)
    ex = moe.experts
    want = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(chosen.shape[1]):
            e = int(chosen[t, j])
            h = x[t:t + 1]
            y = torch.nn.functional.silu(h @ ex.gate.weight[e].T) * (h @ ex.up.weight[e].T)
            want[t] += weights[t, j] * (y @ ex.down.weight[e].T)[0]
    assert_close(got, want, 1e-5, "grouped experts vs per-token")


# ------------------------------------------------------------------ loading


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("layout", LAYOUTS)
def test_offloaded_blocks_stack_their_experts(layout: str, folder: Callable, ours: Callable) -> None:
    """With offloading each block's tensors are streamed when it runs: its per-expert
    tensors are stacked there too (`model.block_tensors`), and the logits stay the same."""
    from attnscope.api import load

    ids = ids_of(folder("qwen2_moe"))
    streamed = load(str(folder("qwen2_moe", layout)), device="cpu", dtype="float32", offload=True)
    assert torch.equal(streamed.logits(ids), ours("qwen2_moe", layout).logits(ids))


def test_a_missing_or_misshapen_expert_is_refused(folder: Callable, tmp_path: Path) -> None:
    from attnscope.api import load

    name = "model.layers.1.mlp.experts.2.up_proj.weight"
    missing = _rewrite(folder("qwen3_moe"), tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match="lacks"):
        load(str(missing), device="cpu", dtype="float32")
    bad = _rewrite(folder("qwen3_moe"), tmp_path / "bad", lambda t: t.__setitem__(name, t[name].T.contiguous()))
    with pytest.raises(CheckpointError, match="expert 2"):
        load(str(bad), device="cpu", dtype="float32")
    beyond = _rewrite(folder("qwen3_moe"), tmp_path / "beyond",
                      lambda t: t.__setitem__(name.replace(".2.", ".9."), t[name].clone()))
    with pytest.raises(CheckpointError, match="expert 9"):
        load(str(beyond), device="cpu", dtype="float32")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_params_of_the_checkpoint_equal_transformers(name: str, layout: str, folder: Callable,
                                                     reference: Callable) -> None:
    """`params` on the folder (stored tensors, either layout) and on its config.json both
    give transformers' num_parameters(); active is the total less (E − k) experts per MoE layer."""
    from attnscope.cli import app

    model = reference(name)
    expected = model.num_parameters()
    for option, target in (("--model", folder(name, layout)), ("--config", folder(name, layout) / "config.json")):
        result = CliRunner().invoke(app, ["params", option, str(target), "--json"], env=ENV)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["totals"]["full"] == expected, target
        assert doc["rows"]["other"] == 0, target
    unused = 0
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:
            per_expert = sum(p[0].numel() for p in (experts.gate_up_proj, experts.down_proj))
            unused += (experts.num_experts - model.config.num_experts_per_tok) * per_expert
    assert doc["active"] == doc["active_totals"]["full"] == expected - unused


# ------------------------------------------------------------------ mask-demo


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, reference: Callable) -> None:
    from attnscope.cli import app

    ids = ids_of(folder(name))
    attentions = tm.reference_attention(reference(name), ids)  # (L, H, T, T)
    for layer in range(attentions.shape[0]):
        head = layer % attentions.shape[1]
        result = CliRunner().invoke(app, ["mask-demo", tmoe.MOE_TEXT, "--model", str(folder(name)), "--layer",
                                          str(layer), "--head", str(head), "--device", "cpu", "--json"], env=ENV)
        assert result.exit_code == 0, result.output
        step = json.loads(result.stdout)["steps"][-1]
        assert step["name"] == "masked_softmax"
        assert_close(torch.tensor(step["matrix"], dtype=torch.float64), attentions[layer, head], ATOL,
                     f"{name} mask-demo layer {layer} head {head}")


# ---------------------------------------------------------------------------- params

PUBLISHED = {  # total, active
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),  # the figures (Mixtral's paper: 46.7B / 12.9B)
    "qwen1.5-moe-a2.7b": (14_315_784_192, 2_689_173_504),  # Qwen's card: 14.3B total, 2.7B activated
    "qwen3-30b-a3b": (30_532_122_624, 3_353_032_704),  # Qwen's card: 30.5B total, 3.3B activated
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_config_counts_total_and_active(name: str) -> None:
    from attnscope.cli import app
    from attnscope.config import preset
    from attnscope.params import report

    raw = json.loads((REAL / f"{name}.json").read_text())
    expected = raw.pop("_num_parameters")
    total, active = PUBLISHED[name]
    assert expected == total
    rep = report(from_hf_config(raw, name=name))
    assert (rep.total_full, rep.active_full) == (total, active)
    assert (report(preset(name)).total_full, report(preset(name)).active_full) == (total, active)
    for target in (str(REAL / f"{name}.json"), name):
        result = CliRunner().invoke(app, ["params", "--config", target, "--json"], env=ENV)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert (doc["totals"]["full"], doc["active"]) == (total, active)
    text = CliRunner().invoke(app, ["params", "--config", name], env=ENV).stdout
    assert f"{active:,}" in text and "One routed expert" in text and "Router" in text


def test_mixtral_block_rows() -> None:
    from attnscope.config import preset
    from attnscope.params import report

    block = report(preset("mixtral-8x7b")).kinds[0].block
    expert = 3 * 4096 * 14336
    assert (block["router"], block["expert"], block["experts"], block["shared"]) == (8 * 4096, expert, 8 * expert, 0)
    assert block["active"] == block["total"] - 6 * expert


def test_dense_models_are_all_active() -> None:
    from attnscope.config import preset
    from attnscope.params import report, report_dict

    for name in ("gpt2", "llama3-8b", "gemma-3-1b"):
        rep = report(preset(name))
        assert rep.active_full == rep.total_full and rep.active_3b1b == rep.total_3b1b
        doc = report_dict(rep)
        assert isinstance(doc["active"], int) and doc["active"] == doc["total"]
        assert "expert" not in doc["block"]


# ------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("edit, message", [
    ({"num_experts_per_tok": 9}, "experts per token"),
    ({"num_experts_per_tok": 0}, "experts per token"),
    ({"num_local_experts": 10**9}, "number of experts"),
    ({"num_local_experts": "8"}, "number of experts"),
    ({"num_local_experts": True}, "number of experts"),
])
def test_bad_expert_configs_are_one_line(edit: dict[str, Any], message: str, tmp_path: Path) -> None:
    from attnscope.cli import app

    raw = json.loads((REAL / "mixtral-8x7b.json").read_text())
    raw.pop("_num_parameters")
    raw.update(edit)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message):
        from_hf_config(raw)
    result = CliRunner().invoke(app, ["params", "--config", str(path)], env=ENV)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output


@pytest.mark.parametrize("edit, message", [
    ({"decoder_sparse_step": 0}, "decoder_sparse_step"),
    ({"mlp_only_layers": "all"}, "mlp_only_layers"),
    ({"num_experts": -1}, "num_experts"),
    ({"norm_topk_prob": "yes"}, "norm_topk_prob"),
])
def test_bad_qwen_moe_configs_are_one_line(edit: dict[str, Any], message: str) -> None:
    raw = json.loads((REAL / "qwen1.5-moe-a2.7b.json").read_text())
    raw.pop("_num_parameters")
    raw.update(edit)
    with pytest.raises(ConfigError, match=message):
        from_hf_config(raw)


# ------------------------------------------------------------------------------ GGUF

GGUF_CASES = [("mixtral", "llama", {"window": None}), ("qwen3_moe", "qwen3moe", {"mlp_only_layers": ()})]


@pytest.mark.parametrize("name, arch, settings", GGUF_CASES, ids=[c[0] for c in GGUF_CASES])
def test_gguf_equals_the_same_weights_from_safetensors(name: str, arch: str, settings: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """A GGUF written as llama.cpp writes these (Mixtral as `llama` with merged experts,
    Qwen3-MoE as `qwen3moe`; F32, so the same weights) loads as the family with experts in
    every layer, and gives the safetensors checkpoint's attention and logits exactly. The
    checkpoints differ from the parity ones where llama.cpp cannot follow: no window for
    Mixtral (llama.cpp keeps none), no dense layer for Qwen3-MoE (its qwen3moe has none).
    `params` on the file's header counts what transformers counts."""
    from attnscope.api import load
    from attnscope.cli import app

    src = tmoe.MOE_BUILDERS[name](tmp_path / "src", **settings)
    model = tm.load_reference(src)
    path = tmoe.gguf_file(tmp_path / f"{name}.gguf", model, arch)
    from_gguf, from_st = load(str(path), device="cpu", dtype="float32"), load(str(src), device="cpu", dtype="float32")
    cfg = from_gguf.config
    assert cfg.family == name and all(cfg.layer(i).mlp.kind == "experts" for i in range(cfg.n_layers))
    assert cfg.layer(0).mlp.experts == from_st.config.layer(0).mlp.experts
    assert cfg.stack == from_st.config.stack
    ids = ids_of(src)
    assert torch.equal(from_gguf.attention_ids(ids).probs, from_st.attention_ids(ids).probs)
    assert torch.equal(from_gguf.logits(ids), from_st.logits(ids))
    result = CliRunner().invoke(app, ["params", "--model", str(path), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["totals"]["full"] == model.num_parameters() and doc["rows"]["other"] == 0
    assert doc["active"] < doc["totals"]["full"]


def test_flops_per_token_count_only_the_visited_experts() -> None:
    """`params --context N`'s forward FLOPs per token: 2 per weight a token multiplies by
    (its k routed experts, not all E; the router; the unembedding), plus attention's."""
    from attnscope.config import preset
    from attnscope.params import context_report, report

    cfg = preset("mixtral-8x7b")
    rep, n = report(cfg), 4096
    norms = rep.rows["norms"]
    matmul = rep.active_full - norms - rep.rows["embedding"]  # the embedding lookup is no matmul, the unembedding is
    attention = 32 * 32 * 2 * n * (128 + 128)
    assert context_report(cfg, n).flops_per_token == 2 * matmul + attention == 27_644_657_664


# ------------------------------------------------------------------ the routing view


@pytest.mark.parametrize("name", NAMES)
def test_routes_reported_through_hooks_equal_transformers(name: str, folder: Callable, ours: Callable,
                                                          reference: Callable) -> None:
    """The routes each MoE block reports at `blocks.{layer}.mlp` (what the experts view and
    `Inspector.capture` read) are the router's own, and transformers' choices and weights."""
    from attnscope.routing import moe_layers, route

    insp, ids = ours(name), ids_of(folder(name))
    routes = route(insp, ids)
    assert routes.layers == moe_layers(insp.config) == sorted(_their_routes(reference(name), ids))
    mine = _our_routes(insp, ids)
    for row, layer in enumerate(routes.layers):
        assert torch.equal(routes.experts[row], mine[layer][1])
        assert torch.equal(routes.weights[row], mine[layer][0].float())
    site = f"blocks.{routes.layers[-1]}.mlp"
    cap = insp.capture(ids, {site: ["routes", "route_weights"]})
    assert torch.equal(cap.get(site, "routes"), routes.experts[-1])
    load = routes.load(insp.config.layer(routes.layers[0]).mlp.experts.n_experts)
    torch.testing.assert_close(load.sum(-1), torch.ones(len(routes.layers)))


def _attend(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, ["attend", tmoe.MOE_TEXT, "--device", "cpu", *args], env=ENV)


def test_experts_view_json_and_table(folder: Callable, ours: Callable) -> None:
    from attnscope.routing import route

    insp, ids = ours("qwen3_moe"), ids_of(folder("qwen3_moe"))
    routes = route(insp, ids)
    result = _attend("--model", str(folder("qwen3_moe")), "--view", "experts", "--layer", "1-2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["moe_layers"] == [1, 2] and doc["ids"] == ids
    assert doc["routes"] == routes.experts.tolist()
    assert torch.equal(torch.tensor(doc["route_weights"]), routes.weights)
    result = _attend("--model", str(folder("qwen3_moe")), "--view", "experts")  # default: the last MoE layer
    assert result.exit_code == 0, result.output
    assert "layer 2" in result.stdout and "layer 1" not in result.stdout
    first = sorted(zip(routes.weights[-1, 0].tolist(), routes.experts[-1, 0].tolist()), reverse=True)
    assert f"e{first[0][1]} " in result.stdout.splitlines()[4]


def test_experts_view_refusals(folder: Callable, build: Callable) -> None:
    for args, words in ((["--model", str(folder("qwen2_moe")), "--layer", "0"], "layer 0 has no experts"),
                        (["--model", str(build("llama")), "--truncate"], "no mixture-of-experts layers"),
                        (["--model", str(folder("qwen2_moe")), "--measure", "norm"], "--view experts shows routes")):
        result = _attend("--view", "experts", *args)
        assert result.exit_code != 0 and words in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_keeps_the_routes_of_the_saved_moe_layers(suffix: str, folder: Callable, ours: Callable,
                                                       tmp_path: Path) -> None:
    """--save adds `routes` int64 [moe layers, n, k], `route_weights` float32 and
    `moe_layers` for the saved layers that have experts (under any measure); none where
    no saved layer has experts."""
    import numpy as np
    from safetensors.numpy import load_file

    from attnscope.routing import route

    def read(path: Path) -> dict[str, Any]:
        if suffix == ".npz":
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        return load_file(str(path))

    insp, ids = ours("qwen3_moe"), ids_of(folder("qwen3_moe"))
    routes = route(insp, ids)
    for measure in ("weight", "norm"):
        path = tmp_path / f"{measure}{suffix}"
        result = _attend("--model", str(folder("qwen3_moe")), "--save", str(path), "--measure", measure, "--json")
        assert result.exit_code == 0, result.output
        saved = read(path)
        assert saved["moe_layers"].tolist() == [1, 2]
        assert saved["routes"].dtype == np.int64 and saved["route_weights"].dtype == np.float32
        assert saved["routes"].tolist() == routes.experts.tolist()
        assert np.array_equal(saved["route_weights"], routes.weights.numpy())
    path = tmp_path / f"dense{suffix}"
    result = _attend("--model", str(folder("qwen3_moe")), "--save", str(path), "--layer", "0", "--json")
    assert result.exit_code == 0, result.output
    assert "routes" not in read(path) and "moe_layers" not in read(path)
