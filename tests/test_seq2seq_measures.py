"""`attend SOURCE --target TARGET` beyond the attention weight, on the encoder-decoders
(T5, BART; tests/tiny_models_seq2seq.py), and the mBART / Marian presets.

1. the mBART and Marian presets count what transformers counts for their published
   configs (tests/data/real_configs/, `_num_parameters` computed by transformers on the
   meta device, recomputed by tests/test_kinds_groundwork.py), through `params --config`;
2. `--measure norm` on each part against Kobayashi et al.'s definition, ‖α_hij f_h(x_j)‖ with
   f_h(x) = (x W_V^h + b_V^h) W_O^h, computed here in float64 from transformers' own tensors
   (the model cast to float64: its attentions, its hidden states, its weights), x_j the
   input each attention's values are projected from: the stack's hidden state entering
   the layer (after the layer's pre-norm where it has one) for self-attention, the
   encoder's final states for the cross-attention;
3. rollout, ALTI and Value Zeroing on `--part encoder` equal the same measure run on the
   encoder alone (`attend SOURCE` without --target), rollout also against its definition on
   transformers' encoder attentions; on the decoder and cross parts each is refused with
   its reason.

Bounds: attnscope runs float32 and the reference float64, through at most three layers
(measured patterns under 2e-6 of transformers', tests/test_family_t5.py); every norm is
compared relative to the largest norm of its array, 1e-5 as tests/test_measures.py does;
row-normalised and rolled-out values, bounded by 1, to 1e-5 absolute.
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

import cli_runs
import tiny_models_seq2seq as sm
from cli_runs import error_line as _one_error

from attnscope.config import from_hf_config, preset
from attnscope.params import param_shapes

REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def _cli(*args: Any) -> Any:
    return cli_runs.invoke(ENV, *args)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name, family, published", [("mbart-large-cc25", "mbart", 610_851_840),
                                                     ("opus-mt-en-de", "marian", 74_410_496)])
def test_seq2seq_presets_count_their_published_configs(name: str, family: str, published: int) -> None:
    raw = json.loads((REAL_CONFIGS / f"{name}.json").read_text())
    expected = raw.pop("_num_parameters")
    assert expected == published
    assert sum(prod(s) for s in param_shapes(from_hf_config(raw, name)).values()) == expected
    cfg = preset(name)
    assert cfg.decoder is not None and sum(prod(s) for s in param_shapes(cfg).values()) == expected
    result = _cli("params", "--config", name, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == expected and doc["family"] == family
    # the preset is the published file's model, field for field where attnscope reads it
    published_cfg = from_hf_config(raw, name)
    for field in ("d_model", "n_heads", "n_layers", "vocab_size", "n_ctx", "positions", "norm", "tied_embeddings",
                  "final_norm", "embed_norm"):
        assert getattr(cfg, field, None) == getattr(published_cfg, field, None), field
    assert cfg.decoder == published_cfg.decoder
    assert cfg.extra.get("decoder_start_token_id") == published_cfg.extra.get("decoder_start_token_id")


# ----------------------------------------------------------------------------- norm on every part

RTOL = 1e-5  # relative to the largest norm compared
ATOL = 1e-5  # row-normalised or rolled-out values, bounded by 1


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return sm.builds(tmp_path_factory)


_ids = sm.source_target_ids


def _f_norms(x: Tensor, v: Any, o: Any, n_heads: int) -> Tensor:
    """‖f_h(x_j)‖ (H, n) in float64: f_h(x) = (x W_V^h + b_V^h) W_O^h, from the modules' own
    weights (nn.Linear: y = x Wᵀ + b)."""
    n = x.shape[0]
    vals = x @ v.weight.T + (v.bias if v.bias is not None else 0)  # (n, H·dh)
    dh = vals.shape[-1] // n_heads
    vals = vals.view(n, n_heads, dh).transpose(0, 1)  # (H, n, dh)
    w_o = o.weight.view(o.weight.shape[0], n_heads, dh)  # (d, H, dh)
    f = torch.einsum("hnd,mhd->hnm", vals, w_o)  # (H, n, d): f_h(x_j), no output bias (it moves no key)
    return f.norm(dim=-1)


@torch.no_grad()
def reference_norms(folder: Path) -> dict[str, Tensor]:
    """α_hij ‖f_h(x_j)‖ of every layer and head of the three parts, float64 [L, H, rows, keys],
    from transformers' model cast to float64: its attentions and hidden states, and the
    attention modules' weights."""
    model = sm.reference(folder).double()
    src, tgt = _ids(folder)
    dec = [model.config.decoder_start_token_id] + tgt
    out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True,
                output_hidden_states=True)
    t5 = model.config.model_type in ("t5", "mt5")
    memory = out.encoder_last_hidden_state[0]  # (S, d): the encoder's final states, what every cross-attention reads
    parts: dict[str, list[Tensor]] = {"encoder": [], "decoder": [], "cross": []}
    if t5:
        enc, dcd = model.encoder.block, model.decoder.block
        for layer, block in enumerate(enc):
            attn = block.layer[0].SelfAttention
            x = block.layer[0].layer_norm(out.encoder_hidden_states[layer][0])  # pre-norm: what the values read
            size = _f_norms(x, attn.v, attn.o, attn.n_heads)
            parts["encoder"].append(out.encoder_attentions[layer][0] * size[:, None, :])
        for layer, block in enumerate(dcd):
            attn = block.layer[0].SelfAttention
            x = block.layer[0].layer_norm(out.decoder_hidden_states[layer][0])
            parts["decoder"].append(out.decoder_attentions[layer][0] * _f_norms(x, attn.v, attn.o, attn.n_heads)[:, None, :])
            cross = block.layer[1].EncDecAttention
            parts["cross"].append(out.cross_attentions[layer][0]
                                  * _f_norms(memory, cross.v, cross.o, cross.n_heads)[:, None, :])
    else:
        inner = model.model
        pre = model.config.model_type == "mbart"  # pre-norm: the values read the normed stream
        for layer, block in enumerate(inner.encoder.layers):
            h = out.encoder_hidden_states[layer][0]
            x = block.self_attn_layer_norm(h) if pre else h
            size = _f_norms(x, block.self_attn.v_proj, block.self_attn.out_proj, block.self_attn.num_heads)
            parts["encoder"].append(out.encoder_attentions[layer][0] * size[:, None, :])
        for layer, block in enumerate(inner.decoder.layers):
            h = out.decoder_hidden_states[layer][0]
            x = block.self_attn_layer_norm(h) if pre else h
            size = _f_norms(x, block.self_attn.v_proj, block.self_attn.out_proj, block.self_attn.num_heads)
            parts["decoder"].append(out.decoder_attentions[layer][0] * size[:, None, :])
            cross = block.encoder_attn
            parts["cross"].append(out.cross_attentions[layer][0]
                                  * _f_norms(memory, cross.v_proj, cross.out_proj, cross.num_heads)[:, None, :])
    return {part: torch.stack(layers) for part, layers in parts.items()}


def _close_to_largest(got: np.ndarray, want: Tensor, what: str) -> None:
    want_np = want.numpy()
    assert got.shape == want_np.shape, (what, got.shape, want_np.shape)
    scale = float(np.abs(want_np).max())
    err = float(np.abs(got - want_np).max())
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} vs largest value {scale:.3g}"


@pytest.mark.parametrize("name", ["t5", "bart", "mbart"])
def test_norm_of_every_part_is_kobayashis_definition(name: str, built: Any, tmp_path: Path) -> None:
    """--save writes the raw norms of the three parts (`{part}_norms`); the heatmap's
    --json shows the shown part's rows normalised to 1 (the cross part by default)."""
    folder = built(name)
    want = reference_norms(folder)
    out = tmp_path / "norms.npz"
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--measure", "norm",
                  "--view", "heatmap", "--layer", "all", "--head", "all", "--save", out, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["measure"] == "norm" and doc["part"] == "cross"
    with np.load(out) as f:
        assert not any(k.endswith("_attentions") for k in f.files), f.files
        for part in ("encoder", "decoder", "cross"):
            assert f[f"{part}_norms"].dtype == np.float32
            _close_to_largest(f[f"{part}_norms"], want[part], f"{name} {part} norms")
    shown = want["cross"] / want["cross"].sum(-1, keepdim=True)
    assert (torch.tensor(doc["patterns"], dtype=torch.float64) - shown).abs().max() <= ATOL
    # the norm moves the picture: weights and norms differ by far more than the bound
    alpha = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--view", "heatmap",
                 "--layer", "all", "--head", "all", "--json", "--device", "cpu")
    assert (torch.tensor(json.loads(alpha.stdout)["patterns"], dtype=torch.float64) - shown).abs().max() > 100 * ATOL


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_norm_views_of_the_self_attention_parts(part: str, built: Any) -> None:
    folder = built("bart")
    want = reference_norms(folder)[part]
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--measure", "norm",
                  "--part", part, "--view", "heatmap", "--layer", "all", "--head", "all", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = torch.tensor(json.loads(result.stdout)["patterns"], dtype=torch.float64)
    assert (got - want / want.sum(-1, keepdim=True)).abs().max() <= ATOL
    text = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--measure", "norm",
                "--part", part)
    assert text.exit_code == 0 and "measure: ‖α·f(x)‖" in text.stdout, text.output


# ----------------------------------------------------------------------------- the per-stack measures


def _encoder_alone(folder: Path, measure: str, tmp_path: Path) -> np.ndarray:
    """`attend SOURCE --measure M --save` without --target: the measure on the encoder alone."""
    out = tmp_path / f"{measure}.npz"
    result = _cli("attend", sm.SOURCE_TEXT, "--model", folder, "--measure", measure, "--layer", "all", "--save", out,
                  "--device", "cpu")
    assert result.exit_code == 0, result.output
    from attnscope.measures import KINDS

    with np.load(out) as f:
        return f[KINDS[measure].saved_as]  # [L, n, n]: one matrix a layer, no head axis


@pytest.mark.parametrize("name", ["t5", "bart"])
@pytest.mark.parametrize("measure", ["rollout", "alti", "value-zeroing"])
def test_per_stack_measures_on_the_encoder_equal_the_encoder_alone(name: str, measure: str, built: Any,
                                                                    tmp_path: Path) -> None:
    folder = built(name)
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--measure", measure,
                  "--part", "encoder", "--view", "heatmap", "--layer", "all", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["measure"] == measure and doc["heads"] == [0]
    got = np.asarray(doc["patterns"], dtype=np.float32)[:, 0]  # [L, S, S]: the single "head" of each layer
    alone = _encoder_alone(folder, measure, tmp_path)
    assert got.shape == alone.shape and got.shape[-1] >= 90
    assert np.array_equal(got, alone)  # the same pass over the same blocks: bit for bit (measured: 0.0)
    assert np.abs(got - np.eye(got.shape[-1])).max() > 0.1  # not the identity: the check can fail


def test_rollout_of_the_encoder_is_its_definition(built: Any) -> None:
    """R_0 = Ā_0, R_l = Ā_l R_{l−1}, Ā = rows of (0.5 mean_h A + 0.5 I) renormalised, on
    transformers' own encoder attentions (float64)."""
    folder = built("t5")
    model = sm.reference(folder).double()
    src, tgt = _ids(folder)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([[0] + tgt]), output_attentions=True)
    eye = torch.eye(len(src), dtype=torch.float64)
    rolled, want = None, []
    for a in out.encoder_attentions:
        mixed = 0.5 * a[0].mean(0) + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rolled = mixed if rolled is None else mixed @ rolled
        want.append(rolled)
    result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--measure", "rollout",
                  "--part", "encoder", "--view", "heatmap", "--layer", "all", "--json", "--device", "cpu")
    got = torch.tensor(json.loads(result.stdout)["patterns"], dtype=torch.float64)[:, 0]
    assert (got - torch.stack(want)).abs().max() <= ATOL


@pytest.mark.parametrize("measure", ["rollout", "alti", "value-zeroing"])
@pytest.mark.parametrize("part", [None, "cross", "decoder"])
def test_per_stack_measures_on_the_other_parts_are_refused_with_the_reason(measure: str, part: Any,
                                                                            built: Any) -> None:
    args = ["--part", part] if part is not None else []
    line = _one_error(_cli("attend", "The cat sat.", "--target", "Die Katze.", "--model", built("t5"),
                           "--measure", measure, *args))
    assert f"--measure {measure}" in line and "yet" not in line
    assert ("two sequences" in line or "source" in line), line


def test_saving_every_part_under_an_encoder_measure_is_refused(built: Any, tmp_path: Path) -> None:
    line = _one_error(_cli("attend", "The cat sat.", "--target", "Die Katze.", "--model", built("t5"), "--measure",
                           "rollout", "--part", "encoder", "--save", tmp_path / "r.npz"))
    assert "all three parts" in line and not (tmp_path / "r.npz").exists()


# ----------------------------------------------------------------------------- --offload


@pytest.mark.parametrize("name", ["t5_v11", "mbart"])
def test_offload_streams_both_stacks_and_equals_the_in_memory_run(name: str, built: Any, tmp_path: Path) -> None:
    """`api.load(offload=True)`: no block of either stack is resident (the encoder's and the
    decoder's blocks on the meta device), each streams in just before it runs; the three
    parts' patterns and the logits equal the in-memory run's, bit for bit, and through the
    CLI (`--offload`, --save of every part) byte for byte."""
    from attnscope.api import load

    folder = built(name)
    resident = load(str(folder), device="cpu", dtype="float32", offload=False)
    streamed = load(str(folder), device="cpu", dtype="float32", offload=True)
    for stack in (streamed.model.blocks, streamed.model.decoder.blocks):
        assert all(p.device.type == "meta" for p in stack.parameters())
    loaded: list[tuple[str, int]] = []
    for where, owner in (("encoder", streamed.model), ("decoder", streamed.model.decoder)):
        source = owner.block_source

        def counted(i: int, source: Any = source, where: str = where) -> Any:
            loaded.append((where, i))
            return source(i)

        owner.block_source = counted
    a = resident.seq2seq(sm.SOURCE_TEXT, sm.TARGET_TEXT)
    b = streamed.seq2seq(sm.SOURCE_TEXT, sm.TARGET_TEXT)
    cfg = resident.config
    assert cfg.decoder is not None
    assert loaded == [("encoder", i) for i in range(cfg.n_layers)] + [("decoder", i) for i in range(len(cfg.decoder))]
    for part in ("encoder", "decoder", "cross"):
        assert torch.equal(getattr(a, part), getattr(b, part)), part
    assert torch.equal(a.logits, b.logits)
    for stack in (streamed.model.blocks, streamed.model.decoder.blocks):  # every block dropped after its turn
        assert all(p.device.type == "meta" for p in stack.parameters())
    files = []
    for flag in ([], ["--offload"]):
        out = tmp_path / f"{len(flag)}.npz"
        result = _cli("attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", folder, "--save", out,
                      "--device", "cpu", "--dtype", "float32", *flag)
        assert result.exit_code == 0, result.output
        files.append(out.read_bytes())
    assert files[0] == files[1]


@pytest.mark.parametrize("measure, label", [("rollout", "rollout"), ("alti", "ALTI"), ("value-zeroing", "value zeroing")])
def test_terminal_views_name_a_layer_measure_not_a_head(measure: str, label: str, built: Any) -> None:
    for view in ("focus", "topk", "overview"):
        result = _cli("attend", "The cat sat on the mat.", "--target", "Die Katze.", "--model", built("bart"),
                      "--part", "encoder", "--measure", measure, "--view", view)
        assert result.exit_code == 0, result.output
        assert label in result.stdout and "H0" not in result.stdout, (view, result.stdout)


@pytest.mark.parametrize("measure, part", [("norm", "cross"), ("value-zeroing", "encoder"), ("alti", "encoder")])
def test_measures_read_offloaded_blocks_as_resident_ones(measure: str, part: str, built: Any) -> None:
    """norm and the mixing measures read a block's weights while it runs: offloaded, the
    same values as resident."""
    base = ["attend", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model", built("bart"), "--measure", measure,
            "--part", part, "--view", "heatmap", "--layer", "all", "--head", "all", "--json"]
    resident, offloaded = _cli(*base), _cli(*base, "--offload")
    assert resident.exit_code == 0 and offloaded.exit_code == 0, (resident.output, offloaded.output)
    assert json.loads(resident.stdout) == json.loads(offloaded.stdout)
