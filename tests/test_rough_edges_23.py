"""Issue 23's bugs and rough edges: masked keys never listed as top keys, generate
refusing before it loads, help text drawn from the constants that drive behaviour,
rollout named as what it is, and the smaller edges (labels, plurals, layouts, messages)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from attnscope.cli import app

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ENV = {"HF_HUB_OFFLINE": "1", "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None, "NO_COLOR": "1"}
TEXT = "a fluffy blue creature"


def run(*args: Any, width: int = 80) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, "COLUMNS": str(width)}, terminal_width=width)


def ok(res: Any) -> Any:
    assert res.exit_code == 0, res.output
    return res


# ---------------------------------------------------------------- masked keys are never top keys


def test_topk_json_lists_only_visible_keys(build: Callable[[str], Path]) -> None:
    """A causal query i sees keys 0..i: token 0 lists one key, token 1 two, never a future one."""
    doc = json.loads(ok(run("attend", TEXT, "-m", build("gpt2"), "--json", "--top-k", "3", "--layer", "all")).stdout)
    for head in doc["topk"]:
        for row in head["rows"]:
            i = row["query"]
            keys = [t["key"] for t in row["top"]]
            assert all(j <= i for j in keys), (i, keys)
            assert len(keys) == min(3, i + 1), (i, keys)


def test_topk_view_lists_only_visible_keys(build: Callable[[str], Path]) -> None:
    out = ok(run("attend", TEXT, "-m", build("gpt2"), "--view", "topk", "--top-k", "3", "--head", "0")).stdout
    first = next(line for line in out.splitlines() if re.match(r"^\s*0 ", line))
    assert "0.00" not in first and len(re.findall(r"\d\.\d\d", first)) == 1, first


def test_topk_probe_marks_missing_keys_and_saves_them(build: Callable[[str], Path], tmp_path: Path) -> None:
    from attnscope.analysis import NO_KEY

    save = tmp_path / "top.npz"
    ok(run("attend", TEXT, "-m", build("gpt2"), "--save-topk", save, "--top-k", "3"))
    data = np.load(save)
    idx, w = data["indices"], data["weights"]
    n = idx.shape[2]
    for i in range(n):
        row = idx[:, :, i]
        assert (row[..., : i + 1] != NO_KEY).all() and (row[..., i + 1 :] == NO_KEY).all()
        assert (w[:, :, i, i + 1 :] == 0).all()
        listed = row[..., : min(3, i + 1)]
        assert (listed <= i).all()


def test_window_and_bidirectional_models_list_only_visible_keys(inspector: Callable[..., Any]) -> None:
    """The bidirectional encoder lists k keys everywhere; the API's top-k goes through the
    same probe (and lists only keys of positive weight)."""
    m = inspector("bert")
    res = m.topk(TEXT, k=3, layers="all")
    assert (res.indices >= 0).all()
    g = inspector("gpt2")
    res = g.topk(TEXT, k=4, layers="all")
    for i in range(res.indices.shape[2]):
        assert len(res.rows(0, 0, i)) == min(4, i + 1)


def test_page_with_topk_keeps_fewer_keys(build: Callable[[str], Path], tmp_path: Path) -> None:
    from attnscope.render.page import read_page_data

    page = tmp_path / "p.html"
    ok(run("attend", TEXT, "-m", build("gpt2"), "--html", page, "--html-topk", "3"))
    doc = read_page_data(page)
    idx = doc["topk"]["indices"]
    assert idx[0, 0, 0, 0] == 0 and (idx[:, :, 0, 1:] == -1).all()


def test_page_tells_masked_cells_from_near_zero(build: Callable[[str], Path], tmp_path: Path) -> None:
    """The page hatches cells of exactly 0 (masked) over the scale's darkest colour and says so."""
    page = tmp_path / "p.html"
    ok(run("attend", TEXT, "-m", build("gpt2"), "--html", page, "--layer", "1"))
    text = page.read_text()
    assert 'id="legend-note"' in text and "a key the mask hides" in text
    assert "hatchMasked(grid" in text and '"0 (masked)"' in text


# ---------------------------------------------------------------- a packaged name with a typo


@pytest.mark.parametrize("typo, meant", [("smollm2-135m", "smollm2-135m-instruct"), ("all-minilm", "all-minilm-l6-v2"),
                                         ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
                                         ("all-minilm-l6v2", "all-minilm-l6-v2")])
@pytest.mark.parametrize("command", [("params",), ("attend", "x"), ("generate", "x")])
def test_a_mistyped_packaged_name_suggests_the_nearest(typo: str, meant: str, command: tuple[str, ...]) -> None:
    res = run(*command, "-m", typo)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert f"did you mean {meant}?" in res.output, res.output


def test_unrelated_names_get_no_suggestion() -> None:
    from attnscope.sources import packaged

    assert packaged.nearest("gpt2") == [] and packaged.nearest("org/all-minilm") == []
    assert packaged.nearest(packaged.DEFAULT) == []
