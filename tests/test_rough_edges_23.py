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


def test_saved_topk_marks_masked_entries_by_weight_zero(build: Callable[[str], Path], tmp_path: Path) -> None:
    """--save-topk keeps k columns; a query that sees fewer keys has entries of weight 0
    past them, and every entry of positive weight is a key it can see."""
    save = tmp_path / "top.npz"
    ok(run("attend", TEXT, "-m", build("gpt2"), "--save-topk", save, "--top-k", "3"))
    data = np.load(save)
    idx, w = data["indices"], data["weights"]
    for i in range(idx.shape[2]):
        assert (w[:, :, i, : min(3, i + 1)] > 0).all() and (w[:, :, i, i + 1 :] == 0).all()
        assert (np.where(w[:, :, i] > 0, idx[:, :, i], 0) <= i).all()


def test_window_and_bidirectional_models_list_only_visible_keys(inspector: Callable[..., Any]) -> None:
    """The bidirectional encoder lists k keys everywhere; the API's top-k lists fewer near
    a causal text's start, and a sliding window lists only keys inside it."""
    res = inspector("bert").topk(TEXT, k=3, layers="all")
    assert all(len(res.rows(0, 0, i)) == 3 for i in range(res.indices.shape[2]))
    res = inspector("gpt2").topk(TEXT, k=4, layers="all")
    for i in range(res.indices.shape[2]):
        assert len(res.rows(0, 0, i)) == min(4, i + 1)
    m = inspector("mistral")
    window = m.config.sliding_window
    res = m.topk("the cat sat on the mat and the dog sat on the log " * 3, k=window + 3, layers="all", truncate=True)
    for li in range(len(res.layers)):
        for i in range(res.indices.shape[2]):
            keys = [j for j, _w in res.rows(li, 0, i)]
            assert keys and all(i - window < j <= i for j in keys), (i, keys, window)


def test_page_with_topk_keeps_fewer_keys(build: Callable[[str], Path], tmp_path: Path) -> None:
    from attnscope.render.page import read_page_data

    page = tmp_path / "p.html"
    ok(run("attend", TEXT, "-m", build("gpt2"), "--html", page, "--html-topk", "3"))
    doc = read_page_data(page)
    idx, w = doc["topk"]["indices"], doc["topk"]["weights"]
    assert idx[0, 0, 0, 0] == 0 and (w[:, :, 0, 1:] == 0).all()
    assert "h.w[e] > out[h.idx[e]]" in page.read_text()  # entries of weight 0 are never drawn or listed


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


# ---------------------------------------------------------------- generate refuses before it loads


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the refusal must come first."""
    import attnscope.cli.generate as cli_generate

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(cli_generate, "_load", refuse)


@pytest.mark.parametrize("args, says", [
    (("--measure", "rollout"), "--measure"),
    (("--layer", "99"), "out of range"),
    (("--head", "40"), "out of range"),
    (("--stop", ""), "--stop"),
])
def test_generate_refuses_before_loading(build: Callable[[str], Path], no_load: None, args: tuple[str, ...],
                                         says: str) -> None:
    res = run("generate", "The capital of France is", "-m", build("gpt2"), *args)
    assert res.exit_code != 0 and res.stdout == "", res.output
    assert says in res.stderr and "Traceback" not in res.output and "internal error" not in res.output


def test_generate_on_an_encoder_refuses_before_loading(build: Callable[[str], Path], no_load: None) -> None:
    res = run("generate", "The capital of France is", "-m", build("bert"))
    assert res.exit_code != 0 and res.stdout == "", res.output
    assert "encoder" in res.stderr and "cannot generate" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_generate_refuses_one_file_for_two_saves(build: Callable[[str], Path], no_load: None, tmp_path: Path) -> None:
    res = run("generate", "x", "-m", build("gpt2"), "--save", tmp_path / "a.npz", "--save-topk", tmp_path / "a.npz")
    assert res.exit_code != 0 and res.stdout == "" and "same file" in res.stderr


def test_a_refusal_after_loading_leaves_stdout_empty(build: Callable[[str], Path]) -> None:
    """A prompt too long for learned positions is judged once tokenized: still no prompt on stdout."""
    res = run("generate", "the cat sat on the mat " * 4, "-m", build("gpt2"), "-n", "100000")
    assert res.exit_code != 0 and res.stdout == "", res.output
    assert "positions" in res.stderr


@pytest.mark.parametrize("command", ["generate", "heads"])
def test_rollout_is_not_offered_where_it_is_refused(command: str) -> None:
    out = " ".join(ok(run(command, "--help", width=200)).stdout.split())
    assert "<weight|norm>" in out and "weight|norm|rollout" not in out
    assert run(command, "x", "--measure", "rollout").exit_code == 2


def test_generate_says_what_it_wrote_and_its_rate(build: Callable[[str], Path], tmp_path: Path) -> None:
    save, topk, page = tmp_path / "s.npz", tmp_path / "t.npz", tmp_path / "p.html"
    res = ok(run("generate", "the cat", "-m", build("gpt2"), "-n", "2", "--save", save, "--save-topk", topk,
                 "--html", page))
    out = " ".join(res.stdout.split())
    assert f"to {save}" in out and f"to {topk}" in out and f"page (2 layers × 4 heads) to {page}" in out
    assert "tokens/s" in res.stderr
    res = ok(run("generate", "the cat", "-m", build("gpt2"), "-n", "1", "--json", "--save", tmp_path / "j.npz"))
    doc = json.loads(res.stdout)
    assert doc["saved"] == str(tmp_path / "j.npz")
    assert "1 token in" in res.stderr and "tokens/s" in res.stderr


# ---------------------------------------------------------------- help text from the constants behaviour uses


def _help(command: str) -> str:
    return " ".join(ANSI.sub("", ok(run(command, "--help", width=200)).stdout).replace("│", " ").split())


@pytest.mark.parametrize("command", ["attend", "heads", "mask-demo", "generate", "explore"])
def test_help_names_the_real_default_model(command: str) -> None:
    from attnscope.sources import packaged

    text = _help(command)
    assert f"{packaged.DEFAULT}, the default" in text
    for name, entry in packaged.PACKAGED.items():
        if name != packaged.DEFAULT:
            assert f"{name}, the default" not in text and f"default model, {entry.title}" not in text
    assert "{default_model}" not in text


@pytest.mark.parametrize("command", ["attend", "heads", "mask-demo", "generate"])
def test_docstrings_describe_the_default_from_its_entry(command: str) -> None:
    from attnscope.sources import packaged

    assert " ".join(packaged.describe_default().split()) in _help(command)


def test_params_help_names_no_default_model() -> None:
    text = _help("params")
    assert "the default" not in text.split("--convention")[0]
    assert "smollm2-135m-instruct" in text


def test_heads_help_describes_batching_and_sharding() -> None:
    text = _help("heads")
    assert "No batching" not in text and "shared across" not in text
    assert "sharded across the processes" in text and "--batch-tokens N packs" in text


def test_api_docstrings_name_no_stale_default() -> None:
    from attnscope import api

    for doc in (api.__doc__, api.load.__doc__, api.default_model.__doc__):
        assert "MiniLM" not in doc and "SmolLM2" not in doc
    assert "packaged.DEFAULT" in api.load.__doc__


# ---------------------------------------------------------------- the terminal views


def _focus_result(labels: list[str], special: list[bool], heads: list[int]) -> Any:
    import torch

    from attnscope.analysis import AttendResult, Focus
    from attnscope.tokenize import Tokens

    n = len(labels)
    tokens = Tokens(" ".join(labels), list(range(n)), labels, [(0, 0)] * n, special)
    weights = torch.softmax(torch.arange(n, dtype=torch.float32).repeat(1, len(heads), 1), -1)  # (1, H, n)
    focus = Focus(n - 1, weights, [2], heads, tokens)
    return AttendResult(tokens, [2], heads, focus=focus)


def _render(res: Any, view: str = "focus", width: int = 80, **kw: Any) -> str:
    from rich.console import Console

    from attnscope.render.attend import render_result

    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    render_result(console, res, view, "tiny", 3, False, **kw)
    return console.export_text()


def test_focus_labels_keep_their_position_suffix_whole() -> None:
    labels = [f"␣w{i}" for i in range(400)] + ["␣wonderland", "␣and", "␣wonderland", "␣wonderland", "."]
    text = _render(_focus_result(labels, [False] * len(labels), [0, 1]))
    suffixes = re.findall(r"wonderland@(\d+)|wond\w*…@(\d+)", text)
    assert suffixes, text
    assert not re.search(r"@\d*…", text), text
    for a, b in suffixes:
        assert int(a or b) in (400, 402, 403)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_rollout_focus_says_what_the_row_is(width: int) -> None:
    labels = ["<s>", "␣a", "␣fluffy", "␣blue", "␣creature"]
    text = _render(_focus_result(labels, [True, False, False, False, False], [0]), width=width, measure="rollout")
    assert "Top words per head" not in text and "rollout" in text
    assert not re.search(r"^\s*H0\b", text, re.M), text
    assert max(len(line) for line in text.splitlines()) <= width


def test_specials_line_only_with_a_specials_column() -> None:
    plain = _render(_focus_result(["␣a", "␣fluffy", "␣blue"], [False] * 3, [0]))
    assert "specials" not in plain
    marked = _render(_focus_result(["[CLS]", "a", "blue", "[SEP]"], [True, False, False, True], [0]))
    assert "specials: weight on [CLS]-like tokens" in marked and re.search(r"specials\s*$", marked, re.M)


def test_long_heatmap_legend_explains_every_glyph(build: Callable[[str], Path]) -> None:
    text = " ".join(["cat dog sun tree car bird fish moon"] * 12)
    out = ok(run("attend", text, "-m", build("gpt2"), "--view", "heatmap", "--layer", "0", "--truncate")).stdout
    body = [line for line in out.splitlines() if re.match(r"^\s*\d+ ", line)]
    glyphs = set("".join(line.split(maxsplit=2)[-1] for line in body)) - set(" ")
    legend = " ".join(line for line in out.splitlines() if not re.match(r"^\s*\d+ ", line))
    for glyph in glyphs:
        assert glyph in legend.split("cells:")[-1], (glyph, legend)
    assert "last digit" in legend


# ---------------------------------------------------------------- the figure's layout


def test_one_layers_heads_plot_as_a_near_square_grid(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from attnscope.render.figure import PNG_DPI, grid_shape, write_figure

    assert grid_shape(1, 12) == (3, 4) and grid_shape(1, 9) == (3, 3) and grid_shape(6, 1) == (2, 3)
    assert grid_shape(3, 4) == (3, 4) and grid_shape(1, 1) == (1, 1)
    n = 6
    values = np.random.default_rng(0).random((1, 12, n, n), dtype=np.float32)
    path = write_figure(tmp_path / "grid.png", values, [3], list(range(12)), [f"t{i}" for i in range(n)], "tiny")
    import struct

    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert width <= 12 * PNG_DPI and 0.5 <= width / height <= 2.0, (width, height)


# ---------------------------------------------------------------- counts are plural only when plural


def test_counts_of_one_read_singular(build: Callable[[str], Path], tmp_path: Path) -> None:
    from attnscope.analysis import select
    from attnscope.errors import SelectionError

    with pytest.raises(SelectionError, match="the model has 1 layer "):
        select("3", 1, "layer")
    cfg = json.loads((build("gpt2") / "config.json").read_text())
    cfg.update(n_layer=1, n_head=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = " ".join(ok(run("params", "--config", tmp_path / "config.json", "--context", "1", width=120)).stdout.split())
    assert "1 layer × 1 head of" in out and "context of 1 token " in out and "KV cache at 1 token " in out
    assert "(1 head)" in out and "(1 block)" in out
    assert not re.search(r"\b1 (tokens|layers|heads|blocks|texts)\b", out), out
    out = ok(run("attend", "a", "-m", build("gpt2"))).stdout
    assert re.search(r"\b1 token\b", out) and not re.search(r"\b1 tokens\b", out)


def test_figure_title_names_one_layer_singular(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from attnscope.render.figure import write_figure

    values = np.full((1, 3, 2, 2), 0.5, dtype=np.float32)
    path = write_figure(tmp_path / "f.svg", values, [3], [0, 1, 2], ["a", "b"], "tiny")
    text = path.read_text()
    assert "layer 3, heads 0–2" in text and "layers 3" not in text


@pytest.mark.parametrize("convention", ["full", "3b1b"])
@pytest.mark.parametrize("source", ["model", "config"])
def test_params_shares_sum_to_the_headline_total(build: Callable[[str], Path], convention: str, source: str) -> None:
    """Each row the headline total counts has a share, and those shares sum to 100%."""
    folder = build("gpt2")  # tied embeddings: the unembedding is counted again in 3b1b only
    where = ("--model", folder) if source == "model" else ("--config", folder / "config.json")
    out = ok(run("params", *where, "--convention", convention, width=120)).stdout
    table = out.split("Whole model")[1].split("All attention weights")[0]
    shares = [float(x) for x in re.findall(r"│\s*([\d.]+)%\s*$", table, re.M)]
    assert shares and abs(sum(shares) - 100) <= 0.05 * len(shares) + 0.01, (shares, table)


# ---------------------------------------------------------------- explore


def test_explore_export_field_has_a_label_and_the_overview_fits_80(inspector: Callable[..., Any], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("textual")
    import asyncio

    from textual.geometry import Region

    from attnscope.explore.app import ExploreApp
    from attnscope.explore.session import Session

    monkeypatch.chdir(tmp_path)
    model = inspector("llama")
    model.config.name = "SmolLM2-135M-Instruct"  # a real name's length
    app = ExploreApp(Session(model, model.tokenize(TEXT)))

    def lines(selector: str) -> list[str]:
        widget = app.screen.query_one(selector)
        return [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, *widget.outer_size))]

    async def script() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(100):
                await app.workers.wait_for_complete()
                await pilot.pause()
            await pilot.press("e")
            await pilot.pause()
            label, prompt = app.screen.query_one("#prompt-label"), app.screen.query_one("#prompt")
            assert lines("#prompt-label")[0] == "export to:" and label.region.width == len("export to: ")
            assert prompt.value.endswith(".npz") and prompt.region.x == label.region.right, (prompt.region, label.region)
            assert "Enter writes" in lines("#footer")[0]
            await pilot.press("escape")
            await pilot.pause()
            assert not app.screen.query_one("#prompt-row").display
            await pilot.press("o")
            for _ in range(50):
                await app.workers.wait_for_complete()
                await pilot.pause()
            title, foot = lines("#ov-title")[0], lines("#ov-footer")[0]
            assert "1: uniform" in title and not title.endswith("…"), title
            assert foot.endswith("Esc back") and len(foot) <= 80, foot

    asyncio.run(script())


# ---------------------------------------------------------------- a GGUF path never breaks mid-word


@pytest.mark.parametrize("width", [80, 100])
def test_models_listing_breaks_gguf_names_at_separators(width: int) -> None:
    from rich.console import Console

    from attnscope.models import ModelEntry
    from attnscope.render.models import models_listing

    long = "unsloth/Qwen2.5-Coder-32B-Instruct-128K-GGUF"
    entries = [
        ModelEntry("smollm2-135m-instruct", "package", "/x", "gguf", "llama", 134_500_000, 80_000_000, True, None, "Q4_1"),
        ModelEntry(f"{long}/Qwen2.5-Coder-32B-Instruct-128K-UD-Q4_K_XL.gguf", "hub-cache", "/x", "gguf", "qwen2",
                   32_500_000_000, 80_000_000_000, False, "not supported", "Q4_K_XL", repo=long),
    ]
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    models_listing(console, entries, Path("/cache"))
    out = console.export_text()
    cells = [line.split("│")[0].rstrip() for line in out.splitlines() if "│" in line]
    start = next(i for i, cell in enumerate(cells) if cell.startswith("unsloth/"))
    name_lines = [cell.strip() for cell in cells[start:] if cell.strip()]
    assert "".join(name_lines) == "unsloth/Qwen2.5-Coder-32B-Instruct-128K-GGUFQwen2.5-Coder-32B-Instruct-128K-UD-Q4_K_XL.gguf"
    for line, after in zip(name_lines, name_lines[1:]):
        assert line[-1] in "-_./" or after.startswith("Qwen"), (line, after)  # a break at a separator only
    note = out[out.index("(1) "):out.index(".gguf")]
    for line in note.splitlines()[:-1]:
        assert line.rstrip()[-1] in "-_./", note
    assert max(len(line) for line in out.splitlines()) <= width


def test_rollout_focus_from_the_command_line(build: Callable[[str], Path]) -> None:
    out = ok(run("attend", TEXT, "-m", build("gpt2"), "--measure", "rollout")).stdout
    assert "Top words per head" not in out and "rollout" in out
    assert not re.search(r"^\s*H0\b", out, re.M), out


# ---------------------------------------------------------------- help and parser lines


@pytest.mark.parametrize("command", ["attend", "generate", "heads", "mask-demo", "params", "explore", "models"])
def test_usage_and_options_show_our_metavars(command: str) -> None:
    text = ANSI.sub("", ok(run(command, "--help", width=100)).stdout)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "<str>" not in text


def test_an_invalid_measure_reads_as_one_plain_sentence() -> None:
    res = run("attend", "x", "--measure", "gradient")  # (alti, once the example here, is a measure now)
    assert res.exit_code == 2 and "Value error" not in res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "'gradient' is not one of 'weight', 'norm', 'rollout'" in line, line


def test_readme_plot_extra_installs_from_a_clone() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    flat = " ".join(readme.split())
    assert "pip install '.[plot]'" in flat and "install 'attnscope[plot]'`): one head" not in flat
