"""The GGUF forms llama.cpp really writes for this year's hybrids (issue 26), beyond the
plain ports of tests/test_gguf_qwen3_5.py:

- **Next-token-prediction (MTP) layers.** Qwen3.5's checkpoints carry `mtp.*` (one
  full-attention decoder layer, `mtp.fc` and three norms); transformers builds none of it.
  llama.cpp's converter (conversion/qwen.py, `_Qwen35MtpMixin`) appends it after the last
  layer: `mtp.layers.i.*` → `blk.{N+i}.*`, `mtp.fc` → `blk.N.nextn.eh_proj`,
  `pre_fc_norm_embedding` / `pre_fc_norm_hidden` / `norm` → `nextn.enorm` / `hnorm` /
  `shared_head_norm`, block_count N + 1 and `qwen35.nextn_predict_layers` 1. That converter
  is ported here (`mtp_name`, on top of tests/test_gguf_qwen3_5.py's port of the rest), with
  gguf-py's own NEXTN names. Such a file loads as its main stack, its MTP tensors never read;
  a folder holding `mtp.*` loads the same; `params` counts what transformers counts and shows
  the module apart; damaged MTP metadata is one line.
- **Gemma 4's tokenizer** (`tokenizer.ggml.model` "gemma4", Gemma4Model.set_vocab in
  conversion/gemma.py): a small Gemma-style vocabulary (byte-fallback BPE over '▁' for
  spaces, byte pieces, control and user-defined tokens) is trained here and written as that
  converter writes it; the ids equal transformers' own GGUF tokenizer built from the same file.
- **Qwen3.5's pre-tokenizer** (`tokenizer.ggml.pre` "qwen35"): the ids equal transformers'
  GGUF tokenizer; with Qwen2's regex instead they would not.
"""

from __future__ import annotations

import json
import shutil
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import test_gguf_qwen3_5 as q35
import tiny_gguf as tg
import tiny_models as tm
import tiny_models_qwen3_5 as tq
from attnscope.architectures import qwen3_5, to_ours
from attnscope.cli import app
from attnscope.config import from_hf_config

gguf = pytest.importorskip("gguf")

ENV = q35.ENV
N_MTP = 1


# ------------------------------------------------------------------ a checkpoint with its MTP module


def add_mtp(src: Path, dst: Path, seed: int = 11) -> Path:
    """`src` (the tiny Qwen3.5) with the MTP module the real checkpoints carry, at the top
    level as the published files hold it: one layer of the full-attention kind (layer 1's
    names and shapes, new random weights), `mtp.fc` (d × 2d) and its three norms; and
    `mtp_num_hidden_layers` in config.json."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    d = state["model.norm.weight"].shape[0]
    full = "model.layers.1."
    assert "model.layers.1.self_attn.q_proj.weight" in state  # internal invariant: layer 1 is full attention
    for name, t in list(state.items()):
        if name.startswith(full):
            state["mtp.layers.0." + name[len(full):]] = torch.randn(t.shape, generator=gen) * 0.25
    state["mtp.fc.weight"] = torch.randn((d, 2 * d), generator=gen) * 0.25
    for part in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        state[f"mtp.{part}.weight"] = torch.randn((d,), generator=gen) * 0.25
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["mtp_num_hidden_layers"] = N_MTP
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def mtp_name(name: str, n_layers: int) -> str:
    """_Qwen35MtpMixin.filter_tensors: `mtp.*` renamed to the layers past the last."""
    if name.startswith("model.mtp."):
        name = name.replace("model.", "", 1)
    if name.startswith("mtp."):
        remap = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm",
                 "norm": "shared_head.norm"}
        parts = name.split(".", 3)
        if len(parts) == 4 and parts[1] == "layers" and parts[2].isdecimal():
            name = f"model.layers.{n_layers + int(parts[2])}.{parts[3]}"
        elif len(parts) == 3 and parts[1] in remap:
            name = f"model.layers.{n_layers}.{remap[parts[1]]}.{parts[2]}"
    return name


def _nextn_name(name: str) -> str | None:
    """gguf-py's TensorNameMap entry of a NEXTN tensor (`model.layers.{bid}.eh_proj` →
    `blk.{bid}.nextn.eh_proj`): the map of the installed gguf-py's qwen35 lacks them, the
    converter's (newer) has them."""
    parts = name.split(".")
    bid, rest = int(parts[2]), ".".join(parts[3:]).removesuffix(".weight")
    for tensor in (t for t in gguf.MODEL_TENSOR if t.name.startswith("NEXTN_")):
        if any(key.format(bid=bid) == f"model.layers.{bid}.{rest}" for key in gguf.TensorNameMap.block_mappings_cfg[tensor]):
            return gguf.TENSOR_NAMES[tensor].format(bid=bid) + ".weight"
    return None


def convert_mtp(folder: Path, arch: str = "qwen35") -> list[tuple[str, torch.Tensor]]:
    """The (GGUF name, tensor) pairs Qwen3_5TextModel (qwen35) or Qwen3_5MoeTextModel
    (qwen35moe) writes for a checkpoint with `mtp.*`: the MTP names first, then the rest as
    the ports in tests/test_gguf_qwen3_5.py and tests/test_family_qwen3_5_moe.py do (the
    experts of every layer, the MTP layer's too, stacked per layer and projection)."""
    from safetensors.torch import load_file

    hp = json.loads((folder / "config.json").read_text())
    n_layers = hp["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers + hp.get("mtp_num_hidden_layers", 0))
    out = []
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in load_file(folder / "model.safetensors").items():
        name = mtp_name(name, n_layers)
        if ".mlp.experts." in name:  # Qwen2MoeModel: merged once all experts are seen
            parts = name.split(".")
            experts.setdefault((int(parts[2]), parts[6]), {})[int(parts[5])] = t.float()
            continue
        t = q35._v_reorder(t.float(), name, hp)
        for n, x in q35._next_changes(t, name, hp):
            gname = n if n.startswith("blk.") else names.get_name(n, try_suffixes=(".weight", ".bias")) or _nextn_name(n)
            assert gname is not None, n  # internal invariant: gguf-py names every tensor
            out.append((gname, x))
    for (bid, proj), by_expert in sorted(experts.items()):
        merged = torch.stack([by_expert[e] for e in sorted(by_expert)])
        out.append((names.get_name(f"model.layers.{bid}.mlp.experts.{proj}.weight", try_suffixes=(".weight",)), merged))
    return out


def write_mtp_gguf(folder: Path, path: Path, nextn: Any = N_MTP, drop: tuple[str, ...] = (),
                   arch: str = "qwen35", mtp_width: int | None = None) -> Path:
    """The qwen35 GGUF with the metadata test_gguf_qwen3_5.write_gguf writes, plus the MTP
    layer: block_count N + 1 and nextn_predict_layers (`nextn`; None: the key left out);
    `drop`: tensors left out (a damaged file); `mtp_width`: feed_forward_length written per
    block, the MTP block's this one (llama.cpp reads the key per layer)."""
    hp = json.loads((folder / "config.json").read_text())
    tok = tm.gpt2_tokenizer()
    vocab = tg.byte_level_vocab(tok, "gpt-2", [], None, tok.id_to_token(0), add_bos=False).pad(hp["vocab_size"])
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}-mtp")
    w.add_block_count(hp["num_hidden_layers"] + hp.get("mtp_num_hidden_layers", 0))
    if nextn is not None:
        if isinstance(nextn, str):
            w.add_string(f"{arch}.nextn_predict_layers", nextn)
        elif nextn < 0:
            w.add_int32(f"{arch}.nextn_predict_layers", nextn)
        else:
            w.add_nextn_predict_layers(nextn)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    if "num_experts" in hp:  # Qwen2MoeModel's; the MoE text config has no intermediate_size
        w.add_expert_count(hp["num_experts"])
        w.add_expert_used_count(hp["num_experts_per_tok"])
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(hp["shared_expert_intermediate_size"])
    elif mtp_width is not None:
        w.add_feed_forward_length([hp["intermediate_size"]] * hp["num_hidden_layers"] + [mtp_width])
    else:
        w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["vocab_size"])
    w.add_ssm_conv_kernel(hp["linear_conv_kernel_dim"])
    w.add_ssm_state_size(hp["linear_key_head_dim"])
    w.add_ssm_group_count(hp["linear_num_key_heads"])
    w.add_ssm_time_step_rank(hp["linear_num_value_heads"])
    w.add_ssm_inner_size(hp["linear_value_head_dim"] * hp["linear_num_value_heads"])
    w.add_full_attention_interval(hp.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(hp["head_dim"] * hp["rope_parameters"].get("partial_rotary_factor", 0.25)))
    w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    for name, t in convert_mtp(folder, arch):
        if name not in drop:
            w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def made(build: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the tiny Qwen3.5 folder, the same with its MTP module, that one's GGUF)."""
    root = tmp_path_factory.mktemp("mtp")
    plain = build("qwen3_5")
    folder = add_mtp(plain, root / "qwen3_5_mtp")
    return plain, folder, write_mtp_gguf(folder, root / "qwen3_5_mtp.gguf")


def one_line_failure(*args: str) -> str:
    res = CliRunner().invoke(app, list(args), env=ENV)
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output and "internal error" not in res.output, res.output
    return lines[0]


# ------------------------------------------------------------------ MTP: what the converter writes


def test_the_port_writes_what_llama_cpp_writes(made: tuple[Path, Path, Path]) -> None:
    """block_count N + 1, nextn_predict_layers 1, the MTP layer as blk.4 with its nextn
    tensors (the test's premise: without these the loader below would have nothing to skip)."""
    from attnscope.sources.gguf import read_gguf

    _, _, path = made
    f = read_gguf(path)
    assert f.metadata["qwen35.block_count"] == 5 and f.metadata["qwen35.nextn_predict_layers"] == 1
    mtp = sorted(n for n in f.tensors if n.startswith("blk.4."))
    assert {"blk.4.nextn.eh_proj.weight", "blk.4.nextn.enorm.weight", "blk.4.nextn.hnorm.weight",
            "blk.4.nextn.shared_head_norm.weight", "blk.4.attn_q.weight", "blk.4.ffn_down.weight"} <= set(mtp)
    assert f.tensors["blk.4.nextn.eh_proj.weight"].shape == (32, 64)  # (d, 2d) in torch order


def test_mtp_gguf_loads_the_main_stack_and_never_reads_the_mtp_layer(made: tuple[Path, Path, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The config is the folder's (4 layers, the same kinds); every parameter equals the
    safetensors load (bounds as tests/test_gguf_qwen3_5.py derives them); no tensor of blk.4
    is dequantized."""
    from attnscope.sources import gguf as source
    from attnscope.sources.gguf import gguf_config, iter_gguf_tensors, read_gguf

    plain, folder, path = made
    f = read_gguf(path)
    raw = gguf_config(f)
    assert raw["num_hidden_layers"] == 4 and raw["mtp_num_hidden_layers"] == N_MTP
    gcfg = from_hf_config(raw, name="gguf")
    cfg = from_hf_config(json.loads((folder / "config.json").read_text()), name="folder")
    assert [q35.eps_as(gcfg.layer(i), cfg.layer(i)) for i in range(4)] == [cfg.layer(i) for i in range(4)]
    assert gcfg.extra["not_counted"] == cfg.extra["not_counted"]
    read: list[str] = []
    real = source._dequantize
    monkeypatch.setattr(source, "_dequantize", lambda f, t, data: read.append(t.name) or real(f, t, data))
    got = dict(iter_gguf_tensors(f, gcfg, qwen3_5))
    assert read and not [n for n in read if n.startswith("blk.4.")]
    assert len(read) == len([n for n in f.tensors if not n.startswith("blk.4.")])
    from safetensors.torch import load_file

    want: dict[str, torch.Tensor] = {}
    for n, t in load_file(folder / "model.safetensors").items():
        want.update(to_ours(qwen3_5, n.removeprefix("model."), t.float(), cfg))
    assert sorted(got) == sorted(want)
    assert not [n for n in want if n.startswith("mtp.")]
    for n, t in want.items():
        g = got[n]
        if n.endswith(".attn.a_log"):
            assert float((g - t).abs().max()) <= q35.ATOL_A_LOG, n
        elif n.endswith("norm.weight") and not n.endswith(".attn.norm.weight"):
            assert bool(((g - t).abs() <= 2.0**-24 * torch.exp2(torch.ceil(torch.log2((t + 1).abs())))).all()), n
        else:
            assert torch.equal(g, t), n


def test_mtp_gguf_and_folder_patterns_and_logits(made: tuple[Path, Path, Path]) -> None:
    """Every layer's pattern (softmax and linear M) and the logits of the GGUF with its MTP
    layer equal those of the folder with its MTP module, and those equal the plain folder's
    bit for bit (the module is not part of the model)."""
    from attnscope.api import load

    plain, folder, path = made
    ids = tm.gpt2_tokenizer().encode(tq.QWEN_TEXT).ids
    assert len(ids) >= 90
    runs = [load(str(m), device="cpu", dtype="float32") for m in (plain, folder, path)]
    outs = [(insp.logits(ids), insp.attention_ids(ids).probs) for insp in runs]
    (l0, p0), (l1, p1), (l2, p2) = outs
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert len(p2) == len(p1) == 4
    for i, (a, b) in enumerate(zip(p2, p1)):
        assert float((a - b).abs().max()) <= q35.ATOL, i
    assert float((l2 - l1).abs().max()) <= q35.RTOL_LOGITS * float(l1.abs().max())


def test_a_folders_mtp_tensors_are_never_read(made: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the folder reads the model's tensors only: no `mtp.*` (as transformers, which
    has no module to put them in)."""
    from attnscope import checkpoint
    from attnscope.api import load

    _, folder, _ = made
    read: list[str] = []
    real = checkpoint.iter_tensors

    def spy(ckpt: Any, names: list[str], *args: Any, **kwargs: Any) -> Any:
        read.extend(names)
        return real(ckpt, names, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "iter_tensors", spy)
    load(str(folder), device="cpu", dtype="float32")
    assert read and not [n for n in read if n.startswith("mtp.")]


def test_params_counts_what_transformers_counts_and_shows_the_mtp_apart(made: tuple[Path, Path, Path]) -> None:
    """Folder with mtp.*, its GGUF and the plain folder: the same total, transformers'
    num_parameters() (its model has no MTP module); the module shown apart in both forms
    with the parameters the checkpoint's mtp.* hold, and the GGUF's bytes table counting only
    the tensors counted."""
    from safetensors import safe_open

    plain, folder, path = made
    docs = []
    for m in (plain, folder, path):
        res = CliRunner().invoke(app, ["params", "--model", str(m), "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        docs.append(json.loads(res.stdout))
    reference = tm.load_reference(folder).num_parameters()
    assert docs[0]["total"] == docs[1]["total"] == docs[2]["total"] == reference
    with safe_open(folder / "model.safetensors", "pt") as st:
        held = sum(prod(st.get_slice(k).get_shape()) for k in st.keys() if k.startswith("mtp."))
    assert "not_counted" not in docs[0]
    assert list(docs[1]["not_counted"].values()) == list(docs[2]["not_counted"].values()) == [held]
    assert not docs[1]["skipped_buffers"] and not docs[2]["skipped_buffers"]
    assert sum(row["parameters"] for row in docs[2]["quantization"].values()) == reference
    res = CliRunner().invoke(app, ["params", "--model", str(path)], env=ENV)
    assert res.exit_code == 0 and "multi-token-prediction module" in res.output, res.output


def test_a_qwen3_next_folder_with_its_mtp_module(build: Callable[[str], Path], tmp_path: Path) -> None:
    """Qwen3-Next's checkpoints carry the same `mtp.*` (llama.cpp's converter drops it, so its
    GGUFs have none): the folder loads without reading it, counts what transformers counts and
    shows the module (here with experts) apart."""
    from safetensors import safe_open

    folder = add_mtp(build("qwen3_next"), tmp_path / "qwen3_next_mtp")
    res = CliRunner().invoke(app, ["params", "--model", str(folder), "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    with safe_open(folder / "model.safetensors", "pt") as st:
        held = sum(prod(st.get_slice(k).get_shape()) for k in st.keys() if k.startswith("mtp."))
        assert any(".mlp.experts." in k for k in st.keys() if k.startswith("mtp."))
    assert doc["total"] == tm.load_reference(folder).num_parameters()
    assert list(doc["not_counted"].values()) == [held]
    res = CliRunner().invoke(app, ["attend", "hello world", "--model", str(folder), "--device", "cpu"], env=ENV)
    assert res.exit_code == 0, res.output


def test_the_real_qwen3_5_config_shows_its_mtp_module() -> None:
    """`params --config` on the published Qwen3.5-0.8B config: the total is transformers'
    (unchanged), the MTP layer (one gated full-attention layer of d 1024: q 1024→4096, k and
    v → 512, o 2048→1024, q/k norms of 256, MLP 3 × 1024 × 3584, two norms) plus fc 2 · 1024²
    and three norms shown apart."""
    path = Path(__file__).parent / "data" / "real_configs" / "qwen3.5-0.8b.json"
    res = CliRunner().invoke(app, ["params", "--config", str(path), "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    d, layer = 1024, 1024 * 4096 + 2 * 1024 * 512 + 2048 * 1024 + 2 * 256 + 3 * 1024 * 3584 + 2 * 1024
    assert list(doc["not_counted"].values()) == [layer + 2 * d * d + 3 * d]
    assert doc["total"] == json.loads(path.read_text())["_num_parameters"]


def test_qwen3_5_moe_with_its_mtp_layer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Qwen3.5-MoE (qwen35moe, the same mixin): the folder with an MTP layer of experts and
    its GGUF count what transformers counts, show the module apart with what its mtp.* hold
    (the expert MLP counted in), and give the same patterns and logits (bounds as above)."""
    from safetensors import safe_open

    import test_family_qwen3_5_moe as moe
    from attnscope.api import load

    root = tmp_path_factory.mktemp("moe_mtp")
    folder = add_mtp(moe.build_moe(root / "moe"), root / "moe_mtp")
    path = write_mtp_gguf(folder, root / "moe_mtp.gguf", arch="qwen35moe")
    docs = []
    for m in (folder, path):
        res = CliRunner().invoke(app, ["params", "--model", str(m), "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        docs.append(json.loads(res.stdout))
    with safe_open(folder / "model.safetensors", "pt") as st:
        held = sum(prod(st.get_slice(k).get_shape()) for k in st.keys() if k.startswith("mtp."))
        assert any(".mlp.experts." in k for k in st.keys() if k.startswith("mtp."))
    assert docs[0]["total"] == docs[1]["total"] == tm.load_reference(folder).num_parameters()
    assert list(docs[0]["not_counted"].values()) == list(docs[1]["not_counted"].values()) == [held]
    ids = tm.gpt2_tokenizer().encode(tq.QWEN_TEXT).ids
    (l1, p1), (l2, p2) = [(insp.logits(ids), insp.attention_ids(ids).probs)
                          for insp in (load(str(m), device="cpu", dtype="float32") for m in (folder, path))]
    for i, (a, b) in enumerate(zip(p2, p1)):
        assert float((a - b).abs().max()) <= q35.ATOL, i
    assert float((l2 - l1).abs().max()) <= q35.RTOL_LOGITS * float(l1.abs().max())


def test_per_layer_metadata_is_cut_to_the_main_stack(made: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A per-layer key (feed_forward_length, one value per block) whose MTP entry differs:
    the model reads its own layers' values only."""
    from attnscope.sources.gguf import gguf_config, read_gguf

    _, folder, _ = made
    path = write_mtp_gguf(folder, tmp_path / "per-layer.gguf", mtp_width=99)
    assert read_gguf(path).metadata["qwen35.feed_forward_length"][-1] == 99
    assert gguf_config(read_gguf(path))["intermediate_size"] == json.loads((folder / "config.json").read_text())[
        "intermediate_size"]


# ------------------------------------------------------------------ MTP: damaged files


@pytest.mark.parametrize(("nextn", "drop", "words"), [
    (5, (), "no layer of the model would remain"),
    (9, (), "no layer of the model would remain"),
    (2, (), "blk.3 holds no nextn.eh_proj"),
    (1, ("blk.4.nextn.eh_proj.weight",), "blk.4 holds no nextn.eh_proj"),
    (None, (), "belongs to a next-token-prediction layer"),
    (-1, (), "must be a count of layers"),
    ("1", (), "must be a count of layers"),
])
def test_damaged_mtp_metadata_is_one_line(nextn: Any, drop: tuple[str, ...], words: str,
                                         made: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, folder, _ = made
    path = write_mtp_gguf(folder, tmp_path / "bad.gguf", nextn=nextn, drop=drop)
    for command in (["params", "--model", str(path)], ["attend", "hello", "--model", str(path), "--device", "cpu"]):
        assert words in one_line_failure(*command)


def test_an_mtp_layers_stray_tensor_is_one_line(made: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A tensor an MTP block cannot hold (neither a layer's nor nextn.*) is refused by name."""
    _, folder, _ = made
    path = tmp_path / "stray.gguf"
    write_mtp_gguf(folder, path)
    from attnscope.sources.gguf import read_gguf

    f = read_gguf(path)
    blob = bytearray(path.read_bytes())
    at = bytes(blob).index(b"blk.4.nextn.hnorm.weight")
    blob[at:at + len(b"blk.4.nextn.hnorm.weight")] = b"blk.4.nextn.hnorz.weight"  # same length
    path.write_bytes(bytes(blob))
    assert "blk.4.nextn.hnorm.weight" in f.tensors
    assert "unknown tensor 'blk.4.nextn.hnorz.weight'" in one_line_failure("attend", "hi", "--model", str(path),
                                                                          "--device", "cpu")


# ------------------------------------------------------------------ Gemma 4's tokenizer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
VISIBLE = ["<|channel>", "<channel|>", "<|tool_call>", '<|"|>']  # Gemma4Model.set_vocab's USER_DEFINED
CORPUS = ["The quick brown fox jumps over the lazy dog.\nNumbers 12345 and 2026!\n\n",
          "Café naïve résumé — déjà vu.  Two  spaces,   three.\n", "中文字符和日本語のテキスト。\n",
          "tabs\tand\nnewlines\n\n\nend of it", "It's 3.14159, isn't it? 100% sure."]
TEXTS = [
    "Hello  world\n\nnew line 12345 and 2026; 3.14159",
    " leading space, trailing space ",
    "Café naïve résumé déjà vu, e\u0301 decomposed",
    "emoji 😀🎉 and CJK 中文字符 日本語のテキスト",
    "<start_of_turn>user\nhi<end_of_turn>\n<|channel>thought<channel|><|\"|>quoted<|\"|>",
    "\n\n\n\t\t  mixed   \n whitespace",
    "unknown chars: ßŒ€ ∑ √ ∞ Ω",
]


def gemma4_vocab() -> tuple[list[str], list[int], list[str]]:
    """A small Gemma-style vocabulary as Gemma 4's tokenizer.json is built (byte-fallback BPE
    over text whose spaces are '▁', its control tokens and 256 byte pieces first), in
    Gemma4Model.set_vocab's form: (tokens, types, merges)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=520, special_tokens=SPECIALS + BYTES + VISIBLE, show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    tokens, merges = tg._trained(tok)
    types = [tg.CONTROL if t in SPECIALS else tg.BYTE if t in BYTES else tg.USER_DEFINED if t in VISIBLE
             else tg.NORMAL for t in tokens]
    return tokens, types, merges


def write_gemma4_tokenizer(path: Path, merges: bool = True) -> Path:
    """A GGUF holding the tokenizer as Gemma4Model.set_vocab writes it (its tensors are not
    needed to read a tokenizer)."""
    tokens, types, pairs = gemma4_vocab()
    w = gguf.GGUFWriter(path, "gemma4")
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores([-1000.0] * len(tokens))  # LlamaHfVocab.get_token_score
    w.add_token_types(types)
    if merges:
        w.add_token_merges(pairs)  # SpecialVocab(load_merges=True)
    w.add_bos_token_id(tokens.index("<bos>"))
    w.add_eos_token_id(tokens.index("<eos>"))
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_pad_token_id(tokens.index("<pad>"))
    w.add_add_space_prefix(False)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_gguf_tokenizer(path: Path) -> Any:
    """transformers' own tokenizer for a GGUF (integrations/gguf: the file's metadata read by
    transformers, built by its GGUF_TOKENIZER_TYPES entry)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer, config = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer)
    return backend, config


def test_gemma4_tokenizer_equals_transformers(tmp_path: Path) -> None:
    """The ids equal transformers' (no BOS: transformers adds none for gemma4, whatever the
    header's add_bos_token); byte fallback, user-defined markers and control tokens kept
    whole; decoding gives the text back."""
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    path = write_gemma4_tokenizer(tmp_path / "gemma4-tok.gguf")
    ours = gguf_tokenizer(read_gguf(path))
    theirs, config = transformers_gguf_tokenizer(path)
    assert config["add_bos_token"] is False
    vocab = ours.get_vocab()
    fallback = 0
    for text in TEXTS:
        got, want = ours.encode(text).ids, theirs.encode(text, add_special_tokens=False).ids
        assert got == want, text
        fallback += sum(1 for i in got if i < len(SPECIALS) + 256 and i >= len(SPECIALS))
        assert ours.decode(got, skip_special_tokens=False) == text
    assert fallback > 0  # the texts reach the byte pieces (emoji, unseen letters)
    ids = ours.encode(TEXTS[4]).ids
    for marker in ("<start_of_turn>", "<|channel>", '<|"|>'):
        assert vocab[marker] in ids


def test_gemma4_tokenizer_is_not_gemma3s(tmp_path: Path) -> None:
    """The same file read as Gemma 3's SentencePiece form (merges rebuilt from file order)
    tokenizes otherwise: the gemma4 model is not an alias of it."""
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import _sentencepiece

    path = write_gemma4_tokenizer(tmp_path / "gemma4-tok.gguf")
    f = read_gguf(path)
    meta = {k: v for k, v in f.metadata.items() if k != "tokenizer.ggml.merges"}
    other, _ = _sentencepiece(meta, list(f.metadata["tokenizer.ggml.tokens"]), "gemma3", str(path))
    theirs, _ = transformers_gguf_tokenizer(path)
    assert any(other.encode(t).ids != theirs.encode(t, add_special_tokens=False).ids for t in TEXTS)


def test_gemma4_tokenizer_without_merges_is_one_line(tmp_path: Path) -> None:
    from attnscope.errors import TokenizerError
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    path = write_gemma4_tokenizer(tmp_path / "gemma4-nomerges.gguf", merges=False)
    with pytest.raises(TokenizerError, match="gemma4 vocabulary without tokenizer.ggml.merges"):
        gguf_tokenizer(read_gguf(path))


def test_a_gemma4_gguf_with_its_own_tokenizer_runs_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny Gemma 4 written as Gemma4Model writes it (tests/tiny_models_gemma4.write_gguf)
    but with llama.cpp's "gemma4" tokenizer (before: refused as an unsupported tokenizer
    model): `attend --json` runs, on transformers' ids for the text."""
    import tiny_models_gemma4 as g4

    tokens, types, merges = gemma4_vocab()
    ids = {"bos": tokens.index("<bos>"), "eos": tokens.index("<eos>"), "unk": tokens.index("<unk>"),
           "pad": tokens.index("<pad>")}
    monkeypatch.setattr(tg, "gemma_vocab", lambda: tg.Vocab("gemma4", list(tokens), list(types),
                                                            scores=[-1000.0] * len(tokens), ids=ids))
    model_of = gguf.GGUFWriter.add_tokenizer_model

    def with_merges(w: Any, model: str) -> None:  # SpecialVocab's merges and set_vocab's two flags
        model_of(w, model)
        w.add_token_merges(merges)
        w.add_add_space_prefix(False)
        w.add_add_bos_token(True)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tokenizer_model", with_merges)
    model = tm.load_reference(g4.gemma4(tmp_path / "gemma4"))
    assert model.config.vocab_size >= len(tokens)
    path = g4.write_gguf(tmp_path / "gemma4.gguf", model)
    text = TEXTS[0]
    res = CliRunner().invoke(app, ["attend", text, "--model", str(path), "--device", "cpu", "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    theirs, _ = transformers_gguf_tokenizer(path)
    want = theirs.encode(text, add_special_tokens=False).ids
    assert [t["id"] for t in doc["tokens"]] == want and len(want) > 10


# ------------------------------------------------------------------ Qwen3.5's pre-tokenizer

QWEN_TEXTS = [*TEXTS, "x\u0301y a\u0308b\u0308c 12345678 it's IT'S", "naïve: e\u0301e\u0301e\u0301 — 1,234.56"]


def qwen35_trained() -> Any:
    """Byte-level BPE trained as Qwen3.5's was, through its own split (so that merges join a
    letter to the combining marks after it, which Qwen2's split keeps apart)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*CORPUS, *QWEN_TEXTS] * 20, trainer)
    return tok


def write_byte_level(path: Path, pre: str) -> Path:
    tok = qwen35_trained()
    vocab = tg.byte_level_vocab(tok, pre, ["<|endoftext|>"], None, "<|endoftext|>", add_bos=False)
    w = gguf.GGUFWriter(path, "qwen35")
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_qwen35_pre_tokenizer_equals_transformers(tmp_path: Path) -> None:
    """`tokenizer.ggml.pre` "qwen35" splits as transformers' GGUF tokenizer and llama.cpp's
    LLAMA_VOCAB_PRE_TYPE_QWEN35 do (combining marks continue a word, one digit a piece); the
    same vocabulary with Qwen2's pre-tokenizer gives other ids on these texts."""
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    path = write_byte_level(tmp_path / "qwen35-tok.gguf", "qwen35")
    ours = gguf_tokenizer(read_gguf(path))
    theirs, _ = transformers_gguf_tokenizer(path)
    for text in QWEN_TEXTS:
        assert ours.encode(text).ids == theirs.encode(text, add_special_tokens=False).ids, text
    qwen2 = gguf_tokenizer(read_gguf(write_byte_level(tmp_path / "qwen2-tok.gguf", "qwen2")))
    assert any(qwen2.encode(t).ids != ours.encode(t).ids for t in QWEN_TEXTS)


def test_an_unknown_pre_tokenizer_is_refused_not_guessed(tmp_path: Path) -> None:
    from attnscope.errors import TokenizerError
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    path = write_byte_level(tmp_path / "qwen99-tok.gguf", "qwen99")
    with pytest.raises(TokenizerError, match="unknown pre-tokenizer 'qwen99'"):
        gguf_tokenizer(read_gguf(path))
