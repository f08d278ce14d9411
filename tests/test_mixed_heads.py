"""Layers of different head counts in every output whose default is every head of every
layer (Qwen3.5's real sizes: 16 value heads in its linear layers, 8 query heads in its
softmax ones). On a tiny Qwen3.5 with 4 value heads and 2 query heads
(`tiny_models_qwen3_5.qwen3_5_mixed`): the overview, the page (--html, --html-topk),
--save-topk and --dry-run hold the grid as wide as the most heads, each layer's own
heads equal to `Inspector`'s own patterns of that layer, and a head the layer lacks
filled in as documented (NaN; index -1); a model of one head count writes what it did."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from attnscope import api
from attnscope.analysis import normalised_entropy, visible_counts
from attnscope.hooks import attn_site
from attnscope.render.page import read_page_data

from cli_runs import one_error, run

TEXT = "a fluffy blue creature sat on the mat and the cat sat on the rug"
COUNTS = [4, 2, 4, 4]  # linear (4 value heads), full (2 query heads), linear, linear
K = 3


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def mixed(build: Callable[[str], Path]) -> Path:
    return build("qwen3_5_mixed")


@pytest.fixture(scope="module")
def patterns(mixed: Path) -> tuple[list[torch.Tensor], Any]:
    """Each layer's own pattern (its own heads, n, n), as `Inspector` captures it."""
    m = api.load(str(mixed), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    assert [s.n_heads for s in m.sites] == COUNTS  # the checkpoint is what the test is about
    cap = m.capture(tokens, {attn_site(layer): ["pattern"] for layer in range(4)})
    return [cap.get(attn_site(layer), "pattern").float() for layer in range(4)], m


def test_save_topk_is_the_grid_of_the_most_heads_with_each_layer_its_own(mixed: Path, tmp_path: Path,
                                                                        patterns: Any) -> None:
    pats, m = patterns
    out = tmp_path / "k.npz"
    ok(run("attend", TEXT, "-m", mixed, "--save-topk", out, "--top-k", K))
    d = np.load(out)
    n = pats[0].shape[-1]
    assert d["indices"].shape == d["weights"].shape == (4, 4, n, K)
    assert d["heads"].tolist() == [0, 1, 2, 3] and d["layers"].tolist() == [0, 1, 2, 3]
    assert d["layer_heads"].tolist() == COUNTS
    for layer, count in enumerate(COUNTS):
        p = pats[layer]
        assert p.shape[0] == count
        signed = not m.sites[layer].stochastic
        order = p.abs() if signed else p
        want_i = torch.topk(order, K, dim=-1).indices
        want_w = p.gather(-1, want_i)
        np.testing.assert_allclose(d["weights"][layer, :count], want_w.numpy(), atol=1e-6)
        # ties aside, the same keys: the weight at each saved index is the saved weight
        got = p.gather(-1, torch.from_numpy(d["indices"][layer, :count]))
        np.testing.assert_allclose(got.numpy(), d["weights"][layer, :count], atol=1e-6)
        assert (d["indices"][layer, count:] == -1).all() and np.isnan(d["weights"][layer, count:]).all()
    assert not np.isnan(d["weights"][[0, 2, 3]]).any()


def test_page_holds_each_layer_its_own_heads(mixed: Path, tmp_path: Path, patterns: Any) -> None:
    pats, _ = patterns
    page = tmp_path / "p.html"
    ok(run("attend", TEXT, "-m", mixed, "--html", page))
    doc = read_page_data(page)
    assert doc["heads"] == [0, 1, 2, 3] and doc["layer_heads"] == COUNTS
    att = doc["attention"]
    for layer, count in enumerate(COUNTS):
        np.testing.assert_array_equal(att[layer, :count], pats[layer].numpy())  # bit for bit, as --save
        assert np.isnan(att[layer, count:]).all()
    top = tmp_path / "t.html"
    ok(run("attend", TEXT, "-m", mixed, "--html", top, "--html-topk", K))
    doc = read_page_data(top)
    assert doc["layer_heads"] == COUNTS
    assert (doc["topk"]["indices"][1, 2:] == -1).all() and np.isnan(doc["topk"]["weights"][1, 2:]).all()
    assert (doc["topk"]["indices"][[0, 2, 3]] >= 0).all()


def test_overview_shows_every_head_and_marks_the_missing_ones(mixed: Path, patterns: Any) -> None:
    pats, m = patterns
    out = ok(run("attend", TEXT, "-m", mixed, "--view", "overview", "--no-color")).stdout
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["H0"])
    assert header.split() == ["H0", "H1", "H2", "H3"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip().startswith("L")}
    # entropy table first: L1 (softmax, 2 heads) its own entropies, then two missing heads
    ent_l1 = next(line.split()[1:] for line in lines if line.split()[:1] == ["L1"])
    p = pats[1].double()
    n = p.shape[-1]
    want = normalised_entropy(p, visible_counts(m.config, n, 1)).mean(-1)
    assert [float(x) for x in ent_l1[:2]] == pytest.approx(want.tolist(), abs=0.006)
    assert ent_l1[2:] == ["·", "·"]
    assert "no such head" in out
    # the focus table: every linear layer has a word in all 4 heads, L1 two words, two marks
    assert rows["L1"][2:] == ["·", "·"] and "·" not in rows["L1"][:2]
    for layer in (0, 2, 3):
        assert len(rows[f"L{layer}"]) == 4 and "·" not in rows[f"L{layer}"]


def test_dry_run_plans_the_grid_a_run_writes(mixed: Path, build: Callable[[str], Path]) -> None:
    """The mixed model's plan is that of the same grid on the equal-count Qwen3.5 (4 × 4
    heads, one tokenizer): the dry run counts the padded heads the files hold."""
    docs = [json.loads(ok(run("attend", TEXT, "-m", folder, "--dry-run", "--json", "--save-topk", "x.npz",
                              "--top-k", K)).stdout) for folder in (mixed, build("qwen3_5"))]
    for key in ("tokens", "kept_results_bytes", "output_file_bytes"):
        assert docs[0][key] == docs[1][key], key
    assert docs[0]["output_file_bytes"] >= 4 * 4 * docs[0]["tokens"] * K * 12
    # --save writes each kind apart (its own heads): 1 softmax layer × 2 heads, 3 linear × 4
    save = json.loads(ok(run("attend", TEXT, "-m", mixed, "--dry-run", "--json", "--save", "x.npz")).stdout)
    n = save["tokens"]
    assert save["output_file_bytes"] == (1 * 2 + 3 * 4) * n * n * 4 + 8 * (4 + 4 + n)
    assert save["kept_results_bytes"] == 4 * n * n * 4  # one layer streamed: the widest


def test_a_head_selection_still_means_the_same_heads_in_every_layer(mixed: Path, tmp_path: Path) -> None:
    one_error(run("attend", TEXT, "-m", mixed, "--view", "overview", "--head", "all"), 2, "means different heads")
    out = tmp_path / "k.npz"
    ok(run("attend", TEXT, "-m", mixed, "--save-topk", out, "--head", "0-1"))
    d = np.load(out)
    assert d["heads"].tolist() == [0, 1] and "layer_heads" not in d.files
    assert not np.isnan(d["weights"]).any()


@pytest.mark.parametrize("name", ["qwen3_5", "gpt2"])
def test_one_head_count_writes_what_it_wrote(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    folder = build(name)
    out, page = tmp_path / "k.npz", tmp_path / "p.html"
    ok(run("attend", TEXT, "-m", folder, "--save-topk", out, "--html", page))
    assert sorted(np.load(out).files) == ["heads", "indices", "layers", "token_ids", "weights"]
    doc = read_page_data(page)
    assert "layer_heads" not in doc and not np.isnan(doc["attention"]).any()
    assert not math.isnan(float(np.load(out)["weights"].sum()))


def test_focus_over_layers_of_different_head_counts_lists_each_layers_own_heads(mixed: Path) -> None:
    out = ok(run("attend", TEXT, "-m", mixed, "--layer", "0-1", "--no-color")).stdout
    assert "nan" not in out
    layer1 = out[out.index("· layer 1"):]
    heads = [line.split()[0] for line in layer1.splitlines()[1:] if line.strip().startswith("H")]
    assert heads == ["H0", "H1"]
    layer0 = out[out.index("· layer 0"):out.index("· layer 1")]
    assert [line.split()[0] for line in layer0.splitlines() if line.strip().startswith("H")][-4:] == \
        ["H0", "H1", "H2", "H3"]
