"""Hub ids resolved through a local Hugging Face cache, built by hand in tmp_path.

The cache follows huggingface_hub's layout: `<cache>/models--ORG--NAME/refs/main` holds a
commit hash and `snapshots/<hash>/` the files. Real caches store each file once under
`blobs/<sha>` and make the snapshot entries relative symlinks to it; both layouts are
built here. HF_HUB_OFFLINE=1 is set in every run, so nothing can reach the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import tiny_models as tm
from attnscope.cli import app

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "80",
    "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None,
    "ATTNSCOPE_MODEL": None,
    "HF_HUB_CACHE": None,
    "HUGGINGFACE_HUB_CACHE": None,
    "HF_HOME": None,
    "XDG_CACHE_HOME": None,
}
TEXT = "a blue cat sat on the mat"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, and no cache from the machine running the tests: HOME points at tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "ATTNSCOPE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no folder here may shadow a hub id


def run(*args: Any, **env: str | None) -> Any:
    merged = {**ENV, **{k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "HOME")}, **env}
    return CliRunner().invoke(app, [str(a) for a in args], env=merged, terminal_width=80)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def assert_error(result: Any, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    assert result.stdout == ""
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def make_cache(cache: Path, repo_id: str, source: Path, symlinks: bool, commit: str = COMMIT,
               files: list[str] | None = None) -> Path:
    """Put `source`'s files into a hub cache as `repo_id` at `commit`; return the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
    for src in sorted(source.iterdir()):
        if files is not None and src.name not in files:
            continue
        if symlinks:
            blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, blob)
            (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
        else:
            shutil.copyfile(src, snapshot / src.name)
    return snapshot


def stored_numel(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith("position_ids"))
    return total


@pytest.fixture()
def bert(build: Callable[[str], Path]) -> Path:
    return build("bert_bare")


@pytest.fixture(params=["copies", "symlinks"])
def layout(request: pytest.FixtureRequest) -> bool:
    return request.param == "symlinks"


# ------------------------------------------------------------------------ it works


def test_attend_hub_id(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: bool) -> None:
    home = tmp_path / "hf"
    snapshot = make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=layout)
    if layout:
        assert (snapshot / "model.safetensors").is_symlink()
    monkeypatch.setenv("HF_HOME", str(home))
    by_id = json.loads(ok(run("attend", TEXT, "--model", "tiny-org/tiny-bert", "--json")).stdout)
    by_path = json.loads(ok(run("attend", TEXT, "--model", bert, "--json")).stdout)
    assert by_id["tokens"] == by_path["tokens"]
    assert [t["id"] for t in by_id["tokens"]] == tm.plain_tokenizer(bert).encode(TEXT).ids
    assert by_id["topk"] == by_path["topk"]
    assert by_id["model"] == "tiny-org/tiny-bert"
    table = ok(run("attend", TEXT, "--model", "tiny-org/tiny-bert"))
    assert table.stdout.splitlines()[0].startswith("tiny-org/tiny-bert")


def test_attend_hub_id_every_view_and_save(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(home))
    for view in ("focus", "topk", "heatmap", "overview"):
        ok(run("attend", TEXT, "-m", "tiny-org/tiny-bert", "--view", view))
    target = tmp_path / "p.npz"
    ok(run("attend", TEXT, "-m", "tiny-org/tiny-bert", "--save", target))
    with np.load(target) as data:
        assert data["attentions"].shape[:2] == (2, 4)


def test_params_hub_id(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: bool) -> None:
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=layout)
    monkeypatch.setenv("HF_HOME", str(home))
    doc = json.loads(ok(run("params", "--model", "tiny-org/tiny-bert", "--json")).stdout)
    by_path = json.loads(ok(run("params", "--model", bert, "--json")).stdout)
    assert doc["totals"]["full"] == stored_numel(bert) == by_path["totals"]["full"]
    assert doc["total"] == doc["totals"]["full"]
    assert doc["shape"]["d_model"] == 32
    assert doc["source"] == "tiny-org/tiny-bert"
    # The model is named after what the user typed, not after the snapshot's commit hash.
    assert COMMIT not in json.dumps(doc["model"]), doc["model"]


def test_hub_id_without_organisation(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids like `gpt2` have no organisation: models--gpt2 in the cache."""
    home = tmp_path / "hf"
    make_cache(home / "hub", "tinybert", bert, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(home))
    doc = json.loads(ok(run("attend", TEXT, "-m", "tinybert", "--json")).stdout)
    assert doc["n_tokens"] == len(tm.plain_tokenizer(bert).encode(TEXT).ids)


def test_sharded_hub_model(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sharded checkpoint (index + two shards) in a symlinked cache."""
    from safetensors.torch import save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(bert / name, sharded / name)
    with safe_open(str(bert / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/sharded", sharded, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(home))
    by_id = json.loads(ok(run("attend", TEXT, "-m", "tiny-org/sharded", "--json")).stdout)
    by_path = json.loads(ok(run("attend", TEXT, "-m", bert, "--json")).stdout)
    assert by_id["topk"] == by_path["topk"]
    counted = json.loads(ok(run("params", "-m", "tiny-org/sharded", "--json")).stdout)
    assert counted["totals"]["full"] == stored_numel(bert)


# ----------------------------------------------------------------- where the cache is


def test_hf_hub_cache_overrides_hf_home(bert: Path, build: Callable[[str], Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same id in two caches: HF_HUB_CACHE's copy (BERT) wins over HF_HOME's (GPT-2)."""
    home = tmp_path / "home-cache"
    hub_cache = tmp_path / "hub-cache"
    make_cache(home / "hub", "tiny-org/model", build("gpt2"), symlinks=True)
    make_cache(hub_cache, "tiny-org/model", bert, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    doc = json.loads(ok(run("attend", TEXT, "-m", "tiny-org/model", "--json")).stdout)
    assert [t["id"] for t in doc["tokens"]] == tm.plain_tokenizer(bert).encode(TEXT).ids
    assert doc["tokens"][0]["label"] == "[CLS]"


def test_hf_hub_cache_alone(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_cache = tmp_path / "hub-cache"
    make_cache(hub_cache, "tiny-org/tiny-bert", bert, symlinks=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    ok(run("attend", TEXT, "-m", "tiny-org/tiny-bert", "--json"))


def test_hf_home_without_hub_cache_does_not_see_hf_hub_cache_models(bert: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_cache(tmp_path / "elsewhere", "tiny-org/tiny-bert", bert, symlinks=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert_error(run("attend", TEXT, "-m", "tiny-org/tiny-bert"), 1, "tiny-org/tiny-bert")


def test_refs_main_picks_the_snapshot(bert: Path, build: Callable[[str], Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two snapshots in the cache; refs/main names the one to use."""
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/model", build("gpt2"), symlinks=True, commit=OTHER_COMMIT)
    shutil.rmtree(home / "hub" / "models--tiny-org--model" / "refs")
    make_cache(home / "hub", "tiny-org/model", bert, symlinks=True, commit=COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    doc = json.loads(ok(run("attend", TEXT, "-m", "tiny-org/model", "--json")).stdout)
    assert doc["tokens"][0]["label"] == "[CLS]"


# ------------------------------------------------------------------------- failures


@pytest.mark.parametrize("command", [["attend", TEXT], ["params"]])
def test_hub_id_not_in_cache(command: list[str], bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True)  # a cache, but not with this id
    monkeypatch.setenv("HF_HOME", str(home))
    line = assert_error(run(*command, "--model", "someone/missing-model"), 1, "someone/missing-model", "offline")
    assert "hf download someone/missing-model" in line
    assert "--model PATH" in line
    assert str(home / "hub") in line  # says which cache was searched


def test_hub_id_no_cache_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "does-not-exist"))
    assert_error(run("attend", TEXT, "-m", "someone/missing-model"), 1, "someone/missing-model", "hf download")


def test_hub_ref_to_missing_snapshot(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True)
    (home / "hub" / "models--tiny-org--tiny-bert" / "refs" / "main").write_text(OTHER_COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    assert_error(run("attend", TEXT, "-m", "tiny-org/tiny-bert"), 1, "tiny-org/tiny-bert")


def test_hub_broken_symlink(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob deleted from under its snapshot link (a half-cleaned cache)."""
    home = tmp_path / "hf"
    snapshot = make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True)
    (snapshot / "model.safetensors").resolve().unlink()
    monkeypatch.setenv("HF_HOME", str(home))
    assert_error(run("attend", TEXT, "-m", "tiny-org/tiny-bert"), 1)


def test_hub_snapshot_without_tokenizer(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True, files=["config.json", "model.safetensors"])
    monkeypatch.setenv("HF_HOME", str(home))
    assert_error(run("attend", TEXT, "-m", "tiny-org/tiny-bert"), 1, "tokenizer.json")
    ok(run("params", "-m", "tiny-org/tiny-bert", "--json"))  # counting needs no tokenizer


def test_hub_snapshot_without_weights(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    make_cache(home / "hub", "tiny-org/tiny-bert", bert, symlinks=True, files=["config.json", "tokenizer.json"])
    monkeypatch.setenv("HF_HOME", str(home))
    assert_error(run("attend", TEXT, "-m", "tiny-org/tiny-bert"), 1, "safetensors")


@pytest.mark.parametrize("spec", ["a/b/c", "org/", "/org/name-that-is-not-here", "./not-here"])
def test_neither_path_nor_hub_id(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert_error(run("attend", TEXT, "-m", spec), 1)
