"""Every output on a layer whose pattern is signed and whose rows do not sum to 1 (a
linear layer's hidden attention M, its site not row-stochastic: `hooks.SiteInfo.stochastic`
False): views, --save, --save-topk, heads, --measure norm and rollout, the page and the figure.

A tiny Llama stands in for a hybrid model: its layer 0 is marked linear (`Inspector.sites`)
and the pattern its site reports is made signed (`SIGN`: keys of odd index × −1.5, even ×
1.5, so rows neither stay non-negative nor sum to 1), through `Inspector.run`, the one door
every pass goes through. What each output must show is computed here from the site's own
report (a `Capture` through the same door), so a test fails on any value, sign or rank
that is not the layer's. The end-to-end tests on the tiny Qwen3.5 run where it is built.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from attnscope import api
from attnscope.hooks import SiteInfo, attn_site

from cli_runs import one_error, run

TEXT = "a fluffy blue creature sat on the mat and the cat sat on the rug"
LINEAR = 0  # the layer made signed
KIND = "linear (gated delta rule)"


def SIGN(value: torch.Tensor, k_start: int) -> torch.Tensor:
    """Odd keys × −1.5, even keys × 1.5: signed rows that do not sum to 1."""
    keys = torch.arange(k_start, k_start + value.shape[-1], device=value.device)
    return value * torch.where(keys % 2 == 1, -1.5, 1.5).to(value.dtype)


class _Signer:
    """Hands the signed pattern on at the linear layer's site, everything else as it is."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def wants(self, site: str, what: str) -> bool:
        return self.inner is not None and self.inner.wants(site, what)

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        if site == attn_site(LINEAR) and what == "pattern":
            value = SIGN(value, k_start)
        self.inner.report(site, what, value, q_start, k_start)


@pytest.fixture()
def signed(monkeypatch: pytest.MonkeyPatch, build: Callable[[str], Path]) -> Path:
    """The tiny Llama's folder, loaded with layer 0 linear and signed (see the module docstring)."""
    real_sites = api.Inspector.sites.fget  # type: ignore[attr-defined]
    real_run = api.Inspector.run

    def sites(self: Any) -> list[SiteInfo]:
        out = list(real_sites(self))
        out[LINEAR] = replace(out[LINEAR], kind=KIND, stochastic=False)
        return out

    monkeypatch.setattr(api.Inspector, "sites", property(sites))
    monkeypatch.setattr(api.Inspector, "run", lambda self, ids, hooks=None, last_layer=None:
                        real_run(self, ids, _Signer(hooks), last_layer))
    return build("llama")


def _patterns(folder: Path, layer: int = LINEAR) -> tuple[torch.Tensor, list[str]]:
    """The layer's pattern (H, n, n) as its site reports it (signed on the linear layer), and the tokens."""
    m = api.load(str(folder), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    cap = m.capture(tokens, {attn_site(layer): ["pattern"]})
    return cap.get(attn_site(layer), "pattern"), list(tokens.labels)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    return result


# ------------------------------------------------------------------ the stand-in itself


def test_the_stand_in_layer_is_signed_and_not_stochastic(signed: Path) -> None:
    p, _ = _patterns(signed)
    assert float(p.min()) < 0 and not torch.allclose(p.sum(-1), torch.ones(p.shape[:2]))
    softmax, _ = _patterns(signed, 1)
    assert float(softmax.min()) >= 0 and torch.allclose(softmax.sum(-1), torch.ones(softmax.shape[:2]), atol=1e-5)


# ------------------------------------------------------------------ top-k: by magnitude, sign kept


def test_topk_ranks_a_signed_layer_by_magnitude_with_its_sign(signed: Path) -> None:
    p, labels = _patterns(signed)
    doc = json.loads(ok(run("attend", TEXT, "-m", signed, "--layer", "0,1", "--head", "all", "--top-k", "4",
                            "--json")).stdout)
    by = {(h["layer"], h["head"]): h["rows"] for h in doc["topk"]}
    n = len(labels)
    for head in range(p.shape[0]):
        for i in range(n):
            row = p[head, i, : i + 1]
            want = torch.argsort(row.abs(), descending=True, stable=True)[:4].tolist()
            got = by[(LINEAR, head)][i]["top"]
            assert [e["key"] for e in got] == want[: len(got)] and len(got) == min(4, i + 1)
            assert [e["weight"] for e in got] == pytest.approx([float(row[j]) for j in want], abs=1e-6)
    assert any(e["weight"] < 0 for rows in by[(LINEAR, 0)] for e in rows["top"])  # the sign is kept
    # the softmax layer is ranked by value as always: every weight above 0
    assert all(e["weight"] > 0 for rows in by[(1, 0)] for e in rows["top"])


def test_save_topk_keeps_signed_weights_ranked_by_magnitude(signed: Path, tmp_path: Path) -> None:
    p, _ = _patterns(signed)
    ok(run("attend", TEXT, "-m", signed, "--save-topk", tmp_path / "t.npz", "--top-k", "3"))
    z = np.load(tmp_path / "t.npz")
    li = list(z["layers"]).index(LINEAR)
    w, idx = z["weights"][li], z["indices"][li]  # (H, n, k)
    assert (w < 0).any()
    assert np.all(np.abs(w[..., :-1]) >= np.abs(w[..., 1:]))  # ranked by |weight|
    got = np.take_along_axis(p.numpy(), idx, axis=-1)
    assert np.allclose(got, w, atol=1e-6)


# ------------------------------------------------------------------ the terminal views


def test_focus_view_shows_the_sign_and_names_the_kind(signed: Path) -> None:
    p, labels = _patterns(signed)
    out = ok(run("attend", TEXT, "-m", signed, "--layer", "0", "--head", "0", "--top-k", "2")).stdout
    flat = " ".join(out.split())  # the terminal wraps long lines
    assert KIND in flat and "signed, rows do not sum to 1" in flat and "signed, by |weight|" in flat
    q = len(labels) - 1
    row = p[0, q]
    top = int(row.abs().argmax())
    assert f"{float(row[top]):+.3f}" in out  # the largest |weight|, with its sign


def test_heatmap_of_a_signed_layer_prints_signed_cells(signed: Path) -> None:
    p, labels = _patterns(signed)
    out = ok(run("attend", "a b c", "-m", signed, "--view", "heatmap", "--layer", "0", "--head", "1")).stdout
    assert "signed weight" in out and KIND in out
    m = api.load(str(signed), device="cpu", dtype="float32")
    small = m.capture(m.tokenize("a b c"), {attn_site(0): ["pattern"]}).get(attn_site(0), "pattern")[1]
    for i in range(small.shape[0]):
        for j in range(i + 1):
            assert f"{float(small[i, j]):6.2f}" in out


def test_overview_leaves_entropy_undefined_on_the_signed_layer(signed: Path) -> None:
    out = ok(run("attend", TEXT, "-m", signed, "--view", "overview")).stdout
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("Entropy per head")):]
    l0 = next(line for line in table if line.strip().startswith("L0 "))
    l1 = next(line for line in table if line.strip().startswith("L1 "))
    assert l0.split()[1:] == ["—"] * 4 and all(0 <= float(x) <= 1 for x in l1.split()[1:])
    assert "not defined" in out
    looks = lines[next(i for i, line in enumerate(lines) if "looks at most" in line):]
    assert next(line for line in looks if line.strip().startswith("L0 ")).split()[1][0] in "+-"  # its sign shown


def test_json_heatmap_holds_the_signed_values(signed: Path) -> None:
    p, _ = _patterns(signed)
    doc = json.loads(ok(run("attend", TEXT, "-m", signed, "--view", "heatmap", "--layer", "0", "--head", "all",
                            "--json")).stdout)
    assert np.allclose(np.asarray(doc["attention"]["probs"])[0], p.numpy(), atol=1e-6)


# ------------------------------------------------------------------ --save: each kind apart


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_keeps_softmax_and_linear_layers_apart(signed: Path, tmp_path: Path, suffix: str) -> None:
    p0, labels = _patterns(signed, 0)
    p1, _ = _patterns(signed, 1)
    path = tmp_path / f"p{suffix}"
    out = ok(run("attend", TEXT, "-m", signed, "--save", path)).stdout
    n = len(labels)
    assert f"saved 1 softmax layer × 4 heads and 1 linear layer × 4 value heads × {n}² to" in out
    if suffix == ".npz":
        z = dict(np.load(path))
        assert str(z.pop("tokens").tolist()) == str(labels)
    else:
        from safetensors.numpy import load_file

        z = load_file(path)
    assert sorted(z) == ["attention_layers", "attentions", "heads", "linear_attentions", "linear_heads",
                         "linear_layers", "token_ids"]
    assert z["attentions"].shape == (1, 4, n, n) and z["linear_attentions"].shape == (1, 4, n, n)
    assert z["attention_layers"].tolist() == [1] and z["linear_layers"].tolist() == [0]
    assert z["heads"].tolist() == [0, 1, 2, 3] and z["linear_heads"].tolist() == [0, 1, 2, 3]
    assert np.array_equal(z["linear_attentions"][0], p0.numpy())  # bit for bit, sign and all
    assert np.array_equal(z["attentions"][0], p1.numpy())
    assert z["attentions"].dtype == np.float32 and z["linear_layers"].dtype == np.int64


def test_save_of_one_kind_has_the_other_empty(signed: Path, tmp_path: Path) -> None:
    ok(run("attend", TEXT, "-m", signed, "--save", tmp_path / "p.npz", "--layer", "0", "--head", "1,3"))
    z = np.load(tmp_path / "p.npz")
    n = len(z["token_ids"])
    assert z["attentions"].shape == (0, 0, n, n) and z["attention_layers"].tolist() == []
    assert z["linear_attentions"].shape == (1, 2, n, n) and z["linear_heads"].tolist() == [1, 3]
    p0, _ = _patterns(signed, 0)
    assert np.array_equal(z["linear_attentions"][0], p0[[1, 3]].numpy())


def test_save_under_norm_is_magnitude_times_value_norm(signed: Path, tmp_path: Path) -> None:
    """norm on the signed layer: |M[t, j]| ‖v_j‖ (raw, in `linear_norms`); the softmax layer as before."""
    m = api.load(str(signed), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    cap = m.capture(tokens, {attn_site(0): ["pattern", "v"], attn_site(1): ["pattern", "fnorm"]})
    v = cap.get(attn_site(0), "v").repeat_interleave(2, dim=0)  # (H, n, d): the key/value head of each head
    want0 = cap.get(attn_site(0), "pattern").abs() * v.norm(dim=-1)[:, None, :]
    want1 = cap.get(attn_site(1), "pattern") * cap.get(attn_site(1), "fnorm")[:, None, :]
    ok(run("attend", TEXT, "-m", signed, "--measure", "norm", "--save", tmp_path / "n.npz"))
    z = np.load(tmp_path / "n.npz")
    assert sorted(z.files) == ["attention_layers", "heads", "linear_heads", "linear_layers", "linear_norms", "norms",
                               "token_ids", "tokens"]
    assert np.allclose(z["linear_norms"][0], want0.numpy(), rtol=1e-6, atol=0)
    assert np.allclose(z["norms"][0], want1.numpy(), rtol=1e-6, atol=0)


def test_a_model_without_linear_layers_keeps_the_one_layout(build: Callable[[str], Path], tmp_path: Path) -> None:
    ok(run("attend", TEXT, "-m", build("llama"), "--save", tmp_path / "p.npz"))
    assert sorted(np.load(tmp_path / "p.npz").files) == ["attentions", "heads", "layers", "token_ids", "tokens"]


# ------------------------------------------------------------------ measures: rollout refused, norm works


def test_rollout_refuses_a_signed_layer_in_one_line(signed: Path) -> None:
    one_error(run("attend", TEXT, "-m", signed, "--measure", "rollout"), 2, "rollout needs row-stochastic layers",
              "layer 0", KIND)


def test_rollout_refuses_before_any_file_is_written(signed: Path, tmp_path: Path) -> None:
    one_error(run("attend", TEXT, "-m", signed, "--measure", "rollout", "--save", tmp_path / "r.npz"), 2,
              "row-stochastic")
    assert list(tmp_path.iterdir()) == []


def test_norm_views_read_magnitudes_on_the_signed_layer(signed: Path) -> None:
    doc = json.loads(ok(run("attend", TEXT, "-m", signed, "--measure", "norm", "--layer", "0", "--json")).stdout)
    weights = [e["weight"] for h in doc["topk"] for r in h["rows"] for e in r["top"]]
    assert weights and min(weights) > 0  # |M|·‖v‖, rows normalised to 1 in the views


# ------------------------------------------------------------------ the page and the figure


def test_page_marks_the_signed_layer_and_holds_its_values(signed: Path, tmp_path: Path) -> None:
    from test_page import page_doc

    p0, _ = _patterns(signed)
    ok(run("attend", TEXT, "-m", signed, "--html", tmp_path / "p.html", "--layer", "0,1"))
    doc = page_doc(tmp_path / "p.html")
    assert doc["signed_layers"] == [0] and doc["layer_kinds"] == {"0": KIND}
    assert np.array_equal(doc["attention"][0], p0.numpy())


def test_page_of_a_model_without_signed_layers_has_no_such_keys(build: Callable[[str], Path], tmp_path: Path) -> None:
    from test_page import page_doc

    ok(run("attend", TEXT, "-m", build("llama"), "--html", tmp_path / "p.html"))
    doc = page_doc(tmp_path / "p.html")
    assert "signed_layers" not in doc and "layer_kinds" not in doc


def test_page_in_a_browser_ranks_a_signed_row_by_magnitude(signed: Path, tmp_path: Path) -> None:
    from browser import CHROMIUM, chromium, element, listed

    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium")
    p0, _ = _patterns(signed)
    ok(run("attend", TEXT, "-m", signed, "--html", tmp_path / "p.html", "--layer", "0"))
    token = p0.shape[1] - 1
    proc = chromium(tmp_path / "profile", f"{(tmp_path / 'p.html').as_uri()}#layer=0&head=1&token={token}",
                    "--virtual-time-budget=3000", "--dump-dom")
    dom = proc.stdout
    assert element(dom, "attnscope-errors")[1] == "", element(dom, "attnscope-errors")[1]
    row = p0[1, token].numpy()
    keys = listed(dom, "top-keys")
    want = np.argsort(-np.abs(row), kind="stable")[:8]
    assert [k for k, _ in keys] == want.tolist()
    assert [np.float32(w) for _, w in keys] == [row[k] for k in want]  # the saved float32, sign and all
    assert any(w < 0 for _, w in keys)
    assert "hidden attention, signed" in element(dom, "heat-title")[1]


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_figure_draws_a_signed_layer_on_a_diverging_scale(signed: Path, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"f{suffix}"
    ok(run("attend", TEXT, "-m", signed, "--plot", path, "--layer", "0", "--head", "0"))
    if suffix == ".svg":
        text = path.read_text()
        assert "hidden attention M (signed, rows not summing to 1)" in text and KIND in text
        return
    import matplotlib.image

    px = matplotlib.image.imread(path)[..., :3]  # (h, w, 3) in [0, 1]
    red = (px[..., 0] > 0.6) & (px[..., 1] < 0.35) & (px[..., 2] < 0.35)
    blue = (px[..., 2] > 0.55) & (px[..., 0] < 0.35)
    assert red.sum() > 50 and blue.sum() > 50  # viridis has neither: both signs drawn


def test_figure_of_a_softmax_layer_keeps_viridis(signed: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ok(run("attend", TEXT, "-m", signed, "--plot", tmp_path / "f.svg", "--layer", "1", "--head", "0"))
    assert "hidden attention" not in (tmp_path / "f.svg").read_text()


# ------------------------------------------------------------------ end to end on the tiny Qwen3.5

QWEN_LINEAR, QWEN_SOFTMAX = [0, 2, 3], [1]  # tests/tiny_models_qwen3_5.py: linear, full, linear, linear


@pytest.fixture()
def qwen(build: Callable[[str], Path]) -> Path:
    return build("qwen3_5")


def _qwen(folder: Path, wanted: list[str], layers: list[int]) -> tuple[Any, Any]:
    m = api.load(str(folder), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    return m.capture(tokens, {attn_site(layer): wanted for layer in layers}), tokens


def test_qwen_save_holds_each_kind_exactly(qwen: Path, tmp_path: Path) -> None:
    cap, tokens = _qwen(qwen, ["pattern"], [0, 1, 2, 3])
    m = api.load(str(qwen), device="cpu", dtype="float32")
    assert [not s.stochastic for s in m.sites] == [True, False, True, True]
    ok(run("attend", TEXT, "-m", qwen, "--save", tmp_path / "p.safetensors"))
    from safetensors.numpy import load_file

    z = load_file(tmp_path / "p.safetensors")
    assert z["attention_layers"].tolist() == QWEN_SOFTMAX and z["linear_layers"].tolist() == QWEN_LINEAR
    n = len(tokens)
    assert z["attentions"].shape == (1, 4, n, n) and z["linear_attentions"].shape == (3, 4, n, n)
    for i, layer in enumerate(QWEN_LINEAR):
        assert np.array_equal(z["linear_attentions"][i], cap.get(attn_site(layer), "pattern").numpy())
    assert np.array_equal(z["attentions"][0], cap.get(attn_site(1), "pattern").numpy())
    assert (z["linear_attentions"] < 0).any()


def test_qwen_hidden_attention_times_values_is_the_kernel_output(qwen: Path, tmp_path: Path) -> None:
    """What --save writes for a linear layer is the M whose rows weigh the layer's values
    into its kernel output z (before the gated norm), to float32 rounding."""
    cap, _ = _qwen(qwen, ["v", "z"], [0])
    ok(run("attend", TEXT, "-m", qwen, "--save", tmp_path / "p.npz", "--layer", "0"))
    M = torch.from_numpy(np.load(tmp_path / "p.npz")["linear_attentions"][0]).double()  # (H, n, n)
    v, z = cap.get(attn_site(0), "v").double(), cap.get(attn_site(0), "z").double()
    got = M @ v  # (H, n, d_v)
    assert torch.allclose(got, z, rtol=1e-4, atol=1e-5 * float(z.abs().max()))


def test_qwen_views_rank_by_magnitude_and_name_the_kind(qwen: Path) -> None:
    cap, tokens = _qwen(qwen, ["pattern"], [0])
    p = cap.get(attn_site(0), "pattern")
    doc = json.loads(ok(run("attend", TEXT, "-m", qwen, "--layer", "0", "--json", "--top-k", "5")).stdout)
    assert doc["signed_layers"] == [0] and doc["layer_kinds"] == {"0": KIND}
    for h in doc["topk"]:
        for r in h["rows"]:
            row = p[h["head"], r["query"], : r["query"] + 1]
            want = torch.argsort(row.abs(), descending=True, stable=True)[:5].tolist()
            assert [e["key"] for e in r["top"]] == want
    for view in ("focus", "topk", "heatmap", "overview"):
        out = ok(run("attend", TEXT, "-m", qwen, "--view", view)).stdout
        if view != "focus":  # focus shows the last layer, the softmax one
            assert KIND in out and "signed" in out


def test_qwen_heads_scores_both_kinds_entropy_only_where_rows_are_distributions(qwen: Path) -> None:
    doc = json.loads(ok(run("heads", "-m", qwen, "--json")).stdout)
    ent = doc["scores"]["entropy"]
    assert [row is not None and all(v is None for v in row) for row in ent] == [True, False, True, True]
    assert all(0 <= v <= 1 for v in ent[1])
    assert "signed" in doc["partly_undefined"]["entropy"] and doc["signed_layers"] == QWEN_LINEAR
    prev = doc["scores"]["previous_token"]  # scored on every layer, linear ones included
    assert all(v is not None for row in prev for v in row)
    only = json.loads(ok(run("heads", "-m", qwen, "--layer", "0", "--json")).stdout)
    assert only["scores"]["entropy"] is None and "signed" in only["undefined"]["entropy"]


def test_qwen_heads_scores_are_the_means_of_the_signed_pattern(qwen: Path) -> None:
    from attnscope.heads import DEFAULT_TEXT

    m = api.load(str(qwen), device="cpu", dtype="float32")
    tokens = m.tokenize(DEFAULT_TEXT)
    p = m.capture(tokens, {attn_site(0): ["pattern"]}).get(attn_site(0), "pattern").double()
    doc = json.loads(ok(run("heads", "-m", qwen, "--layer", "0", "-s", "previous_token", "--json")).stdout)
    n = p.shape[-1]
    want = torch.stack([p[:, i, i - 1] for i in range(1, n)], -1).mean(-1)
    assert doc["scores"]["previous_token"][0] == pytest.approx(want.tolist(), abs=1e-6)


def test_qwen_rollout_is_one_line_and_norm_works(qwen: Path, tmp_path: Path) -> None:
    one_error(run("attend", TEXT, "-m", qwen, "--measure", "rollout"), 2, "row-stochastic", "layer 0")
    cap, _ = _qwen(qwen, ["pattern", "v"], [2])
    # (its gated softmax layer refuses norm: the output gate scales each head by the query's own σ)
    ok(run("attend", TEXT, "-m", qwen, "--measure", "norm", "--save", tmp_path / "n.npz", "--layer", "2,3"))
    z = np.load(tmp_path / "n.npz")
    want = cap.get(attn_site(2), "pattern").abs() * cap.get(attn_site(2), "v").norm(dim=-1)[:, None, :]
    assert z["linear_layers"].tolist() == [2, 3] and z["norms"].shape[0] == 0
    assert np.allclose(z["linear_norms"][0], want.numpy(), rtol=1e-5, atol=0)
    out = ok(run("attend", TEXT, "-m", qwen, "--measure", "norm", "--layer", "2", "--view", "topk")).stdout
    assert "|M[t, j]|·‖v_j‖" in out


def test_qwen_page_and_figure(qwen: Path, tmp_path: Path) -> None:
    from test_page import page_doc

    ok(run("attend", TEXT, "-m", qwen, "--html", tmp_path / "p.html", "--html-topk", "3"))
    doc = page_doc(tmp_path / "p.html")
    assert doc["signed_layers"] == QWEN_LINEAR
    assert (doc["topk"]["weights"][0] < 0).any()
    if pytest.importorskip("matplotlib"):
        ok(run("attend", TEXT, "-m", qwen, "--plot", tmp_path / "f.svg", "--layer", "0-1", "--head", "0"))
        assert "hidden attention M" in (tmp_path / "f.svg").read_text()


# ------------------------------------------------------------------ explore


def test_explore_ranks_and_shades_a_signed_row_by_magnitude() -> None:
    from attnscope.explore import views
    from attnscope.explore.session import ranked

    row = torch.tensor([0.1, -0.5, 0.0, 0.3, -0.05])
    assert ranked(row, 4) == [(1, pytest.approx(-0.5)), (3, pytest.approx(0.3)), (0, pytest.approx(0.1)),
                              (4, pytest.approx(-0.05))]
    assert ranked(torch.tensor([0.2, 0.0, 0.8]), 3) == [(2, pytest.approx(0.8)), (0, pytest.approx(0.2))]  # as ever
    assert views.relative(row.tolist()) == pytest.approx([0.2, 1.0, 0.0, 0.6, 0.1])
    keys = views.top_keys_text(ranked(row, 3), ["a", "b", "c", "d", "e"], 4, "weight", 40, views.Palette(color=False))
    assert "-0.500" in keys.plain and "0.300" in keys.plain
    heat = views.heatmap_text([row.tolist()], ["a", "b", "c", "d", "e"], 0, 5, 60, 10, views.Palette(color=False),
                              "L0H0", 0, 0)
    assert "- below 0" in heat.plain
    over = views.overview_text([[float("nan"), float("nan")], [0.5, 0.25]], (1, 0), (1, 0), 40,
                               views.Palette(color=False))
    assert over.plain.splitlines()[0].split()[1:] == ["—", "—"] and "0.50" in over.plain


# ------------------------------------------------------------------ heads: layers of different head counts


def test_heads_by_default_scores_every_head_where_layers_differ_in_head_count(
        signed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen3.5's linear layers have more (value) heads than its softmax ones: `heads`
    scores every head of every layer in one grid, NaN (null) where a layer has no such head."""
    signed_sites = api.Inspector.sites.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(api.Inspector, "sites", property(
        lambda self: [replace(s, n_heads=2) if s.layer == LINEAR else s for s in signed_sites(self)]))
    from attnscope.heads import DEFAULT_TEXT

    m = api.load(str(signed), device="cpu", dtype="float32")
    tokens = m.tokenize(DEFAULT_TEXT)
    cap = m.capture(tokens, {attn_site(0): ["pattern"], attn_site(1): ["pattern"]})
    doc = json.loads(ok(run("heads", "-m", signed, "--json")).stdout)
    assert doc["heads"] == [0, 1, 2, 3]
    got = doc["scores"]["self"]
    for layer, heads in ((0, 2), (1, 4)):
        p = cap.get(attn_site(layer), "pattern").double()
        want = torch.diagonal(p, dim1=-2, dim2=-1).mean(-1)[:heads].tolist()
        assert got[layer][:heads] == pytest.approx(want, abs=1e-6)
        assert got[layer][heads:] == [None] * (4 - heads)
    assert "layer 0 has 2 heads" in doc["partly_undefined"]["self"]
    assert doc["scores"]["entropy"][0] == [None] * 4 and None not in doc["scores"]["entropy"][1]
    out = ok(run("heads", "-m", signed, "-s", "self")).stdout
    assert "layer 0 has 2 heads" in out
    # a --head selection still means the same heads in every layer
    one_error(run("heads", "-m", signed, "--head", "all"), 2, "means different heads")


def test_explore_on_the_tiny_qwen_shows_the_linear_layer_signed(qwen: Path) -> None:
    """The app opened on a linear layer lists the keys `attend --json` lists, by |weight|
    with their signs, and its heatmap names the layer's kind."""
    import asyncio
    import re

    from test_explore import make_app, pane, settle

    m = api.load(str(qwen), device="cpu", dtype="float32")
    app = make_app(m, TEXT, layer=0, head=1)
    doc = json.loads(ok(run("attend", TEXT, "-m", qwen, "--layer", "0", "--head", "1", "--top-k", "5",
                            "--json")).stdout)

    async def go() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(app, pilot)
            want = [(e["key"], e["weight"]) for e in doc["topk"][0]["rows"][app.query]["top"]]
            rows = [re.match(r"^\s*(\d+)\s+.*?\s+(\d+)\s+(-?\d\.\d{3})\s*$", line) for line in pane(app, "#keys")[2:]]
            got = [(int(r.group(2)), float(r.group(3))) for r in rows if r][: len(want)]
            assert [k for k, _ in got] == [k for k, _ in want]
            assert all(abs(g - w) <= 0.0005 + 1e-9 for (_, g), (_, w) in zip(got, want))
            await pilot.press("h")  # the heatmap
            await settle(app, pilot)
            assert any("signed" in line for line in pane(app, "#heatmap"))
            await pilot.press("q")

    asyncio.run(go())
