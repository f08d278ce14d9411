"""gpt-oss (`gpt_oss`) against transformers, and the sink outputs (issue 25).

Every expected number comes from transformers, on the tiny random checkpoint of
`tiny_models_gpt_oss` (4 layers: sliding, full, full, sliding with a window of 12; sinks
of a few units; YaRN; 4 experts, top 2, clamped SwiGLU with limit 1.5) on `GPT_OSS_TEXT`
(90+ tokens, longer than the window):

* attention per layer and head equals transformers' eager attention in float32 to 1e-5
  (its rows sum to 1 − sink weight), and each quirk moves transformers' own output far
  more than that (so the checks can fail);
* logits equal a float64 transformers reference to 1e-4 relative (tests/test_logits_cache's
  bound), token by token and prefill-then-steps through our cache equal the full pass;
* the sink outputs, each against 1 − the row sum of transformers' attention (the sink
  weight): `attend --save` (npz and safetensors) writes `sinks` [layer, head, query]; the
  focus view's specials column and `--json`'s focus carry the query's sink weight;
  `heads` scores `sink` (its mean over rows), on one text and pooled over a corpus,
  packed or not; `mask-demo`'s last step is the layer's pattern with the sink as one
  more column, Σ counting it;
* counts: gpt-oss-20b's and -120b's real configs count to transformers' meta-device
  figures through `params --config`'s path, and their active counts are OpenAI's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
import tiny_models_gpt_oss as tg
from test_logits_cache import (LOGITS_RTOL, PATTERN_ATOL, STEP_RTOL, PatternChunks, assert_logits_close,
                               reference_run, reference_visible)

ATOL = 1e-5  # attention probabilities in float32, as every parity test
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
REAL = Path(__file__).parent / "data" / "real_configs"


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tg.gpt_oss(tmp_path_factory.mktemp("gpt_oss"))


def reference(folder: Path) -> Any:
    """transformers' GptOssForCausalLM, eager attention and the plain loop over experts
    (its modeling file's; grouped_mm has no float64)."""
    model = tm.load_reference(folder)
    model.config._experts_implementation = "eager"
    return model


@pytest.fixture(scope="module")
def ref(folder: Path) -> Any:
    return reference(folder)


@pytest.fixture(scope="module")
def ref64(ref: Any) -> Any:
    return copy.deepcopy(ref).double().eval()


@pytest.fixture(scope="module")
def ours(folder: Path) -> Any:
    from attnscope.api import load

    return load(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ids(folder: Path) -> list[int]:
    ids = tm.plain_tokenizer(folder).encode(tg.GPT_OSS_TEXT).ids
    assert len(ids) >= 90 and len(ids) > tg.GPT_OSS_WINDOW
    return ids


@pytest.fixture(scope="module")
def attention(ref: Any, ids: list[int]) -> torch.Tensor:
    """transformers' eager attention (L, H, n, n), float32."""
    with torch.no_grad():
        return tm.reference_attention(ref, ids)


def run(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.double() - b.double()).abs().max())


# ------------------------------------------------------------------ config, attention


def test_config_reads_every_quirk(ours: Any, ref: Any) -> None:
    cfg, hf = ours.config, ref.config
    assert (cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == ("gpt_oss", 4, 4, 2, 16)
    for layer in range(cfg.n_layers):
        spec = cfg.layer(layer)
        a, m = spec.attn, spec.mlp
        sliding = hf.layer_types[layer] == "sliding_attention"
        assert a.window == (tg.GPT_OSS_WINDOW if sliding else None), layer
        assert a.sinks and a.qkv_bias and a.out_bias
        assert a.rope is not None and a.rope.theta == 5000.0 and a.rope.scaling_type == "yarn"
        assert a.rope.scaling_dict["truncate"] is False and a.rope.scaling_dict["factor"] == 4.0
        e = m.experts
        assert m.kind == "experts" and m.d_mlp == 32 and e is not None
        assert (e.n_experts, e.top_k, e.router, e.router_bias, e.expert_bias) == (4, 2, "topk_softmax", True, True)
        assert (e.swiglu_alpha, e.swiglu_limit) == (hf.swiglu_alpha, tg.GPT_OSS_LIMIT)


def test_attention_matches_transformers(ours: Any, ids: list[int], attention: torch.Tensor) -> None:
    """Every layer and head to 1e-5; the rows sum to 1 − sink weight, visibly below 1."""
    att = ours.attention(tg.GPT_OSS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    assert att.probs.dtype == torch.float32
    assert max_diff(att.probs, attention) <= ATOL
    assert float(attention.sum(-1).min()) < 0.5  # the sinks take a large share of some rows


def _hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_each_quirk_moves_transformers_far_more_than_the_tolerance(ref: Any, ids: list[int],
                                                                   attention: torch.Tensor) -> None:
    """Dropping the sinks, the clamp or the router bias changes transformers' own attention
    or logits by far more than 1e-5 / 1e-4: the parity checks can fail. (The window cuts
    most of each row of the sliding layers: attention parity shows it.)"""
    base = _hf_logits(ref, ids)
    changed = copy.deepcopy(ref)
    with torch.no_grad():
        for layer in changed.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
    assert max_diff(tm.reference_attention(changed, ids), attention) > 0.1
    for change in ("limit", "router_bias"):
        changed = copy.deepcopy(ref)
        with torch.no_grad():
            for layer in changed.model.layers:
                if change == "limit":
                    layer.mlp.experts.limit = 1e9
                else:
                    layer.mlp.router.bias.zero_()
        assert max_diff(_hf_logits(changed, ids), base) > 1e-2 * float(base.abs().max()), change


# ------------------------------------------------------------------- logits, cache


def test_logits_match_transformers(ours: Any, ref64: Any, ids: list[int]) -> None:
    expected, _ = reference_run(ref64, ids)
    assert_logits_close(ours.logits(ids), expected, LOGITS_RTOL, "gpt_oss")


class Chunks(PatternChunks):
    """PatternChunks that also keeps each chunk's sink weights (H, c)."""

    def __init__(self) -> None:
        super().__init__()
        self.sinks: list[tuple[int, int, torch.Tensor]] = []

    def wants(self, site: str, what: str) -> bool:
        return what in ("pattern", "sink") and site.endswith(".attn")

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        if what == "pattern":
            return super().report(site, what, value, q_start, k_start)
        self.sinks.append((int(site.split(".")[1]), q_start, value.detach().cpu().clone()))

    def full_sinks(self, n_layers: int, n_heads: int, n: int) -> torch.Tensor:
        out = torch.full((n_layers, n_heads, n), float("nan"))
        for layer, q0, value in self.sinks:
            out[layer, :, q0:q0 + value.shape[1]] = value
        return out


def check_steps(insp: Any, ref: Any, ids: list[int], pieces: list[list[int]]) -> None:
    """test_logits_cache's check_against_full_pass for a model with sinks: feed `pieces`
    through one cache; logits, pattern rows and sink weights equal one full pass's and
    transformers'; keys outside each layer's window weigh 0; each row plus its sink is 1."""
    assert [i for piece in pieces for i in piece] == ids
    n, L, H = len(ids), insp.n_layers, insp.n_heads
    whole = Chunks()
    insp.run(ids, whole)
    full_patterns, full_sinks = whole.full(L, H, n), whole.full_sinks(L, H, n)
    full_logits = insp.logits(ids)
    cache, hook, rows = insp.new_cache(), Chunks(), []
    for piece in pieces:
        rows.append(insp.step(piece, cache, hook))
    stepped = torch.cat(rows)  # (T, vocab)
    patterns, sinks = hook.full(L, H, n), hook.full_sinks(L, H, n)
    what = f"pieces {[len(p) for p in pieces]}"
    assert_logits_close(stepped, full_logits.double(), STEP_RTOL, f"{what}: stepped vs full logits")
    assert max_diff(patterns, full_patterns) <= PATTERN_ATOL and max_diff(sinks, full_sinks) <= PATTERN_ATOL
    ref_logits, ref_attn = reference_run(ref, ids)
    assert_logits_close(stepped, ref_logits, LOGITS_RTOL, f"{what}: stepped logits vs transformers")
    assert max_diff(patterns, ref_attn) <= PATTERN_ATOL, what
    assert max_diff(sinks, 1 - ref_attn.sum(-1)) <= PATTERN_ATOL, what
    for layer in range(L):
        hidden = ~reference_visible(ref.config, layer, n)  # (T, T)
        assert (patterns[layer][:, hidden] == 0).all(), f"{what}: layer {layer} weights a hidden key"
    assert max_diff(patterns.double().sum(-1) + sinks.double(), torch.ones(L, H, n)) <= PATTERN_ATOL


def test_one_token_at_a_time_is_one_full_pass(ours: Any, ref64: Any, ids: list[int]) -> None:
    check_steps(ours, ref64, ids, [[i] for i in ids])


def test_prefill_then_steps_is_one_full_pass(ours: Any, ref64: Any, ids: list[int]) -> None:
    """A prefix longer than the window (12), three tokens at once, then one at a time."""
    cut = 17
    check_steps(ours, ref64, ids, [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]])


# ----------------------------------------------------------------- the sink outputs


def test_sink_hook_is_the_kernels_own_share(ours: Any, ids: list[int], attention: torch.Tensor) -> None:
    """The `sink` quantity (H, n) of every layer is 1 − transformers' row sum, and our own
    pattern row plus it is 1."""
    from attnscope.hooks import Capture, attn_site

    cap = Capture({attn_site(i): ["pattern", "sink"] for i in range(4)})
    ours.run(ids, cap)
    for layer in range(4):
        sink = cap.get(attn_site(layer), "sink")  # (H, n)
        assert sink.shape == (4, len(ids))
        assert max_diff(sink, 1 - attention[layer].double().sum(-1)) <= ATOL
        assert max_diff(cap.get(attn_site(layer), "pattern").double().sum(-1) + sink.double(),
                        torch.ones(4, len(ids))) <= 1e-6


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_writes_each_rows_sink_weight(folder: Path, attention: torch.Tensor, tmp_path: Path,
                                           suffix: str) -> None:
    import numpy as np

    out = tmp_path / f"p{suffix}"
    result = run("attend", tg.GPT_OSS_TEXT, "--model", str(folder), "--save", str(out), "--device", "cpu",
                 "--layer", "1-3", "--head", "1,3")
    assert result.exit_code == 0, result.output
    if suffix == ".npz":
        with np.load(out) as z:
            sinks, att = torch.from_numpy(z["sinks"]), torch.from_numpy(z["attentions"])
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(out))
        sinks, att = tensors["sinks"], tensors["attentions"]
    assert sinks.dtype == torch.float32 and sinks.shape == (3, 2, attention.shape[-1])
    expected = 1 - attention[1:4][:, [1, 3]].double().sum(-1)  # (3, 2, n)
    assert max_diff(sinks, expected) <= ATOL
    assert max_diff(att.double().sum(-1) + sinks.double(), torch.ones_like(expected)) <= 1e-6


def test_save_of_a_model_without_sinks_has_none(build: Any, tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "p.npz"
    result = run("attend", "the cat sat on the mat", "--model", str(build("llama")), "--save", str(out),
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    with np.load(out) as z:
        assert "sinks" not in z.files and "attentions" in z.files


def test_focus_view_shows_the_sink_in_the_specials_column(folder: Path, ids: list[int],
                                                          attention: torch.Tensor) -> None:
    """The tiny tokenizer marks no token special, so the specials column is the sink's
    share alone: 1 − the query's row sum, per head, to the two decimals shown."""
    query = len(ids) - 1
    result = run("attend", tg.GPT_OSS_TEXT, "--model", str(folder), "--layer", "2", "--token", str(query),
                 "--device", "cpu", "--no-color")
    assert result.exit_code == 0, result.output
    assert "specials" in result.stdout and "the sink" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("H")]
    assert len(rows) == 4
    for head, row in enumerate(rows):
        assert row[0] == f"H{head}"
        expected = 1 - float(attention[2, head, query].double().sum())
        assert abs(float(row[-1]) - expected) <= 0.005 + 1e-6, (head, row, expected)


def test_json_focus_carries_the_sink_weight(folder: Path, ids: list[int], attention: torch.Tensor) -> None:
    query = 40
    result = run("attend", tg.GPT_OSS_TEXT, "--model", str(folder), "--layer", "0,3", "--token", str(query),
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    focus = json.loads(result.stdout)["focus"]
    assert focus["layers"] == [0, 3] and focus["heads"] == [0, 1, 2, 3]
    expected = 1 - attention[[0, 3], :, query].double().sum(-1)  # (2, H)
    assert max_diff(torch.tensor(focus["sink"], dtype=torch.float64), expected) <= ATOL


def test_heads_sink_score(ours: Any, ids: list[int], attention: torch.Tensor) -> None:
    """`sink`: the mean over rows of 1 − Σ_j A[i, j], every layer and head; part of the
    default scores of a model with sinks, and undefined under --measure norm."""
    from attnscope import heads as hd

    res = hd.head_scores(ours, tg.GPT_OSS_TEXT)
    assert "sink" in res.scores and list(hd.scores_dict(res)["scores"])[-1] == "sink"
    expected = (1 - attention.double().sum(-1)).mean(-1)  # (L, H)
    assert max_diff(res.scores["sink"], expected) <= ATOL
    assert float(expected.max()) > 0.3  # a visible share
    norm = hd.head_scores(ours, tg.GPT_OSS_TEXT, names=["sink", "self"], measure="norm")
    assert "sink" not in norm.scores and "no value vector" in norm.undefined["sink"]


def test_heads_sink_score_on_a_model_without_sinks(build: Any) -> None:
    """A model without sinks has no `sink` score by default; asked for, it is undefined."""
    from attnscope import heads as hd
    from attnscope.api import load

    m = load(str(build("llama")), device="cpu", dtype="float32")
    assert "sink" not in hd.head_scores(m, names=None).scores
    res = hd.head_scores(m, names=["sink"])
    assert not res.scores and "no sinks" in res.undefined["sink"]


@pytest.mark.parametrize("batch_tokens", [0, 400])
def test_corpus_sink_pools_every_row(ours: Any, ref: Any, folder: Path, batch_tokens: int) -> None:
    """Pooled over three texts (packed into one pass or not): Σ over all rows of the sink
    weight / their number, from transformers' attention on each text."""
    from attnscope import corpus

    texts = tm.SENTENCES[:3]
    res = corpus.corpus_scores(ours, texts, names=["sink", "self"], batch_tokens=batch_tokens)
    assert res is not None
    total, rows = torch.zeros(4, 4, dtype=torch.float64), 0
    tok = tm.plain_tokenizer(folder)
    for text in texts:
        text_ids = tok.encode(text).ids
        with torch.no_grad():
            att = tm.reference_attention(ref, text_ids)
        total += (1 - att.double().sum(-1)).sum(-1)
        rows += len(text_ids)
    assert max_diff(res.scores["sink"], total / rows) <= ATOL


def test_mask_demo_shows_the_sink_column(folder: Path) -> None:
    """No --kind: every layer's and head's last step is transformers' attention, and its
    sink column is 1 − the row sum; the scores' sink column is the head's logit; Σ in the
    terminal view counts the sink (each row 1.00)."""
    model = reference(folder)
    labels_ids = tm.plain_tokenizer(folder).encode(tm.LONG_TEXT).ids
    with torch.no_grad():
        attentions = tm.reference_attention(model, labels_ids)
    for layer in range(4):
        for head in range(4):
            result = run("mask-demo", tm.LONG_TEXT, "--model", str(folder), "--layer", str(layer), "--head", str(head),
                         "--device", "cpu", "--json")
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"layer {layer} head {head}"
            assert doc["own_mask"] is True, where
            last = doc["steps"][-1]
            assert last["name"] == "masked_softmax"
            pattern = torch.tensor(last["matrix"], dtype=torch.float64)
            assert max_diff(pattern, attentions[layer, head]) <= ATOL, where
            sink = torch.tensor(last["sink"], dtype=torch.float64)
            assert max_diff(sink, 1 - attentions[layer, head].double().sum(-1)) <= ATOL, where
            logit = float(model.model.layers[layer].self_attn.sinks[head].detach())
            assert doc["sink"] == pytest.approx(logit) and doc["steps"][0]["sink"] == pytest.approx([logit] * len(sink))
    result = run("mask-demo", tm.LONG_TEXT, "--model", str(folder), "--layer", "1", "--head", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "sink" in result.stdout and "1 − sink" in result.stdout


# -------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name, total, active", [("gpt-oss-20b", 20_914_757_184, 4_187_440_704),
                                                 ("gpt-oss-120b", 116_829_156_672, 5_711_982_912)])
def test_real_config_counts(name: str, total: int, active: int) -> None:
    """Through `params --config FILE`'s path and the CLI; the preset counts the same. Active
    is OpenAI's figure (3.61B, 5.13B) plus the input embedding (201,088 × 2,880)."""
    from attnscope.config import load_config
    from attnscope.params import report

    path = REAL / f"{name}.json"
    assert json.loads(path.read_text())["_num_parameters"] == total
    rep = report(load_config(path))
    assert rep.total_full == total
    assert rep.active_full == active
    assert active - 201_088 * 2_880 == {"gpt-oss-20b": 3_608_307_264, "gpt-oss-120b": 5_132_849_472}[name]
    for source in (str(path), name):
        result = run("params", "--config", source, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["total"] == total and doc["active"] == active


def test_tiny_checkpoint_counts_to_transformers(ours: Any, ref: Any, folder: Path) -> None:
    """The stored tensors of the tiny checkpoint (fused, interleaved, transposed) count to
    transformers' own number, and so does the declared config."""
    from attnscope.params import report

    assert report(ours.config).total_full == ref.num_parameters()
    result = run("params", "--model", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == ref.num_parameters()


# ---------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the safetensors folder, its GGUF with MXFP4 experts, the folder holding the
    values the GGUF's blocks decode to), on llama.cpp's layer pattern."""
    pytest.importorskip("gguf")
    base = tmp_path_factory.mktemp("gpt_oss_gguf")
    folder = tg.gpt_oss(base / "hf", layer_types=tg.GGUF_LAYER_TYPES)
    path, decoded = tg.gpt_oss_gguf(folder, base / "tiny-gpt-oss-MXFP4.gguf", base / "decoded")
    return folder, path, decoded


def test_gguf_with_mxfp4_experts_equals_the_same_weights(gguf_files: tuple[Path, Path, Path]) -> None:
    """llama.cpp's gpt-oss layout: the config (windows, YaRN, experts, SwiGLU limit) and
    every parameter equal the decoded safetensors copy's, so attention, sinks and logits
    are the same numbers; and both equal transformers' on that copy."""
    from attnscope.api import load

    folder, path, decoded = gguf_files
    g, s = load(str(path), device="cpu", dtype="float32"), load(str(decoded), device="cpu", dtype="float32")
    assert [g.config.layer(i) for i in range(4)] == [s.config.layer(i) for i in range(4)]
    assert g.config.layer(0).attn.window == tg.GPT_OSS_WINDOW and g.config.layer(1).attn.window is None
    ours_g, ours_s = g.model.state_dict(), s.model.state_dict()
    assert ours_g.keys() == ours_s.keys()
    for name in ours_g:
        assert torch.equal(ours_g[name], ours_s[name]), name
    original = load(str(folder), device="cpu", dtype="float32").model.state_dict()
    gate = "blocks.0.mlp.experts.gate.weight"
    assert not torch.equal(ours_g[gate], original[gate])  # 4-bit blocks: the values did change
    assert max_diff(ours_g[gate], original[gate]) < 0.25 * float(original[gate].abs().max())
    att_g, att_s = g.attention(tg.GPT_OSS_TEXT), s.attention(tg.GPT_OSS_TEXT)
    assert att_g.tokens is not None and att_s.tokens is not None and att_g.tokens.ids == att_s.tokens.ids
    ids = att_g.tokens.ids
    assert max_diff(att_g.probs, att_s.probs) <= 1e-6
    assert max_diff(g.logits(ids), s.logits(ids)) <= 1e-5 * float(s.logits(ids).abs().max())
    ref = reference(decoded)
    with torch.no_grad():
        expected = tm.reference_attention(ref, ids)
    assert max_diff(att_g.probs, expected) <= ATOL
    expected_logits, _ = reference_run(copy.deepcopy(ref).double().eval(), ids)
    assert_logits_close(g.logits(ids), expected_logits, LOGITS_RTOL, "gpt-oss GGUF")


def test_gguf_mxfp4_blocks_decode_by_the_spec(gguf_files: tuple[Path, Path, Path]) -> None:
    """Each expert matrix as loaded equals the file's MXFP4 blocks decoded here by the OCP
    microscaling spec in llama.cpp's block layout, independently of gguf-py: 17 bytes a
    block of 32, an E8M0 scale byte e, then 16 bytes whose low nibbles are values 0-15 and
    high nibbles values 16-31, each an E2M1 code: ±{0, .5, 1, 1.5, 2, 3, 4, 6} · 2^(e − 127)."""
    import numpy as np

    from attnscope.api import load
    from attnscope.sources.gguf import read_gguf

    _, path, _ = gguf_files
    f = read_gguf(path)
    loaded = load(str(path), device="cpu", dtype="float32").model.state_dict()
    e2m1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
    raw = np.fromfile(path, dtype=np.uint8)
    checked = 0
    for t in f.tensors.values():
        if t.type_name != "MXFP4":
            continue
        blocks = raw[t.start:t.start + t.nbytes].reshape(-1, 17)
        scale = np.ldexp(1.0, blocks[:, 0].astype(np.int64) - 127)  # (n,)
        codes = np.concatenate([blocks[:, 1:] & 0x0F, blocks[:, 1:] >> 4], axis=1)  # (n, 32)
        values = (e2m1[codes] * scale[:, None]).reshape(t.shape)
        layer, part = t.name.split(".")[1], t.name.split(".")[2].split("_")[1]  # blk.N.ffn_gate_exps
        ours = loaded[f"blocks.{layer}.mlp.experts.{part}.weight"].double().numpy()
        assert np.array_equal(ours, values), t.name
        checked += 1
    assert checked == 12  # gate, up and down of 4 layers


def test_gguf_params_count_and_quantization(gguf_files: tuple[Path, Path, Path]) -> None:
    """`params --model FILE.gguf` counts transformers' own number for the same model and
    names MXFP4 as the experts' storage."""
    folder, path, _ = gguf_files
    expected = reference(folder).num_parameters()
    result = run("params", "--model", str(path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == expected
    result = run("params", "--model", str(path))
    assert result.exit_code == 0, result.output
    assert "MXFP4" in result.stdout


def test_gguf_attend_cli(gguf_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The GGUF runs from the CLI, and its --save carries the sinks."""
    import numpy as np

    _, path, decoded = gguf_files
    out = tmp_path / "g.npz"
    result = run("attend", tg.GPT_OSS_TEXT, "--model", str(path), "--save", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    with np.load(out) as z:
        sinks, att = z["sinks"], z["attentions"]
    assert sinks.shape == att.shape[:3] and float(np.abs(att.sum(-1) + sinks - 1).max()) <= 1e-6


# ------------------------------------------------------- MXFP4 safetensors (the Hub's)


@pytest.fixture(scope="module")
def mxfp4_files(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    return tg.mxfp4_checkpoint(folder, base / "mxfp4", base / "decoded")


def test_mxfp4_safetensors_decode_as_transformers_does(mxfp4_files: tuple[Path, Path]) -> None:
    """The published layout (`…_proj_blocks` / `…_proj_scales`, quant_method mxfp4): every
    parameter equals what transformers' own decoder makes of the blocks, so attention and
    logits equal those of the decoded float copy, and transformers' on it."""
    from attnscope.api import load

    packed, decoded = mxfp4_files
    q, d = load(str(packed), device="cpu", dtype="float32"), load(str(decoded), device="cpu", dtype="float32")
    ours_q, ours_d = q.model.state_dict(), d.model.state_dict()
    assert ours_q.keys() == ours_d.keys()
    for name in ours_q:
        assert torch.equal(ours_q[name], ours_d[name]), name
    att = q.attention(tg.GPT_OSS_TEXT)
    assert att.tokens is not None
    ids = att.tokens.ids
    ref = reference(decoded)
    with torch.no_grad():
        assert max_diff(att.probs, tm.reference_attention(ref, ids)) <= ATOL
    expected_logits, _ = reference_run(copy.deepcopy(ref).double().eval(), ids)
    assert_logits_close(q.logits(ids), expected_logits, LOGITS_RTOL, "gpt-oss MXFP4 safetensors")


def test_mxfp4_safetensors_count_what_they_decode_to(mxfp4_files: tuple[Path, Path], ref: Any) -> None:
    """params --model counts the decoded matrices (the blocks hold two values a byte and
    the scales none of the model's parameters): transformers' own count."""
    packed, _ = mxfp4_files
    result = run("params", "--model", str(packed), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == ref.num_parameters()


def test_mxfp4_halves_pair_in_either_order(folder: Path) -> None:
    """Blocks and scales may come in either order (two shards); a half left by a load that
    stopped is dropped when another load starts, never paired with the next one's."""
    from attnscope.architectures import gpt_oss
    from attnscope.config import from_hf_config
    from attnscope.errors import CheckpointError

    cfg, other = (from_hf_config(json.loads((folder / "config.json").read_text())) for _ in range(2))
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (4, 64, 1, 16), dtype=torch.uint8, generator=g)  # 4 experts, 2 x 32 rows, 32 wide
    scales = torch.randint(120, 130, (4, 64, 1), dtype=torch.uint8, generator=g)
    name = "blocks.0.mlp.experts.gate_up.mxfp4_"
    first = gpt_oss.split(name + "blocks", blocks, cfg)
    assert first == {}
    one = gpt_oss.split(name + "scales", scales, cfg)
    assert gpt_oss.split(name + "scales", scales, other) == {}
    two = gpt_oss.split(name + "blocks", blocks, other)
    assert one.keys() == two.keys() == {"blocks.0.mlp.experts.gate.weight", "blocks.0.mlp.experts.up.weight"}
    for key in one:
        assert torch.equal(one[key], two[key]) and one[key].shape == (4, 32, 32)
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    full = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)  # (E, out, in)
    assert torch.equal(one["blocks.0.mlp.experts.gate.weight"], full[:, 0::2])
    stale = gpt_oss.split(name + "blocks", blocks, cfg)  # half a pair, then a new load
    assert stale == {} and gpt_oss.split(name + "scales", scales, other) == {}  # not paired across loads
    gpt_oss._pending.clear()
    with pytest.raises(CheckpointError, match="config.json implies"):  # checked before decoding
        gpt_oss.split(name + "scales", scales[:, :32], cfg)
        gpt_oss.split(name + "blocks", blocks[:, :32], cfg)
    gpt_oss._pending.clear()


def test_mxfp4_blocks_that_do_not_fit_are_one_line(mxfp4_files: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    packed, _ = mxfp4_files
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in packed.iterdir():
        if f.name != "model.safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(packed / "model.safetensors"))
    name = "model.layers.0.mlp.experts.down_proj_scales"
    tensors[name] = tensors[name][:, :, :0].contiguous()  # scales for no block
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    result = run("attend", "hello there", "--model", str(bad), "--device", "cpu")
    assert result.exit_code != 0
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2, result.output


# ------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("change, words", [
    ({"swiglu_limit": -1.0}, "swiglu_limit"),
    ({"swiglu_limit": float("nan")}, "swiglu_limit"),
    ({"num_experts_per_tok": 40}, "experts per token"),
    ({"layer_types": ["sliding_attention"]}, "layer_types"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope scaling"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": -4}}, "original"),
    ({"rope_parameters": [1, 2]}, "rope_parameters"),
    ({"num_local_experts": 10**9}, "experts"),
])
def test_bad_gpt_oss_configs_are_one_config_error(change: dict[str, Any], words: str) -> None:
    from attnscope.config import from_hf_config
    from attnscope.errors import ConfigError

    raw = {**json.loads((REAL / "gpt-oss-20b.json").read_text()), **change}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)
