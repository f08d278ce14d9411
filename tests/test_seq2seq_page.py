"""`attend SOURCE --target TARGET --html/--plot` on an encoder-decoder: the page and the figure
of the part shown (`--part cross|encoder|decoder`).

The page's data is decoded here on its own (base64 of little-endian float32, no package
reader) and checked against transformers' eager cross_attentions / encoder_attentions /
decoder_attentions of the same checkpoints (tiny T5 v1.0 and BART, tests/tiny_models_seq2seq.py:
the encoder 2 layers, the decoder 3; BART's stacks 4 and 2 heads), run on the ids the page
says it read, to 1e-5: the page stores float32 as computed (no rounding), and our float32
patterns match transformers' to under 2e-6 (tests/test_family_t5.py, test_family_bart.py).
It is also bit for bit what --save writes from the same pass. The cross page holds
n_tgt × n_src matrices (rows: the decoder's inputs, its start token then the target;
columns: the source) and both token rows; encoder and decoder pages are square on their
stack's tokens. In headless Chromium (skipped where /usr/bin/chromium is missing) the cross
page renders without a script error, and a click on a target token lists the source
tokens it reads with their stored weights, shades every source token by its weight and
draws a line to each (bertviz's head view).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import cli_runs
import tiny_models_seq2seq as sm
from browser import chromium, element, listed, needs_chromium
from cli_runs import error_line as one_error
from cli_runs import ok

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": "",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ATOL = 1e-5
SOURCE = "The fluffy creature sat on the mat."
TARGET = "Das flauschige Wesen sass auf der Matte."
THEIRS = {"cross": "cross_attentions", "encoder": "encoder_attentions", "decoder": "decoder_attentions"}
SAVED = {"cross": "cross_attentions", "encoder": "encoder_attentions", "decoder": "decoder_attentions"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return sm.builds(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.references(built)


def cli(*args: Any) -> Any:
    return cli_runs.invoke(ENV, *args)


def page_doc(path: Path) -> dict[str, Any]:
    """The page's data element, its arrays decoded here: (L, H, n, n_keys) float32."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="attnscope-data">(.*?)</script>', text, re.S)
    assert m is not None
    doc = json.loads(m.group(1))
    n, width = doc["n"], doc.get("n_keys", doc["n"])

    def decode(rows: list[list[str]], dtype: str, cols: int) -> np.ndarray:
        return np.array([[np.frombuffer(base64.b64decode(s), dtype=dtype).reshape(n, cols) for s in row]
                         for row in rows])

    if "attention" in doc:
        doc["attention"] = decode(doc["attention"], "<f4", width)
    if "topk" in doc:
        doc["topk"] = {"indices": decode(doc["topk"]["indices"], "<i4", doc["k"]),
                       "weights": decode(doc["topk"]["weights"], "<f4", doc["k"])}
    return doc


def transformers_attentions(model: Any, doc: dict[str, Any], part: str) -> np.ndarray:
    """transformers' own patterns of `part` [layers, heads, rows, columns], on the ids the page read."""
    if part == "cross":
        source, decoder = doc["key_token_ids"], doc["token_ids"]
    elif part == "encoder":
        source, decoder = doc["token_ids"], [model.config.decoder_start_token_id]
    else:
        source, decoder = None, doc["token_ids"]
    if source is None:  # the decoder page names the source by its text only: tokenize it as attend does
        from attnscope.api import load

        source = load(doc["_folder"], device="cpu", dtype="float32").tokenize(doc["source_text"]).ids
    with torch.no_grad():
        out = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([decoder]), output_attentions=True)
    return torch.stack([a[0] for a in getattr(out, THEIRS[part])]).float().numpy()


# ----------------------------------------------------------------------------- the data equals transformers'


@pytest.mark.parametrize("name", ["t5", "bart"])
@pytest.mark.parametrize("part", ["cross", "encoder", "decoder"])
def test_page_of_each_part_equals_transformers_and_save(name: str, part: str, built: Callable[[str], Path],
                                                        reference: Callable[[str], Any], tmp_path: Path) -> None:
    folder = built(name)
    page, saved = tmp_path / "p.html", tmp_path / "p.npz"
    result = ok(cli("attend", SOURCE, "--target", TARGET, "--model", folder, "--part", part, "--html", page,
                    "--save", saved, "--json"))
    doc_json = json.loads(result.stdout)
    assert doc_json["saved_html"] == str(page) and doc_json["part"] == part
    doc = page_doc(page)
    doc["_folder"] = str(folder)
    model = reference(name)
    enc_heads, dec_heads = model.config.encoder_attention_heads if name == "bart" else 4, \
        model.config.decoder_attention_heads if name == "bart" else 4
    n_layers, n_heads = (2, enc_heads) if part == "encoder" else (3, dec_heads)
    # the page's default is every layer and head of the part, as --save's
    assert doc["layers"] == list(range(n_layers)) and doc["heads"] == list(range(n_heads))
    assert doc["part"] == part and doc["source_text"] == SOURCE and doc["target_text"] == TARGET
    assert doc["model"] and "/" not in doc["model"]  # a name, not a path
    src_ids, dec_ids = doc_json["source"]["ids"], doc_json["decoder"]["ids"]
    assert dec_ids[0] == model.config.decoder_start_token_id
    if part == "cross":
        assert doc["token_ids"] == dec_ids and doc["key_token_ids"] == src_ids
        assert doc["tokens"] == doc_json["decoder"]["tokens"] and doc["key_tokens"] == doc_json["source"]["tokens"]
        assert doc["n"] == len(dec_ids) and doc["n_keys"] == len(src_ids) and doc["n"] != doc["n_keys"]
    else:
        assert "key_tokens" not in doc and "n_keys" not in doc
        assert doc["token_ids"] == (src_ids if part == "encoder" else dec_ids)
    got = doc["attention"]
    theirs = transformers_attentions(model, doc, part)
    assert got.dtype == np.float32 and got.shape == theirs.shape
    assert float(np.abs(got - theirs).max()) < ATOL
    assert float(np.abs(theirs - theirs.mean(axis=-1, keepdims=True)).max()) > 100 * ATOL  # spread: the check can fail
    with np.load(saved, allow_pickle=False) as d:
        assert np.array_equal(got, d[SAVED[part]])  # the same pass, bit for bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html", "p.npz"]  # no temporary file left


def test_page_selection_and_topk(built: Callable[[str], Path], reference: Callable[[str], Any], tmp_path: Path) -> None:
    """--layer/--head select what the page holds; --html-topk K keeps each target token's
    K strongest source tokens (indices into the source row), as transformers' top-k."""
    folder = built("t5")
    shown = json.loads(ok(cli("attend", SOURCE, "--target", TARGET, "--model", folder, "--layer", "1", "--head", "0,2",
                              "--html", tmp_path / "sel.html", "--json")).stdout)
    doc = page_doc(tmp_path / "sel.html")
    doc["_folder"] = str(folder)
    theirs = transformers_attentions(reference("t5"), doc, "cross")
    assert doc["layers"] == [1] and doc["heads"] == [0, 2]
    assert float(np.abs(doc["attention"] - theirs[[1]][:, [0, 2]]).max()) < ATOL
    # the page opens on the view's focus: the last layer held, its first head, the focus view's target token
    assert doc["initial"] == {"layer": 1, "head": 0, "token": shown["query"]} and shown["query"] > 0

    ok(cli("attend", SOURCE, "--target", TARGET, "--model", folder, "--html", tmp_path / "top.html", "--html-topk", 3))
    top = page_doc(tmp_path / "top.html")
    assert top["k"] == 3 and "attention" not in top
    ref = torch.from_numpy(theirs)
    w, i = torch.from_numpy(top["topk"]["weights"]), torch.from_numpy(top["topk"]["indices"]).long()
    assert w.shape == ref.shape[:3] + (3,)
    assert (w - ref.topk(3, dim=-1).values).abs().max().item() < ATOL
    assert (ref.gather(-1, i) - w).abs().max().item() < ATOL  # each index names its source token's weight
    assert int(i.max()) < top["n_keys"]


def test_decoder_page_topk_keeps_causal_rows(built: Callable[[str], Path], reference: Callable[[str], Any],
                                              tmp_path: Path) -> None:
    """--part decoder --html-topk 4: row i sees i + 1 keys; its top 4 are transformers', the
    keys it cannot see weigh 0 (drawn as nothing), kept row by row as the pass runs."""
    folder = built("bart")
    ok(cli("attend", SOURCE, "--target", TARGET, "--model", folder, "--part", "decoder", "--html", tmp_path / "d.html",
           "--html-topk", 4))
    doc = page_doc(tmp_path / "d.html")
    doc["_folder"] = str(folder)
    ref = torch.from_numpy(transformers_attentions(reference("bart"), doc, "decoder"))
    w, i = torch.from_numpy(doc["topk"]["weights"]), torch.from_numpy(doc["topk"]["indices"]).long()
    assert w.shape == ref.shape[:3] + (4,) and doc["heads"] == [0, 1]
    assert (w - ref.topk(4, dim=-1).values).abs().max().item() < ATOL
    seen = w > 0
    assert (ref.gather(-1, i)[seen] - w[seen]).abs().max().item() < ATOL
    assert seen[:, :, 0].sum(-1).eq(1).all() and seen[:, :, 2].sum(-1).eq(3).all()  # row 0 sees 1 key, row 2 three


@pytest.mark.parametrize("part, measure", [("cross", "norm"), ("decoder", "norm"), ("encoder", "rollout")])
def test_page_under_a_measure_holds_the_views_values(part: str, measure: str, built: Callable[[str], Path],
                                                     tmp_path: Path) -> None:
    """Under --measure the page holds what the view shows, from the same pass: the --json
    heatmap's patterns of the same selection, exactly; a per-layer measure has one matrix a layer."""
    result = ok(cli("attend", SOURCE, "--target", TARGET, "--model", built("t5"), "--part", part, "--measure", measure,
                    "--view", "heatmap", "--layer", "all", "--head", "all", "--html", tmp_path / "m.html", "--json"))
    shown = json.loads(result.stdout)
    doc = page_doc(tmp_path / "m.html")
    assert doc["measure"] == measure and doc["layers"] == shown["layers"] and doc["heads"] == shown["heads"]
    assert doc["heads"] == ([0] if measure == "rollout" else [0, 1, 2, 3])
    assert np.array_equal(doc["attention"], np.asarray(shown["patterns"], dtype=np.float32))
    assert np.allclose(doc["attention"].sum(-1), 1.0, atol=1e-5)  # norm's rows normalised; rollout's rows sum to 1


# ----------------------------------------------------------------------------- offline, atomic, one-line errors


def test_page_is_self_contained_and_names_both_texts(built: Callable[[str], Path], tmp_path: Path) -> None:
    source, target = "see https://a.io/x.js </script><img src=//b.io/p>", "siehe http://c.io & {{CSS}}"
    ok(cli("attend", source, "--target", target, "--model", built("t5"), "--html", tmp_path / "p.html"))
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"url\(|@import|\bfetch\(|XMLHttpRequest|\bimport\(|new Worker|WebSocket|EventSource", page)
    assert "default-src 'none'" in page and "<img" not in page
    assert page.count("</script>") == 2 and page.lower().count("<script") == 2
    doc = page_doc(tmp_path / "p.html")
    assert doc["source_text"] == source and doc["target_text"] == target  # the data holds the texts as they were
    assert 'id="keys"' in page and "cross-attention: rows = target" in page
    assert "<b>source</b>" in page and "<b>target</b>" in page


def test_page_and_figure_files_are_atomic_and_errors_one_line(built: Callable[[str], Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from attnscope.render import page as page_module

    folder = built("t5")
    base = ("attend", SOURCE, "--target", TARGET, "--model", folder)
    for args, needle in [(("--html-topk", "3"), "--html-topk needs --html"),
                         (("--figsize", "5,4"), "--figsize needs --plot"),
                         (("--html", tmp_path / "p.txt"), ".html"),
                         (("--plot", tmp_path / "p.gif"), ".png"),
                         (("--html", tmp_path / "p.html", "--html-topk", "0"), "at least 1"),
                         (("--html", tmp_path / "missing" / "p.html"), "does not exist"),
                         (("--plot", tmp_path / "f.png", "--figsize", "1,1"), "out of range")]:
        assert needle in one_error(cli(*base, *args)), args
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "p.html").write_text("keep me")
    assert "already exists" in one_error(cli(*base, "--html", tmp_path / "p.html"))
    assert (tmp_path / "p.html").read_text() == "keep me"
    ok(cli(*base, "--html", tmp_path / "p.html", "--force"))
    assert page_doc(tmp_path / "p.html")["part"] == "cross"

    # Too big for a browser: refused before the pass (no --save written either), with the way out.
    monkeypatch.setattr(page_module, "MAX_PAGE_BYTES", 20_000)
    line = one_error(cli(*base, "--html", tmp_path / "big.html", "--save", tmp_path / "big.npz"))
    assert "more than a browser can hold" in line and "--layer/--head" in line and "--html-topk" in line
    assert "× " in line  # n_tgt × n_src weights
    monkeypatch.setattr(page_module, "MAX_PAGE_BYTES", 500 * 2**20)

    # A write that fails midway leaves no file and no temporary one.
    real = page_module._write_b64
    calls = []

    def failing(f: Any, values: Any, dtype: str) -> None:
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        real(f, values, dtype)

    monkeypatch.setattr(page_module, "_write_b64", failing)
    result = cli(*base, "--html", tmp_path / "half.html")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html"]


# ----------------------------------------------------------------------------- the figure


def svg_ticks(svg: str, axis: str) -> list[str]:
    """The tick labels of one axis, in order (matplotlib's SVG: <g id="xtick_N"> holding a tick
    mark, then its label's <text>; text kept as text, `svg.fonttype: none`)."""
    return [t.strip() for t in re.findall(rf'<g id="{axis}tick_\d+">.*?<text[^>]*>(.*?)</text>', svg, re.S)]


@pytest.mark.parametrize("part", ["cross", "encoder", "decoder"])
def test_figure_of_each_part(part: str, built: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import html as html_lib

    result = ok(cli("attend", "The cat sat.", "--target", "Die Katze.", "--model", built("t5"), "--part", part,
                    "--plot", tmp_path / "f.svg", "--json"))
    doc = json.loads(result.stdout)
    assert doc["saved_plot"] == str(tmp_path / "f.svg")
    svg = (tmp_path / "f.svg").read_text(encoding="utf-8")
    src, dec = doc["source"]["tokens"], doc["decoder"]["tokens"]
    rows, cols = {"cross": (dec, src), "encoder": (src, src), "decoder": (dec, dec)}[part]
    assert [html_lib.unescape(t) for t in svg_ticks(svg, "x")] == cols
    ys = [html_lib.unescape(t) for t in svg_ticks(svg, "y")]  # the panel's, then the colour bar's numbers
    assert ys[:len(rows)] == rows and all(re.fullmatch(r"[0-9.]+", t) for t in ys[len(rows):])
    words = {"cross": "cross-attention", "encoder": "encoder self-attention", "decoder": "decoder self-attention"}[part]
    assert f"{words} · layer {2 if part != 'encoder' else 1} · head 0" in html_lib.unescape(svg)
    axes = ("target", "source") if part == "cross" else ("query", "key")
    assert f">{axes[0]}<" in svg and f">{axes[1]}<" in svg
    assert len(src) != len(dec)  # a transposed cross figure would fail the tick checks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.svg"]


def test_cross_figure_png_is_not_square(built: Callable[[str], Path], tmp_path: Path) -> None:
    """A 3 × 12 cross-attention: a PNG wider than tall, written atomically (an existing file kept)."""
    pytest.importorskip("matplotlib")
    import struct

    folder = built("t5")
    args = ("attend", "The fluffy blue creature sat on the mat by the door.", "--target", "Ja.", "--model", folder)
    result = ok(cli(*args, "--plot", tmp_path / "f.png", "--json"))
    doc = json.loads(result.stdout)
    n_s, n_t = len(doc["source"]["ids"]), len(doc["decoder"]["ids"])
    assert n_s >= 3 * n_t
    data = (tmp_path / "f.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1.5 * height, (width, height)
    (tmp_path / "f.png").write_bytes(b"keep")
    assert "already exists" in one_error(cli(*args, "--plot", tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


# ----------------------------------------------------------------------------- in a real browser


@needs_chromium
def test_cross_page_renders_and_a_click_on_a_target_token_shows_its_source_weights(
        built: Callable[[str], Path], tmp_path: Path) -> None:
    ok(cli("attend", SOURCE, "--target", TARGET, "--model", built("t5"), "--html", tmp_path / "p.html",
           "--save", tmp_path / "p.npz"))
    doc = page_doc(tmp_path / "p.html")
    cross = np.load(tmp_path / "p.npz")["cross_attentions"]
    layer, head, token = 1, 2, 3  # the page opens elsewhere: layer 2, head 0, the last target token
    # A copy of the page with one more inline script that clicks the target token once the page is up
    # (the page's own CSP allows inline scripts; nothing else is changed).
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    click = ('<script>window.addEventListener("load", function () {'
             f'document.querySelector(\'#tokens .tok[data-i="{token}"]\').click();'
             "});</script>")
    (tmp_path / "clicked.html").write_text(page.replace("</body>", click + "</body>"), encoding="utf-8")
    proc = chromium(tmp_path / "profile", f"{(tmp_path / 'clicked.html').as_uri()}#layer={layer}&head={head}",
                    "--virtual-time-budget=3000", "--dump-dom")
    dom = proc.stdout
    assert element(dom, "attnscope-errors")[1] == "", element(dom, "attnscope-errors")[1]
    assert element(dom, "attnscope-status")[0]["data-state"] == "ready"
    assert "Uncaught" not in proc.stderr and "Refused to" not in proc.stderr, proc.stderr[-2000:]
    # both token rows, in order: the source above (columns), the target (rows)
    rows = re.findall(r'<section id="(keys|tokens)"[^>]*>(.*?)</section>', dom, re.S)
    assert [ident for ident, _inner in rows] == ["keys", "tokens"]
    spans = {ident: re.findall(r'<span class="tok[^"]*" data-i="(\d+)"([^>]*)>', inner) for ident, inner in rows}
    assert len(spans["keys"]) == doc["n_keys"] and len(spans["tokens"]) == doc["n"]
    sel, text = element(dom, "selection")
    assert (sel["data-layer"], sel["data-head"], sel["data-token"], sel["data-pinned"]) == (str(layer), str(head),
                                                                                          str(token), str(token)), sel
    assert f"target token {token}" in text
    row = cross[layer, head, token]  # (n_src,) where the clicked target token looks
    keys = listed(dom, "top-keys")
    assert [k for k, _w in keys] == np.argsort(-row, kind="stable")[:8].tolist()
    for key, weight in keys:  # each listed weight is the stored float32 itself, its label a source token
        assert np.float32(weight) == row[key]
    # every source token carries its weight and is shaded by it; the target row is not (no source token chosen)
    shown = [float(re.search(r'data-weight="([^"]*)"', attrs).group(1)) for _i, attrs in spans["keys"]]
    assert np.array_equal(np.float32(shown), row)
    assert 'data-weight=""' in spans["tokens"][0][1]
    strongest = int(np.argmax(row))
    assert "background-color" in spans["keys"][strongest][1]
    # and a line from the clicked token to each source token it reads with at least 2% of its strongest weight
    assert int(element(dom, "links")[0]["data-lines"]) == int((row >= 0.02 * row.max()).sum()) > 1


# ----------------------------------------------------------------------------- generate --html


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_generate_page_holds_each_steps_cross_attention(name: str, built: Callable[[str], Path],
                                                        reference: Callable[[str], Any], tmp_path: Path) -> None:
    """`generate SOURCE --html`: the source row and the generated row; row i is the step that
    chose generated token i: transformers' cross_attentions on the decoder's inputs (its start
    token, then every generated token but the last), and, averaged over the table's layers
    and heads, the weights the --json steps list (read through the decoder's cache)."""
    folder = built(name)
    result = ok(cli("generate", SOURCE, "--model", folder, "--max-new-tokens", 6, "--ignore-eos", "--layer", "all",
                    "--html", tmp_path / "g.html", "--json"))
    steps = json.loads(result.stdout)
    assert steps["saved_html"] == str(tmp_path / "g.html")
    doc = page_doc(tmp_path / "g.html")
    ids = steps["generated"]["ids"]
    assert len(ids) == 6 and doc["generated"] is True and doc["part"] == "cross"
    assert doc["token_ids"] == ids and doc["tokens"] == steps["generated"]["tokens"]
    assert doc["key_token_ids"] == steps["source"]["ids"] and doc["source_text"] == SOURCE
    assert doc["target_text"] == steps["generated"]["text"]
    model = reference(name)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([doc["key_token_ids"]]),
                    decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id] + ids[:-1]]),
                    output_attentions=True)
    theirs = torch.stack([a[0] for a in out.cross_attentions]).numpy()
    got = doc["attention"]
    assert got.shape == theirs.shape and float(np.abs(got - theirs).max()) < ATOL
    mean = got[steps["layers"]][:, steps["heads"]].mean(axis=(0, 1))  # (steps, source)
    for i, step in enumerate(steps["steps"]):
        for entry in step["source"]:
            assert abs(mean[i, entry["index"]] - entry["weight"]) < ATOL
        assert [e["index"] for e in step["source"]] == np.argsort(-mean[i], kind="stable")[:3].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.html"]
    page = (tmp_path / "g.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<b>generated</b>" in page


def test_generate_page_refusals_are_one_line(built: Callable[[str], Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from attnscope.render import page as page_module

    folder = built("t5")
    assert ".html" in one_error(cli("generate", SOURCE, "--model", folder, "--html", tmp_path / "g.txt"))
    (tmp_path / "g.html").write_text("keep me")
    assert "already exists" in one_error(cli("generate", SOURCE, "--model", folder, "--html", tmp_path / "g.html"))
    assert (tmp_path / "g.html").read_text() == "keep me"
    monkeypatch.setattr(page_module, "MAX_PAGE_BYTES", 2_000)
    result = cli("generate", SOURCE, "--model", folder, "--max-new-tokens", 3, "--html", tmp_path / "big.html")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "more than a browser can hold" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.html"]
