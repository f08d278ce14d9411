"""GGUF files found the ways users keep them: a .gguf path, a folder holding one, an
ollama-style extension-less blob, the Hugging Face cache as REPO[:QUANT]; and the packaged
names. Each opens to the same model as the plain path (same ids, same attention)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tiny_gguf
from attnscope.cli import app

TEXT = "a fluffy blue creature"


def run(*args: Any, **env: str | None) -> Any:
    base = {"HF_HUB_OFFLINE": "1", "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None, "NO_COLOR": "1"}
    return CliRunner().invoke(app, [str(a) for a in args], env={**base, **env})


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gguf.llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def _doc(*args: Any, **env: str | None) -> dict[str, Any]:
    res = run("attend", TEXT, "--json", "--layer", "all", "--head", "all", *args, **env)
    assert res.exit_code == 0, (res.output, res.stderr)
    return json.loads(res.stdout)


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [t["id"] for t in a["tokens"]] == [t["id"] for t in b["tokens"]]
    assert a["layers"] == b["layers"] and a["heads"] == b["heads"]
    strip = lambda d: json.dumps({k: v for k, v in d.items() if k not in ("model",)}, sort_keys=True)
    assert strip(a) == strip(b)


def test_folder_and_blob_open_like_the_file(gguf_file: Path, tmp_path: Path) -> None:
    want = _doc("-m", gguf_file)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(gguf_file, folder / gguf_file.name)
    _same(_doc("-m", folder), want)
    blob = tmp_path / "sha256-0123abcd"  # ollama keeps its models as extension-less blobs
    shutil.copy(gguf_file, blob)
    _same(_doc("-m", blob), want)


def test_folder_with_two_ggufs_asks_for_one(gguf_file: Path, tmp_path: Path) -> None:
    for name in ("a.Q8_0.gguf", "a.Q4_0.gguf"):
        shutil.copy(gguf_file, tmp_path / name)
    res = run("attend", TEXT, "-m", tmp_path)
    assert res.exit_code == 2 and "2 GGUF files" in res.stderr


def _cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    snapshot = root / ("models--" + repo.replace("/", "--")) / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("c" * 40)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    return snapshot


def test_hub_cache_repo_and_quant(gguf_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache(cache, "org/tiny-GGUF", {"tiny.Q8_0.gguf": gguf_file, "tiny.Q4_K_M.gguf": gguf_file})
    env = {"HF_HUB_CACHE": str(cache)}
    want = _doc("-m", gguf_file)
    _same(_doc("-m", "org/tiny-GGUF:Q8_0", **env), want)
    _same(_doc("-m", "org/tiny-GGUF", **env), want)  # several: Q4_K_M, as llama.cpp picks
    res = run("attend", TEXT, "-m", "org/tiny-GGUF:Q5_K_S", **env)
    assert res.exit_code == 1 and "Q5_K_S" in res.stderr and "tiny.Q8_0.gguf" in res.stderr
    res = run("attend", TEXT, "-m", "org/absent-GGUF:Q8_0", **env)
    assert res.exit_code == 1 and "not in the Hugging Face cache" in res.stderr


def test_generate_and_heads_on_a_gguf(gguf_file: Path) -> None:
    res = run("generate", TEXT, "-m", gguf_file, "-n", "3", "--ignore-eos", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["token_ids"]) == 3
    res = run("heads", TEXT, "-m", gguf_file, "--score", "previous_token", "--json")
    assert res.exit_code == 0, res.output


def test_dry_run_reads_the_gguf_header(gguf_file: Path) -> None:
    res = run("attend", TEXT, "-m", gguf_file, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mapped_file_bytes"] == gguf_file.stat().st_size and doc["weights_bytes"] > 0
