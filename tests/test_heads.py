"""Tests for `attnscope heads`: head scores on hand-built models whose heads provably do
one thing, parity with scores computed from transformers' attention, and the command.

Hand-built models: a causal GPT-2-style model whose residual stream has one-hot
positions (dims 0-15), tokens (16-31) and a "previous token" slot (32-47), and whose
query/key weights make each head's scores 4² x |x|² (about 100 after scaling) larger on
exactly one kind of key, so softmax puts all but e^-100 of each row there:

  layer 0  H0 previous token (its value/output copy the previous token into dims 32-47)
           H1 first token (a query bias meets a key on position 0)
           H2 duplicate token (same token id, minus the same position)
           H3 self (same position)
  layer 1  H0 induction (current token meets a key's previous-token slot)
           H1-H3 uniform (zero queries): entropy exactly (n-1)/n under the causal mask

and a bidirectional twin with a next-token and a previous-token head, whose scores are 1
only if the rows without a next (or previous) token are left out as defined.

Parity: on every tiny random checkpoint the scores equal the same definitions applied,
densely and without our code, to transformers' attention probabilities.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from typer.testing import CliRunner

import tiny_models as tm
from attnscope import heads as hd
from attnscope import parts as model_mod
from attnscope.api import Inspector
from attnscope.architectures._common import layer_kind
from attnscope.config import ModelConfig
from attnscope.errors import InputError, UsageError
from attnscope.model import build
from attnscope.params import param_shapes

ATOL = 1e-5
BETA = 4.0  # query/key gain: score gaps of about BETA² * |LN(x)|² / sqrt(d_head) ≈ 100
N_POS, D_MODEL, N_HEADS, D_HEAD = 16, 128, 4, 32
POS, TOK, PREV = 0, 16, 32  # where positions, tokens and the previous token live in the stream
WORDS = [f"w{i}" for i in range(2, N_POS)]  # ids 2..15; 0 = <s>, 1 = <unk>


# ----------------------------------------------------------- hand-built models


def word_tokenizer() -> Tokenizer:
    """Whitespace words w2..w15 with a <s> prefix, as a Llama-style BOS template."""
    vocab = {"<s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def blank(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every parameter zero, every norm the identity: a model that does nothing yet."""
    tensors = {name: torch.zeros(shape) for name, shape in param_shapes(cfg).items()}
    for name, t in tensors.items():
        if "norm" in name and name.endswith("weight"):
            t.fill_(1.0)
    return tensors


def one_hot_embeddings(t: dict[str, torch.Tensor]) -> None:
    for p in range(N_POS):
        t["embed.pos.weight"][p, POS + p] = 1.0
        t["embed.tok.weight"][p, TOK + p] = 1.0


def hand_config(causal: bool, n_layers: int) -> ModelConfig:
    return ModelConfig(family="gpt2", d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS, d_mlp=4,
                       vocab_size=N_POS, n_ctx=N_POS, causal=causal, layer_template=layer_kind(qkv_bias=True), name="hand-built")


def inspector_for(cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Inspector:
    net = build(cfg, tensors.items(), dtype=dtype)
    return Inspector(cfg, net, word_tokenizer(), "hand-built", torch.device("cpu"), dtype)


def _qk(t: dict[str, torch.Tensor], layer: int, head: int, q: list[tuple[int, int]], k: list[tuple[int, int]],
        q_gain: float = BETA, k_gain: float = BETA) -> None:
    """Head `head` of `layer` reads stream dim `src` into its own dim `dst`: (dst, src) pairs."""
    for dst, src in q:
        t[f"blocks.{layer}.attn.q.weight"][head * D_HEAD + dst, src] = q_gain
    for dst, src in k:
        t[f"blocks.{layer}.attn.k.weight"][head * D_HEAD + dst, src] = k_gain


@pytest.fixture(scope="module")
def causal_model() -> Inspector:
    cfg = hand_config(causal=True, n_layers=2)
    t = blank(cfg)
    one_hot_embeddings(t)
    r = range(N_POS)
    # L0H0 previous token: query i meets key j where j + 1 = i ...
    _qk(t, 0, 0, q=[(p, POS + p) for p in r], k=[(p + 1, POS + p) for p in range(N_POS - 1)])
    # ... and copies that key's token into the previous-token slot (scaled back to about 1).
    for tok in r:
        t["blocks.0.attn.v.weight"][0 * D_HEAD + tok, TOK + tok] = 1.0
        t["blocks.0.attn.o.weight"][PREV + tok, 0 * D_HEAD + tok] = 1.0 / math.sqrt(D_MODEL / 2)
    # L0H1 first token: a constant query meets the key of position 0.
    t["blocks.0.attn.q.bias"][1 * D_HEAD] = 6.0
    _qk(t, 0, 1, q=[], k=[(0, POS)], k_gain=6.0)
    # L0H2 duplicate token: same token (dims 0-15), minus same position (dims 16-31).
    _qk(t, 0, 2, q=[(v, TOK + v) for v in r], k=[(v, TOK + v) for v in r])
    _qk(t, 0, 2, q=[(16 + p, POS + p) for p in r], k=[(16 + p, POS + p) for p in r], q_gain=-BETA)
    # L0H3 self: same position.
    _qk(t, 0, 3, q=[(p, POS + p) for p in r], k=[(p, POS + p) for p in r])
    # L1H0 induction: the current token meets a key whose previous token it is.
    _qk(t, 1, 0, q=[(v, TOK + v) for v in r], k=[(v, PREV + v) for v in r])
    return inspector_for(cfg, t)


@pytest.fixture(scope="module")
def bidirectional_model() -> Inspector:
    cfg = hand_config(causal=False, n_layers=1)
    t = blank(cfg)
    one_hot_embeddings(t)
    # H0 next token: query i meets key j where j = i + 1; H1 previous token: j + 1 = i.
    _qk(t, 0, 0, q=[(p + 1, POS + p) for p in range(N_POS - 1)], k=[(p, POS + p) for p in range(N_POS)])
    _qk(t, 0, 1, q=[(p, POS + p) for p in range(N_POS)], k=[(p + 1, POS + p) for p in range(N_POS - 1)])
    return inspector_for(cfg, t)


TEXT = "w2 w3 w4 w2 w3 w5 w2 w6"  # <s> + 8 words; w2 and w3 repeat


def others(values: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    mask = torch.ones_like(values, dtype=torch.bool)
    mask[layer, head] = False
    return values[mask]


@pytest.mark.parametrize("name, layer, head", [
    ("previous_token", 0, 0), ("first_token", 0, 1), ("duplicate_token", 0, 2), ("self", 0, 3), ("induction", 1, 0),
])
def test_hand_built_head_scores_one_where_it_provably_attends(causal_model: Inspector, name: str, layer: int, head: int) -> None:
    res = hd.head_scores(causal_model, TEXT, seed=3)
    values = res.scores[name]
    assert values.shape == (2, N_HEADS)
    assert float(values[layer, head]) > 0.999, f"{name}: L{layer}H{head} = {float(values[layer, head]):.4f}"
    assert float(others(values, layer, head).max()) < 0.5, f"{name}: another head scores high: {values}"


def test_hand_built_entropy(causal_model: Inspector) -> None:
    res = hd.head_scores(causal_model, TEXT, names=["entropy"])
    n = res.n_tokens
    ent = res.scores["entropy"]
    # Uniform heads: every row but the first (one visible key, entropy 0 by definition) is 1.
    assert torch.allclose(ent[1, 1:], torch.full((3,), (n - 1) / n), atol=1e-5)
    # One-key heads: previous token and self.
    assert float(ent[0, 0]) < 0.01 and float(ent[0, 3]) < 0.01


def test_next_token_is_undefined_on_a_causal_model(causal_model: Inspector) -> None:
    res = hd.head_scores(causal_model, TEXT)
    assert "next_token" not in res.scores and "causal" in res.undefined["next_token"]
    doc = hd.scores_dict(res)
    assert doc["scores"]["next_token"] is None
    assert list(doc["scores"]) == list(hd.SCORES)


def test_duplicate_token_is_undefined_without_repeats(causal_model: Inspector) -> None:
    res = hd.head_scores(causal_model, "w2 w3 w4 w5", names=["duplicate_token", "self"])
    assert "duplicate_token" in res.undefined and list(res.scores) == ["self"]


def test_hand_built_bidirectional(bidirectional_model: Inspector) -> None:
    res = hd.head_scores(bidirectional_model, TEXT, names=["next_token", "previous_token", "entropy"])
    assert not res.undefined
    nxt, prev = res.scores["next_token"], res.scores["previous_token"]
    assert float(nxt[0, 0]) > 0.999 and float(prev[0, 1]) > 0.999
    assert float(nxt[0, 1]) < 0.05 and float(prev[0, 0]) < 0.05  # only the rows without a target, spread evenly
    # Zero queries, no mask: every row uniform over all n keys, entropy exactly 1.
    assert torch.allclose(res.scores["entropy"][0, 2:], torch.ones(2), atol=1e-5)


def test_induction_input_layout(causal_model: Inspector) -> None:
    res = hd.head_scores(causal_model, TEXT, names=["induction"], seed=7, repeat=5)
    ids, T = res.induction_ids, res.repeat
    assert res.prefix == [0] and res.suffix == [] and T == 5
    run = ids[1 : 1 + T]
    assert ids == [0] + run + run
    assert len(set(run)) == T and not set(run) & {0, 1}  # distinct, no special tokens
    assert ids == hd.head_scores(causal_model, TEXT, names=["induction"], seed=7, repeat=5).induction_ids
    assert ids != hd.head_scores(causal_model, TEXT, names=["induction"], seed=8, repeat=5).induction_ids
    # Too long for 16 positions: clamped to (16 - 1) // 2.
    assert hd.head_scores(causal_model, TEXT, names=["induction"], repeat=50).repeat == 7


def test_chunking_does_not_change_scores(causal_model: Inspector, monkeypatch: pytest.MonkeyPatch) -> None:
    # In float64, so that only the chunking is compared, not float32 rounding: a chunk's
    # matmuls sum the same terms in another order, which in float32 moves these scores
    # by up to ~6e-6 on some machines (AMD EPYC). In float64 two orders of summing at
    # most 2 * D_MODEL terms of size <= BETA² differ by < 2 * 64 * 2^-53 * BETA² per
    # score, and every later quantity here is a mean of softmax weights: 1e-9 bounds
    # that with room to spare, while a chunking bug (a missing row or key) moves a
    # score by 1e-3 or more.
    net = causal_model.model
    tensors = {name: p.detach().double() for name, p in net.named_parameters()}
    m64 = inspector_for(causal_model.config, tensors, torch.float64)
    whole = hd.head_scores(m64, TEXT)
    monkeypatch.setattr(model_mod, "CHUNK_BYTES", 4 * N_HEADS * 9 * 2)  # 2 query rows per chunk
    monkeypatch.setattr(model_mod, "MIN_CHUNK_ROWS", 1)
    chunked = hd.head_scores(m64, TEXT)
    for name in whole.scores:
        assert torch.allclose(whole.scores[name], chunked.scores[name], atol=1e-9), name


def test_selection_and_errors(causal_model: Inspector) -> None:
    res = hd.head_scores(causal_model, TEXT, names=["self"], layers="0", heads="1,3")
    assert res.layers == [0] and res.heads == [1, 3] and res.scores["self"].shape == (1, 2)
    assert float(res.scores["self"][0, 1]) > 0.999
    assert res.ranked("self", 1) == [(0, 3, pytest.approx(float(res.scores["self"][0, 1])))]
    with pytest.raises(UsageError):
        hd.head_scores(causal_model, TEXT, names=["nope"])
    with pytest.raises(InputError):
        hd.head_scores(causal_model, "", names=["self"])
    with pytest.raises(UsageError):
        hd.head_scores(causal_model, TEXT, names=["induction"], repeat=1)


# ---------------------------------------------------- parity with transformers


def reference_scores(A: torch.Tensor, ids: list[int], causal: bool, window: int | None) -> dict[str, torch.Tensor]:
    """The definitions, applied row by row to full (L, H, n, n) probabilities."""
    A = A.double()
    n = A.shape[-1]

    def mean(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(rows, -1).mean(-1)  # (L, H, rows) -> (L, H)

    out = {
        "previous_token": mean([A[..., i, i - 1] for i in range(1, n)]),
        "first_token": mean([A[..., i, 0] for i in range(1, n)]),
        "self": mean([A[..., i, i] for i in range(n)]),
    }
    if not causal:
        out["next_token"] = mean([A[..., i, i + 1] for i in range(n - 1)])
    dup = [A[..., i, [j for j in range(i) if ids[j] == ids[i]]].sum(-1) for i in range(n) if ids[i] in ids[:i]]
    out["duplicate_token"] = mean(dup)
    rows = []
    for i in range(n):
        keys = [j for j in range(n) if (not causal or j <= i) and (window is None or abs(i - j) < window)]
        p = A[..., i, :]
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        rows.append(h / math.log(len(keys)) if len(keys) > 1 else torch.zeros_like(h))
    out["entropy"] = mean(rows)
    return out


PARITY = ["gpt2", "bert", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("name", PARITY)
def test_scores_match_transformers(name: str, inspector: Callable, reference: Callable) -> None:
    ours = hd.head_scores(inspector(name), hd.DEFAULT_TEXT, seed=1)
    ref_model = reference(name)
    cfg = ref_model.config
    causal = cfg.model_type != "bert"
    window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
    assert ours.tokens is not None
    ids = ours.tokens.ids
    expect = reference_scores(tm.reference_attention(ref_model, ids), ids, causal, window)
    T, p = ours.repeat, len(ours.prefix)
    A = tm.reference_attention(ref_model, ours.induction_ids).double()
    expect["induction"] = torch.stack([A[..., i, i - T + 1] for i in range(p + T + 1, p + 2 * T)], -1).mean(-1)
    assert set(ours.scores) == set(expect)
    for score, value in expect.items():
        got = ours.scores[score]
        assert got.shape == value.shape == (cfg.num_hidden_layers, cfg.num_attention_heads)
        assert torch.allclose(got.double(), value, atol=ATOL), f"{name} {score}: max diff {float((got.double() - value).abs().max()):.3g}"


@pytest.mark.parametrize("name, prefix, suffix", [("bert", ["[CLS]"], ["[SEP]"]), ("llama", ["<|begin_of_text|>"], []),
                                                  ("gpt2", [], []), ("qwen2", [], [])])
def test_induction_affixes_are_the_post_processors(name: str, raw_tokenizer: Callable, prefix: list[str], suffix: list[str]) -> None:
    tok = raw_tokenizer(name)
    before, after = hd.special_affixes(tok)
    assert [tok.id_to_token(i) for i in before] == prefix and [tok.id_to_token(i) for i in after] == suffix


# ------------------------------------------------------------------- the command


def run_cli(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, ["heads", *args])


def test_cli_json(build: Callable) -> None:
    result = run_cli("--model", str(build("bert")), "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layers"] == [0, 1] and doc["heads"] == [0, 1, 2, 3]
    assert list(doc["scores"]) == list(hd.SCORES)
    for name, grid in doc["scores"].items():
        assert len(grid) == 2 and all(len(row) == 4 for row in grid), name
        assert all(0.0 <= v <= 1.0 + 1e-6 for row in grid for v in row), name


def test_cli_json_one_score_on_a_causal_model(build: Callable) -> None:
    result = run_cli("the fluffy creature", "--model", str(build("gpt2")), "--json", "--score", "next_token")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["scores"] == {"next_token": None} and "causal" in doc["undefined"]["next_token"]


def test_cli_terminal_view_fits_80_columns(build: Callable) -> None:
    result = run_cli("--model", str(build("llama")), "--top", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for title in ("Previous-token heads", "Induction heads", "Entropy"):
        assert title in out
    assert "attends to the previous token" in out and "not defined here" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_cli_help_defines_every_score() -> None:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["heads", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in hd.SCORES:
        assert name in result.stdout


def test_cli_usage_errors(build: Callable) -> None:
    result = run_cli("--model", str(build("gpt2")), "--score", "bogus")
    assert result.exit_code == 2
    result = run_cli("--model", str(build("gpt2")), "--layer", "9")
    assert result.exit_code == 2 and "out of range" in result.output


def test_grid_for_many_heads_stays_within_80_columns() -> None:
    from rich.console import Console

    from attnscope.render.heads import head_scores as render_heads

    values = torch.linspace(0, 1, 4 * 32).reshape(4, 32)  # (L, H)
    res = hd.HeadScores(list(range(4)), list(range(32)), {"self": values, "entropy": values}, 0)
    console = Console(width=80, record=True, color_system=None)
    render_heads(console, res, "wide", 4, 32, top=2, color=False)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "H0" in text and "H31" in text and "100" in text  # every head, hundredths
    assert "L3H31" in text  # the ranking names the strongest
