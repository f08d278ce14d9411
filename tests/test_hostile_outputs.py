"""Hostile outputs (issue 22): every file a run writes, and standard output.

1. a --save/--save-topk/--html/--plot name that is a symbolic link (dangling or not) is
   refused before the model is loaded, with or without --force;
2. names up to NAME_MAX bytes save (the hidden temporary name fits whatever the
   target's length); a longer one is refused before loading;
3. several outputs: their space is checked together, and when one fails none is
   published, and a file that existed before keeps its bytes (even with --force);
4. a standard output that fails (/dev/full) is one line; a closed pipe is quiet.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope import export
from attnscope.errors import ExportError

from cli_runs import ENV, one_error, run

TEXT = "a blue cat sat on the mat"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture()
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the refusal must come before it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("attnscope.cli.attend._load", refuse)


OPTIONS = [("--save", "p.npz"), ("--save", "p.safetensors"), ("--save-topk", "t.npz"), ("--html", "page.html")]
if HAS_MPL:
    OPTIONS.append(("--plot", "fig.png"))


# ------------------------------------------------------------------- 1. links


@pytest.mark.parametrize("option,name", OPTIONS)
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("dangling", [True, False])
def test_a_link_is_refused_before_loading(option: str, name: str, force: bool, dangling: bool, bert: Path,
                                          tmp_path: Path, no_load: None) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    target = elsewhere / name
    if not dangling:
        target.write_bytes(b"theirs")
    (out / name).symlink_to(target)
    one_error(run("attend", TEXT, "-m", bert, option, out / name, *(["--force"] if force else [])), 1,
              "symbolic link", *(["pointing nowhere"] if dangling else []))
    assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).is_symlink()
    assert [p.read_bytes() for p in elsewhere.iterdir()] == ([] if dangling else [b"theirs"])


# ------------------------------------------------------------------- 2. long names


def test_a_name_of_250_bytes_saves(bert: Path, tmp_path: Path) -> None:
    name = "p" * 246 + ".npz"
    result = run("attend", TEXT, "-m", bert, "--save", tmp_path / name, "--save-topk", tmp_path / ("t" * 246 + ".npz"))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "t" * 246 + ".npz"])  # no .part left


def test_a_name_past_name_max_is_refused_before_loading(bert: Path, tmp_path: Path, no_load: None) -> None:
    one_error(run("attend", TEXT, "-m", bert, "--save", tmp_path / ("p" * 252 + ".npz")), 1, "256 bytes long",
              "shorter name")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stem=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
                    max_size=62), repeat=st.integers(1, 4))
def test_any_legal_name_gets_a_legal_temporary_name(stem: str, repeat: int, tmp_path: Path) -> None:
    """The hidden temporary name fits NAME_MAX whatever the target's (multi-byte) name."""
    name = stem * repeat + ".npz"
    if len(os.fsencode(name)) > 255:
        return
    target = tmp_path / name
    target.unlink(missing_ok=True)
    with export.atomic_path(export.check_target(target, force=True), force=True) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok"
    target.unlink()


# ------------------------------------------------------------------- 3. several outputs


def test_the_space_of_every_output_is_checked_together(bert: Path, tmp_path: Path, no_load: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each output alone fits the free space, both together do not: refused before the run."""
    free = 5000

    class Usage:
        def __init__(self, path: Any) -> None:
            self.free = free

    monkeypatch.setattr(export.shutil, "disk_usage", Usage)
    export.check_space_all([(tmp_path / "a.npz", 3000)])
    export.check_space_all([(tmp_path / "b.html", 3000)])
    with pytest.raises(ExportError, match="the 2 outputs .a.npz, b.html. need"):
        export.check_space_all([(tmp_path / "a.npz", 3000), (tmp_path / "b.html", 3000)])


def test_the_cli_sums_the_outputs_space(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--save and --html together need more than the disk has, though each alone fits:
    refused before the pass (the sizes need the text's tokens), with nothing written."""
    from attnscope import measures

    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pass ran before the space was checked")

    asked: list[list[tuple[Path, int]]] = []
    real = export.check_space_all
    monkeypatch.setattr(export, "check_space_all", lambda outputs: asked.append(outputs) or real(outputs))
    monkeypatch.setattr(measures, "run_attend", no_pass)
    args = ["attend", TEXT, "-m", bert, "--save", tmp_path / "p.npz", "--html", tmp_path / "p.html"]
    assert "the pass ran" in run(*args).stderr  # enough space: the sizes each output declared
    sizes = [size for _, size in asked[0]]
    assert len(sizes) == 2 and min(sizes) > 0

    class Usage:
        def __init__(self, path: Any) -> None:
            self.free = max(sizes) + 1

    monkeypatch.setattr(export.shutil, "disk_usage", Usage)
    one_error(run(*args), 1, "the 2 outputs", "p.npz", "p.html")
    assert list(tmp_path.iterdir()) == []


def _fail_with_enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_second_output_takes_the_first_with_it(bert: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The page fails for space after --save and --save-topk are complete: nothing is
    published, no temporary file is left."""
    import attnscope.render.page as page

    monkeypatch.setattr(page, "_write_b64", _fail_with_enospc)
    one_error(run("attend", TEXT, "-m", bert, "--save", tmp_path / "p.npz", "--save-topk", tmp_path / "t.npz",
                  "--html", tmp_path / "p.html"), 1, "no space left", "p.html")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("force", [False, True])
def test_files_that_existed_keep_their_bytes_when_the_run_fails(force: bool, bert: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With --force the old files are replaced only once every output is complete: a run
    that fails midway leaves them as they were."""
    import attnscope.render.page as page

    names = ["p.npz", "t.npz", "p.html"]
    for name in names:
        (tmp_path / name).write_bytes(b"old " + name.encode())
    monkeypatch.setattr(page, "_write_b64", _fail_with_enospc)
    args = ["--save", tmp_path / "p.npz", "--save-topk", tmp_path / "t.npz", "--html", tmp_path / "p.html"]
    if force:
        one_error(run("attend", TEXT, "-m", bert, *args, "--force"), 1, "no space left")
    else:
        one_error(run("attend", TEXT, "-m", bert, *args), 1, "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / name).read_bytes() == b"old " + name.encode()


def test_batch_publishes_all_or_nothing(tmp_path: Path) -> None:
    with export.batch():
        for name in ("a.npz", "b.npz"):
            with export.atomic_path(tmp_path / name) as tmp:
                tmp.write_bytes(name.encode())
        assert list(tmp_path.glob("*.npz")) == []  # nothing in place before the batch ends
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"a.npz", b"b.npz"]
    (tmp_path / "c.npz").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with export.batch():
            with export.atomic_path(tmp_path / "d.npz") as tmp:
                tmp.write_bytes(b"new")
            with export.atomic_path(tmp_path / "c.npz", force=True) as tmp:
                tmp.write_bytes(b"new")
            raise RuntimeError("the third output failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]
    assert (tmp_path / "c.npz").read_bytes() == b"old"


def test_a_rename_failing_midway_unpublishes_the_new_files(tmp_path: Path) -> None:
    """The second name is taken meanwhile: the first, new file is removed again."""
    with pytest.raises(ExportError, match="meanwhile"):
        with export.batch():
            with export.atomic_path(tmp_path / "a.npz") as tmp:
                tmp.write_bytes(b"ours")
            with export.atomic_path(tmp_path / "b.npz") as tmp:
                tmp.write_bytes(b"ours")
            (tmp_path / "b.npz").write_bytes(b"theirs")  # another run finished first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npz"]
    assert (tmp_path / "b.npz").read_bytes() == b"theirs"


# ------------------------------------------------------------------- 4. standard output


def _cli(args: list[str], tmp_path: Path, **kwargs: Any) -> Any:
    env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    env["HOME"] = str(tmp_path)  # no hub cache from the machine running the tests
    return subprocess.Popen([sys.executable, "-m", "attnscope", *args], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", [["params", "--config", "gpt3"], ["params", "--config", "gpt3", "--json"],
                                  ["models", "--json"]])
def test_a_full_standard_output_is_one_line(args: list[str], tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        proc = _cli(args, tmp_path, stdout=full)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to standard output"), err
    assert "internal error" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    proc = _cli(["params", "--config", "gpt3", "--json"], tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command writes (`| head -c 0`)
    _, err = proc.communicate(timeout=60)
    assert err == "" and proc.returncode == 141, (proc.returncode, err)
