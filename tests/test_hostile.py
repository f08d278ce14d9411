"""Hostile input and hard stops (issue 15).

Every bad input gets one `error: ...` line on stderr and a non-zero exit: never a
traceback, a hang, an unbounded allocation or a half-written file. One section per class:

1. paths a checkpoint names (an index's shards, links in its folder) that leave its folder;
2. special files (FIFOs) where a checkpoint's files should be, and unreadable folders;
3. safetensors headers declaring impossible shapes, offsets or header lengths;
4. config numbers beyond what can exist (sizes, RoPE base, epsilons, caps, windows);
5. saves: two runs racing for one path, and SIGTERM/SIGHUP during a save;
6. `mask-demo --truncate` and an absurd `--window`;
7. control characters from the user or a file, printed as text or in an error line;

and a fuzzing run over the three readers of untrusted bytes (config.json, safetensors
header, GGUF header): only the project's own errors may come out. Anything that could
hang runs in a subprocess with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnscope import checkpoint, export, masks
from attnscope.cli import app
from attnscope.config import MAX_LAYERS, MAX_SIZE, ModelConfig, from_hf_config, read_config_json
from attnscope.errors import AttnscopeError, CheckpointError, ConfigError, ExportError, UsageError

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "80",
    "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None,
    "ATTNSCOPE_MODEL": None,
}
TEXT = "a blue cat sat on the mat"
LONG = " ".join(["the fluffy blue creature sat on the mat"] * 20)  # far past bert_bare's 64 positions
FEW = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Raw control characters: C0 (ESC starts terminal escapes), DEL and C1 (U+009B is a CSI).
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def run(*args: Any, **env: str | None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **env}, terminal_width=80)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def one_error_line(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: ") and "internal error" not in line, line
    assert not RAW_CONTROL.search(line), repr(line)
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


def assert_error(result: Any, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    return one_error_line(result.stderr, *needles)


def cli_process(args: list[Any], cwd: Path, timeout: float = 20, script: str | None = None) -> Any:
    """The CLI in a fresh interpreter, killed after `timeout` seconds: a hang fails the test."""
    env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    env["HOME"] = str(cwd)  # no hub cache from the machine running the tests
    start = [sys.executable, "-c", script] if script else [sys.executable, "-m", "attnscope"]
    command = [*start, *map(str, args)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"attnscope {' '.join(map(str, args))} still ran after {timeout} s: it hangs")


def assert_process_error(proc: Any, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-1000:], proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stdout == ""
    return one_error_line(proc.stderr, *needles)


@pytest.fixture()
def bert(build: Callable[[str], Path]) -> Path:
    return build("bert_bare")


@pytest.fixture()
def model(bert: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny BERT checkpoint, to spoil."""
    folder = tmp_path / "model"
    shutil.copytree(bert, folder)
    return folder


def index_naming(folder: Path, shard: str) -> None:
    """Replace the folder's weights by an index that files every tensor under `shard`."""
    names = list(checkpoint.read_header(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    doc = {"metadata": {}, "weight_map": {name: shard for name in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))


# ------------------------------------------------------- 1. paths that leave the folder


@pytest.mark.parametrize("how", ["parent", "absolute", "etc-passwd", "through-subfolder", "link", "linked-folder"])
def test_index_shard_outside_the_folder_is_refused(how: str, model: Path, tmp_path: Path) -> None:
    """The shard is another model's valid weights (or /etc/passwd): opening it would work."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(model / "model.safetensors", outside / "other.safetensors")
    (model / "sub").mkdir()
    shard = {
        "parent": "../outside/other.safetensors",
        "absolute": str(outside / "other.safetensors"),
        "etc-passwd": "../" * 40 + "etc/passwd",
        "through-subfolder": "sub/../../outside/other.safetensors",
        "link": "link.safetensors",
        "linked-folder": "elsewhere/other.safetensors",
    }[how]
    (model / "link.safetensors").symlink_to(outside / "other.safetensors")
    (model / "elsewhere").symlink_to(outside, target_is_directory=True)
    index_naming(model, shard)
    assert_error(run("params", "-m", model, "--json"), 1, "outside the model folder")
    assert_error(run("attend", TEXT, "-m", model), 1, "outside the model folder")


def test_link_in_the_folder_to_outside_is_refused(model: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    (model / "model.safetensors").rename(elsewhere)
    (model / "model.safetensors").symlink_to(elsewhere)
    assert_error(run("params", "-m", model, "--json"), 1, "outside the model folder", "model.safetensors")
    (model / "model.safetensors").unlink()
    shutil.copyfile(elsewhere, model / "model.safetensors")
    (model / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    (model / "tokenizer.json").symlink_to(tmp_path / "tokenizer.json")
    assert_error(run("attend", TEXT, "-m", model), 1, "outside the model folder", "tokenizer.json")


def test_shards_and_links_inside_the_folder_are_fine(model: Path) -> None:
    expected = json.loads(ok(run("params", "-m", model, "--json")).stdout)["totals"]
    (model / "sub").mkdir()
    shutil.move(model / "model.safetensors", model / "sub" / "weights.safetensors")
    (model / "model.safetensors").symlink_to(Path("sub") / "weights.safetensors")  # relative, inside
    index_naming(model, "./sub/../sub/weights.safetensors")
    assert json.loads(ok(run("params", "-m", model, "--json")).stdout)["totals"] == expected


def make_cache_repo(cache: Path, repo_id: str, source: Path, blob_repo: str | None = None) -> Path:
    """A hub cache entry whose snapshot links each file to `blobs/` (of `blob_repo`'s folder)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = cache / ("models--" + (blob_repo or repo_id).replace("/", "--")) / "blobs"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    blobs.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for src in sorted(source.iterdir()):
        blob = blobs / hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_hub_cache_links_to_its_own_blobs_only(bert: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    own = make_cache_repo(cache, "org/own", bert)
    ok(run("params", "-m", "org/own", "--json", HF_HUB_CACHE=str(cache)))
    ok(run("params", "-m", own, "--json"))  # the snapshot folder itself, by path
    make_cache_repo(cache, "org/thief", bert, blob_repo="org/victim")  # links into another repo's blobs
    assert_error(run("params", "-m", "org/thief", "--json", HF_HUB_CACHE=str(cache)), 1, "outside the model folder")


@pytest.fixture(scope="module")
def escape_site(tmp_path_factory: pytest.TempPathFactory, build: Callable[[str], Path]) -> Path:
    """base/model (weights in model.safetensors and sub/), base/outside/other.safetensors."""
    base = tmp_path_factory.mktemp("escape")
    folder = base / "model"
    shutil.copytree(build("bert_bare"), folder)
    (folder / "sub").mkdir()
    shutil.copyfile(folder / "model.safetensors", folder / "sub" / "model.safetensors")
    (base / "outside").mkdir()
    shutil.copyfile(folder / "model.safetensors", base / "outside" / "other.safetensors")
    shutil.copyfile(folder / "model.safetensors", base / "other.safetensors")
    return folder


@FEW
@given(parts=st.lists(st.sampled_from(["..", ".", "sub", "outside", "model", "model.safetensors",
                                        "other.safetensors", "", "x\x1b"]), min_size=1, max_size=6),
       absolute=st.booleans())
@example(parts=["..", "outside", "other.safetensors"], absolute=False)
@example(parts=["sub", "..", "..", "other.safetensors"], absolute=False)
@example(parts=[".."] * 12 + ["etc", "passwd"], absolute=False)
def test_no_index_reaches_outside(escape_site: Path, parts: list[str], absolute: bool) -> None:
    """Whatever the shard path, a checkpoint whose weights lie outside its folder is never built."""
    shard = ("/" if absolute else "") + "/".join(parts)
    names = list(checkpoint.read_header(escape_site / "model.safetensors"))
    (escape_site / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    try:
        ckpt = checkpoint.locate(escape_site)
    except CheckpointError as exc:
        assert "\n" not in exc.message
        return
    finally:
        (escape_site / "model.safetensors.index.json").unlink()
    root = escape_site.resolve()
    assert all(root in w.resolve().parents for w in ckpt.weights), ckpt.weights


# --------------------------------------------------------- 2. FIFOs, unreadable folders


@pytest.mark.parametrize(("name", "command"), [
    ("model.safetensors", "params"),
    ("config.json", "params"),
    ("model.safetensors.index.json", "params"),
    ("tokenizer.json", "attend"),
])
def test_fifo_in_the_model_folder(name: str, command: str, model: Path, tmp_path: Path) -> None:
    (model / name).unlink(missing_ok=True)
    os.mkfifo(model / name)
    args = ["params", "-m", model] if command == "params" else ["attend", TEXT, "-m", model]
    assert_process_error(cli_process(args, tmp_path), 1, "not a regular file", name)


def test_fifo_given_directly(tmp_path: Path) -> None:
    for name in ("weights.safetensors", "config.json"):
        os.mkfifo(tmp_path / name)
    assert_process_error(cli_process(["params", "-m", tmp_path / "weights.safetensors"], tmp_path), 1,
                         "not a regular file")
    assert_process_error(cli_process(["params", "--config", tmp_path / "config.json"], tmp_path), 1,
                         "not a regular file")


def test_unreadable_folder(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 means nothing to root, so the refusal the OS would give is simulated."""
    real_scandir, real_open = os.scandir, os.open

    def scandir(path: Any = ".") -> Any:
        if Path(path) == model:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert_error(run("params", "-m", model), 1, "permission denied", str(model))
    monkeypatch.setattr(os, "scandir", real_scandir)

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path).parent == model:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    assert_error(run("params", "-m", model), 1, "permission denied")


# ------------------------------------------------------------- 3. safetensors headers


def safetensors_file(path: Path, header: Any, data: bytes = b"", length: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def header_error(path: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_header(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, message
    return message


def test_header_over_the_cap_says_so(tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "h.safetensors", {}, length=checkpoint.MAX_HEADER + 1)
    header_error(path, f"header of {checkpoint.MAX_HEADER + 1} bytes exceeds the 100 MiB limit")
    path = safetensors_file(tmp_path / "h.safetensors", {}, length=1000)
    header_error(path, "runs past the end")


@pytest.mark.parametrize("shape", [
    [0, 2**63], [2**63, 0], [-1], [True, 4], [2**53], [2.0], ["2"], None, [2**40, 2**40], [[2]], [1, 2**64 + 1],
])
def test_impossible_shapes(shape: Any, tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "s.safetensors", {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}},
                            bytes(8))
    header_error(path, "'t'")


@pytest.mark.parametrize("offsets", [[0, 10**20], [-8, 0], [8, 0], [0, 2**64], [0, True], [0], [0.0, 8.0]])
def test_offsets_beyond_the_file(offsets: Any, tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "o.safetensors", {"t": {"dtype": "F32", "shape": [2], "data_offsets": offsets}},
                            bytes(8))
    header_error(path, "'t'")


def test_many_huge_dims_are_refused_quickly(tmp_path: Path) -> None:
    """Multiplying out 100,000 dims of 2**52 would take minutes; the check stops at once."""
    shape = [2**52] * 100_000
    path = safetensors_file(tmp_path / "d.safetensors", {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}},
                            bytes(8))
    start = time.monotonic()
    header_error(path, "do not hold")
    assert time.monotonic() - start < 2


def test_giant_number_in_header(tmp_path: Path) -> None:
    """json.loads refuses integers over 4,300 digits with a plain ValueError."""
    path = tmp_path / "n.safetensors"
    blob = b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4))
    header_error(path, "not valid JSON")


def test_impossible_shape_through_the_cli(model: Path) -> None:
    safetensors_file(model / "model.safetensors",
                     {"t": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}})
    assert_error(run("params", "-m", model), 1, "malformed shape")


dims = st.integers(min_value=-3, max_value=2**70) | st.sampled_from([0, 1, 2, 2**53 - 1, 2**53, 2**63, True]) \
    | st.floats(allow_nan=True) | st.text(max_size=3)


@FEW
@given(shape=st.lists(dims, max_size=5), start=st.integers(-4, 40) | st.sampled_from([2**64, 10**30]),
       end=st.integers(-4, 40) | st.sampled_from([2**64, 10**30]), dtype=st.sampled_from(["F32", "BF16", "U8", "I64"]))
@example(shape=[0, 2**63], start=0, end=0, dtype="F32")
def test_header_numbers(tmp_path: Path, shape: list[Any], start: int, end: int, dtype: str) -> None:
    entry = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
    path = safetensors_file(tmp_path / "f.safetensors", {"t": entry}, bytes(32))
    try:
        infos = checkpoint.read_header(path)
    except CheckpointError:
        return
    info = infos["t"]
    assert all(type(d) is int and 0 <= d < 2**53 for d in info.shape)
    assert 0 <= info.start <= info.end <= 32
    assert info.numel * checkpoint.DTYPE_SIZES[dtype] == info.end - info.start


# ---------------------------------------------------------------- 4. config numbers


BASES: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100, "n_positions": 64},
    "llama": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
    "mistral": {"model_type": "mistral", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
                "sliding_window": 8},
    "gemma2": {"model_type": "gemma2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "vocab_size": 100,
               "max_position_embeddings": 64, "sliding_window": 8, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 8},
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64, "type_vocab_size": 2},
    "gpt_neox": {"model_type": "gpt_neox", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64, "rotary_pct": 0.25},
    "opt": {"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64,
            "vocab_size": 100, "max_position_embeddings": 64, "word_embed_proj_dim": 32},
    "phi": {"model_type": "phi", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64, "partial_rotary_factor": 0.5},
}
LAYER_KEY = {"gpt2": "n_layer"}


def within_bounds(cfg: ModelConfig) -> None:
    """What every accepted config must satisfy (config.py's documented bounds)."""
    assert 0 < cfg.n_layers <= MAX_LAYERS
    for size in (cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_ctx, cfg.d_head, cfg.n_heads * cfg.d_head):
        assert type(size) is int and 0 < size <= MAX_SIZE
    assert 0 < cfg.n_kv_heads <= cfg.n_heads <= cfg.d_model
    assert math.isfinite(cfg.rope_theta) and cfg.rope_theta >= 1
    assert math.isfinite(cfg.norm_eps) and cfg.norm_eps >= 0
    for cap in (cfg.attn_scale, cfg.attn_softcap, cfg.final_softcap):
        assert cap is None or (math.isfinite(cap) and cap > 0)
    for window in [cfg.sliding_window, *(cfg.layer_windows or [])]:
        assert window is None or (type(window) is int and 0 < window <= MAX_SIZE)
    assert all(type(getattr(cfg, f)) is bool for f in ("causal", "tied_embeddings", "qkv_bias", "parallel", "lm_head"))


@pytest.mark.parametrize("family", sorted(BASES))
def test_bases_are_valid(family: str) -> None:
    within_bounds(from_hf_config(dict(BASES[family]), name=family))


@pytest.mark.parametrize(("family", "key", "value", "words"), [
    ("gpt2", "n_layer", 10**15, "n_layers"),
    ("gpt2", "n_layer", MAX_LAYERS + 1, "100,000"),
    ("gpt2", "vocab_size", 2**40, "vocab_size"),
    ("gpt2", "n_positions", 2**31 + 1, "n_ctx"),
    ("gpt2", "n_inner", 2**64, "d_mlp"),
    ("gpt2", "n_head", 64, "heads exceed the width"),
    ("gpt2", "layer_norm_epsilon", json.loads("1e400"), "norm_eps"),
    ("gpt2", "layer_norm_epsilon", float("nan"), "norm_eps"),
    ("gpt2", "tie_word_embeddings", "false", "tie_word_embeddings"),
    ("llama", "rope_theta", 1e-300, "rope_theta"),
    ("llama", "rope_theta", json.loads("1e400"), "rope_theta"),
    ("llama", "rope_theta", 0.5, "rope_theta"),
    ("llama", "rms_norm_eps", float("inf"), "norm_eps"),
    ("llama", "head_dim", 2**40, "2**31"),
    ("llama", "attention_bias", 1, "attention_bias"),
    ("mistral", "sliding_window", 10**30, "sliding_window"),
    ("gemma2", "sliding_window", 10**30, "2**31"),
    ("gemma2", "attn_logit_softcapping", json.loads("1e400"), "attn_softcap"),
    ("gemma2", "final_logit_softcapping", float("inf"), "final_softcap"),
    ("gemma2", "num_hidden_layers", 10**15, "n_layers"),
    ("gpt_neox", "rotary_pct", json.loads("1e400"), ""),
    ("gpt_neox", "num_hidden_layers", 10**15, "n_layers"),
    ("bert", "type_vocab_size", 2**40, "n_types"),
    ("opt", "word_embed_proj_dim", 2**40, "d_embed"),
    ("phi", "partial_rotary_factor", 1e300, ""),
])
def test_impossible_config_numbers(family: str, key: str, value: Any, words: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        from_hf_config({**BASES[family], key: value}, name=family)
    assert time.monotonic() - start < 1, "a declared size was enumerated"
    assert words in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)


def test_params_answers_a_huge_config_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**BASES["gpt2"], "n_layer": 10**15}))
    start = time.monotonic()
    assert_error(run("params", "--config", path), 1, "n_layers", "limit")
    assert time.monotonic() - start < 5
    path.write_text(json.dumps({**BASES["gpt2"], "n_layer": MAX_LAYERS, "n_embd": 8, "n_head": 1}))
    doc = json.loads(ok(run("params", "--config", path, "--json")).stdout)  # the largest allowed: counted, not listed
    assert doc["shape"]["n_layers"] == MAX_LAYERS
    assert time.monotonic() - start < 10


def test_config_json_with_hostile_text(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    for text in ('{"n_layer": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000, '{"a": 1e400}', "\udcff"):
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            from_hf_config(read_config_json(path))
        except ConfigError as exc:
            assert "\n" not in exc.message and len(exc.message) < 400
    with open(path, "wb") as f:
        f.truncate(101 * 1024 * 1024)  # sparse: a 101 MiB config.json costs no disk
    with pytest.raises(ConfigError, match="exceeds the 100 MiB limit"):
        read_config_json(path)


hostile_numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2**31, 2**31 + 1, 2**53, 10**15, 10**30, 10**5000, MAX_LAYERS, MAX_LAYERS + 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-300, 1e300, json.loads("1e400"), -0.0, 0.5, True, False, None, "8", "false", [8], {}])
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(BASES)), data=st.data())
def test_config_numbers_are_bounded(family: str, data: Any) -> None:
    base = BASES[family]
    keys = sorted(set(base) - {"model_type"}) + ["rope_theta", "sliding_window", "head_dim", "tie_word_embeddings",
                                                 "layer_norm_eps", "rms_norm_eps", "attn_logit_softcapping"]
    edits = data.draw(st.dictionaries(st.sampled_from(keys), hostile_numbers, min_size=1, max_size=3))
    try:
        cfg = from_hf_config({**base, **edits}, name="fuzz")
    except ConfigError as exc:
        assert "\n" not in exc.message
        return
    within_bounds(cfg)


# ----------------------------------------------------------------------- 5. saves


def test_a_file_written_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "p.npz"
    with pytest.raises(ExportError, match="already exists .written by another run meanwhile"):
        with export.atomic_path(target) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"theirs")  # another run finished first
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    with export.atomic_path(target, force=True) as tmp:  # --force: replace it
        tmp.write_bytes(b"ours")
    assert target.read_bytes() == b"ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]


def test_racing_saves_only_one_wins(tmp_path: Path) -> None:
    """Eight writers finish at once, all aiming at one name without --force."""
    target = tmp_path / "p.npz"
    barrier = threading.Barrier(8)
    results: list[str] = []

    def save(i: int) -> None:
        try:
            with export.atomic_path(target) as tmp:
                tmp.write_bytes(f"writer {i}".encode())
                barrier.wait(timeout=10)
            results.append(f"saved {i}")
        except ExportError as exc:
            results.append(exc.message)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    winners = [r for r in results if r.startswith("saved")]
    assert len(results) == 8 and len(winners) == 1, results
    assert all("meanwhile" in r for r in results if not r.startswith("saved"))
    assert target.read_bytes() == f"writer {winners[0].split()[1]}".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_cli_save_racing_another_run(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "p.safetensors"
    target.parent.mkdir()
    real_close = export.PatternWriter.close

    def close(self: Any) -> None:
        target.write_bytes(b"another run's file")
        real_close(self)

    monkeypatch.setattr(export.PatternWriter, "close", close)
    assert_error(run("attend", TEXT, "-m", bert, "--save", target), 1, "already exists", "meanwhile")
    assert target.read_bytes() == b"another run's file"
    assert [p.name for p in target.parent.iterdir()] == ["p.safetensors"]


SIGNAL_SCRIPT = """
import os, signal, sys, time
import attnscope.export as export
real = export.PatternWriter.write_layer
SIGNAL = getattr(signal, sys.argv[1])

def write_layer(self, probs):
    real(self, probs)
    assert any(p.name.endswith(".part") for p in self.path.parent.iterdir())  # mid-save
    os.kill(os.getpid(), SIGNAL)
    time.sleep(30)  # the handler raises here

export.PatternWriter.write_layer = write_layer
sys.argv = ["attnscope", *sys.argv[2:]]
from attnscope.cli import main
main()
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_signal_during_save_cleans_up(name: str, bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = cli_process([name, "attend", TEXT, "-m", bert, "--save", out / "p.npz"], tmp_path, script=SIGNAL_SCRIPT)
    assert_process_error(proc, 128 + getattr(signal, name), "terminated")
    assert list(out.iterdir()) == [], "a hidden .part file was left behind"


def test_signal_handlers_are_restored(bert: Path) -> None:
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)]
    ok(run("params", "--config", "gpt2"))
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)] == before


# --------------------------------------------------------------------- 6. mask-demo


def test_mask_demo_truncate(bert: Path) -> None:
    assert_error(run("mask-demo", LONG, "-m", bert), 2, "--truncate")
    doc = json.loads(ok(run("mask-demo", LONG, "-m", bert, "--truncate", "--json")).stdout)
    assert len(doc["tokens"]) == 64 and doc["truncated_from"] > 64
    padded = json.loads(ok(run("mask-demo", LONG, "-m", bert, "--truncate", "--kind", "padding", "--json")).stdout)
    assert len(padded["tokens"]) == 64 and padded["padding"] == masks.PAD_COUNT
    assert_error(run("mask-demo", LONG, "-m", bert, "--kind", "padding"), 2, "--truncate")
    out = ok(run("mask-demo", LONG, "-m", bert, "--truncate")).stdout
    assert f"cut from {doc['truncated_from']} tokens by --truncate" in " ".join(out.split())


def test_mask_demo_window_is_bounded(bert: Path) -> None:
    assert_error(run("mask-demo", "-m", bert, "--kind", "sliding-window", "--window", "99999999999999999999"),
                 2, "--window", "2**31")
    doc = json.loads(ok(run("mask-demo", TEXT, "-m", bert, "--kind", "sliding-window", "--window", str(2**31),
                            "--json")).stdout)
    assert doc["window"] == 2**31 and "-inf" not in json.dumps(doc["steps"][1]["matrix"][-1][:-1])


@given(window=st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from([2**31, 2**31 + 1]))
@settings(max_examples=60, deadline=None)
def test_check_kind_bounds_the_window(window: int) -> None:
    try:
        got = masks.check_kind("sliding-window", window)
    except UsageError:
        assert not 1 <= window <= 2**31
        return
    assert got == window and 1 <= window <= 2**31


# ------------------------------------------------------------------ 7. control characters


HOSTILE_TEXT = "cat \x1b]0;owned\x07 \x1b[2J\x9b31m sat\r\n"


def test_mask_demo_shows_control_characters(bert: Path) -> None:
    out = ok(run("mask-demo", HOSTILE_TEXT, "-m", bert)).stdout
    assert not RAW_CONTROL.search(out.replace("\n", "")), repr(out[:400])
    text_line = next(line for line in out.splitlines() if line.startswith("text: "))
    assert "\\x1b" in text_line and "\\x07" in text_line and "\\x9b" in text_line
    doc = ok(run("mask-demo", HOSTILE_TEXT, "-m", bert, "--json")).stdout
    assert not RAW_CONTROL.search(doc.replace("\n", "")), "--json left a raw control character"
    assert json.loads(doc)["text"] == HOSTILE_TEXT  # escaped, not altered


@FEW
@given(name=st.text(alphabet=st.characters(max_codepoint=0x20) | st.sampled_from("\x7f\x9b\x85ab/é"), min_size=1,
                    max_size=12))
@example(name="\x1b[2J\x1b]0;title\x07")
def test_error_lines_show_control_characters(tmp_path: Path, name: str) -> None:
    result = run("params", "-m", str(tmp_path / f"no-such-{name}"), "--json")
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stdout == ""
    line = one_error_line(result.stderr)
    if "\x1b" in name:
        assert "\\x1b" in line


# ----------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def valid_safetensors(tmp_path_factory: pytest.TempPathFactory, build: Callable[[str], Path]) -> bytes:
    return (build("bert_bare") / "model.safetensors").read_bytes()


@FEW
@given(data=st.data())
def test_fuzz_safetensors_header(tmp_path: Path, valid_safetensors: bytes, data: Any) -> None:
    blob = bytearray(valid_safetensors)
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    for at, value in data.draw(st.lists(st.tuples(st.integers(0, header_end - 1), st.integers(0, 255)), max_size=6)):
        blob[at] = value
    cut = data.draw(st.none() | st.integers(0, len(blob)))
    path = tmp_path / "f.safetensors"
    path.write_bytes(bytes(blob[:cut]))
    try:
        infos = checkpoint.read_header(path)
    except AttnscopeError as exc:
        assert isinstance(exc, CheckpointError) and "\n" not in exc.message
        return
    size = path.stat().st_size
    assert all(info.end <= size for info in infos.values())


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A tiny Llama GGUF written by gguf-py, and where its tensor data starts."""
    pytest.importorskip("gguf")
    import tiny_gguf as tg

    from attnscope.sources.gguf import read_gguf

    path = tg.llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path.read_bytes(), read_gguf(path).data_start


@FEW
@given(data=st.data())
def test_fuzz_gguf_header(tmp_path: Path, tiny_gguf: tuple[bytes, int], data: Any) -> None:
    from attnscope.sources.gguf import gguf_config, read_gguf

    original, data_start = tiny_gguf
    blob = bytearray(original)
    for at, value in data.draw(st.lists(st.tuples(st.integers(0, data_start - 1), st.integers(0, 255)),
                                        min_size=1, max_size=6)):
        blob[at] = value
    cut = data.draw(st.none() | st.integers(0, len(blob)))
    path = tmp_path / "f.gguf"
    path.write_bytes(bytes(blob[:cut]))
    try:
        from_hf_config(gguf_config(read_gguf(path)), name="fuzz")
    except AttnscopeError as exc:
        assert "\n" not in exc.message


@pytest.mark.parametrize("raw, tensor", [
    ({**BASES["bert"], "hidden_size": 2**31, "num_attention_heads": 2**10}, "pooler.weight"),
    ({"model_type": "llama", "hidden_size": 2**31, "num_hidden_layers": 1, "num_attention_heads": 2**10,
      "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64}, "attn.q.weight"),
])
def test_a_tensor_past_2_48_values_is_one_config_error(raw: dict[str, Any], tensor: str) -> None:
    """Each size within 2**31, but a product of two (a d × d matrix at d = 2**31) would
    overflow a torch storage even on the meta device: refused where the config is read,
    naming the tensor, so that every accepted config builds."""
    with pytest.raises(ConfigError, match=rf"{re.escape(tensor)} would hold .* values"):
        from_hf_config(raw, name="huge")
