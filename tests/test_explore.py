"""Tests for `attnscope explore`, the Textual app.

Textual's own harness (`App.run_test` and its `Pilot`) presses the keys at 80 × 24 on
the tiny Llama checkpoint (2 layers × 4 heads), and what each screen shows is checked
against `attnscope attend TEXT --model FOLDER --json --layer L --head H` for the same
layer and head: the top keys listed for the selected token are the JSON's top-k, with
the same positions, labels and weights (to the 3 decimals shown). The overview's
entropies are checked against `attnscope heads --score entropy --json`, exports against
`attend --save`. One test runs the real command in a pseudo-terminal under tmux (skipped
where tmux is missing); others run it with a pipe at either end, where it must refuse
in one line with exit status 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("textual")

import numpy as np  # noqa: E402
from textual.geometry import Region  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import attnscope.cli.explore as explore_cli  # noqa: E402 - registers the command
from attnscope.cli import app as cli_app  # noqa: E402
from attnscope.errors import UsageError  # noqa: E402

TEXT = "The fluffy creature sat on the mat and the cat sat on the fluffy mat."
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": None,
       "ATTNSCOPE_MODEL": None, "COLUMNS": "80"}
HEADER = re.compile(r"\bL(\d+)(?:H(\d+)| all heads)\b")
KEY_ROW = re.compile(r"^\s*(\d+)\s+(\S.*?)\s+(\d+)\s+([01]\.\d{3})\s*$")
# The command as the console script runs it, with the explore module imported so that it
# is registered whether or not attnscope/cli/__init__.py names it yet.
COMMAND = "import sys, attnscope.cli.explore; from attnscope.cli import main; sys.argv[0] = 'attnscope'; main()"


@pytest.fixture(scope="module")
def llama(build: Callable[[str], Path]) -> Path:
    return build("llama")


@pytest.fixture(scope="module")
def llama_model(inspector: Callable[..., Any]) -> Any:
    return inspector("llama")


def cli(*args: Any) -> Any:
    result = CliRunner().invoke(cli_app, [str(a) for a in args], env=ENV, terminal_width=80)
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    return result


_json_cache: dict[tuple[Any, ...], dict[str, Any]] = {}


def attend_json(folder: Path, layer: int, head: int | None, measure: str = "weight") -> dict[str, Any]:
    """`attnscope attend TEXT --model FOLDER --json --layer L --head H` (cached per call)."""
    key = (str(folder), layer, head, measure)
    if key not in _json_cache:
        args = ["attend", TEXT, "--model", folder, "--json", "--layer", layer, "--measure", measure]
        if head is not None:
            args += ["--head", head]
        _json_cache[key] = json.loads(cli(*args).stdout)
    return _json_cache[key]


def make_app(model: Any, text: str = TEXT, **kwargs: Any) -> Any:
    from attnscope.explore.app import ExploreApp
    from attnscope.explore.session import Session

    return ExploreApp(Session(model, model.tokenize(text)), **kwargs)


def pane(app: Any, selector: str) -> list[str]:
    """The text a pane shows, line by line, as it is drawn."""
    widget = app.screen.query_one(selector)
    lines = widget.render_lines(Region(0, 0, *widget.outer_size))
    return [strip.text.rstrip().lstrip("▏") for strip in lines]  # less the keys pane's left border


def header(app: Any) -> tuple[int, int | None]:
    m = HEADER.search(pane(app, "#header")[0])
    assert m, pane(app, "#header")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def shown_keys(app: Any) -> list[tuple[int, str, float]]:
    """(position, label, weight) of each ranked key in the keys pane."""
    rows = []
    for line in pane(app, "#keys")[2:]:
        m = KEY_ROW.match(line)
        if m:
            rows.append((int(m.group(3)), m.group(2), float(m.group(4))))
    return rows


def same_label(shown: str, label: str) -> bool:
    return shown == label or (shown.endswith("…") and label.startswith(shown[:-1]))


def check_against_attend(app: Any, folder: Path) -> None:
    """The header's layer and head, and the top keys listed for the selected token,
    are what `attend --json` reports for that layer, head and token."""
    layer, head = header(app)
    assert (layer, head if head is not None else 0) == (app.layer, app.head_shown())
    doc = attend_json(folder, layer, head, app.measure)
    (entry,) = doc["topk"]
    assert (entry["layer"], entry["head"]) == (layer, head if head is not None else 0)
    row = entry["rows"][app.query]
    assert row["query"] == app.query and f"({app.query})" in pane(app, "#header")[0]
    keys = shown_keys(app)
    top = [t for t in row["top"] if t["weight"] > 0]  # a causal row sees fewer than k keys near the start
    assert len(top) == min(doc["k"], app.query + 1) and len(keys) >= len(top), pane(app, "#keys")
    for (pos, label, weight), want in zip(keys, top):
        assert pos == want["key"], (keys, row["top"])
        assert same_label(label, want["token"]), (label, want["token"])
        assert abs(weight - want["weight"]) <= 0.0005 + 1e-9, (weight, want["weight"])


async def settle(app: Any, pilot: Any) -> None:
    """Wait for the worker threads' passes and the redraws they cause."""
    for _ in range(200):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not app._pending and app.session.pattern(*app.target()) is not None:
            return
    raise AssertionError("the app never showed a pattern")


def drive(app: Any, script: Callable[[Any, Any], Any], size: tuple[int, int] = (80, 24)) -> None:
    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            await script(app, pilot)

    asyncio.run(run())


# ------------------------------------------------------------------------ keys


def test_keys_move_heads_layers_tokens_and_match_attend(llama: Path, llama_model: Any) -> None:
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        n_layers = llama_model.n_layers
        assert header(app) == (n_layers - 1, 0)  # opens on the last layer's first head
        check_against_attend(app, llama)
        for keys, want in ((("right",), (n_layers - 1, 1)), (("up",), (n_layers - 2, 1)),
                           (("tab", "tab"), (n_layers - 2, 1)), (("left", "left"), (n_layers - 2, 3)),
                           (("down",), (n_layers - 1, 3)), (("shift+tab",), (n_layers - 1, 3))):
            before = app.query
            await pilot.press(*keys)
            await settle(app, pilot)
            assert header(app) == want
            if keys[0] == "tab":  # from the last word: past the final "." round to the start
                assert app.query == (before + 2) % app.session.n
            if keys[0] == "shift+tab":
                assert app.query == (before - 1) % app.session.n
            check_against_attend(app, llama)
        await pilot.press("q")

    drive(app, script)
    assert app.return_code == 0


def test_click_selects_the_token_under_the_mouse(llama_model: Any) -> None:
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        view = app.screen.query_one("#tokens")
        layout = view.layout_
        target = 2  # "␣fluffy"
        (x,) = [x for i, x in layout.lines[layout.line_of[target]] if i == target]
        await pilot.click("#tokens", offset=(x + 2, layout.line_of[target]))
        await settle(app, pilot)
        assert app.query == target
        assert "▸" + app.session.tokens.labels[target] in "\n".join(pane(app, "#tokens"))

    drive(app, script)


def test_measures_cycle_weight_norm_rollout(llama: Path, llama_model: Any) -> None:
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        await pilot.press("m")
        await settle(app, pilot)
        assert app.measure == "norm" and " norm " in pane(app, "#header")[0]
        check_against_attend(app, llama)
        await pilot.press("m")
        await settle(app, pilot)
        assert app.measure == "rollout"
        assert header(app) == (llama_model.n_layers - 1, None)  # one matrix per layer
        check_against_attend(app, llama)
        await pilot.press("right")  # no heads to step through: says so, changes nothing
        await pilot.pause()
        assert header(app) == (llama_model.n_layers - 1, None)
        assert "one matrix per layer" in pane(app, "#footer")[0]
        await pilot.press("up")
        await settle(app, pilot)
        check_against_attend(app, llama)
        await pilot.press("m")
        await settle(app, pilot)
        assert app.measure == "weight" and header(app) == (llama_model.n_layers - 2, 0)

    drive(app, script)


def test_overview_shows_entropy_and_enter_jumps(llama: Path, llama_model: Any) -> None:
    scores = json.loads(cli("heads", TEXT, "--model", llama, "--score", "entropy", "--json").stdout)
    entropy = scores["scores"]["entropy"]
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        await pilot.press("o")
        await pilot.pause()
        assert pane(app, "#ov-heads")[0].split() == [f"H{h}" for h in range(llama_model.n_heads)]
        grid = pane(app, "#grid")
        for layer in range(llama_model.n_layers):
            cells = grid[layer].replace("*", " ").split()
            assert cells[0] == f"L{layer}"
            assert [float(c) for c in cells[1:]] == pytest.approx([round(v, 2) for v in entropy[layer]], abs=0.0051)
        await pilot.press("up", "right", "right")
        await pilot.pause()
        want = (llama_model.n_layers - 2, 2)
        foot = pane(app, "#ov-footer")[0]
        assert foot.startswith(f"L{want[0]}H{want[1]} = {entropy[want[0]][want[1]]:.3f}"), foot
        await pilot.press("enter")
        await settle(app, pilot)
        assert header(app) == want
        check_against_attend(app, llama)
        await pilot.press("o", "escape")  # Esc leaves the head as it was
        await settle(app, pilot)
        assert header(app) == want

    drive(app, script)


def test_heatmap_search_help(llama_model: Any) -> None:
    app = make_app(llama_model)
    labels = llama_model.tokenize(TEXT).labels

    async def script(app: Any, pilot: Any) -> None:
        await pilot.press("h")
        await settle(app, pilot)
        heat = pane(app, "#heatmap")
        title = next(line for line in heat if "queries" in line)
        assert title.startswith(f"L{app.layer}H{app.head}")
        assert any(line.startswith("▸") and labels[app.query] in line for line in heat)  # the selected row
        assert any("·" in line for line in heat)  # causal: the keys after each query are exactly 0
        await pilot.press("h")
        await pilot.pause()
        assert not app.screen.query_one("#heatmap").display

        await pilot.press("slash", *"CREAT", "enter")  # case-insensitive, within tokens
        await settle(app, pilot)
        assert labels[app.query] == "␣creature"
        assert "1/1" in pane(app, "#footer")[0]
        await pilot.press("slash", "ctrl+u", *"sat", "enter", "n")
        await settle(app, pilot)
        sats = [i for i, label in enumerate(labels) if "sat" in label.lower()]
        assert len(sats) == 2 and app.query in sats

        await pilot.press("question_mark")
        await pilot.pause()
        assert any("next head" in line for line in pane(app, "#help"))
        await pilot.press("x")  # any key closes the help
        await pilot.pause()
        assert len(app.screen.query("#help")) == 0
        await pilot.press("q")

    drive(app, script)
    assert app.return_code == 0


def test_export_writes_attend_save_format_without_overwriting(llama: Path, llama_model: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(llama_model)
    layer = llama_model.n_layers - 1

    async def script(app: Any, pilot: Any) -> None:
        for _ in range(2):  # the second export gets a new name
            await pilot.press("e")
            await pilot.pause()
            await pilot.press("enter")
            await settle(app, pilot)
        await pilot.press("m")  # norm: `--save` writes the raw ‖α·f(x)‖
        await settle(app, pilot)
        await pilot.press("e", "enter")
        await settle(app, pilot)
        assert "saved attnscope-L1H0-norm.npz" in pane(app, "#footer")[0]

    drive(app, script)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attnscope-L1H0-1.npz", "attnscope-L1H0-norm.npz",
                                                         "attnscope-L1H0.npz"]
    for name, measure in (("attnscope-L1H0.npz", "weight"), ("attnscope-L1H0-norm.npz", "norm")):
        ref = tmp_path / "ref" / name
        ref.parent.mkdir(exist_ok=True)
        cli("attend", TEXT, "--model", llama, "--layer", layer, "--head", 0, "--save", ref, "--measure", measure)
        got, want = np.load(tmp_path / name), np.load(ref)
        assert sorted(got.files) == sorted(want.files)
        for key in want.files:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_control_characters_are_shown_visibly(llama_model: Any) -> None:
    app = make_app(llama_model, "red \x1b[31m alert\tnow\x07")

    async def script(app: Any, pilot: Any) -> None:
        shown = "\n".join(pane(app, "#tokens") + pane(app, "#keys") + pane(app, "#header"))
        assert "\x1b" not in shown and "\x07" not in shown and "\t" not in shown
        assert "\\x1b" in shown and "⇥" in shown and "\\x07" in shown

    drive(app, script)


def test_no_color_draws_without_colour(llama_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        await pilot.press("h")
        await settle(app, pilot)
        assert app.no_color
        widget = app.screen.query_one("#heatmap")
        strips = widget.render_lines(Region(0, 0, *widget.outer_size))
        assert any(ch in strip.text for strip in strips for ch in "░▒▓█")  # shade glyphs carry the weights
        tokens = app.screen.query_one("#tokens")
        for strip in list(strips) + tokens.render_lines(Region(0, 0, *tokens.outer_size)):
            for segment in strip:
                style = segment.style
                assert style is None or (style.color is None or style.color.is_default), style
                assert style is None or (style.bgcolor is None or style.bgcolor.is_default), style

    drive(app, script)


def test_larger_terminal_shows_more_keys(llama_model: Any) -> None:
    app = make_app(llama_model)

    async def script(app: Any, pilot: Any) -> None:
        assert len(shown_keys(app)) == app.query + 1  # every key the causal query can see

    drive(app, script, size=(120, 40))


# ------------------------------------------------------------------------ the session


def test_long_texts_go_per_layer_in_bounded_memory(llama_model: Any) -> None:
    """With a budget too small for every layer, a request computes one layer (or one
    head), the same numbers as the one-pass plan, and keeps within the budget."""
    from attnscope.explore.session import Session

    tokens = llama_model.tokenize(TEXT)
    n, heads = len(tokens), llama_model.n_heads
    full = Session(llama_model, tokens)
    assert full.plan("weight") == "all"
    layer_bytes = heads * n * n * 4
    per_layer = Session(llama_model, tokens, budget=layer_bytes)
    per_head = Session(llama_model, tokens, budget=layer_bytes - 1)
    assert per_layer.plan("weight") == "layer" and per_head.plan("weight") == "head"
    assert per_layer.plan("rollout") == "all"  # one matrix per layer: 4 × smaller
    for layer in range(llama_model.n_layers):
        for head in range(heads):
            want = full.ensure("weight", layer, head)
            for s in (per_layer, per_head):
                got = s.ensure("weight", layer, head)
                assert got is not None and want is not None
                assert (got == want).all()
                assert s.kept_bytes() <= s.budget
    assert per_layer.entropy("weight") is None  # not computed until the overview asks
    assert (per_layer.ensure_entropy("weight") == full.entropy("weight")).all()


def test_a_pass_stops_when_the_app_closes_or_the_user_moves_on(llama_model: Any) -> None:
    from attnscope.explore.session import Session

    tokens = llama_model.tokenize(TEXT)
    s = Session(llama_model, tokens, budget=llama_model.n_heads * len(tokens) ** 2 * 4)  # one layer a pass
    asked: list[int] = []

    def wanted() -> bool:  # wanted when the pass starts, not once it runs
        asked.append(1)
        return len(asked) == 1

    assert s.ensure("weight", 1, 0, wanted) is None and len(asked) > 1
    assert s.kept_bytes() == 0 and s.last is None
    s.stop.set()
    assert s.ensure("weight", 1, 0) is None and s.ensure_entropy("weight") is None


def test_start_options_take_one_layer_and_head() -> None:
    assert explore_cli._one(None, 30, "layer", 29) == 29
    assert explore_cli._one("-2", 30, "layer", 29) == 28
    with pytest.raises(UsageError, match="one layer"):
        explore_cli._one("0-3", 30, "layer", 29)


# ------------------------------------------------------------------------ without and with a terminal


@pytest.mark.parametrize("tty_end", ["none", "stdin", "stdout"])
def test_without_a_terminal_it_says_so_in_one_line(llama: Path, tty_end: str) -> None:
    """A pipe at either end (CI, `| less`, `< file`): one line, exit 2, before any loading."""
    import pty

    master, slave = pty.openpty()
    try:
        stdin = slave if tty_end == "stdin" else subprocess.PIPE
        stdout = slave if tty_end == "stdout" else subprocess.PIPE
        env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
        proc = subprocess.run([sys.executable, "-c", COMMAND, "explore", TEXT, "--model", str(llama)], stdin=stdin,
                              stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: explore needs a terminal") and "attnscope attend" in lines[0]
    if proc.stdout is not None:
        assert proc.stdout == b""


def test_the_command_in_a_real_terminal(llama: Path, tmp_path: Path) -> None:
    """tmux gives the command a real 80 × 24 pseudo-terminal: it opens on the last layer's
    first head, Right and Up move to L0H1, q quits with status 0. NO_COLOR: no colour
    codes reach the terminal."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    session = f"attnscope-explore-{os.getpid()}"
    status = tmp_path / "status"
    script = tmp_path / "run.sh"
    script.write_text(
        f"cd {tmp_path}\n"
        f"NO_COLOR=1 HF_HUB_OFFLINE=1 {sys.executable} -c \"{COMMAND}\" explore '{TEXT}' --model '{llama}'\n"
        f"echo $? > {status}.tmp && mv {status}.tmp {status}\n"
    )
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("TMUX", None)
    socket = ["-L", session]  # a server of our own, whatever else runs tmux here

    def capture(escapes: bool = False) -> str:
        return subprocess.run([tmux, *socket, "capture-pane", "-p", *(["-e"] if escapes else []), "-t", session],
                              check=False, capture_output=True, text=True, env=env).stdout

    def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{capture()}")

    subprocess.run([tmux, *socket, "-f", "/dev/null", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"bash {script}; sleep 5"], check=True, env=env)
    try:
        layers = json.loads((llama / "config.json").read_text())["num_hidden_layers"]
        first = wait_for(lambda: HEADER.search(capture().splitlines()[0] if capture() else ""), "the header")
        wait_for(lambda: "ready in" in capture(), "the first pattern")
        assert (int(first.group(1)), int(first.group(2))) == (layers - 1, 0)
        screen = capture().splitlines()
        assert len(screen) == 24 and all(len(line) <= 80 for line in screen)
        sgr = re.findall(r"\x1b\[([0-9;]*)m", capture(escapes=True))
        colours = [p for params in sgr for p in params.split(";") if p and (30 <= int(p) <= 48 or 90 <= int(p) <= 107)
                   and int(p) not in (39,)]
        assert colours == [], colours
        subprocess.run([tmux, *socket, "send-keys", "-t", session, "Right"], check=True, env=env)
        subprocess.run([tmux, *socket, "send-keys", "-t", session, "Up"], check=True, env=env)
        moved = wait_for(lambda: (m := HEADER.search(capture().splitlines()[0])) and m.group(0) == f"L{layers - 2}H1"
                         and m, "L0H1 in the header")
        assert moved.group(0) == f"L{layers - 2}H1"
        subprocess.run([tmux, *socket, "send-keys", "-t", session, "q"], check=True, env=env)
        wait_for(status.exists, "the exit status")
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run([tmux, *socket, "kill-server"], check=False, capture_output=True, env=env)
