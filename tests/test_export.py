"""`attend --save`: the .npz and .safetensors contract, and atomic, clean failures.

The contract (README, "Saving"): `attentions` float32 [layers, heads, n, n] whose row i is
query token i's distribution over the keys, `layers` and `heads` (the indices saved),
`token_ids` and `tokens`; .safetensors holds the same tensors with the tokens, as JSON,
in its metadata. Saved patterns must equal what the Python API's `attention()` returns.

Failures are simulated where they happen on a real machine: a disk that fills up while
the file is written (every write after the first N bytes fails with ENOSPC, as a full
disk does), a failing fsync or rename, and Ctrl-C at each of those points. After any
failure the folder must hold exactly what it held before: no file, no hidden temporary.
"""

from __future__ import annotations

import builtins
import errno
import gc
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import attnscope.export as export
import tiny_models as tm
from attnscope.cli import app

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "80",
    "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None,
    "ATTNSCOPE_MODEL": None,
}
TEXT = "a fluffy blue creature sat on the mat"


def run(*args: Any, **env: str | None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **env}, terminal_width=80)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_error(result: Any, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


@pytest.fixture()
def bert(build: Callable[[str], Path]) -> Path:
    return build("bert_bare")


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ----------------------------------------------------------------------- the contract


def expected(inspector: Callable[..., Any], name: str, text: str, layers: Any = None, heads: Any = None) -> Any:
    return inspector(name).attention(text, layers, heads)


def check_contract(att: np.ndarray, layers: np.ndarray, heads: np.ndarray, token_ids: np.ndarray,
                   tokens: list[str], want: Any, folder: Path, text: str) -> None:
    n = len(want.tokens)
    assert att.dtype == np.float32
    assert att.shape == (len(want.layers), len(want.heads), n, n)
    assert layers.dtype == np.int64 and heads.dtype == np.int64 and token_ids.dtype == np.int64
    assert layers.tolist() == want.layers
    assert heads.tolist() == want.heads
    assert token_ids.tolist() == want.tokens.ids == tm.plain_tokenizer(folder).encode(text).ids
    assert tokens == want.tokens.labels
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    assert (att >= 0).all()
    np.testing.assert_allclose(att, want.probs.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bert_bare", "gpt2"])
def test_npz_contract_all_layers_and_heads(name: str, build: Callable[[str], Path], inspector: Callable[..., Any],
                                           out: Path) -> None:
    folder = build(name)
    target = out / "patterns.npz"
    result = ok(run("attend", TEXT, "-m", folder, "--save", target))
    assert "saved" in result.stdout
    assert listing(out) == ["patterns.npz"]
    data = load_npz(target)
    assert set(data) == {"attentions", "layers", "heads", "token_ids", "tokens"}
    want = expected(inspector, name, TEXT)  # every layer and head: the view showed only the last layer
    assert want.layers == [0, 1] and want.heads == [0, 1, 2, 3]
    assert data["tokens"].dtype.kind == "U"
    check_contract(data["attentions"], data["layers"], data["heads"], data["token_ids"],
                   data["tokens"].tolist(), want, folder, TEXT)
    if name == "gpt2":  # causal: nothing above the diagonal
        n = data["attentions"].shape[-1]
        assert (data["attentions"][..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] == 0).all()


@pytest.mark.parametrize("name", ["bert_bare", "gpt2"])
def test_safetensors_contract(name: str, build: Callable[[str], Path], inspector: Callable[..., Any], out: Path) -> None:
    folder = build(name)
    target = out / "patterns.safetensors"
    ok(run("attend", TEXT, "-m", folder, "--save", target))
    assert listing(out) == ["patterns.safetensors"]
    tensors, meta = load_safetensors(target)
    assert set(tensors) == {"attentions", "layers", "heads", "token_ids"}
    assert json.loads(meta["tokens"]) == expected(inspector, name, TEXT).tokens.labels
    assert meta.get("text") == TEXT
    assert tensors["attentions"].dtype == torch.float32
    assert all(tensors[k].dtype == torch.int64 for k in ("layers", "heads", "token_ids"))
    check_contract(tensors["attentions"].numpy(), tensors["layers"].numpy(), tensors["heads"].numpy(),
                   tensors["token_ids"].numpy(), json.loads(meta["tokens"]), expected(inspector, name, TEXT), folder, TEXT)
    # The same file read by the safetensors library's own loader, not only by safe_open.
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(target))["attentions"], tensors["attentions"])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("layer, head, layers, heads", [("1", "0,2", [1], [0, 2]), ("0", "-1", [0], [3]),
                                                          ("all", "1-2", [0, 1], [1, 2]), ("-1", None, [1], [0, 1, 2, 3])])
def test_save_selection(suffix: str, layer: str, head: str | None, layers: list[int], heads: list[int], bert: Path,
                        inspector: Callable[..., Any], out: Path) -> None:
    target = out / f"sel{suffix}"
    extra = ["--layer", layer] + ([] if head is None else ["--head", head])
    ok(run("attend", TEXT, "-m", bert, "--save", target, *extra))
    if suffix == ".npz":
        data = load_npz(target)
        att, ls, hs = data["attentions"], data["layers"], data["heads"]
    else:
        tensors, _ = load_safetensors(target)
        att, ls, hs = tensors["attentions"].numpy(), tensors["layers"].numpy(), tensors["heads"].numpy()
    assert ls.tolist() == layers and hs.tolist() == heads
    want = expected(inspector, "bert_bare", TEXT, layers, heads)
    np.testing.assert_allclose(att, want.probs.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
def test_save_is_the_same_whatever_the_view(view: str, bert: Path, inspector: Callable[..., Any], out: Path) -> None:
    target = out / "p.npz"
    ok(run("attend", TEXT, "-m", bert, "--view", view, "--save", target))
    np.testing.assert_allclose(load_npz(target)["attentions"], expected(inspector, "bert_bare", TEXT).probs.numpy(),
                               atol=1e-6, rtol=0)


def test_save_with_json(bert: Path, out: Path) -> None:
    target = out / "p.npz"
    result = ok(run("attend", TEXT, "-m", bert, "--save", target, "--json"))
    doc = json.loads(result.stdout)
    assert doc["saved"] == str(target)
    assert load_npz(target)["attentions"].shape[:2] == (2, 4)


def test_save_truncated_text(bert: Path, out: Path) -> None:
    target = out / "p.npz"
    ok(run("attend", "the cat " * 40, "-m", bert, "--truncate", "--save", target))
    data = load_npz(target)
    assert data["attentions"].shape == (2, 4, 64, 64)
    assert len(data["tokens"]) == 64 and len(data["token_ids"]) == 64


def test_save_unicode_tokens(bert: Path, out: Path) -> None:
    text = "a blue 🦄 creature ✓"
    for target in (out / "u.npz", out / "u.safetensors"):
        ok(run("attend", text, "-m", bert, "--save", target))
    labels = load_npz(out / "u.npz")["tokens"].tolist()
    assert json.loads(load_safetensors(out / "u.safetensors")[1]["tokens"]) == labels
    assert load_safetensors(out / "u.safetensors")[1]["text"] == text


def test_save_topk_contract(bert: Path, inspector: Callable[..., Any], out: Path) -> None:
    target = out / "top.npz"
    ok(run("attend", TEXT, "-m", bert, "--save-topk", target, "--top-k", "3", "--layer", "all"))
    data = load_npz(target)
    want = expected(inspector, "bert_bare", TEXT).probs
    w, _ = torch.topk(want, 3, dim=-1)
    assert data["indices"].dtype == np.int64 and data["weights"].dtype == np.float32
    assert data["indices"].shape == data["weights"].shape == (2, 4, want.shape[-1], 3)
    np.testing.assert_allclose(data["weights"], w.numpy(), atol=1e-6)
    picked = np.take_along_axis(want.numpy(), data["indices"], axis=-1)
    np.testing.assert_allclose(picked, data["weights"], atol=1e-6)


def test_saved_file_respects_umask(bert: Path, out: Path) -> None:
    """A saved file gets the permissions any new file gets (0o666 minus the umask), not
    the owner-only 0o600 of a temporary file."""
    old = os.umask(0o022)
    try:
        for name in ("p.npz", "p.safetensors"):
            ok(run("attend", TEXT, "-m", bert, "--save", out / name))
            mode = (out / name).stat().st_mode & 0o777
            assert mode == 0o644, f"{name}: mode {oct(mode)}, want 0o644 under umask 022"
    finally:
        os.umask(old)


# -------------------------------------------------------------------- existing files


@pytest.mark.parametrize("name", ["p.npz", "p.safetensors"])
def test_existing_file_without_force(name: str, bert: Path, out: Path) -> None:
    target = out / name
    target.write_bytes(b"precious data, not to be lost\n")
    os.utime(target, (1_000_000, 1_000_000))
    before = target.read_bytes(), target.stat().st_mtime
    result = run("attend", TEXT, "-m", bert, "--save", target)
    assert_error(result, 1, "exists", "--force")
    assert result.stdout == ""
    assert (target.read_bytes(), target.stat().st_mtime) == before
    assert listing(out) == [name]


@pytest.mark.parametrize("name", ["p.npz", "p.safetensors"])
def test_existing_file_with_force(name: str, bert: Path, out: Path) -> None:
    target = out / name
    target.write_bytes(b"old")
    ok(run("attend", TEXT, "-m", bert, "--save", target, "--force"))
    assert listing(out) == [name]
    assert target.read_bytes() != b"old"
    if name.endswith(".npz"):
        assert load_npz(target)["attentions"].shape[:2] == (2, 4)
    else:
        assert load_safetensors(target)[0]["attentions"].shape[:2] == (2, 4)


def test_existing_file_json_without_force(bert: Path, out: Path) -> None:
    target = out / "p.npz"
    target.write_bytes(b"old")
    result = run("attend", TEXT, "-m", bert, "--save", target, "--json")
    assert_error(result, 1, "exists")
    assert result.stdout == "" and target.read_bytes() == b"old"


def test_save_onto_a_folder(bert: Path, out: Path) -> None:
    (out / "p.npz").mkdir()
    assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz", "--force"), 1, "folder")
    assert listing(out) == ["p.npz"] and listing(out / "p.npz") == []


def test_save_and_save_topk_to_the_same_file(bert: Path, out: Path) -> None:
    """One command may not write two results to one name: refused before running."""
    target = out / "same.npz"
    result = run("attend", TEXT, "-m", bert, "--save", target, "--save-topk", target)
    assert result.exit_code in (1, 2), (result.exit_code, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert listing(out) == [], "the command failed but left a file behind"


# ------------------------------------------------------------------- bad destinations


def test_save_into_missing_folder(bert: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "p.npz"
    assert_error(run("attend", TEXT, "-m", bert, "--save", target), 1, str(target.parent))
    assert not target.parent.exists()


def test_save_into_unwritable_folder(bert: Path, out: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    out.chmod(0o500)
    try:
        assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz"), 1, "permission")
        assert listing(out) == []
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("exc", [OSError(errno.EROFS, "Read-only file system"),
                                 PermissionError(errno.EACCES, "Permission denied")])
def test_cannot_create_the_temporary_file(exc: OSError, bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder passes the up-front checks but creating a file in it fails (a read-only
    mount, an ACL, root squash on NFS): a clean error, nothing left."""
    import tempfile

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", mkstemp)
    line = assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz"), 1, str(out))
    assert exc.strerror.lower() in line.lower()
    assert listing(out) == []


@pytest.mark.parametrize("name", ["p.txt", "p.npy", "p", "p.npz.tmp", "p.json", "p.NPZ"])
def test_unknown_extension(name: str, bert: Path, out: Path) -> None:
    # a name whose format cannot be told is a usage error (exit 2), found before any work
    assert_error(run("attend", TEXT, "-m", bert, "--save", out / name), 2, name)
    assert listing(out) == []


def test_bad_destination_fails_before_loading(tmp_path: Path, out: Path) -> None:
    """The destination is checked before the model is touched: a missing model and a
    bad --save name report the --save problem (cheap to check, and found first)."""
    result = run("attend", TEXT, "-m", tmp_path / "no-model", "--save", out / "p.txt")
    assert_error(result, 2, "p.txt")


# ------------------------------------------------------------ a disk that fills up


class Disk:
    """Installs an `open` in attnscope.export whose binary writers fail once `limit`
    bytes have been written, with `exc` (every later write too, unless `once`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.fired = False

    def fill_after(self, limit: int, exc: BaseException, once: bool = False) -> None:
        disk = self

        class Writer(io.BufferedWriter):
            written = 0

            def write(self, b: Any) -> int:
                Writer.written += len(b)
                if Writer.written > limit and not (once and disk.fired):
                    disk.fired = True
                    raise exc
                return super().write(b)

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if "b" in mode and ("w" in mode or "x" in mode):
                return Writer(io.FileIO(file, mode.replace("b", "").replace("+", "") or "w"))
            return builtins.open(file, mode, *args, **kwargs)

        self.monkeypatch.setattr(export, "open", fake_open, raising=False)


@pytest.fixture()
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


@pytest.fixture()
def no_unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Collects exceptions Python could not raise (e.g. from a half-closed ZipFile's
    __del__), which would otherwise print a traceback on stderr at exit."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    return seen


ENOSPC = OSError(errno.ENOSPC, "No space left on device")
# 0: the very first bytes (the file's header); 150: the npz header of `attentions`;
# 700: inside the attention data; 3000: after the data (small arrays, zip directory).
LIMITS = [0, 150, 700, 3000]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("limit", LIMITS)
def test_disk_full_while_writing(suffix: str, limit: int, bert: Path, out: Path, disk: Disk,
                                 no_unraisable: list[str]) -> None:
    disk.fill_after(limit, ENOSPC)
    target = out / f"p{suffix}"
    result = run("attend", TEXT, "-m", bert, "--layer", "all", "--save", target)
    if not disk.fired:
        pytest.fail(f"the simulated disk never filled: the file is smaller than {limit} bytes or not written via open()")
    assert_error(result, 1, "no space")
    assert listing(out) == [], "a failed save left files behind"
    gc.collect()
    assert no_unraisable == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("limit", [0, 700])
def test_disk_full_keeps_the_old_file(suffix: str, limit: int, bert: Path, out: Path, disk: Disk) -> None:
    """--force replaces the old file only once the new one is complete."""
    target = out / f"p{suffix}"
    target.write_bytes(b"the previous results")
    disk.fill_after(limit, ENOSPC)
    assert_error(run("attend", TEXT, "-m", bert, "--save", target, "--force"), 1, "no space")
    assert disk.fired
    assert target.read_bytes() == b"the previous results"
    assert listing(out) == [target.name]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_disk_full_at_fsync(suffix: str, bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems (NFS, quotas) report a full disk only when the data is flushed."""
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    assert_error(run("attend", TEXT, "-m", bert, "--save", out / f"p{suffix}"), 1, "no space")
    assert listing(out) == []


def test_disk_full_at_rename(bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).parent == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz"), 1, "no space")
    assert listing(out) == []


def test_other_write_error(bert: Path, out: Path, disk: Disk) -> None:
    disk.fill_after(700, OSError(errno.EIO, "Input/output error"))
    line = assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz"), 1, "p.npz")
    assert "input/output error" in line.lower()
    assert listing(out) == []


def test_not_enough_free_space_is_refused_before_running(bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-space check names both sizes legibly: a 1.5 KiB save on a disk with 100
    bytes free must not read 'needs 0.00 GiB but has 0.00 GiB free'."""
    real = shutil.disk_usage

    def disk_usage(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 100, 100)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    line = assert_error(run("attend", TEXT, "-m", bert, "--save", out / "p.npz"), 1)
    assert "space" in line.lower() or "free" in line.lower()
    assert listing(out) == []
    assert "0.00 GiB" not in line, line


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("limit", LIMITS)
def test_interrupt_while_writing(suffix: str, limit: int, bert: Path, out: Path, disk: Disk,
                                 no_unraisable: list[str]) -> None:
    disk.fill_after(limit, KeyboardInterrupt(), once=True)  # one Ctrl-C, as a user sends it
    result = run("attend", TEXT, "-m", bert, "--layer", "all", "--save", out / f"p{suffix}")
    assert disk.fired
    assert result.exit_code == 130, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert listing(out) == [], "an interrupted save left files behind"
    gc.collect()
    assert no_unraisable == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_interrupt_during_the_forward_pass(suffix: str, bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the model runs, with the streaming writer already open."""
    import attnscope.api as api

    def run_model(self: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api.Inspector, "run", run_model)
    result = run("attend", TEXT, "-m", bert, "--save", out / f"p{suffix}")
    assert result.exit_code == 130
    assert "Traceback" not in result.stdout + result.stderr
    assert listing(out) == []


def test_interrupt_at_fsync_keeps_the_old_file(bert: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = out / "p.npz"
    target.write_bytes(b"old results")

    def fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync)
    result = run("attend", TEXT, "-m", bert, "--save", target, "--force")
    assert result.exit_code == 130
    assert listing(out) == ["p.npz"] and target.read_bytes() == b"old results"


# ------------------------------------------------------------- the library directly


def test_save_patterns_round_trip(tmp_path: Path) -> None:
    probs = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)  # (L, H, n, n)
    labels = ["[CLS]", "a", "b", "c", "[SEP]"]
    for name in ("x.npz", "x.safetensors"):
        path = export.save_patterns(tmp_path / name, probs, [0, 2], [1, 3, 5], [1, 2, 3, 4, 5], labels, "a b c")
        assert path == tmp_path / name
    np.testing.assert_array_equal(load_npz(tmp_path / "x.npz")["attentions"], probs.numpy())
    tensors, meta = load_safetensors(tmp_path / "x.safetensors")
    assert torch.equal(tensors["attentions"], probs)
    assert tensors["layers"].tolist() == [0, 2] and tensors["heads"].tolist() == [1, 3, 5]
    assert json.loads(meta["tokens"]) == labels
    assert listing(tmp_path) == ["x.npz", "x.safetensors"]


def test_save_patterns_non_contiguous_and_half(tmp_path: Path) -> None:
    probs = torch.softmax(torch.randn(4, 2, 6, 6), dim=-1)
    view = probs.transpose(0, 1)  # (H, L, n, n) as a view: not contiguous
    export.save_patterns(tmp_path / "v.npz", view, [0, 1], [0, 1, 2, 3], list(range(6)), list("abcdef"))
    np.testing.assert_array_equal(load_npz(tmp_path / "v.npz")["attentions"], view.contiguous().numpy())
    export.save_patterns(tmp_path / "h.npz", probs.half(), [0, 1, 2, 3], [0, 1], list(range(6)), list("abcdef"))
    got = load_npz(tmp_path / "h.npz")["attentions"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, probs.half().float().numpy())
