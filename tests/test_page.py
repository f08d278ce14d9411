"""`attend --html`: the self-contained page, its data, and the page in a real browser.

The page's numbers are checked against `--save`'s arrays from the same run, bit for bit
(the page encodes float32 as base64; this file decodes it on its own, not with the
package's reader). Browser tests run headless Chromium on the written file, with no
network: the page reports any script error into #attnscope-errors, honours
`#layer=…&head=…&token=…` on load, and lists the selected token's top keys, which must
be the saved pattern's largest weights. They skip where /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from browser import chromium, element, listed, needs_chromium
from cli_runs import clean_failure as error_line
from cli_runs import ok, run

TEXT = "a fluffy blue creature sat on the mat"


def page_doc(path: Path) -> dict[str, Any]:
    """The page's data element, its arrays decoded here (base64, little-endian)."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="attnscope-data">(.*?)</script>', text, re.S)
    assert m is not None
    doc = json.loads(m.group(1))
    n = doc["n"]

    def decode(rows: list[list[str]], dtype: str, width: int) -> np.ndarray:
        return np.array([[np.frombuffer(base64.b64decode(s), dtype=dtype).reshape(n, width) for s in row] for row in rows])

    if "attention" in doc:
        doc["attention"] = decode(doc["attention"], "<f4", n)
    if "topk" in doc:
        doc["topk"] = {"indices": decode(doc["topk"]["indices"], "<i4", doc["k"]),
                       "weights": decode(doc["topk"]["weights"], "<f4", doc["k"])}
    return doc


@pytest.fixture()
def gpt2(build: Callable[[str], Path]) -> Path:
    """The tiny causal GPT-2 (2 layers, 4 heads)."""
    return build("gpt2")


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ the data equals --save


@pytest.mark.parametrize("selection", [(), ("--layer", "1", "--head", "0,2")])
def test_page_holds_the_saved_patterns_exactly(gpt2: Path, out: Path, selection: tuple[str, ...]) -> None:
    result = ok(run("attend", TEXT, "-m", gpt2, *selection, "--html", out / "p.html", "--save", out / "p.npz"))
    assert "wrote a" in result.stdout and "p.html" in result.stdout
    doc, saved = page_doc(out / "p.html"), np.load(out / "p.npz")
    assert doc["attention"].dtype == np.float32 and saved["attentions"].dtype == np.float32
    assert np.array_equal(doc["attention"], saved["attentions"])  # bit for bit, not to a tolerance
    assert doc["layers"] == saved["layers"].tolist() and doc["heads"] == saved["heads"].tolist()
    assert doc["tokens"] == saved["tokens"].tolist() and doc["token_ids"] == saved["token_ids"].tolist()
    assert doc["measure"] == "weight" and doc["model"] in ("gpt2", gpt2.name) and doc["text"] == TEXT  # a name, not a path
    if not selection:  # the default is every layer and head, as --save's
        assert doc["layers"] == [0, 1] and doc["heads"] == [0, 1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == ["p.html", "p.npz"]  # no temporary file left


def test_page_on_an_encoder_with_the_json_view(build: Callable[[str], Path], out: Path) -> None:
    """BERT (bidirectional, with [CLS]/[SEP]); --json stays one document and names the page."""
    result = ok(run("attend", "a blue cat", "-m", build("bert_bare"), "--json", "--html", out / "p.html",
                    "--save", out / "p.npz"))
    assert json.loads(result.stdout)["saved_html"] == str(out / "p.html")
    doc, saved = page_doc(out / "p.html"), np.load(out / "p.npz")
    assert np.array_equal(doc["attention"], saved["attentions"])
    assert doc["special"][0] and doc["special"][-1]


def test_page_under_each_measure(gpt2: Path, out: Path) -> None:
    """rollout: the saved matrices themselves (one per layer, a single "head"); norm: the
    rows the views show, i.e. the saved raw ‖α f(x)‖ rows normalised to sum 1."""
    ok(run("attend", TEXT, "-m", gpt2, "--measure", "rollout", "--html", out / "r.html", "--save", out / "r.npz"))
    doc, saved = page_doc(out / "r.html"), np.load(out / "r.npz")
    assert doc["measure"] == "rollout" and doc["heads"] == [0]
    assert np.array_equal(doc["attention"][:, 0], saved["rollout"])

    ok(run("attend", TEXT, "-m", gpt2, "--measure", "norm", "--html", out / "n.html", "--save", out / "n.npz"))
    doc, raw = page_doc(out / "n.html"), np.load(out / "n.npz")["norms"].astype(np.float64)
    expected = raw / raw.sum(-1, keepdims=True)
    # float32 normalisation of n positive terms: a relative error of at most ~n ulp per entry
    bound = (len(doc["tokens"]) + 2) * np.finfo(np.float32).eps * expected
    assert np.all(np.abs(doc["attention"].astype(np.float64) - expected) <= bound)
    assert "normalised" in doc["measure_description"]


def test_page_topk_mode_equals_save_topk(gpt2: Path, out: Path) -> None:
    ok(run("attend", TEXT, "-m", gpt2, "--top-k", "3", "--html", out / "p.html", "--html-topk", "3",
           "--save-topk", out / "k.npz"))
    doc, saved = page_doc(out / "p.html"), np.load(out / "k.npz")
    assert "attention" not in doc and doc["k"] == 3
    assert np.array_equal(doc["topk"]["weights"], saved["weights"])
    assert np.array_equal(doc["topk"]["indices"].astype(np.int64), saved["indices"])
    assert "top-3 only" in (out / "p.html").read_text(encoding="utf-8")  # the page says what it holds

    # a smaller K than the view's --top-k is the first K of the same sorted keys
    ok(run("attend", TEXT, "-m", gpt2, "--view", "topk", "--top-k", "4", "--html", out / "q.html", "--html-topk", "2"))
    assert np.array_equal(page_doc(out / "q.html")["topk"]["weights"], saved["weights"][..., :2])


def test_page_size_is_planned_exactly(gpt2: Path, out: Path) -> None:
    """`Page.size()`, used before the run to refuse or announce a page, is the file's size."""
    from attnscope.api import load
    from attnscope.render.page import Page

    m = load(str(gpt2), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    n = len(tokens)
    att = np.random.default_rng(0).random((2, 3, n, n), dtype=np.float32)
    page = Page("gpt2", tokens, [0, 1], [0, 1, 3], initial=(1, 0, 2))
    assert page.write(out / "a.html", attention=att) == page.size() == (out / "a.html").stat().st_size
    assert np.array_equal(page_doc(out / "a.html")["attention"], att)
    sparse = Page("gpt2", tokens, [1], [2], k=2)
    idx = np.tile(np.arange(2), (1, 1, n, 1))
    assert sparse.write(out / "b.html", topk=(idx, att[:1, :1, :, :2])) == sparse.size()


# ------------------------------------------------------------------ offline and inert

LOADERS = {"img", "link", "iframe", "frame", "object", "embed", "audio", "video", "source", "track", "base", "image", "use"}
RESOURCE_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "xlink:href",
                       "manifest", "ping"}


class StartTags(HTMLParser):
    """Every start tag and its attribute names, as a browser's tokenizer sees them
    (script and style content is raw text, not parsed for tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, [name for name, _value in attrs]))


def test_page_fetches_nothing_and_escapes_the_text(gpt2: Path, out: Path) -> None:
    text = 'https://a.io/x.js </script><img src=//b.io/p> & {{CSS}}'
    ok(run("attend", text, "-m", gpt2, "--html", out / "p.html"))
    page = (out / "p.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    tags = StartTags()
    tags.feed(page)
    assert not [t for t in tags.seen if t[0] in LOADERS], "an element that loads something"
    assert not [(t, a) for t, attrs in tags.seen for a in attrs if a in RESOURCE_ATTRIBUTES], "a resource attribute"
    assert not re.search(r"url\(|@import|\bfetch\(|XMLHttpRequest|\bimport\(|new Worker|WebSocket|EventSource", page)
    assert "default-src 'none'" in page  # and the browser would refuse anything anyway
    assert page.count("</script>") == 2 and page.lower().count("<script") == 2
    assert "<img" not in page
    assert page_doc(out / "p.html")["text"] == text  # the data still holds the text as it was


def test_page_errors_are_one_line(gpt2: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnscope.render import page

    cases = [
        (("--html-topk", "3"), 2, "--html-topk needs --html"),
        (("--html", out / "p.html", "--html-topk", "0"), 2, "at least 1"),
        (("--html", out / "p.txt"), 2, ".html"),  # a name whose format cannot be told: usage
        (("--html", out / "p.html", "--html-topk", "5", "--save-topk", out / "k.npz"), 2, "--top-k 5"),
        (("--html", out / "missing" / "p.html"), 1, "does not exist"),
    ]
    for args, code, needle in cases:
        line = error_line(run("attend", TEXT, "-m", gpt2, *args), code)
        assert needle in line, line
    assert list(out.iterdir()) == []

    (out / "p.html").write_text("keep me")
    assert "already exists" in error_line(run("attend", TEXT, "-m", gpt2, "--html", out / "p.html"), 1)
    assert (out / "p.html").read_text() == "keep me"
    ok(run("attend", TEXT, "-m", gpt2, "--html", out / "p.html", "--force"))
    assert page_doc(out / "p.html")["n"] > 0

    # Too big for a browser: refused before the run with the way out; nothing written.
    monkeypatch.setattr(page, "MAX_PAGE_BYTES", 20_000)
    line = error_line(run("attend", TEXT, "-m", gpt2, "--html", out / "big.html", "--save", out / "big.npz"), 1)
    assert "more than a browser can hold" in line and "--layer/--head" in line and "--html-topk" in line
    assert sorted(p.name for p in out.iterdir()) == ["p.html"]
    # A large page is announced on stderr before it is written.
    monkeypatch.setattr(page, "MAX_PAGE_BYTES", 2**30)
    monkeypatch.setattr(page, "NOTE_PAGE_BYTES", 1)
    result = ok(run("attend", TEXT, "-m", gpt2, "--html", out / "big.html"))
    assert "will write a" in result.stderr and "big.html" in result.stderr


# ------------------------------------------------------------------ in a real browser


@needs_chromium
def test_page_renders_and_honours_the_hash(gpt2: Path, out: Path, tmp_path: Path) -> None:
    ok(run("attend", TEXT, "-m", gpt2, "--html", out / "p.html", "--save", out / "p.npz"))
    saved = np.load(out / "p.npz")["attentions"]
    labels = page_doc(out / "p.html")["tokens"]
    layer, head, token = 1, 2, 5
    proc = chromium(tmp_path / "profile", f"{(out / 'p.html').as_uri()}#layer={layer}&head={head}&token={token}",
                    "--virtual-time-budget=3000", "--dump-dom")
    dom = proc.stdout
    assert element(dom, "attnscope-errors")[1] == "", element(dom, "attnscope-errors")[1]
    assert element(dom, "attnscope-status")[0]["data-state"] == "ready"
    assert "Uncaught" not in proc.stderr and "Refused to" not in proc.stderr, proc.stderr[-2000:]
    shown = [html.unescape(t) for t in re.findall(r'<span class="tok[^"]*" data-i="\d+"[^>]*>([^<]*)</span>', dom)]
    assert shown == labels  # every token, in order
    sel, text = element(dom, "selection")
    assert (sel["data-layer"], sel["data-head"], sel["data-token"]) == (str(layer), str(head), str(token))
    assert f"token {token}" in text
    row, col = saved[layer, head, token], saved[layer, head, :, token]
    keys = listed(dom, "top-keys")
    assert keys[0][0] == int(np.argmax(row))  # where the token looks most
    for key, weight in keys:  # each listed weight is the saved float32 itself
        assert np.float32(weight) == row[key]
    assert [w for _k, w in keys] == sorted((w for _k, w in keys), reverse=True)
    assert len(keys) == min(8, int((row > 0).sum()))
    queries = listed(dom, "top-queries")
    assert queries[0][0] == int(np.argmax(col)) and np.float32(queries[0][1]) == col.max()


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (all five row filters), with zlib and numpy only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, {}, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat += body
        chunks.setdefault(kind, body)
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int64)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) % 256
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        else:
            cur = np.zeros_like(line)
            for x in range(len(line)):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if kind == 3:
                    cur[x] = (line[x] + (a + b) // 2) % 256
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[..., :3]


@needs_chromium
def test_page_screenshot_is_not_blank(gpt2: Path, out: Path, tmp_path: Path) -> None:
    ok(run("attend", TEXT, "-m", gpt2, "--html", out / "p.html", "--layer", "1"))
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", (out / "p.html").as_uri() + "#token=3", "--virtual-time-budget=3000",
             "--window-size=800,500", f"--screenshot={shot}")
    pixels = png_pixels(shot)
    assert pixels.shape == (500, 800, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, len(colours)  # text, tokens, a heatmap: far from one colour
    viridis_dark = np.array([0x44, 0x01, 0x54])  # the heatmap's zero weight (masked cells)
    assert (np.abs(pixels.astype(int) - viridis_dark).sum(-1) <= 6).sum() > 1000


@needs_chromium
def test_long_page_in_top_k_mode_renders(gpt2: Path, out: Path, tmp_path: Path) -> None:
    """A page with more tokens than heatmap pixels, top-k only: it pools, says so, and the
    top keys still come from the stored top-k."""
    from attnscope.render.page import Page
    from attnscope.tokenize import Tokens

    n, k = 3000, 4
    labels = [f"␣w{i}" for i in range(n)]
    tokens = Tokens(" ".join(labels), list(range(n)), labels, [(0, 0)] * n, [False] * n)
    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(max(i + 1, k), size=k, replace=False) for i in range(n)])[None, None]
    w = np.sort(rng.random((1, 1, n, k), dtype=np.float32), axis=-1)[..., ::-1].copy()
    Page("synthetic", tokens, [3], [1], k=k, initial=(3, 1, 2500)).write(out / "long.html", topk=(idx, w))
    dom = chromium(tmp_path / "profile", (out / "long.html").as_uri(), "--virtual-time-budget=3000", "--dump-dom").stdout
    assert element(dom, "attnscope-errors")[1] == ""
    assert "tokens per pixel" in element(dom, "heat-range")[1]
    assert "top-4 only" in element(dom, "heat-title")[1]
    keys = listed(dom, "top-keys")
    assert [key for key, _w in keys] == idx[0, 0, 2500].tolist()
    assert [np.float32(x) for _k, x in keys] == w[0, 0, 2500].tolist()


def test_heads_page_holds_the_scores_and_the_patterns(gpt2: Path, out: Path) -> None:
    page = out / "heads.html"
    ok(run("heads", TEXT, "-m", gpt2, "--layer", "1", "--html", page))
    scores = json.loads(ok(run("heads", TEXT, "-m", gpt2, "--layer", "1", "--json")).stdout)["scores"]
    ok(run("attend", TEXT, "-m", gpt2, "--layer", "1", "--save", out / "p.npz"))
    doc, saved = page_doc(page), np.load(out / "p.npz")
    assert np.array_equal(doc["attention"], saved["attentions"])
    assert doc["layers"] == [1] and doc["heads"] == [0, 1, 2, 3]
    for name, grid in scores.items():
        if grid is None or name not in doc["scores"]:
            continue
        np.testing.assert_allclose(np.array(doc["scores"][name], dtype=float), np.array(grid, dtype=float), rtol=0,
                                   atol=1e-12)
    text = page.read_text()
    assert "Head scores" in text and "previous_token" in text
