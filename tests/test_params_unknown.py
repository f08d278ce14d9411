"""Checkpoints of families attnscope does not know (issue 27).

`params --model` still counts every tensor from the headers (safetensors or GGUF), the
total and the total grouped by name into embeddings, attention, MLP, norms and other,
says that the family is unknown and exits 0; `attend` names the supported families in one
line and exits 1. Headers that lie are refused in one line, as for a known family.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_gguf as tg
import tiny_models as tm
from attnscope.architectures import supported
from attnscope.cli import app
from attnscope.params.stored import GROUPS, name_group, report_unknown

ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}

# A made-up family: names as Hugging Face and llama.cpp spell them, each group present.
TENSORS = {
    "model.embed_tokens.weight": ((50, 16), "embeddings"),
    "model.layers.0.input_layernorm.weight": ((16,), "norms"),
    "model.layers.0.mixer.in_proj.weight": ((64, 16), "other"),
    "model.layers.0.self_attn.q_proj.weight": ((16, 16), "attention"),
    "model.layers.0.self_attn.o_proj.bias": ((16,), "attention"),
    "model.layers.0.mlp.down_proj.weight": ((16, 24), "mlp"),
    "model.norm.weight": ((16,), "norms"),
    "lm_head.weight": ((50, 16), "embeddings"),
    "model.layers.0.self_attn.rotary_emb.inv_freq": ((4,), None),  # a buffer: skipped
}


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny UMT5 checkpoint (`tiny_models.unsupported`): a family attnscope lacks."""
    return tm.unsupported(tmp_path_factory.mktemp("t5"))


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def one_line_error(result: Any, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr and "internal error" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr
    return " ".join(result.stderr.split())


def made_up(folder: Path, config: dict[str, Any] | None = {"model_type": "zebra-lm", "hidden_size": 16}) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.zeros(shape) for name, (shape, _) in TENSORS.items()}, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def expected_groups() -> dict[str, int]:
    groups = dict.fromkeys(GROUPS, 0)
    for shape, group in TENSORS.values():
        if group is not None:
            groups[group] += prod(shape)
    return groups


# ------------------------------------------------------------------ safetensors


@pytest.mark.parametrize("config, family, words", [
    ({"model_type": "zebra-lm", "hidden_size": 16}, "zebra-lm", "model_type 'zebra-lm' is not one attnscope knows"),
    ({"hidden_size": 16}, None, "config.json names no model_type"),
    ({"model_type": 42}, "42", "model_type 42 is not one attnscope knows"),
])
def test_params_counts_an_unknown_family(config: Any, family: Any, words: str, tmp_path: Path) -> None:
    folder = made_up(tmp_path / "m", config)
    result = run("params", "--model", folder, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    groups = expected_groups()
    assert doc["family"] == family and doc["family_known"] is False and words in doc["note"]
    assert doc["groups"] == groups and doc["total"] == sum(groups.values())
    assert doc["tensors"] == len(TENSORS) - 1 and doc["skipped_buffers"] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    text = run("params", "--model", folder, "--context", "64")
    assert text.exit_code == 0, text.output
    out = " ".join(text.stdout.split())
    assert "family unknown" in out and f"Total (every stored parameter): {sum(groups.values()):,}" in out
    for label, group in (("Embeddings", "embeddings"), ("Attention", "attention"), ("MLP", "mlp"), ("Norms", "norms"),
                         ("Other", "other")):
        assert f"{groups[group]:,}" in out and label in out
    assert "--context needs the model's shape" in out


def test_unknown_total_is_transformers_own(t5: Path) -> None:
    """A real family attnscope does not implement (UMT5, saved by transformers): the total
    from the headers is the model's own num_parameters(), its shared table once."""
    folder = t5
    result = run("params", "--model", folder, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["family"] == "umt5"
    assert doc["total"] == tm.load_reference(folder, "UMT5Model").num_parameters()
    assert doc["groups"]["attention"] and doc["groups"]["mlp"] and doc["groups"]["norms"] and doc["groups"]["embeddings"]


def test_control_characters_in_the_family_are_shown(tmp_path: Path) -> None:
    folder = made_up(tmp_path / "m", {"model_type": "evil\x1b[31m\u202e"})
    result = run("params", "--model", folder)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout and "\\x1b" in result.stdout


def test_attend_names_the_supported_families(t5: Path, tmp_path: Path) -> None:
    for folder in (t5, made_up(tmp_path / "m")):
        said = one_line_error(run("attend", "The cat sat.", "--model", folder, "--device", "cpu"))
        assert "unsupported model_type" in said and all(f in said for f in ("bert", "roberta", "distilbert", "llama"))
        assert said.count("error:") == 1
    assert {"roberta", "xlm-roberta", "distilbert"} <= set(supported())


# ------------------------------------------------------------------ GGUF


def unknown_gguf(path: Path, arch: str = "mamba9") -> Path:
    """Two F32 tensors and a Q8_0 one of an architecture no family reads."""
    tensors = [("token_embd.weight", (32, 4), 0, 0), ("blk.0.ssm_in.weight", (32, 2), 0, 512),
               ("blk.0.attn_q.weight", (32, 2), 8, 768)]
    data = bytes(512 + 256) + bytes(2 * 34)  # F32 32x4, F32 32x2, then two Q8_0 blocks of 34 bytes
    path.write_bytes(tg.raw_gguf([tg.kv_string("general.architecture", arch)], tensors, data))
    return path


def test_params_counts_an_unknown_gguf(tmp_path: Path) -> None:
    path = unknown_gguf(tmp_path / "m.gguf")
    result = run("params", "--model", path, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert doc["family"] == "mamba9" and doc["family_known"] is False and "GGUF architecture 'mamba9'" in doc["note"]
    assert doc["groups"] == {"embeddings": 128, "attention": 64, "mlp": 0, "norms": 0, "other": 64}
    assert doc["total"] == 256 and doc["tensors"] == 3
    assert doc["quantization"]["F32"] == {"tensors": 2, "parameters": 192, "bytes": 768, "bits_per_weight": 32.0}
    assert doc["quantization"]["Q8_0"]["bytes"] == 68
    text = run("params", "--model", path)
    assert text.exit_code == 0 and "family unknown: mamba9" in text.stdout and "Q8_0" in text.stdout


def test_attend_on_an_unknown_gguf_names_the_supported(tmp_path: Path) -> None:
    said = one_line_error(run("attend", "The cat sat.", "--model", unknown_gguf(tmp_path / "m.gguf"), "--device", "cpu"))
    assert "'mamba9' is not supported" in said and "llama" in said and "gpt2" in said


# ------------------------------------------------------------------ hostile headers


def _safetensors(header: dict[str, Any], data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("content", [
    _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, bytes(16)),  # past the end
    _safetensors({"w": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 16]}}, bytes(16)),  # absurd
    _safetensors({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)),
    _safetensors({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)),
    _safetensors({}, b"", length=1 << 50),  # a header longer than the file
    b"\x01\x02",  # shorter than its length field
], ids=["past-end", "absurd-shape", "negative", "dtype", "header-length", "short"])
def test_hostile_headers_of_an_unknown_family_are_one_line(content: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(content)
    (folder / "config.json").write_text(json.dumps({"model_type": "zebra-lm"}))
    one_line_error(run("params", "--model", folder))


def test_hostile_gguf_of_an_unknown_family_is_one_line(tmp_path: Path) -> None:
    path = unknown_gguf(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-40])
    assert "runs past the end" in one_line_error(run("params", "--model", cut))
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(tg.raw_gguf([tg.kv_string("general.architecture", "mamba9")],
                                 [("t.weight", (1 << 40, 1 << 40), 0, 0)], bytes(64)))
    one_line_error(run("params", "--model", huge))


# ------------------------------------------------------------------ the grouping


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), st.lists(st.integers(0, 9), max_size=3)), max_size=20))
def test_grouping_counts_every_tensor_once(items: list[tuple[str, list[int]]]) -> None:
    names = dict(items)  # a header holds each name once
    rep = report_unknown(((n, tuple(s)) for n, s in names.items()), "src", "m", None, "why")
    counted = {n: s for n, s in names.items() if n not in rep.skipped}
    assert rep.total == sum(prod(s) for s in counted.values()) == sum(rep.groups.values())
    assert rep.tensors == len(counted) and set(rep.groups) == set(GROUPS)
    assert all(name_group(n) in GROUPS for n in names)


@pytest.mark.parametrize("name, group", [
    ("h.0.attn.c_proj.weight", "attention"), ("h.0.mlp.c_proj.weight", "mlp"), ("h.0.ln_1.weight", "norms"),
    ("encoder.block.0.layer.1.DenseReluDense.wo.weight", "mlp"), ("encoder.block.0.layer.0.SelfAttention.o.weight",
                                                                  "attention"),
    ("shared.weight", "embeddings"), ("blk.0.attn_norm.weight", "norms"), ("blk.0.ffn_gate.weight", "mlp"),
    ("output.weight", "embeddings"), ("output_norm.weight", "norms"), ("blk.0.output.weight", "other"),
    ("model.layers.3.block_sparse_moe.experts.7.w1.weight", "mlp"), ("model.layers.0.mixer.A_log", "other"),
])
def test_names_group_as_their_layouts_mean(name: str, group: str) -> None:
    assert name_group(name) == group
