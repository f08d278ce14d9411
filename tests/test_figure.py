"""`attend --plot`: figures for a paper, through the CLI on the tiny GPT-2.

PNGs are read back for their size (IHDR), SVGs for their text: token labels, the title
and the colour bar's label are text elements (`svg.fonttype: none`), and small figures
draw cells as vector paths, not an embedded image. Everything needing matplotlib skips
without it; the one-line message for a missing matplotlib is tested by hiding it.
"""

from __future__ import annotations

import builtins
import html
import re
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from cli_runs import clean_failure as error_line
from cli_runs import ok, run

TEXT = "a fluffy blue creature sat on the mat"


@pytest.fixture()
def gpt2(build: Callable[[str], Path]) -> Path:
    return build("gpt2")


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture()
def mpl() -> None:
    pytest.importorskip("matplotlib", reason="needs matplotlib (pip install 'attnscope[plot]')")


def labels_of(gpt2: Path) -> list[str]:
    from attnscope.api import load

    return load(str(gpt2), device="cpu", dtype="float32").tokenize(TEXT).labels


def svg_text(path: Path) -> str:
    """Every text element's content, unescaped, one per line."""
    svg = path.read_text(encoding="utf-8")
    return "\n".join(html.unescape(t) for t in re.findall(r"<text\b[^>]*>(.*?)</text>", svg, re.S))


def test_png_has_the_asked_size(gpt2: Path, out: Path, mpl: None) -> None:
    result = ok(run("attend", TEXT, "-m", gpt2, "--plot", out / "f.png", "--figsize", "4,3"))
    assert "f.png" in result.stdout
    data = (out / "f.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (800, 600)  # 4 × 3 inches at 200 dpi
    assert sorted(p.name for p in out.iterdir()) == ["f.png"]  # no temporary file left


def test_svg_single_head_has_labels_title_and_vector_cells(gpt2: Path, out: Path, mpl: None) -> None:
    ok(run("attend", TEXT, "-m", gpt2, "--plot", out / "f.svg"))
    text, svg = svg_text(out / "f.svg"), (out / "f.svg").read_text(encoding="utf-8")
    for label in labels_of(gpt2):
        assert label in text, label
    assert re.search(r"· layer 1 · head 0\b", text)  # the view's default: last layer, head 0
    assert "attention weight" in text  # the colour bar
    mesh = re.search(r'<g id="QuadMesh_1">(.*?)</g>', svg, re.S)
    assert mesh is not None and mesh.group(1).count("<path") == len(labels_of(gpt2)) ** 2  # cells as vector paths
    assert svg.count("<image") == 1  # only the colour bar's gradient, which matplotlib always rasterizes


def test_grid_of_selected_heads_and_measure(gpt2: Path, out: Path, mpl: None) -> None:
    ok(run("attend", TEXT, "-m", gpt2, "--layer", "all", "--head", "1,3", "--measure", "norm", "--plot", out / "g.svg"))
    text = svg_text(out / "g.svg")
    for panel in ("L0 H1", "L0 H3", "L1 H1", "L1 H3"):
        assert panel in text
    assert "layers 0, 1, heads 1, 3 · norm" in text and "row-normalised" in text
    ok(run("attend", TEXT, "-m", gpt2, "--measure", "rollout", "--layer", "0", "--plot", out / "r.pdf"))
    assert (out / "r.pdf").read_bytes()[:5] == b"%PDF-"
    ok(run("attend", TEXT, "-m", gpt2, "--measure", "rollout", "--plot", out / "r.svg"))
    assert re.search(r"· layer 1 · rollout$", svg_text(out / "r.svg"), re.M)


def test_plot_errors_are_one_line(gpt2: Path, out: Path, mpl: None) -> None:
    for args, code, needle in [
        (("--plot", out / "f.jpg"), 2, ".png"),  # a name whose format cannot be told: usage
        (("--plot", out / "f.png", "--figsize", "wide"), 2, "--figsize"),
        (("--plot", out / "f.png", "--figsize", "0,3"), 2, "out of range"),
        (("--figsize", "4,3"), 2, "--figsize needs --plot"),
    ]:
        assert needle in error_line(run("attend", TEXT, "-m", gpt2, *args), code)
    assert list(out.iterdir()) == []
    (out / "f.png").write_bytes(b"old")
    assert "already exists" in error_line(run("attend", TEXT, "-m", gpt2, "--plot", out / "f.png"), 1)
    assert (out / "f.png").read_bytes() == b"old"
    ok(run("attend", TEXT, "-m", gpt2, "--plot", out / "f.png", "--force"))
    assert (out / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_one_line_says_how_to_install(gpt2: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    line = error_line(run("attend", TEXT, "-m", gpt2, "--plot", out / "f.png", "--save", out / "p.npz"), 1)
    assert "matplotlib" in line and "pip install 'attnscope[plot]'" in line
    assert list(out.iterdir()) == []  # refused before the run: not even --save was written


def test_heads_atlas_figure(gpt2: Path, out: Path, mpl: None) -> None:
    svg = out / "atlas.svg"
    ok(run("heads", TEXT, "-m", gpt2, "--plot", svg))
    text = svg.read_text()
    for name in ("previous_token", "first_token", "self", "entropy", "induction"):
        assert name in text, name
    assert "head scores" in text
    png = out / "atlas.png"
    ok(run("heads", TEXT, "-m", gpt2, "--plot", png, "--score", "self", "--figsize", "4,3"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    error_line(run("heads", TEXT, "-m", gpt2, "--figsize", "4,3"), 2)
    error_line(run("heads", TEXT, "-m", gpt2, "--plot", out / "atlas.jpg"), 2)
