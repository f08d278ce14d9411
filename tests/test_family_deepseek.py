"""DeepSeek-V3 / Kimi-K2 (`deepseek_v3`, `kimi_k2`; attnscope/architectures/deepseek_v3.py,
parts/latent.py) against transformers' DeepseekV3ForCausalLM.

Tiny random checkpoints from tests/tiny_models_deepseek.py: latent attention with a
query rank (`deepseek_dense`), without one and with biases and rotate-half RoPE
(`deepseek_plain_q`), with YaRN and both mscales (`deepseek_yarn`), all dense; and
`deepseek_moe` with grouped sigmoid routing. `DEEPSEEK_TEXT` is 109 tokens.

Every expected number comes from transformers (eager attention, `output_attentions`):
attention in float32 to 1e-5 on every layer and head, logits against a float64 reference
to 1e-4 relative, token by token through our cache equal to one full pass, the mask
demo's last step, and the real configs' counts from transformers on the meta device.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from family_checks import Patterns, assert_close, assert_logits_close, cached, reference_run, references
import tiny_models as tm
import tiny_models_deepseek as td
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError

DENSE = ["deepseek_dense", "deepseek_plain_q", "deepseek_yarn"]
NAMES = DENSE + ["deepseek_moe"]
ATOL = 1e-5  # attention probabilities, float32 against float32
LOGITS_RTOL = 1e-4  # logits, relative to each entry and to the logits' scale
STEP_RTOL = 1e-5  # token by token against one full pass, both ours in float32
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: td.DEEPSEEK_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[..., Any]:
    """transformers' model in float32 (`name`) and float64 (`name`, True)."""
    return references(folder)


def ids_of(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(td.DEEPSEEK_TEXT).ids


def stepped(insp: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    cache, hook = insp.new_cache(), Patterns(insp.n_layers, insp.n_heads, len(ids))
    rows = [insp.step([i], cache, hook) for i in ids]
    return torch.cat(rows), hook.full, cache


def full_pass(insp: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    hook = Patterns(insp.n_layers, insp.n_heads, len(ids))
    insp.run(ids, hook)
    return insp.logits(ids), hook.full


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable, reference: Callable) -> None:
    """What the parity tests rest on: v width ≠ q/k width, interleaved RoPE, YaRN's two
    mscales away from 1 (on cos/sin and on the score scale), 90+ tokens."""
    ref = reference("deepseek_yarn")
    attn = ref.model.layers[0].self_attn
    assert (attn.qk_head_dim, attn.v_head_dim, attn.kv_lora_rank) == (12, 6, 10)
    assert ref.config.rope_interleave is True and reference("deepseek_plain_q").config.rope_interleave is False
    assert attn.scaling != pytest.approx(12 ** -0.5, rel=1e-3)
    assert ref.model.rotary_emb.attention_scaling != pytest.approx(1.0, rel=1e-3)
    assert reference("deepseek_plain_q").model.layers[0].self_attn.q_proj is not None
    assert len(ids_of(folder("deepseek_dense"))) >= 90


def test_config_reads_the_latent_attention(ours: Callable) -> None:
    cfg = ours("deepseek_dense").config
    a = cfg.layer(0).attn
    assert a.kind == "latent" and a.latent is not None
    m = a.latent
    assert (m.q_rank, m.kv_rank, m.nope_dim, m.rope_dim, m.v_dim, m.rope_interleave) == (12, 10, 8, 4, 6, True)
    assert (a.n_heads, a.n_kv_heads, a.d_head, a.d_value, a.rope.rotary_dim) == (4, 4, 12, 6, 4)
    assert a.rope.theta == td.THETA and a.rope.scaling is None and a.score_scale == pytest.approx(12 ** -0.5)
    assert a.bytes_per_token(2) == (10 + 4) * 2  # the latent and the shared rotated key
    assert all(cfg.layer(i).mlp.kind == "gated" for i in range(cfg.n_layers))
    m = ours("deepseek_plain_q").config.layer(0).attn
    assert m.latent.q_rank is None and m.latent.rope_interleave is False and m.qkv_bias and m.out_bias


def test_yarn_scale_and_factor_as_transformers(ours: Callable, reference: Callable) -> None:
    from attnscope.parts.positions import rope_attention_factor

    cfg = ours("deepseek_yarn").config
    a, ref = cfg.layer(0).attn, reference("deepseek_yarn")
    assert a.score_scale == pytest.approx(ref.model.layers[0].self_attn.scaling, rel=1e-12)
    m_all = 0.1 * 1.3 * math.log(4) + 1
    assert a.score_scale == pytest.approx(12 ** -0.5 * m_all ** 2, rel=1e-12)
    factor = rope_attention_factor(a.rope, cfg.n_ctx)
    assert factor == pytest.approx(ref.model.rotary_emb.attention_scaling, rel=1e-12)
    assert factor == pytest.approx((0.1 * 0.7 * math.log(4) + 1) / m_all, rel=1e-12)


# ------------------------------------------------------------------ attention, logits


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, 109 tokens."""
    ids = ids_of(folder(name))
    att = ours(name).attention(td.DEEPSEEK_TEXT)
    assert att.tokens.ids == ids
    ref = tm.reference_attention(reference(name), ids)
    assert att.probs.dtype == torch.float32
    assert_close(att.probs, ref, ATOL, f"{name} attention")


def test_interleave_and_mscale_are_seen_by_the_check(folder: Callable, ours: Callable, reference: Callable) -> None:
    """The parity check can fail: our model with the pairs read in rotate-half order, or
    without YaRN's mscale on the score scale, differs from transformers by far more than
    the tolerance."""
    from attnscope.api import Inspector
    from attnscope.model import build

    insp = ours("deepseek_yarn")
    ids = ids_of(folder("deepseek_yarn"))
    ref = tm.reference_attention(reference("deepseek_yarn"), ids)
    state = insp.model.state_dict()
    base = insp.config.layer(0)
    for wrong in (base.with_attn(latent=replace(base.attn.latent, rope_interleave=False)),
                  base.with_attn(scale=12 ** -0.5)):
        from attnscope.kinds import Stack

        cfg = replace(insp.config, kinds=Stack(((wrong, insp.config.n_layers),)))
        model = build(cfg, state.items())
        other = Inspector(cfg, model, insp.tokenizer, insp.source, insp.device, insp.dtype)
        got = other.attention_ids(ids).probs
        assert float((got.double() - ref.double()).abs().max()) > 100 * ATOL


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    ids = ids_of(folder(name))
    ref_logits, _ = reference_run(reference(name, True), ids)
    got = ours(name).logits(ids)
    assert got.dtype == torch.float32
    assert_logits_close(got, ref_logits, LOGITS_RTOL, f"{name} logits")


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_equals_full_pass(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Token by token through our KVCache, which keeps each layer's latent (1, K, kv_rank)
    and shared rotated key (1, K, rope), gives one full pass's logits and patterns."""
    insp, ids = ours(name), ids_of(folder(name))
    logits, patterns, cache = stepped(insp, ids)
    m = insp.config.layer(0).attn.latent
    assert tuple(cache.k[0].shape) == (1, len(ids), m.kv_rank) and tuple(cache.v[0].shape) == (1, len(ids), m.rope_dim)
    full_logits, full_patterns = full_pass(insp, ids)
    assert_logits_close(logits, full_logits, STEP_RTOL, f"{name} stepped vs full logits")
    assert_close(patterns, full_patterns, ATOL, f"{name} stepped vs full patterns")
    ref_logits, ref_attn = reference_run(reference(name, True), ids)
    assert_logits_close(logits, ref_logits, LOGITS_RTOL, f"{name} stepped logits vs transformers")
    assert_close(patterns, ref_attn, ATOL, f"{name} stepped patterns vs transformers")


# --------------------------------------------------------------------------- experts


def test_config_reads_the_experts(ours: Callable) -> None:
    """One dense layer, then experts: 8 of width 16 in 4 groups, 2 kept, 3 per token,
    scale 2.5, one shared expert of 16."""
    cfg = ours("deepseek_moe").config
    assert cfg.layer(0).mlp.kind == "gated" and cfg.layer(0).mlp.d_mlp == 48
    m = cfg.layer(1).mlp
    assert m.kind == "experts" and m.d_mlp == 16 and cfg.layer(2) == cfg.layer(1)
    e = m.experts
    assert (e.n_experts, e.top_k, e.router, e.norm_topk_prob) == (8, 3, "sigmoid_grouped", True)
    assert (e.n_group, e.topk_group, e.routed_scale, e.d_shared, e.n_shared) == (4, 2, 2.5, 16, 1)


@torch.no_grad()
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sizes", [(8, 4, 2, 3, True), (16, 4, 3, 5, False), (12, 1, 1, 4, True)])
def test_router_as_transformers(seed: int, sizes: tuple[int, int, int, int, bool]) -> None:
    """Our grouped sigmoid router against transformers' DeepseekV3TopkRouter on random
    tokens, weights and correction biases: the same experts and the same weights."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    from attnscope.kinds import ExpertSpec
    from attnscope.parts.experts import Router

    E, groups, kept, k, norm = sizes
    config = DeepseekV3Config(hidden_size=24, n_routed_experts=E, n_group=groups, topk_group=kept,
                              num_experts_per_tok=k, norm_topk_prob=norm, routed_scaling_factor=1.7)
    theirs = DeepseekV3TopkRouter(config)
    gen = torch.Generator().manual_seed(seed)
    theirs.weight.copy_(torch.randn(E, 24, generator=gen))
    theirs.e_score_correction_bias.copy_(torch.randn(E, generator=gen) * 0.5)
    ours_ = Router(24, ExpertSpec(E, k, router="sigmoid_grouped", norm_topk_prob=norm, n_group=groups,
                                  topk_group=kept, routed_scale=1.7))
    ours_.load_state_dict({"weight": theirs.weight, "score_bias": theirs.e_score_correction_bias})
    x = torch.randn(200, 24, generator=gen)
    _, their_w, their_i = theirs(x)
    our_w, our_i = ours_(x)
    their_i, order = their_i.sort(dim=-1)
    our_i, our_order = our_i.sort(dim=-1)
    assert torch.equal(our_i, their_i)
    torch.testing.assert_close(our_w.gather(1, our_order), their_w.gather(1, order), rtol=0, atol=1e-6)


def test_routing_quirks_are_seen_by_the_check(folder: Callable, ours: Callable, reference: Callable) -> None:
    """The logits check can fail on routing: our model without the correction bias,
    without group limiting, or without the routed scale differs from transformers by more
    than the tolerance."""
    from attnscope.api import Inspector
    from attnscope.kinds import Stack
    from attnscope.model import build

    insp = ours("deepseek_moe")
    ids = ids_of(folder("deepseek_moe"))
    ref_logits, _ = reference_run(reference("deepseek_moe", True), ids)
    scale = float(ref_logits.abs().max())
    state = insp.model.state_dict()
    dense, moe = insp.config.layer(0), insp.config.layer(1)
    e = moe.mlp.experts
    no_bias = {k: (torch.zeros_like(v) if k.endswith("score_bias") else v) for k, v in state.items()}
    for experts, weights in ((e, no_bias), (replace(e, n_group=1, topk_group=1), state),
                             (replace(e, routed_scale=1.0), state)):
        wrong = replace(moe, mlp=replace(moe.mlp, experts=experts))
        cfg = replace(insp.config, kinds=Stack(((dense, 1), (wrong, insp.config.n_layers - 1))))
        other = Inspector(cfg, build(cfg, weights.items()), insp.tokenizer, insp.source, insp.device, insp.dtype)
        assert float((other.logits(ids).double() - ref_logits).abs().max()) > 100 * LOGITS_RTOL * scale


# -------------------------------------------------------------------------- mask-demo


@pytest.mark.parametrize("name", ["deepseek_yarn", "deepseek_moe"])
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, reference: Callable) -> None:
    from attnscope.cli import app

    ids = ids_of(folder(name))
    attentions = tm.reference_attention(reference(name, True), ids)  # (L, H, T, T)
    for layer in range(attentions.shape[0]):
        for head in (0, attentions.shape[1] - 1):
            result = CliRunner().invoke(app, ["mask-demo", td.DEEPSEEK_TEXT, "--model", str(folder(name)), "--layer",
                                              str(layer), "--head", str(head), "--device", "cpu", "--json"], env=ENV)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"{name} layer {layer} head {head}"
            assert doc["own_mask"] is True and doc["layer_kind"] == "global", where
            step = doc["steps"][-1]
            assert step["name"] == "masked_softmax", where
            assert_close(torch.tensor(step["matrix"], dtype=torch.float64), attentions[layer, head], ATOL, where)


def test_attend_from_the_cli(folder: Callable) -> None:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", "The cat sat on the mat.", "--model", str(folder("deepseek_moe")),
                                      "--device", "cpu", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


# ---------------------------------------------------------------------------- params

DEEPSEEK_V3_TOTAL = 671_026_404_352  # the figure: the next-token-prediction module excluded
DEEPSEEK_V3_ACTIVE = 37_552_282_624
DEEPSEEK_V3_MTP = 13_463_426_048  # one MoE block, enorm, hnorm, shared_head.norm, eh_proj, embedding and head copies


def _real(name: str) -> tuple[dict[str, Any], int]:
    raw = json.loads((REAL / f"{name}.json").read_text())
    return raw, raw.pop("_num_parameters")


def test_real_config_counts() -> None:
    """DeepSeek-V3 as transformers counts it on the meta device (the file's
    `_num_parameters`; tests/test_kinds_groundwork.py recomputes it), and as published:
    total and active; the next-token-prediction module apart; the cache the design
    keeps (kv_lora_rank + qk_rope_head_dim = 576 values per token and layer)."""
    from attnscope.cli import app
    from attnscope.params import report

    raw, expected = _real("deepseek-v3")
    assert expected == DEEPSEEK_V3_TOTAL
    rep = report(from_hf_config(raw, name="deepseek-v3"))
    assert (rep.total_full, rep.active_full) == (DEEPSEEK_V3_TOTAL, DEEPSEEK_V3_ACTIVE)
    assert rep.head.shared == 7168 * 1536 + 1536 + 7168 * 576 + 512  # q_a, its norm, kv_a, its norm
    result = CliRunner().invoke(app, ["params", "--config", str(REAL / "deepseek-v3.json"), "--context", "1000",
                                      "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["totals"]["full"], doc["active"]) == (DEEPSEEK_V3_TOTAL, DEEPSEEK_V3_ACTIVE)
    assert list(doc["not_counted"].values()) == [DEEPSEEK_V3_MTP]
    assert doc["context"]["kv_cache"]["values_per_token"] == 61 * (512 + 64)
    assert doc["attention"]["shared_by_all_heads"] == rep.head.shared
    text = CliRunner().invoke(app, ["params", "--config", "deepseek-v3"], env=ENV).stdout
    assert "671,026,404,352" in text and "37,552,282,624" in text
    assert "next-token-prediction module" in text and "13,463,426,048" in text
    assert "shared by all heads" in text and "Key/value latent" in text


def test_presets_count_as_transformers() -> None:
    """The deepseek-v3 preset is the real file; kimi-k2's count is transformers' own
    (DeepseekV3ForCausalLM on the meta device, the architecture Kimi-K2 names)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from attnscope.config import preset
    from attnscope.params import report

    rep = report(preset("deepseek-v3"))
    assert (rep.total_full, rep.active_full) == (DEEPSEEK_V3_TOTAL, DEEPSEEK_V3_ACTIVE)
    from attnscope.presets import PRESETS

    raw = {k: v for k, v in PRESETS["kimi-k2"].items() if k not in ("architectures", "model_type", "torch_dtype")}
    with torch.device("meta"):
        theirs = DeepseekV3ForCausalLM(DeepseekV3Config(**raw)).num_parameters()
    rep = report(preset("kimi-k2"))
    assert rep.cfg.family == "kimi_k2" and rep.total_full == theirs == 1_026_408_209_408
    assert rep.active_full == 32_861_477_888  # "1T total, 32B activated"


def _with_next_token_module(src: Path, dst: Path) -> int:
    """`src` with a next-token-prediction layer appended as DeepSeek-V3's checkpoints
    carry one (layer n: a copy of the last block plus its own tensors); returns the
    parameters that layer adds, buffers left out."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    n = json.loads((dst / "config.json").read_text())["num_hidden_layers"]
    last, extra = f"model.layers.{n - 1}.", {}
    for name, t in tensors.items():
        if name.startswith(last):
            extra[f"model.layers.{n}." + name[len(last):]] = t.clone()
    d, vocab = tensors["model.norm.weight"].shape[0], tensors["model.embed_tokens.weight"].shape[0]
    for part, shape in (("enorm", (d,)), ("hnorm", (d,)), ("eh_proj", (d, 2 * d)), ("shared_head.norm", (d,)),
                        ("embed_tokens", (vocab, d)), ("shared_head.head", (vocab, d))):
        extra[f"model.layers.{n}.{part}.weight"] = torch.randn(shape)
    save_file({**tensors, **extra}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tm.rewrite_config(dst, lambda raw: raw.update(num_nextn_predict_layers=1))
    return sum(t.numel() for name, t in extra.items() if not name.endswith("e_score_correction_bias"))


def test_next_token_module_is_skipped_and_counted_apart(folder: Callable, ours: Callable, reference: Callable,
                                                       tmp_path: Path) -> None:
    """A checkpoint carrying `model.layers.{n}.*` loads (those tensors skipped, not an
    error), runs exactly as without them, and `params` counts the same total with the
    module on a line of its own, of exactly the parameters its tensors hold."""
    from attnscope.api import load
    from attnscope.cli import app

    added = _with_next_token_module(folder("deepseek_moe"), tmp_path / "mtp")
    ids = ids_of(folder("deepseek_moe"))
    insp = load(str(tmp_path / "mtp"), device="cpu", dtype="float32")
    assert torch.equal(insp.logits(ids), ours("deepseek_moe").logits(ids))
    docs = []
    for path in (folder("deepseek_moe"), tmp_path / "mtp"):
        result = CliRunner().invoke(app, ["params", "--model", str(path), "--json"], env=ENV)
        assert result.exit_code == 0, result.output
        docs.append(json.loads(result.stdout))
    assert docs[1]["total"] == docs[0]["total"] == reference("deepseek_moe").num_parameters()
    assert "not_counted" not in docs[0] and list(docs[1]["not_counted"].values()) == [added]


# ----------------------------------------------------------------------- bad configs


def _tiny_raw(folder: Callable) -> dict[str, Any]:
    return json.loads((folder("deepseek_moe") / "config.json").read_text())


@pytest.mark.parametrize("edit, words", [
    (dict(kv_lora_rank=0), "kv_lora_rank must be a positive integer"),
    (dict(kv_lora_rank=2**40), "kv_lora_rank must be a positive integer"),
    (dict(qk_rope_head_dim=5), "qk_rope_head_dim must be a positive even integer"),
    (dict(v_head_dim="6"), "v_head_dim must be a positive integer"),
    (dict(q_lora_rank=-1), "q_lora_rank must be a positive integer"),
    (dict(rope_interleave="yes"), "rope_interleave must be true or false"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "unsupported deepseek_v3 rope scaling 'dynamic'"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "original_max_position_embeddings"),
    (dict(n_group=3), "n_group must divide the 8 experts"),
    (dict(n_group=8, topk_group=1), "each of the 8 expert groups needs two experts"),
    (dict(topk_group=5), "topk_group must be from 1 to n_group"),
    (dict(num_experts_per_tok=7, topk_group=2), "7 experts per token do not fit in 2 groups of 2"),
    (dict(num_experts_per_tok=9), "experts per token must be from 1"),
    (dict(routed_scaling_factor=float("nan")), "routed_scaling_factor must be a finite positive number"),
    (dict(scoring_func="softmax"), "unsupported deepseek_v3 scoring_func"),
    (dict(first_k_dense_replace=-1), "first_k_dense_replace must be a non-negative integer"),
    (dict(num_nextn_predict_layers=10**9), "num_nextn_predict_layers must be"),
    (dict(n_shared_experts=True), "n_shared_experts must be a non-negative integer"),
])
def test_bad_config_is_one_config_error(folder: Callable, edit: dict[str, Any], words: str) -> None:
    raw = {**_tiny_raw(folder), **edit}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)


def test_bad_config_from_the_cli(folder: Callable, tmp_path: Path) -> None:
    """One red line and a non-zero exit, from `params --config`."""
    from attnscope.cli import app

    raw = {**_tiny_raw(folder), "kv_lora_rank": -3}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["params", "--config", str(path)], env=ENV)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 2 and "kv_lora_rank" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- what hooks see


class _Sites:
    def __init__(self, layer: int) -> None:
        self.site, self.seen = f"blocks.{layer}.attn", {}

    def wants(self, site: str, what: str) -> bool:
        return site == self.site and what in ("q", "k", "v", "pattern", "z", "result", "fnorm")

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        self.seen.setdefault(what, []).append(value.clone())


@torch.no_grad()
def test_hooks_see_latent_heads_with_their_value_width(folder: Callable, ours: Callable) -> None:
    """q and k (H, n, 12), v and z (H, n, 6): each head's share of the output
    (`result`) is its weighted values through its own 6 columns of o, and `fnorm` (what
    --measure norm reads) is ‖v_j W_O^h‖; `attend --measure norm` runs."""
    from attnscope.cli import app

    insp, ids = ours("deepseek_moe"), ids_of(folder("deepseek_moe"))[:20]
    hook = _Sites(1)
    insp.run(ids, hook)
    q, k, v = (torch.cat(hook.seen[w], dim=1) for w in ("q", "k", "v"))
    pattern, result = torch.cat(hook.seen["pattern"], dim=1), torch.cat(hook.seen["result"], dim=1)
    assert q.shape == k.shape == (4, 20, 12) and v.shape == (4, 20, 6)
    w = insp.model.blocks[1].attn.o.weight.view(32, 4, 6)  # (d, H, dv)
    z = pattern @ v  # (H, n, dv)
    torch.testing.assert_close(torch.cat(hook.seen["z"], dim=1), z, rtol=0, atol=1e-6)
    torch.testing.assert_close(result, torch.einsum("hnd,mhd->hnm", z, w), rtol=0, atol=1e-5)
    torch.testing.assert_close(hook.seen["fnorm"][0], torch.einsum("hkd,mhd->hkm", v, w).norm(dim=-1), rtol=1e-5,
                               atol=1e-6)
    result = CliRunner().invoke(app, ["attend", "The cat sat on the mat.", "--model", str(folder("deepseek_moe")),
                                      "--measure", "norm", "--device", "cpu"], env=ENV)
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------ Kimi-K2, fused experts


def test_kimi_k2_is_read_as_deepseek_v3(folder: Callable, ours: Callable, tmp_path: Path) -> None:
    """Kimi-K2's config.json names `model_type` "kimi_k2" and DeepSeek-V3's architecture:
    the same checkpoint under that name runs exactly the same."""
    import shutil

    shutil.copytree(folder("deepseek_moe"), tmp_path / "kimi")
    tm.rewrite_config(tmp_path / "kimi", lambda raw: raw.update(model_type="kimi_k2"))
    from attnscope.api import load

    insp = load(str(tmp_path / "kimi"), device="cpu", dtype="float32")
    ids = ids_of(folder("deepseek_moe"))
    assert insp.config.family == "kimi_k2"
    assert torch.equal(insp.logits(ids), ours("deepseek_moe").logits(ids))


def test_fused_expert_tensors_load(folder: Callable, ours: Callable, tmp_path: Path) -> None:
    """transformers 5 holds experts fused: `mlp.experts.gate_up_proj` [E, 2w, d] (gate rows
    first) and `mlp.experts.down_proj` [E, d, w]. A checkpoint stored so runs the same."""
    import shutil

    from safetensors.torch import load_file, save_file

    from attnscope.api import load

    dst = tmp_path / "fused"
    shutil.copytree(folder("deepseek_moe"), dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out = {k: v for k, v in tensors.items() if ".mlp.experts." not in k}
    for layer in (1, 2):
        p = f"model.layers.{layer}.mlp.experts."
        gate = [tensors[f"{p}{e}.gate_proj.weight"] for e in range(8)]
        up = [tensors[f"{p}{e}.up_proj.weight"] for e in range(8)]
        out[p + "gate_up_proj"] = torch.stack([torch.cat((g, u)) for g, u in zip(gate, up)])
        out[p + "down_proj"] = torch.stack([tensors[f"{p}{e}.down_proj.weight"] for e in range(8)])
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    ids = ids_of(folder("deepseek_moe"))
    assert torch.equal(load(str(dst), device="cpu", dtype="float32").logits(ids), ours("deepseek_moe").logits(ids))


def test_hand_built_latent_kinds_are_checked(ours: Callable) -> None:
    """A LatentSpec that does not fit its heads, or latent projections on a softmax
    layer, is one ConfigError where the config is built."""
    from attnscope.kinds import Stack

    cfg = ours("deepseek_moe").config
    base = cfg.layer(0)
    m = base.attn.latent
    for wrong, words in ((base.with_attn(latent=replace(m, nope_dim=9)), "qk_nope_head_dim \\+ qk_rope_head_dim"),
                         (base.with_attn(latent=replace(m, kv_rank=0)), "kv_lora_rank must be a positive integer"),
                         (base.with_attn(latent=replace(m, rope_dim=3)), "bad latent attention settings"),
                         (base.with_attn(kind="softmax"), "softmax attention cannot carry latent projections"),
                         (base.with_attn(latent=None), "latent attention needs its LatentSpec"),
                         (base.with_attn(sinks=True), "latent attention has no q/k norm, sinks"),
                         (base.with_attn(qk_norm="head"), "latent attention has no q/k norm, sinks")):
        with pytest.raises(ConfigError, match=words):
            replace(cfg, kinds=Stack(((wrong, cfg.n_layers),)))


def test_both_rope_config_styles_read_alike(folder: Callable) -> None:
    """YaRN as the Hub's files write it (`rope_theta` and `rope_scaling` {"type": "yarn"})
    and as transformers 5 writes it (`rope_parameters` {"rope_type": "yarn", "rope_theta"})
    give the same layers and the same score scale."""
    hub = _tiny_raw(folder)
    assert hub["rope_scaling"]["type"] == "yarn" and "rope_parameters" not in hub
    new = {k: v for k, v in hub.items() if k not in ("rope_scaling", "rope_theta")}
    scaling = {k: v for k, v in hub["rope_scaling"].items() if k != "type"}
    new["rope_parameters"] = {"rope_type": "yarn", "rope_theta": hub["rope_theta"], **scaling}
    a, b = from_hf_config(hub), from_hf_config(new)
    assert a.stack == b.stack and a.layer(0).attn.score_scale == b.layer(0).attn.score_scale
    assert a.layer(0).attn.rope.scaling_dict["factor"] == 4.0
