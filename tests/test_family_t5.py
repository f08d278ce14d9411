"""T5 (v1.0, tied head) and T5 v1.1 / FLAN-T5 (gated-gelu, untied head): the encoder-decoder
core (two stacks, cross-attention) against transformers' eager T5ForConditionalGeneration.

The tiny checkpoints of tests/tiny_models_seq2seq.py (2 encoder layers, 3 decoder layers,
relative buckets 16 up to distance 24, bias tables at std 1.5) read SOURCE_TEXT (90+ tokens)
in the encoder and the decoder start token + TARGET_TEXT (60+ tokens) in the decoder
(teacher forcing). Checked here:

1. every layer and head of the encoder's self-attention, the decoder's self-attention and
   the cross-attention equals transformers' (float32) to 1e-5, and the logits to 1e-4
   relative; the patterns are spread (no head one-hot) and each stack's own relative table
   moves them by far more than the tolerance (so the check can fail);
2. in query chunks of any size (the kernel's causal path and the cross path), and decoding
   token by token through the decoder's KV cache, the same patterns and logits;
3. the counts: t5-small's real config (60,506,624, transformers' own), flan-t5-small's
   untied head, the tiny folders as transformers counts them, `params` rows per stack;
4. the API (`Inspector.seq2seq`, `run(..., target=)`), the sites of each part, and bad
   configs as one ConfigError each.
"""

from __future__ import annotations

import json
from dataclasses import replace
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import cli_runs
import tiny_models_seq2seq as sm
from cli_runs import error_line as _one_error
from attnscope import seq2seq
from attnscope.config import from_hf_config, preset
from attnscope.errors import ConfigError, UsageError
from attnscope.hooks import sites
from attnscope.model import KVCache
from attnscope.params import param_shapes

NAMES = ["t5", "t5_v11", "mt5"]
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
# Attention probabilities in float32 against transformers' float32, through at most three
# pre-norm layers and the encoder's final norm (measured: under 2e-6).
ATOL = 1e-5
# Logits relative to their largest magnitude, float32 both sides (measured: under 1e-6).
RTOL = 1e-4
ENC_LAYERS, DEC_LAYERS = 2, 3


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return sm.builds(tmp_path_factory)


@pytest.fixture(scope="module")
def ours(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.loads(built)


@pytest.fixture(scope="module")
def reference(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.teacher_forced(built)


_max_diff = sm.max_diff


@pytest.mark.parametrize("name", NAMES)
def test_three_kinds_of_attention_and_logits_equal_transformers(name: str, ours: Any, reference: Any) -> None:
    model, src, dec, out = reference(name)
    assert len(src) >= 90 and len(dec) >= 61  # past max_distance both ways, in both stacks
    m = ours(name)
    got = m.seq2seq(src, dec[1:])
    assert got.decoder_ids == dec and got.source_ids == src
    assert got.encoder.shape == (ENC_LAYERS, 4, len(src), len(src))
    assert got.decoder.shape == (DEC_LAYERS, 4, len(dec), len(dec))
    assert got.cross.shape == (DEC_LAYERS, 4, len(dec), len(src))
    assert _max_diff(got.encoder, out.encoder_attentions) < ATOL
    assert _max_diff(got.decoder, out.decoder_attentions) < ATOL
    assert _max_diff(got.cross, out.cross_attentions) < ATOL
    ref = out.logits[0]
    assert ((got.logits - ref).abs().max() / ref.abs().max()).item() < RTOL
    # spread patterns: a head's typical row is no one-hot (else any port would agree)
    for part in (got.encoder, got.decoder, got.cross):
        assert part.max(-1).values.mean().item() < 0.9
    # a causal decoder: nothing above the diagonal; every row a distribution
    assert got.decoder.triu(1).abs().max().item() == 0.0
    for part in (got.encoder, got.decoder, got.cross):
        assert torch.allclose(part.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("table", ["relative", "decoder.relative"])
def test_each_stack_reads_its_own_relative_table(table: str, ours: Any, reference: Any) -> None:
    """Swap one stack's table for the other's (same shape): the patterns move by far more than
    the tolerance, so the equality above can fail."""
    _, src, dec, out = reference("t5")
    m = ours("t5")
    own = m.model.get_submodule(table).weight
    other = m.model.get_submodule("decoder.relative" if table == "relative" else "relative").weight
    saved = own.detach().clone()
    try:
        with torch.no_grad():
            own.copy_(other)
        got = m.seq2seq(src, dec[1:])
    finally:
        with torch.no_grad():
            own.copy_(saved)
    moved = got.encoder if table == "relative" else got.decoder
    theirs = out.encoder_attentions if table == "relative" else out.decoder_attentions
    assert _max_diff(moved, theirs) > 100 * ATOL


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_any_query_chunk_gives_the_same_patterns(rows: int, ours: Any, reference: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import attnscope.parts.attention as attention

    _, src, dec, out = reference("t5_v11")
    monkeypatch.setattr(attention, "chunk_rows", lambda heads, keys: rows)
    got = ours("t5_v11").seq2seq(src, dec[1:])
    assert _max_diff(got.encoder, out.encoder_attentions) < ATOL
    assert _max_diff(got.decoder, out.decoder_attentions) < ATOL
    assert _max_diff(got.cross, out.cross_attentions) < ATOL


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_through_the_cache_equals_the_full_pass(name: str, ours: Any, reference: Any) -> None:
    from attnscope.hooks import Capture

    _, src, dec, out = reference(name)
    m = ours(name)
    model = m.model
    full = m.seq2seq(src, dec[1:])
    memory = seq2seq.encode(model, torch.tensor(src))
    cache = KVCache(DEC_LAYERS)
    rows, cross_rows = [], []
    with torch.inference_mode():
        for i, token in enumerate(dec):
            cap = Capture({f"decoder.blocks.{DEC_LAYERS - 1}.attn": ["pattern"],
                           f"decoder.blocks.{DEC_LAYERS - 1}.cross": ["pattern"]})
            x = model.decoder(torch.tensor([token]), model.embed.tok, memory, cap, cache=cache)
            rows.append(model.logits(x)[0])
            pattern = cap.get(f"decoder.blocks.{DEC_LAYERS - 1}.attn", "pattern")[:, 0]  # (H, i + 1)
            assert torch.allclose(pattern, full.decoder[-1, :, i, :i + 1], atol=ATOL)
            cross_rows.append(cap.get(f"decoder.blocks.{DEC_LAYERS - 1}.cross", "pattern")[:, 0])
    assert cache.length == len(dec)
    stepped = torch.stack(rows)
    assert ((stepped - full.logits).abs().max() / full.logits.abs().max()).item() < RTOL
    assert (torch.stack(cross_rows, dim=1) - full.cross[-1]).abs().max().item() < ATOL


def test_t5_small_count_is_transformers_own() -> None:
    raw = json.loads((REAL_CONFIGS / "t5-small.json").read_text())
    expected = raw.pop("_num_parameters")
    assert expected == 60_506_624  # the figure
    cfg = from_hf_config(raw, "t5-small")
    assert sum(prod(s) for s in param_shapes(cfg).values()) == expected
    assert sum(prod(s) for s in param_shapes(preset("t5-small")).values()) == expected


def test_flan_t5_small_counts_its_untied_head() -> None:
    """transformers 5 ties T5's head whatever the config says (and then counts it once); the
    published FLAN-T5 checkpoints store their own lm_head, counted here as transformers 4 did."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = preset("flan-t5-small")
    with torch.device("meta"):
        theirs = T5ForConditionalGeneration(T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                                                     vocab_size=32128, feed_forward_proj="gated-gelu"))
    untied = theirs.num_parameters() + prod(theirs.lm_head.weight.shape)
    assert sum(prod(s) for s in param_shapes(cfg).values()) == untied == 76_961_152


@pytest.mark.parametrize("name", NAMES)
def test_tiny_folder_counts_equal_transformers(name: str, reference: Any) -> None:
    model = reference(name)[0]  # the v1.1 head untied by hand (transformers 5 would tie it)
    cfg = from_hf_config(model.config.to_dict() | {"tie_word_embeddings": name == "t5"}, name)
    theirs = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert sum(prod(s) for s in param_shapes(cfg).values()) == theirs


def test_params_rows_per_stack() -> None:
    from attnscope.params import report

    rep = report(preset("t5-small"))
    labels = [k.label for k in rep.kinds]
    assert labels == ["encoder: bidirectional encoder", "decoder: causal, with cross-attention"]
    enc, dec = rep.kinds
    assert (enc.n_layers, dec.n_layers) == (6, 6)
    assert dec.block["attention"] == 2 * enc.block["attention"]  # self- and cross-attention
    assert rep.rows["positions"] == 2 * 32 * 8  # the two relative tables
    assert rep.total_full == 60_506_624


def test_sites_of_each_part(ours: Any) -> None:
    cfg = ours("t5").config
    assert [s.name for s in sites(cfg)] == ["blocks.0.attn", "blocks.1.attn"]
    assert [s.name for s in sites(cfg, "decoder")] == [f"decoder.blocks.{i}.attn" for i in range(DEC_LAYERS)]
    cross = sites(cfg, "cross")
    assert [s.name for s in cross] == [f"decoder.blocks.{i}.cross" for i in range(DEC_LAYERS)]
    assert all(s.n_heads == 4 and s.stochastic for s in cross)


def test_api_run_with_a_target_and_refusals(ours: Any, reference: Any) -> None:
    _, src, dec, out = reference("t5")
    m = ours("t5")
    x = m.run(src, target=dec)
    assert x.shape == (len(dec), 32)
    got = m.seq2seq(sm.SOURCE_TEXT, sm.TARGET_TEXT, parts=("cross",))
    assert got.encoder is None and got.decoder is None and got.cross.shape[:2] == (DEC_LAYERS, 4)
    assert got.decoder_ids == dec  # the target's own tokens after the start token
    with pytest.raises(UsageError, match="encoder-decoder"):
        m.logits(src)
    with pytest.raises(UsageError, match="unknown part"):
        m.seq2seq(src, dec[1:], parts=("both",))


def test_a_decoder_only_model_has_no_target(tmp_path: Path) -> None:
    import tiny_models as tm
    from attnscope.api import load

    m = load(str(tm.gpt2(tmp_path / "gpt2")), device="cpu", dtype="float32")
    with pytest.raises(UsageError, match="not an encoder-decoder"):
        m.seq2seq([1, 2], [3])


_T5 = {"model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4, "vocab_size": 64}


@pytest.mark.parametrize("bad", [
    {"feed_forward_proj": "gated-foo"}, {"feed_forward_proj": "relu-gated"}, {"feed_forward_proj": 3},
    {"relative_attention_num_buckets": 0}, {"relative_attention_num_buckets": 2},
    {"relative_attention_max_distance": 1}, {"num_heads": "4"}, {"num_decoder_layers": -1},
    {"d_kv": True}, {"decoder_start_token_id": 64}, {"decoder_start_token_id": -1}, {"num_layers": 10 ** 9},
])
def test_bad_t5_configs_are_one_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        from_hf_config({**_T5, **bad}, "bad")


def test_a_decoder_stack_is_checked() -> None:
    cfg = from_hf_config(_T5, "ok")
    spec = cfg.decoder.layer(0)
    for broken in (replace(spec, cross=None), replace(spec, cross=replace(spec.cross, causal=True)),
                   replace(spec, cross=replace(spec.cross, n_heads=0)), replace(spec, attn=replace(spec.attn, causal=False))):
        with pytest.raises(ConfigError):
            replace(cfg, decoder=type(cfg.decoder)(((broken, 2),)))


# ----------------------------------------------------------------------------- the command


ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def _cli(*args: Any) -> Any:
    return cli_runs.invoke(ENV, *args)


@pytest.mark.parametrize("part", ["cross", "encoder", "decoder"])
def test_attend_json_of_each_part_equals_transformers(part: str, built: Callable[[str], Path], reference: Any) -> None:
    """`attend SOURCE --target TARGET --part P --view heatmap --json`: the part's whole pattern
    of every selected layer and head, equal to transformers'."""
    _, src, dec, out = reference("t5")
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--part", part,
                  "--view", "heatmap", "--layer", "all", "--head", "all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["part"] == part and doc["source"]["ids"] == src and doc["decoder"]["ids"] == dec
    theirs = {"cross": out.cross_attentions, "encoder": out.encoder_attentions, "decoder": out.decoder_attentions}[part]
    got = torch.tensor(doc["patterns"])
    assert got.shape[:2] == (len(theirs), 4)
    assert _max_diff(got, theirs) < ATOL


def test_attend_align_view_and_json(built: Callable[[str], Path], reference: Any) -> None:
    _, src, dec, out = reference("t5")
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--view", "align",
                  "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    mean = torch.stack([a[0] for a in out.cross_attentions]).mean(dim=(0, 1))  # every layer and head
    best = mean.max(-1)
    assert [row["best"] for row in doc["alignment"]] == best.indices.tolist()
    assert max(abs(row["weight"] - w) for row, w in zip(doc["alignment"], best.values.tolist())) < ATOL
    text = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--view", "align")
    assert text.exit_code == 0 and "Alignment" in text.stdout and "averaged over layers 0-2" in text.stdout


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_attend_views_of_the_cross_part(view: str, built: Callable[[str], Path]) -> None:
    result = _cli("attend", "The fluffy creature sat on the mat.", "--target", "Every head looks at the mat.",
                  "--model", built("t5"), "--view", view)
    assert result.exit_code == 0, result.output
    assert "cross-attention: rows = target, columns = source" in result.stdout
    if view == "focus":
        assert "What “␣mat” (token 7) attends to · layer 2" in result.stdout  # the last target word, the last layer
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_attend_without_target_shows_the_encoder_and_says_how(built: Callable[[str], Path]) -> None:
    result = _cli("attend", "The fluffy creature sat on the mat.", "--model", built("t5"))
    assert result.exit_code == 0, result.output
    assert "--target" in result.stderr and "attends to" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--part", "cross"], "--part picks"),
    (["--view", "align"], "needs --target"),
    (["--target", "x", "--view", "align", "--part", "encoder"], "alignment table"),
    (["--target", "x", "--measure", "rollout"], "--measure rollout"),
    (["--target", "x", "--view", "experts"], "routes"),
    (["--target", "x", "--top-k", "0"], "--top-k"),
    (["--target", "x", "--layer", "7"], "layer"),
    (["--target", "x", "--token", "zebra"], "no token"),
    (["--target", " "], "--target is empty"),
    (["--target", "word " * 600], "--target: the text is"),
])
def test_attend_pair_refusals_are_one_line(args: list[str], words: str, built: Callable[[str], Path]) -> None:
    assert words in _one_error(_cli("attend", "The cat sat.", "--model", built("t5"), *args))


def test_a_target_on_a_decoder_only_model_is_one_line(tmp_path: Path) -> None:
    import tiny_models as tm

    folder = tm.gpt2(tmp_path / "gpt2")
    assert "not an encoder-decoder" in _one_error(_cli("attend", "The cat.", "--target", "x", "--model", folder))


# ----------------------------------------------------------------------------- any value in any key

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_T5_KEYS = ["d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "vocab_size", "n_positions",
            "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
            "feed_forward_proj", "tie_word_embeddings", "decoder_start_token_id", "pad_token_id", "architectures"]
_BART_KEYS = ["d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
              "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "max_position_embeddings", "activation_function",
              "scale_embedding", "decoder_start_token_id", "architectures", "tie_word_embeddings"]
_BART_RAW = {"model_type": "bart", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 48, "decoder_ffn_dim": 48, "vocab_size": 64,
             "max_position_embeddings": 64}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(_T5_KEYS), _JSON, max_size=3),
       family=st.sampled_from(["t5", "bart", "mbart"]), bart_changes=st.dictionaries(st.sampled_from(_BART_KEYS), _JSON,
                                                                                      max_size=3))
def test_any_value_is_a_config_or_one_config_error(changes: dict[str, Any], family: str,
                                                    bart_changes: dict[str, Any]) -> None:
    """Any JSON value in any key the T5 or BART reader takes: a config whose counts are
    arithmetic, or one ConfigError, never another exception."""
    raw = {**_T5, **changes} if family == "t5" else {**_BART_RAW, "model_type": family, **bart_changes}
    try:
        cfg = from_hf_config(raw, "fuzz")
    except ConfigError:
        return
    assert cfg.decoder is not None and len(cfg.decoder) >= 1
    assert sum(prod(s) for s in param_shapes(cfg).values()) > 0


def test_attend_save_writes_all_three_parts(built: Callable[[str], Path], reference: Any, tmp_path: Path) -> None:
    import numpy as np

    _, src, dec, out = reference("t5")
    path = tmp_path / "pair.npz"
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--save", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["saved"] == str(path)
    with np.load(path, allow_pickle=False) as d:  # no object arrays: loads without pickle
        assert d["source_token_ids"].tolist() == src and d["decoder_token_ids"].tolist() == dec
        assert len(d["source_tokens"]) == len(src) and len(d["decoder_tokens"]) == len(dec)
        for key, theirs in (("encoder_attentions", out.encoder_attentions), ("decoder_attentions", out.decoder_attentions),
                            ("cross_attentions", out.cross_attentions)):
            assert d[key].dtype == np.float32 and _max_diff(torch.from_numpy(d[key]), theirs) < ATOL
    assert [p.name for p in tmp_path.iterdir()] == ["pair.npz"]  # no temporary file left
    again = _one_error(_cli("attend", "x", "--target", "y", "--model", built("t5"), "--save", path))
    assert "already exists" in again
    assert "FILE.npz" in _one_error(_cli("attend", "x", "--target", "y", "--model", built("t5"),
                                         "--save", tmp_path / "p.safetensors"))


def test_diagonal_score_as_defined() -> None:
    """j* = round(i·(n_s−1)/(n_t−1)); the mean over rows of the weight on j*−1 … j*+1."""
    n_t, n_s = 5, 9
    identity_like = torch.zeros(1, 1, n_t, n_s)
    for i in range(n_t):
        identity_like[0, 0, i, round(i * (n_s - 1) / (n_t - 1))] = 1.0  # exact here: i·8/4 = 2i
    assert seq2seq.diagonal_scores(identity_like).item() == 1.0
    reversed_ = identity_like.flip(-2)
    assert seq2seq.diagonal_scores(reversed_).item() == pytest.approx(1 / 5)  # only the middle row is near
    uniform = torch.full((1, 1, n_t, n_s), 1 / n_s)
    # rows 0 and 4 see two neighbours (j* at the ends), rows 1-3 three
    assert seq2seq.diagonal_scores(uniform).item() == pytest.approx((2 + 3 + 3 + 3 + 2) / 5 / n_s)
    one_row = torch.zeros(1, 1, 1, n_s)
    one_row[..., 1] = 0.5
    one_row[..., 2] = 0.5
    assert seq2seq.diagonal_scores(one_row).item() == 0.5  # n_t = 1: j* = 0, keys 0 and 1
    halves = torch.zeros(1, 1, 3, 4)  # j* = round(i·3/2): 0, 2 (1.5 rounds up), 3
    halves[0, 0, 1, 3] = 1.0
    assert seq2seq.diagonal_scores(halves).item() == pytest.approx(1 / 3)


def test_diagonal_scores_of_the_tiny_model(ours: Any, reference: Any) -> None:
    _, src, dec, _ = reference("t5")
    cross = ours("t5").seq2seq(src, dec[1:], parts=("cross",)).cross
    scores = seq2seq.diagonal_scores(cross)
    assert scores.shape == (DEC_LAYERS, 4) and bool(((scores >= 0) & (scores <= 1)).all())


def test_generate_decodes_greedily_as_transformers(built: Callable[[str], Path], reference: Any) -> None:
    """`generate SOURCE` on T5: the same greedy tokens as transformers' generate (its cache
    off: transformers 5 sizes T5's decoder cache by the encoder's depth), each step's
    cross-attention row equal to the teacher-forced pass over the generated tokens."""
    model, src, _, _ = reference("t5")
    with torch.no_grad():
        theirs = model.generate(torch.tensor([src]), max_new_tokens=10, do_sample=False, num_beams=1,
                                use_cache=False)[0].tolist()
    result = _cli("generate", sm.SOURCE_TEXT, "--model", built("t5"), "-n", 10, "--layer", "all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ids = doc["generated"]["ids"]
    assert [doc["decoder_start_token_id"]] + ids == theirs[:len(ids) + 1]
    assert doc["source"]["ids"] == src and len(doc["steps"]) == len(ids)
    from attnscope.api import load

    full = load(str(built("t5")), device="cpu", dtype="float32").seq2seq(src, ids[:-1], parts=("cross",))
    mean = full.cross.mean(dim=(0, 1))  # (T, S): every layer, every head
    for i, step in enumerate(doc["steps"]):
        best = step["source"][0]
        assert best["index"] == int(mean[i].argmax()) and abs(best["weight"] - float(mean[i].max())) < ATOL
    text = _cli("generate", "The cat sat.", "--model", built("t5"), "-n", 3)
    assert text.exit_code == 0 and "Where each new token looked in the source" in text.stdout
    assert "--top-p" in _one_error(_cli("generate", "x", "--model", built("t5"), "--temperature", 0.7, "--top-p", 0))


def test_heads_target_scores_the_cross_attention_diagonal(built: Callable[[str], Path], reference: Any) -> None:
    _, src, dec, out = reference("t5")
    result = _cli("heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    theirs = seq2seq.diagonal_scores(torch.stack([a[0] for a in out.cross_attentions]))
    assert doc["layers"] == list(range(DEC_LAYERS)) and doc["heads"] == [0, 1, 2, 3]
    assert (torch.tensor(doc["scores"]["diagonal"]) - theirs).abs().max().item() < ATOL
    text = _cli("heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--top", 2)
    assert text.exit_code == 0 and "Cross-attention heads  diagonal" in text.stdout
    assert text.stdout.count("reads the source in order") == 2
    assert "give the source" in _one_error(_cli("heads", "--target", "x", "--model", built("t5")))
    assert "diagonal" in _cli("heads", "--help").stdout


def test_mask_demo_shows_the_three_masks(built: Callable[[str], Path]) -> None:
    result = _cli("mask-demo", "The cat sat on the mat.", "--model", built("t5"))
    assert result.exit_code == 0, result.output
    assert "three masks" in result.stdout and "decoder: causal" in result.stdout and "cross: whole source" in result.stdout
    assert "■·········" in result.stdout  # the decoder's first row sees itself only
    doc = json.loads(_cli("mask-demo", "The cat.", "--model", built("t5"), "--json").stdout)
    masks = doc["encoder_decoder_masks"]
    n = len(doc["tokens"]) if "tokens" in doc else len(masks["encoder"])
    assert torch.tensor(masks["encoder"]).all() and torch.tensor(masks["cross"]).all()
    assert torch.equal(torch.tensor(masks["decoder"]), torch.ones(n, n, dtype=torch.bool).tril())


def self_score_definitions(att: torch.Tensor, ids: list[int], causal: bool) -> dict[str, Any]:
    """heads' text scores, written out from their definitions (heads.DEFINITIONS) on a whole
    pattern [L, H, n, n] float64: the reference `heads --target --part encoder|decoder` must equal."""
    att = att.double()
    n = att.shape[-1]
    i = torch.arange(n)
    earlier = [[j for j in range(r) if ids[j] == ids[r]] for r in range(n)]
    rows = [r for r in range(n) if earlier[r]]
    visible = (i + 1) if causal else torch.full((n,), n)
    ent = -(att * att.clamp_min(1e-30).log()).sum(-1)  # [L, H, n]
    out: dict[str, Any] = {
        "previous_token": att[..., i[1:], i[1:] - 1].mean(-1),
        "first_token": att[..., 1:, 0].mean(-1),
        "self": att[..., i, i].mean(-1),
        "next_token": None if causal else att[..., i[:-1], i[:-1] + 1].mean(-1),
        "duplicate_token": torch.stack([att[..., r, earlier[r]].sum(-1) for r in rows], -1).mean(-1) if rows else None,
        "entropy": torch.where(visible > 1, ent / visible.double().log().clamp_min(1e-30), 0.0).clamp(0, 1).mean(-1),
    }
    return out


def check_self_scores(doc: dict[str, Any], att: torch.Tensor, ids: list[int], causal: bool) -> None:
    want = self_score_definitions(att, ids, causal)
    assert doc["layers"] == list(range(att.shape[0])) and doc["heads"] == list(range(att.shape[1]))
    for name, value in want.items():
        if value is None:
            assert doc["scores"][name] is None and name in doc["undefined"], name
        else:
            assert (torch.tensor(doc["scores"][name], dtype=torch.float64) - value).abs().max().item() < ATOL, name


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_heads_target_part_scores_each_stacks_self_attention(part: str, built: Callable[[str], Path],
                                                            reference: Any) -> None:
    """`heads SOURCE --target TARGET --part encoder|decoder --json`: the text scores of that
    stack's self-attention on its own tokens, equal to their definitions on transformers'
    attentions (the decoder causal: next_token null, entropy over the keys each row sees)."""
    _, src, dec, out = reference("t5")
    result = _cli("heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--part", part, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["part"] == part and doc["text"]["ids"] == (src if part == "encoder" else dec)
    theirs = out.encoder_attentions if part == "encoder" else out.decoder_attentions
    check_self_scores(doc, torch.stack([a[0] for a in theirs]), src if part == "encoder" else dec, part == "decoder")
    assert "induction" not in doc["scores"]
    text = _cli("heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--part", part)
    assert text.exit_code == 0 and f"{part} self-attention" in text.stdout and "Previous-token heads" in text.stdout
    one = json.loads(_cli("heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--part", part,
                          "--score", "induction", "--json").stdout)
    assert one["scores"] == {"induction": None} and "without --target" in one["undefined"]["induction"]


def test_heads_part_needs_a_target(built: Callable[[str], Path]) -> None:
    assert "--target" in _one_error(_cli("heads", "x y", "--model", built("t5"), "--part", "decoder"))


def test_attend_save_streams_layer_by_layer_with_np_savez_bytes(built: Callable[[str], Path], ours: Any,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--save of a --target run is streamed: the writer holds at most one site's rows at a
    time and receives each part's layers one at a time, in order, each [heads, rows, columns];
    the display keeps only the shown layers; every entry of the file is byte for byte what
    np.savez of the whole arrays (held in memory, the former save) writes."""
    import zipfile

    import numpy as np

    from attnscope.hooks import Capture

    m = ours("t5")
    cfg = m.config
    calls: list[tuple[str, str, tuple[int, ...]]] = []
    held: list[int] = []
    write, report = seq2seq.PairWriter._write, seq2seq.PairWriter.report
    kept: list[int] = []
    init = Capture.__init__

    def spy_write(self: Any, part: str, site: str, layer: torch.Tensor) -> None:
        calls.append((part, site, tuple(layer.shape)))
        write(self, part, site, layer)

    def spy_report(self: Any, *args: Any) -> None:
        report(self, *args)
        held.append(len(self._rows))

    def spy_init(self: Any, wanted: Any) -> None:
        kept.append(len(wanted))
        init(self, wanted)

    monkeypatch.setattr(seq2seq.PairWriter, "_write", spy_write)
    monkeypatch.setattr(seq2seq.PairWriter, "report", spy_report)
    monkeypatch.setattr(Capture, "__init__", spy_init)
    monkeypatch.setattr("attnscope.parts.attention.chunk_rows", lambda heads, keys: 7)  # several chunks a layer
    path = tmp_path / "pair.npz"
    pv = seq2seq.pair_view(m, sm.SOURCE_TEXT, sm.TARGET_TEXT, "cross", "focus", None, None, 3, None, False, path)
    assert pv.saved == path and kept == [1]  # the shown layer only (focus: the last)
    n_s, n_t = len(pv.source), len(pv.decoder)
    assert max(held) <= 1
    for part in ("encoder", "decoder", "cross"):
        mine = [(site, shape) for p, site, shape in calls if p == part]
        assert [site for site, _ in mine] == seq2seq.part_sites(cfg, part)
        rows = n_s if part == "encoder" else n_t
        assert {shape for _, shape in mine} == {(4, rows, n_s if part != "decoder" else n_t)}
    # the former save's arrays, under the same query chunks (so the same float32 rounding)
    got = seq2seq.patterns(m.model, m._ids(pv.source.ids), m._ids(pv.decoder.ids))
    before = tmp_path / "before.npz"
    np.savez(before, encoder_attentions=got.encoder.numpy(), decoder_attentions=got.decoder.numpy(),
             cross_attentions=got.cross.numpy(), source_token_ids=np.asarray(got.source_ids, dtype=np.int64),
             decoder_token_ids=np.asarray(got.decoder_ids, dtype=np.int64),
             source_tokens=np.asarray(pv.source.labels, dtype=str), decoder_tokens=np.asarray(pv.decoder.labels, dtype=str))
    with zipfile.ZipFile(path) as new, zipfile.ZipFile(before) as old:
        assert new.namelist() == old.namelist()
        for name in old.namelist():
            assert new.read(name) == old.read(name), name


def test_attend_save_that_fails_midway_leaves_nothing(built: Callable[[str], Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that fails after some layers were streamed leaves no file and no temporary one."""
    write = seq2seq.PairWriter._write

    def failing(self: Any, part: str, site: str, layer: torch.Tensor) -> None:
        if part == "cross" and self.written["cross"] == 1:
            raise OSError(28, "No space left on device")
        write(self, part, site, layer)

    monkeypatch.setattr(seq2seq.PairWriter, "_write", failing)
    error = _one_error(_cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"),
                            "--save", tmp_path / "pair.npz"))
    assert "space" in error.lower() or "write" in error.lower(), error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("part", ["cross", "encoder", "decoder"])
def test_attend_save_topk_of_each_part(part: str, built: Callable[[str], Path], reference: Any, tmp_path: Path) -> None:
    """--save-topk with --target: the shown part's top-k of the selected layers and heads,
    equal to the top-k of transformers' attentions; a causal row's unseen keys weigh 0."""
    import numpy as np

    _, src, dec, out = reference("t5")
    path = tmp_path / "top.npz"
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("t5"), "--part", part,
                  "--layer", "all", "--head", "1,3", "--top-k", 4, "--save-topk", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["saved_topk"] == str(path)
    theirs = torch.stack([a[0] for a in {"cross": out.cross_attentions, "encoder": out.encoder_attentions,
                                         "decoder": out.decoder_attentions}[part]])[:, [1, 3]]
    with np.load(path, allow_pickle=False) as d:
        assert str(d["part"]) == part and d["heads"].tolist() == [1, 3] and d["layers"].tolist() == list(range(len(theirs)))
        assert d["source_token_ids"].tolist() == src and d["decoder_token_ids"].tolist() == dec
        w, i = torch.from_numpy(d["weights"]), torch.from_numpy(d["indices"])
        assert w.shape == theirs.shape[:3] + (4,) and i.dtype == torch.int64
        assert (w - theirs.topk(4, dim=-1).values).abs().max().item() < ATOL
        assert (theirs.gather(-1, i) - w).abs().max().item() < ATOL  # each index names its weight
        if part == "decoder":
            assert (w[:, :, 0, 1:] == 0).all()  # row 0 sees one key
    assert [p.name for p in tmp_path.iterdir()] == ["top.npz"]
    assert "FILE.npz" in _one_error(_cli("attend", "x", "--target", "y", "--model", built("t5"),
                                         "--save-topk", tmp_path / "t.safetensors"))
    assert "same file" in _one_error(_cli("attend", "x", "--target", "y", "--model", built("t5"),
                                          "--save", tmp_path / "s.npz", "--save-topk", tmp_path / "s.npz"))
