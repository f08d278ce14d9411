"""Hostile input (issue 22): every dtype a checkpoint header may declare.

A safetensors header may declare any of 17 dtypes, a GGUF any ggml type. The float ones
are converted deliberately (and exactly: a weight stored as F16, BF16, FP8, E8M0 or F64
gives the same model as the same values stored as F32); the others (BOOL, the integers,
C64; GGUF's I8..I64) are refused in one line naming the tensor and its dtype, by `params
--model` and `attend` alike, before any model is built. Buffers are not weights: BERT's
I64 `position_ids` still loads.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from attnscope import checkpoint
from attnscope.api import load
from attnscope.cli import app

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80", "NO_COLOR": "1",
       "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None}

TORCH = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu, "U16": torch.uint16, "I16": torch.int16,
    "F16": torch.float16, "BF16": torch.bfloat16, "U32": torch.uint32, "I32": torch.int32, "F32": torch.float32,
    "U64": torch.uint64, "I64": torch.int64, "F64": torch.float64, "C64": torch.complex64,
}
REFUSED = [d for d in checkpoint.DTYPE_SIZES if d not in checkpoint.FLOAT_DTYPES]
# The probe's cases and more: where each sort of weight sits in the tiny checkpoints.
WEIGHTS = {
    "embedding": ("llama", "model.embed_tokens.weight"),
    "projection": ("llama", "model.layers.0.self_attn.q_proj.weight"),
    "norm": ("llama", "model.norm.weight"),
    "bias": ("gpt2", "transformer.h.1.attn.c_attn.bias"),
}


def test_every_safetensors_dtype_is_decided() -> None:
    assert set(TORCH) == set(checkpoint.DTYPE_SIZES)
    assert set(checkpoint.FLOAT_DTYPES) <= set(checkpoint.DTYPE_SIZES)
    assert all(TORCH[d].is_floating_point for d in checkpoint.FLOAT_DTYPES)
    assert not any(TORCH[d].is_floating_point for d in REFUSED)


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV, terminal_width=80)


def one_error_line(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout[-1000:], result.stderr, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def swapped(source: Path, folder: Path, name: str, convert: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """A copy of the checkpoint `source` with tensor `name` replaced by `convert(it)`."""
    shutil.copytree(source, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = convert(tensors[name]).contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def states(folder: Path) -> dict[str, torch.Tensor]:
    return load(str(folder), device="cpu", dtype="float32").model.state_dict()


@pytest.mark.parametrize("dtype", REFUSED)
@pytest.mark.parametrize("where", WEIGHTS)
def test_a_weight_that_is_not_a_float_is_one_line(dtype: str, where: str, build: Callable[[str], Path],
                                                 tmp_path: Path) -> None:
    family, name = WEIGHTS[where]
    folder = swapped(build(family), tmp_path / "m", name, lambda t: t.to(TORCH[dtype]))
    for args in (["params", "--model", folder], ["attend", "a blue cat", "--model", folder],
                 ["attend", "a blue cat", "--model", folder, "--dry-run"]):
        one_error_line(run(*args), repr(name), dtype)
    with pytest.raises(checkpoint.CheckpointError, match=dtype):
        load(str(folder), device="cpu")


@pytest.mark.parametrize("dtype", checkpoint.FLOAT_DTYPES)
@pytest.mark.parametrize("where", ["embedding", "norm", "bias"])
def test_a_float_weight_loads_exactly(dtype: str, where: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    """The weight in `dtype` gives exactly the model of its values stored as F32."""
    family, name = WEIGHTS[where]
    if dtype == "F8_E8M0":  # powers of two only (no sign, no zero): give it values it holds
        convert: Callable[[torch.Tensor], torch.Tensor] = lambda t: torch.exp2(torch.round(t.abs().clamp_min(1e-3).log2()))  # noqa: E731
    else:
        convert = lambda t: t  # noqa: E731
    stored = swapped(build(family), tmp_path / "stored", name, lambda t: convert(t).to(TORCH[dtype]))
    widened = swapped(build(family), tmp_path / "f32", name, lambda t: convert(t).to(TORCH[dtype]).float())
    ours, want = states(stored), states(widened)
    assert ours.keys() == want.keys()
    for key in want:
        assert ours[key].dtype == torch.float32
        assert torch.equal(ours[key], want[key]), key
    assert run("params", "--model", stored).exit_code == 0


def test_buffers_keep_their_integer_dtype(build: Callable[[str], Path], tmp_path: Path) -> None:
    """BERT checkpoints ship `position_ids` as I64 and old GPT-2 ones a BOOL causal mask:
    buffers, not weights, so they load."""
    folder = tmp_path / "bert"
    shutil.copytree(build("bert"), folder)
    tensors = load_file(folder / "model.safetensors")
    prefix = next(n for n in tensors if n.endswith("embeddings.word_embeddings.weight"))[: -len("word_embeddings.weight")]
    tensors[prefix + "position_ids"] = torch.arange(64, dtype=torch.int64)[None]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint.locate(folder).tensors[prefix + "position_ids"].dtype == "I64"
    assert run("params", "--model", folder).exit_code == 0
    assert run("attend", "a blue cat", "--model", folder, "--json").exit_code == 0


def test_an_unused_integer_tensor_is_not_read(build: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(build("llama"), folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["score.weight_scale_inv"] = torch.ones(3, dtype=torch.int32)  # not a tensor of the family
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert run("attend", "a blue cat", "--model", folder, "--json").exit_code == 0


# ---------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    import tiny_gguf as tg

    return tg.llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def retyped(source: Path, target: Path, name: str, type_name: str) -> Path:
    """`source` with tensor `name`'s ggml type set to `type_name` in the header, its
    dimensions changed so that it spans at most the same bytes."""
    import gguf

    blob = bytearray(source.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = blob.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", blob, at)
    dims = list(struct.unpack_from(f"<{n_dims}Q", blob, at + 4))
    type_at = at + 4 + 8 * n_dims
    (old,) = struct.unpack_from("<I", blob, type_at)
    old_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(old)]
    new = gguf.GGMLQuantizationType[type_name]
    new_size = gguf.GGML_QUANT_SIZES[new]
    nbytes = dims[0] // old_size[0] * old_size[1] * int(np.prod(dims[1:]))
    dims = [nbytes // new_size[1] * new_size[0]] + [1] * (n_dims - 1)  # as many whole blocks as fit
    struct.pack_into(f"<{n_dims}Q", blob, at + 4, *dims)
    struct.pack_into("<I", blob, type_at, int(new))
    target.write_bytes(bytes(blob))
    return target


@pytest.mark.parametrize("type_name", ["I8", "I16", "I32", "I64"])
@pytest.mark.parametrize("name", ["output_norm.weight", "token_embd.weight", "blk.0.attn_q.weight"])
def test_gguf_integer_types_are_one_line(type_name: str, name: str, tiny_gguf: Path, tmp_path: Path) -> None:
    path = retyped(tiny_gguf, tmp_path / "int.gguf", name, type_name)
    for args in (["params", "--model", path], ["attend", "a blue cat", "--model", path]):
        one_error_line(run(*args), repr(name), type_name)


def test_gguf_type_without_a_dequantizer_is_one_line(tiny_gguf: Path, tmp_path: Path) -> None:
    path = retyped(tiny_gguf, tmp_path / "q8k.gguf", "blk.1.ffn_down.weight", "Q8_K")
    one_error_line(run("attend", "a blue cat", "--model", path), "'blk.1.ffn_down.weight'", "Q8_K")


def test_gguf_f64_loads_exactly(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An F64 tensor (gguf-py has no dequantizer for it) is widened by hand: the same model
    as the file with that tensor in F32."""
    import gguf
    import tiny_gguf as tg

    add = gguf.GGUFWriter.add_tensor

    def add_f64(self: Any, name: str, tensor: np.ndarray, *args: Any, **kwargs: Any) -> None:
        if name in ("output_norm.weight", "blk.1.attn_norm.weight"):
            kwargs["raw_dtype"] = gguf.GGMLQuantizationType.F64
            tensor = tensor.astype(np.float64)
        add(self, name, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", add_f64)
    path = tg.llama(tmp_path / "f64.gguf")
    monkeypatch.undo()
    from attnscope.sources.gguf import read_gguf

    assert read_gguf(path).tensors["output_norm.weight"].type_name == "F64"
    ours, want = states(path), states(tiny_gguf)
    for key in want:
        assert torch.equal(ours[key], want[key]), key
