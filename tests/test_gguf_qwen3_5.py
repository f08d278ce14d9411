"""The GGUF forms of Qwen3.5 (`qwen35`) and Qwen3-Next (`qwen3next`), issue 26.

The tiny safetensors checkpoints of tests/tiny_models_qwen3_5.py (value heads 4 over key
heads 2, so Qwen3.5's tiled reorder is not the identity) are converted here as llama.cpp's
convert_hf_to_gguf.py converts them, written from the converter's own code and not from our
loader:

- Qwen3NextModel.modify_tensors: A_log → −exp(A_log); dt_bias renamed dt_proj.bias; conv1d
  squeezed; every `norm.weight` but `linear_attn.norm.weight` + 1; in_proj_qkvz (per key
  head q, k, v, z) regrouped into attn_qkv (all q, all k, all v) and attn_gate (all z).
- _LinearAttentionVReorderBase.modify_tensors (Qwen3.5 only): `_reorder_v_heads` (grouped
  by key head → tiled) on the v rows of in_proj_qkv, the rows of in_proj_z, in_proj_b,
  in_proj_a, A_log and dt_bias, the v channels of conv1d, and the columns of out_proj.
- Qwen2MoeModel: the experts stacked into ffn_{gate,up,down}_exps.
- The names: gguf-py's own map (`gguf.get_tensor_name_map`), F32 throughout.

Then every parameter read from the GGUF equals the safetensors load (A_log to 1e-6: the
file holds −exp(A_log) in float32, and log of it comes back within a few ulps), every
layer's pattern (softmax and the linear layers' M) to 1e-5 and the logits to 1e-4 relative;
`params --model FILE` counts what the folder counts; a damaged header is one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_gguf as tg
import tiny_models as tm
import tiny_models_qwen3_5 as tq
from attnscope.architectures import qwen3_5, qwen3_next, to_ours
from attnscope.cli import app
from attnscope.config import from_hf_config
from attnscope.hooks import Capture, attn_site
from attnscope.model import build as build_model
from attnscope.sources.gguf import gguf_config, gguf_family, iter_gguf_tensors, read_gguf

gguf = pytest.importorskip("gguf")

ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
ARCH = {"qwen3_5": "qwen35", "qwen3_next": "qwen3next"}
FAMILY = {"qwen3_5": qwen3_5, "qwen3_next": qwen3_next}
ATOL = 1e-5  # attention, float32
RTOL_LOGITS = 1e-4
ATOL_A_LOG = 1e-6  # log(−(−exp(x))) in float32: |Δ| ≈ a few × 2^-24 around |x| ≤ 4


# ------------------------------------------------------------------ the converter, as written upstream


def _reorder_v_heads(tensor: torch.Tensor, dim: int, num_k_heads: int, num_v_per_k: int, head_dim: int) -> torch.Tensor:
    """_LinearAttentionVReorderBase._reorder_v_heads, verbatim in effect."""
    shape = list(tensor.shape)
    if dim < 0:
        dim += len(shape)
    new_shape = shape[:dim] + [num_k_heads, num_v_per_k, head_dim] + shape[dim + 1:]
    tensor = tensor.reshape(*new_shape)
    perm = list(range(len(new_shape)))
    perm[dim], perm[dim + 1] = perm[dim + 1], perm[dim]
    return tensor.permute(*perm).contiguous().reshape(*shape)


def _v_reorder(t: torch.Tensor, name: str, hp: dict[str, Any]) -> torch.Tensor:
    """_LinearAttentionVReorderBase.modify_tensors' changes (Qwen3.5's converter)."""
    nk, nv = hp["linear_num_key_heads"], hp["linear_num_value_heads"]
    if not (nk != nv and "linear_attn." in name):
        return t
    dk, dv, r = hp["linear_key_head_dim"], hp["linear_value_head_dim"], nv // nk
    if ".in_proj_qkv." in name:
        qk = 2 * dk * nk
        return torch.cat([t[:qk], _reorder_v_heads(t[qk:], 0, nk, r, dv)], dim=0)
    if ".in_proj_z." in name:
        return _reorder_v_heads(t, 0, nk, r, dv)
    if ".in_proj_b." in name or ".in_proj_a." in name:
        return _reorder_v_heads(t, 0, nk, r, 1)
    if ".A_log" in name or ".dt_bias" in name:
        return _reorder_v_heads(t.unsqueeze(-1), 0, nk, r, 1).squeeze(-1)
    if ".conv1d" in name:
        data = t.squeeze()
        qk = dk * nk * 2
        return torch.cat([data[:qk], _reorder_v_heads(data[qk:], 0, nk, r, dv)], dim=0)
    if ".out_proj." in name:
        return _reorder_v_heads(t, 1, nk, r, dv)
    return t


def _next_changes(t: torch.Tensor, name: str, hp: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Qwen3NextModel.modify_tensors: (HF-style name for the name map, tensor) pairs; a name
    starting with "blk." is already GGUF's (format_tensor_name)."""
    if name.endswith(".A_log"):
        t = -torch.exp(t)
    elif name.endswith(".dt_bias"):
        name = name.rpartition(".dt_bias")[0] + ".dt_proj.bias"
    elif "conv1d" in name:
        t = t.squeeze()
    elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
        t = t + 1
    if "in_proj_qkvz.weight" in name:
        dk, dv = hp["linear_key_head_dim"], hp["linear_value_head_dim"]
        nv, nk, hidden = hp["linear_num_value_heads"], hp["linear_num_key_heads"], hp["hidden_size"]
        sizes = [dk, dk, nv // nk * dv, nv // nk * dv]
        t = t.permute(1, 0).contiguous().view(-1, nk, sum(sizes))
        q, k, v, z = torch.split(t, sizes, dim=-1)
        q, k, v, z = (x.contiguous().view(hidden, -1) for x in (q, k, v, z))
        bid = int(name.split(".")[2])
        return [(f"blk.{bid}.attn_qkv.weight", torch.cat([q, k, v], dim=-1).permute(1, 0).contiguous()),
                (f"blk.{bid}.attn_gate.weight", z.permute(1, 0).contiguous())]
    return [(name, t)]


def convert(folder: Path, arch: str) -> list[tuple[str, torch.Tensor]]:
    """The (GGUF name, tensor) pairs convert_hf_to_gguf.py writes for the checkpoint."""
    from safetensors.torch import load_file

    hp = json.loads((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], hp["num_hidden_layers"])
    out: list[tuple[str, torch.Tensor]] = []
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in state.items():
        t = t.float()
        if ".mlp.experts." in name:  # Qwen2MoeModel: merged once all experts are seen
            parts = name.split(".")
            experts.setdefault((int(parts[2]), parts[6]), {})[int(parts[5])] = t
            continue
        if arch == "qwen35":
            t = _v_reorder(t, name, hp)
        for n, x in _next_changes(t, name, hp):
            gname = n if n.startswith("blk.") else names.get_name(n, try_suffixes=(".weight", ".bias"))
            if gname is None and ".mlp." in n and n.endswith("_proj.weight"):
                # a dense layer (the tiny Qwen3-Next's mlp_only_layers): llama.cpp's qwen3next
                # has no name for one (the released model has none); llama's generic names
                bid, proj = n.split(".")[2], n.split(".")[-2].removesuffix("_proj")
                gname = f"blk.{bid}.ffn_{proj}.weight"
            assert gname is not None, n  # internal invariant: gguf-py names every tensor
            out.append((gname, x))
    for (bid, proj), by_expert in sorted(experts.items()):
        merged = torch.stack([by_expert[e] for e in sorted(by_expert)])
        out.append((names.get_name(f"model.layers.{bid}.mlp.experts.{proj}.weight", try_suffixes=(".weight",)), merged))
    return out


def write_gguf(folder: Path, path: Path, arch: str, lie: dict[str, Any] | None = None) -> Path:
    """The GGUF with the metadata Qwen3NextModel (and TextModel, Qwen2MoeModel) writes;
    `lie` replaces an ssm value (None: leaves the key out)."""
    lie = lie or {}

    def ssm(key: str, value: Any) -> None:
        value = lie.get(key, value)
        if value is not None:
            getattr(w, f"add_ssm_{key}")(value)

    hp = json.loads((folder / "config.json").read_text())
    tok = tm.gpt2_tokenizer()
    vocab = tg.byte_level_vocab(tok, "gpt-2", [], None, tok.id_to_token(0), add_bos=False).pad(hp["vocab_size"])
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(hp["num_hidden_layers"])
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["vocab_size"])
    if "num_experts" in hp:
        w.add_expert_count(hp["num_experts"])
        w.add_expert_used_count(hp["num_experts_per_tok"])
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(hp["shared_expert_intermediate_size"])
    ssm("conv_kernel", hp["linear_conv_kernel_dim"])
    ssm("state_size", hp["linear_key_head_dim"])
    ssm("group_count", hp["linear_num_key_heads"])
    ssm("time_step_rank", hp["linear_num_value_heads"])
    ssm("inner_size", hp["linear_value_head_dim"] * hp["linear_num_value_heads"])
    w.add_full_attention_interval(hp.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(hp["head_dim"] * hp["rope_parameters"].get("partial_rotary_factor", 0.25)))
    if arch == "qwen35":
        w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    for name, t in convert(folder, arch):
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def made(build: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("qwen_gguf")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            src = build(name)
            cache[name] = src, write_gguf(src, folder / f"{name}.gguf", ARCH[name])
        return cache[name]

    return get


def loaded(name: str, made: Callable[[str], tuple[Path, Path]]) -> tuple[Any, dict[str, torch.Tensor], Any, dict[str, torch.Tensor]]:
    """(safetensors config, its tensors in our names, GGUF config, its tensors)."""
    from safetensors.torch import load_file

    folder, path = made(name)
    family = FAMILY[name]
    cfg = from_hf_config(json.loads((folder / "config.json").read_text()), name=name)
    ours: dict[str, torch.Tensor] = {}
    for n, t in load_file(folder / "model.safetensors").items():
        ours.update(to_ours(family, n.removeprefix("model."), t.float(), cfg))
    per_expert: dict[str, dict[int, torch.Tensor]] = {}
    for n in [n for n in ours if n.split(".")[-1].isdigit()]:  # one expert each: stacked as GGUF's
        per_expert.setdefault(n.rpartition(".")[0], {})[int(n.rpartition(".")[2])] = ours.pop(n)
    ours.update({n: torch.stack([e[i] for i in sorted(e)]) for n, e in per_expert.items()})
    f = read_gguf(path)
    assert gguf_family(f) is family
    gcfg = from_hf_config(gguf_config(f), name=name)
    return cfg, ours, gcfg, dict(iter_gguf_tensors(f, gcfg, family))


def run(cfg: Any, tensors: dict[str, torch.Tensor], ids: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = build_model(cfg, tensors.items(), "cpu", torch.float32)
    capture = Capture({attn_site(i): ["pattern"] for i in range(cfg.n_layers)})
    with torch.no_grad():
        logits = model(torch.tensor(ids), capture)
    return logits, [capture.get(attn_site(i), "pattern") for i in range(cfg.n_layers)]


# ------------------------------------------------------------------ tests


def eps_as(spec: Any, want: Any) -> Any:
    """`spec` with the linear norm's epsilon of `want` when they agree to float32 (GGUF
    stores the epsilon as a float32: 1e-6 comes back as 9.99999997e-07)."""
    from dataclasses import replace

    m, w = spec.attn.linear, want.attn.linear
    if m is None or w is None or abs(m.norm_eps - w.norm_eps) > 1e-6 * w.norm_eps:
        return spec
    return replace(spec, attn=replace(spec.attn, linear=replace(m, norm_eps=w.norm_eps)))


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_config_and_every_parameter_equal_the_safetensors_load(name: str, made: Callable[..., Any]) -> None:
    cfg, ours, gcfg, from_gguf = loaded(name, made)
    assert [eps_as(gcfg.layer(i), cfg.layer(i)) for i in range(gcfg.n_layers)] == [cfg.layer(i) for i in range(cfg.n_layers)]
    assert (gcfg.d_model, gcfg.n_layers, gcfg.vocab_size, gcfg.rotary_dim, gcfg.norm_offset) == \
        (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.rotary_dim, cfg.norm_offset)
    assert sorted(from_gguf) == sorted(ours)
    worst_a_log = 0.0
    for n, t in ours.items():
        g = from_gguf[n]
        assert g.shape == t.shape, n
        if n.endswith(".attn.a_log"):
            worst_a_log = max(worst_a_log, float((g - t).abs().max()))
        elif n.endswith("norm.weight") and not n.endswith(".attn.norm.weight"):
            # the file holds float32(w + 1): rounded by at most half an ulp of w + 1
            assert bool(((g - t).abs() <= 2.0**-24 * torch.exp2(torch.ceil(torch.log2((t + 1).abs())))).all()), n
        else:
            assert torch.equal(g, t), f"{n}: differs by {float((g - t).abs().max()):.3g}"
    assert 0 < worst_a_log <= ATOL_A_LOG or worst_a_log == 0.0, worst_a_log


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_patterns_and_logits_equal_the_safetensors_load(name: str, made: Callable[..., Any]) -> None:
    """Every layer's pattern (softmax, and the linear layers' M) and the logits."""
    cfg, ours, gcfg, from_gguf = loaded(name, made)
    ids = tm.gpt2_tokenizer().encode(tq.QWEN_TEXT).ids
    assert len(ids) >= 90
    want_logits, want = run(cfg, ours, ids)
    got_logits, got = run(gcfg, from_gguf, ids)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, i
        assert float((a - b).abs().max()) <= ATOL, f"layer {i} ({cfg.layer(i).attn.kind})"
    scale = float(want_logits.abs().max())
    assert float((got_logits - want_logits).abs().max()) <= RTOL_LOGITS * scale


def test_a_wrong_reorder_would_be_caught(made: Callable[..., Any]) -> None:
    """The tiled reorder is not the identity on these sizes: a file written without it
    loads into other weights (so the equality above can fail)."""
    folder, _ = made("qwen3_5")
    hp = json.loads((folder / "config.json").read_text())
    t = torch.arange(hp["linear_num_value_heads"] * hp["linear_value_head_dim"], dtype=torch.float32)
    assert not torch.equal(_reorder_v_heads(t.unsqueeze(-1), 0, hp["linear_num_key_heads"],
                                            hp["linear_num_value_heads"] // hp["linear_num_key_heads"],
                                            hp["linear_value_head_dim"]).squeeze(-1), t)


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_params_counts_the_gguf_as_the_folder(name: str, made: Callable[..., Any]) -> None:
    folder, path = made(name)
    counts = []
    for m in (folder, path):
        res = CliRunner().invoke(app, ["params", "--model", str(m), "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        counts.append(json.loads(res.stdout)["total"])
    assert counts[0] == counts[1] == tm.load_reference(folder).num_parameters()


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next"])
def test_damaged_header_is_one_line(name: str, made: Callable[..., Any], tmp_path: Path) -> None:
    _, path = made(name)
    blob = path.read_bytes()
    bad = tmp_path / f"{name}.gguf"
    bad.write_bytes(blob[:200])  # cut inside the metadata
    res = CliRunner().invoke(app, ["params", "--model", str(bad), "--json"], env=ENV)
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output and "internal error" not in res.output, res.output


@pytest.mark.parametrize(("lie", "words"), [
    ({"inner_size": 33}, "not a multiple"),
    ({"group_count": None}, "lacks 'qwen35.ssm.group_count'"),
    ({"group_count": 3}, "linear_num"),
    ({"conv_kernel": 0}, "linear_conv_kernel_dim"),
])
def test_lying_ssm_metadata_is_one_line(lie: dict[str, Any], words: str, build: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    path = write_gguf(build("qwen3_5"), tmp_path / "lie.gguf", "qwen35", lie)
    res = CliRunner().invoke(app, ["params", "--model", str(path)], env=ENV)
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], res.output


def test_a_one_dimensional_shared_expert_gate_loads(made: Callable[..., Any]) -> None:
    """llama.cpp declares ffn_gate_inp_shexp as {n_embd}: a file holding it 1-D loads as
    transformers' (1, d) gate."""
    _, _, gcfg, from_gguf = loaded("qwen3_next", made)
    gate = from_gguf["blocks.1.mlp.shared_gate.weight"]
    assert gate.shape == (1, gcfg.d_model)
    got = qwen3_next.gguf_tensor("blocks.1.mlp.shared_gate.weight", gate[0], gcfg, "qwen3next")
    assert list(got) == ["blocks.1.mlp.shared_gate.weight"] and torch.equal(got["blocks.1.mlp.shared_gate.weight"], gate)
