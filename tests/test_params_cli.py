"""CLI tests for `attnscope params`, through typer.testing.CliRunner and `--json`.

Expected numbers come from public sources (3Blue1Brown's GPT-3 tally, the published
config.json files and their well-known counts) or are computed here from the tensors the
test itself writes; none is pasted from attnscope's output. Checkpoints are tiny and
written into tmp_path; nothing downloads (HF_HUB_OFFLINE is set for every run).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from math import prod
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

cli = pytest.importorskip("attnscope.cli")
app = cli.app

REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": ""}

# 3Blue1Brown's GPT-3 tally ("How might LLMs store facts", Deep Learning chapter 7).
GPT3 = dict(d_model=12_288, n_layers=96, n_heads=96, d_head=128, vocab=50_257)
GPT3_TOTAL_3B1B = 175_181_291_520
GPT3_PER_HEAD = 6_291_456
GPT3_ATTENTION_PER_BLOCK = 603_979_776
GPT3_ATTENTION_TOTAL = 57_982_058_496
GPT3_MLP_PER_BLOCK = 1_207_959_552

# The published gpt2 config.json (openai-community/gpt2) and its 124,439,808 parameters.
GPT2_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
}
GPT2_TOTAL = 124_439_808


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result


def run_json(*args: str) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    doc = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert isinstance(doc, dict)
    return doc


def assert_clean_error(result: Any, exit_code: int | None = None, *needles: str, one_line: bool = True) -> str:
    """A failure: non-zero exit, a message on stderr, no traceback, nothing on stdout.
    `one_line=False` for errors click reports itself while parsing (it prints the usage
    line and a hint above the message)."""
    assert result.exit_code != 0, result.stdout
    if exit_code is not None:
        assert result.exit_code == exit_code, (result.exit_code, result.stderr, result.exception)
    stderr = result.stderr
    assert stderr.strip(), f"no message on stderr (exception: {result.exception!r})"
    assert "Traceback" not in result.output
    assert "internal error" not in stderr  # a known failure, not a bug caught by the handler
    if one_line:
        assert len([line for line in stderr.splitlines() if line.strip()]) <= 2  # the message, maybe a hint
    assert result.stdout.strip() == ""
    squeezed = "".join(stderr.split())  # immune to line wrapping
    for needle in needles:
        assert "".join(needle.split()) in squeezed, (needle, stderr)
    return stderr


# --------------------------------------------------------------------------- presets


def test_gpt3_json_matches_the_video():
    doc = run_json("params", "--config", "gpt3")
    assert doc["convention"] == "3b1b"
    assert doc["total"] == GPT3_TOTAL_3B1B
    assert doc["totals"]["3b1b"] == GPT3_TOTAL_3B1B
    assert doc["attention"]["per_head"] == GPT3_PER_HEAD
    assert doc["attention"]["per_query_head"] + doc["attention"]["per_kv_head"] == GPT3_PER_HEAD
    assert doc["attention"]["per_block"] == GPT3_ATTENTION_PER_BLOCK
    assert doc["attention"]["total"] == GPT3_ATTENTION_TOTAL
    assert doc["mlp"]["per_block"] == GPT3_MLP_PER_BLOCK
    assert doc["mlp"]["total"] == 96 * GPT3_MLP_PER_BLOCK
    for value in (doc["total"], doc["totals"]["full"], doc["attention"]["per_block"]):
        assert type(value) is int  # plain ints, never rounded strings


def test_gpt3_full_convention_matches_transformers():
    """`--convention full` headlines transformers' count of the same shape."""
    doc = run_json("params", "--config", "gpt3", "--convention", "full")
    assert doc["convention"] == "full"
    assert doc["total"] == doc["totals"]["full"]
    assert doc["totals"]["3b1b"] == GPT3_TOTAL_3B1B  # the other convention is still reported

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = transformers.GPT2Config(n_embd=12288, n_layer=96, n_head=96, n_inner=49152, vocab_size=50257,
                                     n_positions=2048)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    assert doc["totals"]["full"] == model.num_parameters()


def test_gpt2_preset_headlines_full():
    doc = run_json("params", "--config", "gpt2")
    assert doc["convention"] == "full"
    assert doc["total"] == GPT2_TOTAL


def test_gpt2_preset_in_3b1b():
    doc = run_json("params", "--config", "gpt2", "--convention", "3b1b")
    d, L, V, ff = 768, 12, 50257, 3072
    # weight matrices only: token embedding, Q K V O, up, down, and the (tied) unembedding again
    assert doc["convention"] == "3b1b"
    assert doc["total"] == 2 * V * d + L * (4 * d * d + 2 * d * ff)
    assert doc["totals"]["full"] == GPT2_TOTAL


def test_gqa_has_no_per_head_figure():
    doc = run_json("params", "--config", "llama3-8b")
    assert doc["total"] == 8_030_261_248  # Meta-Llama-3-8B
    assert "per_head" not in doc["attention"]
    assert doc["attention"]["per_query_head"] == 2 * 4096 * 128
    assert doc["attention"]["per_kv_head"] == 2 * 4096 * 128
    assert doc["attention"]["per_block"] == 32 * 2 * 4096 * 128 + 8 * 2 * 4096 * 128


@pytest.mark.parametrize(
    "name,total",
    [("llama2-7b", 6_738_415_616), ("mistral-7b", 7_241_732_096), ("bert-base", 109_482_240),
     ("all-minilm-l6-v2", 22_713_216), ("gpt2-medium", 354_823_168)],
)
def test_published_totals_through_the_cli(name, total):
    assert run_json("params", "--config", name)["total"] == total


def test_list_shows_presets():
    result = run("params", "--list")
    assert result.exit_code == 0, result.stderr
    for name in ("gpt3", "gpt2", "bert-base", "llama3-8b", "mistral-7b", "qwen2-0.5b"):
        assert name in result.stdout, name


def test_list_json_names_every_preset():
    from attnscope.config import PRESETS

    result = run("params", "--list", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    text = json.dumps(doc)
    for name in PRESETS:
        assert f'"{name}"' in text, name


def test_text_output_shows_the_video_numbers():
    result = run("params", "--config", "gpt3")
    assert result.exit_code == 0, result.stderr
    for number in ("175,181,291,520", "6,291,456", "603,979,776", "1,207,959,552"):
        assert number in result.stdout, number


# --------------------------------------------------------------------------- --context


def test_context_2048_gpt3():
    n = 2048
    doc = run_json("params", "--config", "gpt3", "--context", str(n))
    ctx = doc["context"]
    L, H, dh, d = GPT3["n_layers"], GPT3["n_heads"], GPT3["d_head"], GPT3["d_model"]
    assert ctx["n"] == n
    assert ctx["pattern_entries"]["per_head"] == n * n == 4_194_304
    assert ctx["pattern_entries"]["per_block"] == H * n * n
    assert ctx["pattern_entries"]["total"] == L * H * n * n
    # K and V: one d_head vector each, per layer and kv head, per token.
    assert ctx["kv_cache"]["values_per_token"] == 2 * L * H * dh
    assert ctx["kv_cache"]["values"] == 2 * L * H * dh * n
    assert ctx["kv_cache"]["bytes"] == 2 * L * H * dh * n * 4  # float32 by default
    # Forward FLOPs per token: 2 per weight in every matmul (Q K V O, up, down, unembedding;
    # Kaplan et al. 2020, Table 1) plus QK^T and pattern·V, 2 * n * d_attn each per layer
    # (Hoffmann et al. 2022, Appendix F, softmax left out).
    matmul_weights = GPT3_ATTENTION_TOTAL + 96 * GPT3_MLP_PER_BLOCK + GPT3["vocab"] * d
    assert ctx["flops_per_token"] == 2 * matmul_weights + L * 4 * n * d


def test_context_kv_cache_llama3_8b_bf16():
    # Llama 3 8B: 32 layers x 8 kv heads x 128 x (K, V) = 65,536 values, 128 KiB a token in bf16.
    doc = run_json("params", "--config", "llama3-8b", "--context", "8192", "--dtype", "bfloat16")
    kv = doc["context"]["kv_cache"]
    assert kv["values_per_token"] == 65_536
    assert kv["values"] == 65_536 * 8192
    assert kv["bytes"] == 2**30  # 1 GiB at 8K tokens
    assert doc["context"]["pattern_entries"]["per_head"] == 8192 * 8192


def test_context_without_json_renders():
    result = run("params", "--config", "gpt3", "--context", "2048")
    assert result.exit_code == 0, result.stderr
    assert "4,194,304" in result.stdout  # 2048² entries per head


@pytest.mark.parametrize("bad", ["0", "-5", "many"])
def test_context_must_be_a_positive_int(bad):
    # click's own parse error: exit 2 (click.UsageError.exit_code), usage text allowed
    assert_clean_error(run("params", "--config", "gpt3", "--context", bad), 2, "--context", one_line=False)


def test_bad_convention_is_a_usage_error():
    assert_clean_error(run("params", "--config", "gpt3", "--convention", "kaplan"), 2, "kaplan", one_line=False)


def test_unknown_option_is_a_usage_error():
    assert_clean_error(run("params", "--config", "gpt3", "--bogus"), 2, "--bogus", one_line=False)


# --------------------------------------------------------------------------- --config PATH


def test_config_path_file_and_folder(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG), encoding="utf-8")
    for spec in (tmp_path / "config.json", tmp_path):
        doc = run_json("params", "--config", str(spec))
        assert doc["convention"] == "full"  # configs headline the full count
        assert doc["total"] == GPT2_TOTAL
        assert doc["attention"]["per_head"] == 4 * 768 * 64


def test_config_path_named_like_a_preset_folder(tmp_path: Path):
    """A folder called `gpt3` holding a gpt2 config is read as a path only when given as one."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(GPT2_CONFIG), encoding="utf-8")
    assert run_json("params", "--config", str(folder), "--convention", "full")["total"] == GPT2_TOTAL


def test_config_path_not_json(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    assert_clean_error(run("params", "--config", str(path)), 1, "config.json")


def test_config_path_unknown_model_type(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "umt5", "hidden_size": 64}), encoding="utf-8")
    stderr = assert_clean_error(run("params", "--config", str(path)), 1, "umt5")
    for supported in ("gpt2", "bert", "llama"):
        assert supported in stderr


def test_config_path_heads_do_not_divide(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GPT2_CONFIG, "n_embd": 100, "n_head": 3}), encoding="utf-8")
    assert_clean_error(run("params", "--config", str(path)), 1, "100")


def test_config_missing_path(tmp_path: Path):
    assert_clean_error(run("params", "--config", str(tmp_path / "nope" / "config.json")))


# --------------------------------------------------------------------------- tiny checkpoints


def _gpt2_tensors(d: int = 8, n_layer: int = 2, vocab: int = 11, n_pos: int = 6) -> dict[str, Any]:
    """The tensors of a Hugging Face GPT-2 checkpoint, named as the Hub's model.safetensors
    names them (Conv1D weights stored (in, out)), with the causal-mask buffers old
    checkpoints carry (`h.N.attn.bias`, `h.N.attn.masked_bias`)."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Any:
        return torch.randn(*shape, generator=g)

    t: dict[str, Any] = {"wte.weight": r(vocab, d), "wpe.weight": r(n_pos, d)}
    for i in range(n_layer):
        h = f"h.{i}."
        t |= {
            h + "ln_1.weight": r(d), h + "ln_1.bias": r(d),
            h + "attn.c_attn.weight": r(d, 3 * d), h + "attn.c_attn.bias": r(3 * d),
            h + "attn.c_proj.weight": r(d, d), h + "attn.c_proj.bias": r(d),
            h + "attn.bias": torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos),
            h + "ln_2.weight": r(d), h + "ln_2.bias": r(d),
            h + "mlp.c_fc.weight": r(d, 4 * d), h + "mlp.c_fc.bias": r(4 * d),
            h + "mlp.c_proj.weight": r(4 * d, d), h + "mlp.c_proj.bias": r(d),
        }
    t["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    t |= {"ln_f.weight": r(d), "ln_f.bias": r(d)}
    return t


GPT2_BUFFERS = ("h.0.attn.bias", "h.1.attn.bias", "h.0.attn.masked_bias")


def _gpt2_config(d: int = 8, n_layer: int = 2, vocab: int = 11, n_pos: int = 6) -> dict[str, Any]:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": d, "n_layer": n_layer,
            "n_head": 2, "vocab_size": vocab, "n_positions": n_pos, "n_ctx": n_pos,
            "activation_function": "gelu_new"}


def _params_numel(tensors: dict[str, Any], buffers: tuple[str, ...]) -> int:
    return sum(t.numel() for name, t in tensors.items() if name not in buffers)


def _write_single(folder: Path, tensors: dict[str, Any], config: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _write_sharded(folder: Path, shards: list[dict[str, Any]], config: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weight_map, total_size = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(folder / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total_size += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _gpt2_weights_only(tensors: dict[str, Any]) -> int:
    """The video's convention: the matrices (embedding, c_attn = Q K V, c_proj = O, up,
    down) and the tied unembedding once more; no positions, biases or norms."""
    names = [n for n in tensors if n.endswith(("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight"))]
    return 2 * tensors["wte.weight"].numel() + sum(tensors[n].numel() for n in names)


def test_model_single_file_skips_buffers(tmp_path: Path):
    tensors = _gpt2_tensors()
    folder = _write_single(tmp_path / "tiny-gpt2", tensors, _gpt2_config())
    expected = _params_numel(tensors, GPT2_BUFFERS)
    for spec in (folder, folder / "model.safetensors"):
        doc = run_json("params", "--model", str(spec))
        assert doc["convention"] == "full"  # checkpoints headline the full count
        assert doc["total"] == doc["totals"]["full"] == expected
        assert sorted(doc["skipped_buffers"]) == sorted(GPT2_BUFFERS)
        assert doc["totals"]["3b1b"] == _gpt2_weights_only(tensors)


def test_model_count_equals_config_count(tmp_path: Path):
    """The tensors stored are exactly what the config describes, so both counts agree."""
    tensors = _gpt2_tensors()
    folder = _write_single(tmp_path / "tiny-gpt2", tensors, _gpt2_config())
    from_model = run_json("params", "--model", str(folder))
    from_config = run_json("params", "--config", str(folder / "config.json"))
    assert from_model["totals"] == from_config["totals"]
    assert from_model["attention"]["per_block"] == from_config["attention"]["per_block"]
    assert "skipped_buffers" not in from_config or from_config["skipped_buffers"] == []


def test_model_sharded_with_index(tmp_path: Path):
    tensors = _gpt2_tensors()
    names = list(tensors)
    shards = [
        {n: tensors[n] for n in names if n.startswith(("wte", "wpe", "h.0."))},
        {n: tensors[n] for n in names if n.startswith("h.1.")},
        {n: tensors[n] for n in names if n.startswith("ln_f")},
    ]
    assert sum(len(s) for s in shards) == len(tensors)
    folder = _write_sharded(tmp_path / "sharded", shards, _gpt2_config())
    doc = run_json("params", "--model", str(folder))
    assert doc["total"] == _params_numel(tensors, GPT2_BUFFERS)
    assert sorted(doc["skipped_buffers"]) == sorted(GPT2_BUFFERS)


def _llama_tensors(d: int = 16, n_layer: int = 2, n_heads: int = 4, n_kv: int = 2, dh: int = 4, ff: int = 24,
                   vocab: int = 13, tied: bool = False) -> dict[str, Any]:
    """A Llama checkpoint as transformers saves it (`model.` prefix, nn.Linear (out, in)),
    with the rotary `inv_freq` buffers older checkpoints carry."""
    torch = pytest.importorskip("torch")
    t: dict[str, Any] = {"model.embed_tokens.weight": torch.zeros(vocab, d)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": torch.zeros(d),
            p + "self_attn.q_proj.weight": torch.zeros(n_heads * dh, d),
            p + "self_attn.k_proj.weight": torch.zeros(n_kv * dh, d),
            p + "self_attn.v_proj.weight": torch.zeros(n_kv * dh, d),
            p + "self_attn.o_proj.weight": torch.zeros(d, n_heads * dh),
            p + "self_attn.rotary_emb.inv_freq": torch.zeros(dh // 2),
            p + "post_attention_layernorm.weight": torch.zeros(d),
            p + "mlp.gate_proj.weight": torch.zeros(ff, d),
            p + "mlp.up_proj.weight": torch.zeros(ff, d),
            p + "mlp.down_proj.weight": torch.zeros(d, ff),
        }
    t["model.norm.weight"] = torch.zeros(d)
    if not tied:
        t["lm_head.weight"] = torch.zeros(vocab, d)
    return t


def _llama_config(d: int = 16, n_layer: int = 2, n_heads: int = 4, n_kv: int = 2, dh: int = 4, ff: int = 24,
                  vocab: int = 13, tied: bool = False) -> dict[str, Any]:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": d,
            "num_hidden_layers": n_layer, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
            "head_dim": dh, "intermediate_size": ff, "vocab_size": vocab, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "hidden_act": "silu"}


@pytest.mark.parametrize("tied", [False, True])
def test_model_llama_sharded_gqa(tmp_path: Path, tied: bool):
    tensors = _llama_tensors(tied=tied)
    names = list(tensors)
    shards = [dict(list(tensors.items())[: len(names) // 2]), dict(list(tensors.items())[len(names) // 2:])]
    folder = _write_sharded(tmp_path / "llama", shards, _llama_config(tied=tied))
    buffers = tuple(n for n in names if n.endswith("inv_freq"))
    doc = run_json("params", "--model", str(folder))
    assert doc["total"] == _params_numel(tensors, buffers)
    assert sorted(doc["skipped_buffers"]) == sorted(buffers)
    assert "per_head" not in doc["attention"]  # 4 query heads share 2 kv heads
    assert doc["attention"]["per_query_head"] == 2 * 16 * 4
    # and it is what transformers would build from the same config
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = {k: v for k, v in _llama_config(tied=tied).items() if k != "model_type"}
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    assert doc["total"] == model.num_parameters()


def test_model_counts_unknown_tensors_too(tmp_path: Path):
    """Full = every parameter stored: a head we have no name for (a classifier's `score`)
    is still a parameter, not a buffer."""
    torch = pytest.importorskip("torch")
    tensors = _llama_tensors()
    tensors["score.weight"] = torch.zeros(3, 16)
    folder = _write_single(tmp_path / "llama-cls", tensors, _llama_config())
    buffers = tuple(n for n in tensors if n.endswith("inv_freq"))
    doc = run_json("params", "--model", str(folder))
    assert doc["total"] == _params_numel(tensors, buffers)
    assert "score.weight" not in doc["skipped_buffers"]


def test_model_bert_pretraining_counts_the_nsp_head(tmp_path: Path):
    """A BERT checkpoint as bert-base-uncased ships it (BertForPreTraining names, `bert.`
    prefix, `position_ids` buffer): the next-sentence head is a stored parameter, so the
    full count includes it; only `position_ids` is a buffer."""
    torch = pytest.importorskip("torch")
    d, ff, vocab, n_pos = 8, 12, 17, 10
    t: dict[str, Any] = {
        "bert.embeddings.word_embeddings.weight": torch.zeros(vocab, d),
        "bert.embeddings.position_embeddings.weight": torch.zeros(n_pos, d),
        "bert.embeddings.token_type_embeddings.weight": torch.zeros(2, d),
        "bert.embeddings.LayerNorm.weight": torch.zeros(d),
        "bert.embeddings.LayerNorm.bias": torch.zeros(d),
        "bert.embeddings.position_ids": torch.arange(n_pos).view(1, n_pos),
    }
    p = "bert.encoder.layer.0."
    for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
        t[p + part + ".weight"], t[p + part + ".bias"] = torch.zeros(d, d), torch.zeros(d)
    for part in ("attention.output.LayerNorm", "output.LayerNorm"):
        t[p + part + ".weight"], t[p + part + ".bias"] = torch.zeros(d), torch.zeros(d)
    t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = torch.zeros(ff, d), torch.zeros(ff)
    t[p + "output.dense.weight"], t[p + "output.dense.bias"] = torch.zeros(d, ff), torch.zeros(d)
    t |= {
        "bert.pooler.dense.weight": torch.zeros(d, d), "bert.pooler.dense.bias": torch.zeros(d),
        "cls.predictions.bias": torch.zeros(vocab),
        "cls.predictions.transform.dense.weight": torch.zeros(d, d),
        "cls.predictions.transform.dense.bias": torch.zeros(d),
        "cls.predictions.transform.LayerNorm.weight": torch.zeros(d),
        "cls.predictions.transform.LayerNorm.bias": torch.zeros(d),
        "cls.seq_relationship.weight": torch.zeros(2, d),
        "cls.seq_relationship.bias": torch.zeros(2),
    }
    config = {"model_type": "bert", "architectures": ["BertForPreTraining"], "hidden_size": d,
              "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": ff, "vocab_size": vocab,
              "max_position_embeddings": n_pos, "type_vocab_size": 2, "hidden_act": "gelu"}
    folder = _write_single(tmp_path / "bert", t, config)
    doc = run_json("params", "--model", str(folder))
    assert doc["skipped_buffers"] == ["bert.embeddings.position_ids"]
    assert doc["total"] == _params_numel(t, ("bert.embeddings.position_ids",))


# --------------------------------------------------------------------------- corrupt checkpoints


def _raw_file(folder: Path, blob: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_gpt2_config()), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(blob)
    return folder


def _with_header(header: Any, data: bytes, raw: bytes | None = None) -> bytes:
    blob = raw if raw is not None else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(blob)) + blob + data


CORRUPT = {
    "empty": b"",
    "too-short": b"\x01\x02\x03",
    "length-past-end": struct.pack("<Q", 10_000) + b'{"a": 1}',
    "huge-length": struct.pack("<Q", 2**63) + b"{}",
    "not-json": _with_header(None, b"", raw=b"this is not json"),
    "not-utf8": _with_header(None, b"", raw=b"\xff\xfe\xfd"),
    "not-an-object": _with_header([1, 2, 3], b""),
    "unknown-dtype": _with_header({"wte.weight": {"dtype": "F17", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16)),
    "bad-shape": _with_header({"wte.weight": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}}, bytes(16)),
    "bad-offsets": _with_header({"wte.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0]}}, bytes(16)),
    "overlapping-offsets": _with_header(
        {"wte.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
         "wpe.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}},
        bytes(24),
    ),
    "offsets-past-file": _with_header({"wte.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(8)),
    "size-mismatch": _with_header({"wte.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, bytes(16)),
}


@pytest.mark.parametrize("blob", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_safetensors_headers(tmp_path: Path, blob: bytes):
    folder = _raw_file(tmp_path / "ckpt", blob)
    result = run("params", "--model", str(folder))
    assert_clean_error(result, 1, "model.safetensors")


def test_index_names_a_missing_shard(tmp_path: Path):
    tensors = _gpt2_tensors()
    folder = _write_sharded(tmp_path / "sharded", [tensors], _gpt2_config())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["ln_f.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_clean_error(run("params", "--model", str(folder)), 1, "model-00002-of-00002.safetensors")


def test_index_not_json(tmp_path: Path):
    folder = _write_sharded(tmp_path / "sharded", [_gpt2_tensors()], _gpt2_config())
    (folder / "model.safetensors.index.json").write_text("{oops")
    assert_clean_error(run("params", "--model", str(folder)), 1)


def test_folder_without_weights(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(_gpt2_config()))
    assert_clean_error(run("params", "--model", str(tmp_path)), 1)


def test_model_without_config_json(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _gpt2_tensors().items()}, str(tmp_path / "model.safetensors"))
    assert_clean_error(run("params", "--model", str(tmp_path)), 1, "config.json")


def test_model_file_that_is_not_safetensors(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(_gpt2_config()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    assert_clean_error(run("params", "--model", str(tmp_path / "pytorch_model.bin")), 1)


# --------------------------------------------------------------------------- usage errors


def test_missing_model_path(tmp_path: Path):
    missing = tmp_path / "no" / "such" / "checkpoint"
    assert_clean_error(run("params", "--model", str(missing)), 1, "checkpoint")


def test_unknown_preset_suggests(tmp_path: Path):
    assert_clean_error(run("params", "--config", "gpt-3"), 2, "gpt-3", "gpt3")
    assert_clean_error(run("params", "--config", "gtp2"), 2, "gpt2")


def test_both_config_and_model(tmp_path: Path):
    folder = _write_single(tmp_path / "tiny", _gpt2_tensors(), _gpt2_config())
    assert_clean_error(run("params", "--config", "gpt3", "--model", str(folder)), 2)


def test_neither_config_nor_model():
    assert_clean_error(run("params"), 2)


# --------------------------------------------------------------------------- process-level


def _subprocess(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, **kw)


def test_params_does_not_import_torch():
    script = (
        "import runpy, sys\n"
        "sys.argv = ['attnscope', 'params', '--config', 'gpt3', '--json']\n"
        "try:\n"
        "    runpy.run_module('attnscope', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    proc = _subprocess("-c", script)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == GPT3_TOTAL_3B1B


def test_python_m_attnscope_importtime_has_no_torch():
    proc = _subprocess("-X", "importtime", "-m", "attnscope", "params", "--config", "gpt3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported, "no -X importtime output"
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert "175,181,291,520" in proc.stdout


def test_model_counting_does_not_import_torch(tmp_path: Path):
    """Counting from headers never needs torch either (the checkpoint is written here,
    in this process; the subprocess only reads it)."""
    folder = _write_single(tmp_path / "tiny", _gpt2_tensors(), _gpt2_config())
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['attnscope', 'params', '--model', {str(folder)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('attnscope', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = _subprocess("-c", script)
    assert proc.returncode == 0, proc.stderr


def test_process_error_exit_code_and_one_line():
    proc = _subprocess("-m", "attnscope", "params", "--config", "gtp2")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert "gpt2" in proc.stderr
