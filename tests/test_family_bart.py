"""BART (post-norm), mBART (pre-norm, final norms, scaled embeddings) and Marian (post-norm,
sinusoidal positions, swish) against transformers' eager BartForConditionalGeneration,
MBartForConditionalGeneration and MarianMTModel.

The tiny checkpoints of tests/tiny_models_seq2seq.py (encoder 2 layers × 4 heads, decoder
3 layers × 2 heads with a narrower MLP, a random final_logits_bias) read SOURCE_TEXT (90+
tokens) in the encoder and the decoder start token + TARGET_TEXT (60+) in the decoder.
Checked here: every layer and head of the three kinds of attention to 1e-5 and the logits
to 1e-4 relative; token by token through the decoder's cache; final_logits_bias (a port
that drops it fails; a checkpoint without it reads zeros, as transformers does); counts
(bart-base 139,420,416 from its real config and preset; the tiny folders); params rows per
stack; bad configs as one ConfigError each.
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import tiny_models_seq2seq as sm
from attnscope import seq2seq
from attnscope.config import from_hf_config, preset
from attnscope.errors import ConfigError
from attnscope.model import KVCache
from attnscope.params import param_shapes

NAMES = ["bart", "mbart", "marian"]
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
ATOL = 1e-5  # attention in float32 both sides, through at most three LayerNorm'd layers (measured: under 1e-6)
RTOL = 1e-4  # logits relative to their largest magnitude (measured: under 1e-6)
DEC_LAYERS = 3


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return sm.builds(tmp_path_factory)


@pytest.fixture(scope="module")
def ours(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.loads(built)


@pytest.fixture(scope="module")
def reference(built: Callable[[str], Path]) -> Callable[[str], Any]:
    return sm.teacher_forced(built)


_max_diff = sm.max_diff


@pytest.mark.parametrize("name", NAMES)
def test_three_kinds_of_attention_and_logits_equal_transformers(name: str, ours: Any, reference: Any) -> None:
    _, src, dec, out = reference(name)
    assert len(src) >= 90 and len(dec) >= 61
    got = ours(name).seq2seq(src, dec[1:])
    assert got.encoder.shape == (2, 4, len(src), len(src))
    assert got.decoder.shape == (DEC_LAYERS, 2, len(dec), len(dec))
    assert got.cross.shape == (DEC_LAYERS, 2, len(dec), len(src))
    assert _max_diff(got.encoder, out.encoder_attentions) < ATOL
    assert _max_diff(got.decoder, out.decoder_attentions) < ATOL
    assert _max_diff(got.cross, out.cross_attentions) < ATOL
    ref = out.logits[0]
    assert ((got.logits - ref).abs().max() / ref.abs().max()).item() < RTOL
    for part in (got.encoder, got.decoder, got.cross):
        assert part.max(-1).values.mean().item() < 0.9  # spread, not one-hot


@pytest.mark.parametrize("name", NAMES)
def test_final_logits_bias_is_added(name: str, ours: Any, reference: Any) -> None:
    _, src, dec, out = reference(name)
    m = ours(name)
    bias = m.model.logits_bias
    assert bias.abs().max().item() > 0.5  # the tiny checkpoint's is random
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.zero_()
        got = m.seq2seq(src, dec[1:], parts=("cross",))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    ref = out.logits[0]
    assert ((got.logits - ref).abs().max() / ref.abs().max()).item() > 100 * RTOL


def test_a_checkpoint_without_final_logits_bias_reads_zeros(built: Callable[[str], Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from attnscope.api import load

    folder = tmp_path / "bart"
    shutil.copytree(built("bart"), folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["final_logits_bias"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    m = load(str(folder), device="cpu", dtype="float32")
    assert m.model.has_head and m.model.logits_bias.abs().max().item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_through_the_cache_equals_the_full_pass(name: str, ours: Any, reference: Any) -> None:
    _, src, dec, _ = reference(name)
    m = ours(name)
    model = m.model
    full = m.seq2seq(src, dec[1:])
    memory = seq2seq.encode(model, torch.tensor(src))
    cache = KVCache(DEC_LAYERS)
    with torch.inference_mode():
        rows = [model.logits(model.decoder(torch.tensor([t]), model.embed.tok, memory, cache=cache))[0] for t in dec]
    stepped = torch.stack(rows)
    assert ((stepped - full.logits).abs().max() / full.logits.abs().max()).item() < RTOL


def test_marian_sinusoids_are_transformers_table(reference: Any) -> None:
    from attnscope.parts.positions import sinusoidal

    model = reference("marian")[0]
    for stack in (model.model.encoder, model.model.decoder):
        table = stack.embed_positions.weight
        assert torch.equal(sinusoidal(torch.arange(table.shape[0]), table.shape[1]), table)


def test_marian_refuses_a_decoder_vocabulary_of_its_own() -> None:
    raw = {**_BART, "model_type": "marian"}
    with pytest.raises(ConfigError, match="decoder vocabulary"):
        from_hf_config({**raw, "share_encoder_decoder_embeddings": False}, "m")
    with pytest.raises(ConfigError, match="decoder_vocab_size"):
        from_hf_config({**raw, "decoder_vocab_size": 80}, "m")


def test_bart_base_count_is_transformers_own() -> None:
    raw = json.loads((REAL_CONFIGS / "bart-base.json").read_text())
    expected = raw.pop("_num_parameters")
    assert expected == 139_420_416  # the figure
    assert sum(prod(s) for s in param_shapes(from_hf_config(raw, "bart-base")).values()) == expected
    assert sum(prod(s) for s in param_shapes(preset("bart-base")).values()) == expected


@pytest.mark.parametrize("name", NAMES)
def test_tiny_folder_counts_equal_transformers(name: str, built: Callable[[str], Path], reference: Any) -> None:
    from attnscope.config import load_config

    model = reference(name)[0]
    cfg = load_config(built(name))
    assert sum(prod(s) for s in param_shapes(cfg).values()) == model.num_parameters()


def test_params_rows_per_stack() -> None:
    from attnscope.params import report

    rep = report(preset("bart-base"))
    assert [k.label for k in rep.kinds] == ["encoder: bidirectional encoder", "decoder: causal, with cross-attention"]
    enc, dec = rep.kinds
    assert dec.block["attention"] == 2 * enc.block["attention"]
    assert rep.rows["positions"] == 2 * 1026 * 768  # each stack's own table, offset 2
    assert rep.total_full == 139_420_416


_BART = {"model_type": "bart", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 48, "decoder_ffn_dim": 48, "vocab_size": 64,
         "max_position_embeddings": 64}


@pytest.mark.parametrize("bad", [
    {"activation_function": "tanhh"}, {"encoder_attention_heads": 5}, {"decoder_attention_heads": 0},
    {"decoder_layers": "2"}, {"scale_embedding": "yes"}, {"decoder_start_token_id": 64}, {"d_model": -32},
    {"max_position_embeddings": 0}, {"decoder_ffn_dim": 10 ** 12}, {"encoder_layers": 10 ** 9},
])
def test_bad_bart_configs_are_one_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        from_hf_config({**_BART, **bad}, "bad")


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_heads_target_part_scores_each_stacks_self_attention(part: str, built: Callable[[str], Path],
                                                            reference: Any) -> None:
    """`heads --target --part encoder|decoder --json` on BART (encoder 4 heads, decoder 2):
    each stack's text scores equal their definitions on transformers' attentions."""
    from typer.testing import CliRunner

    from attnscope.cli import app
    from test_family_t5 import ENV, check_self_scores

    _, src, dec, out = reference("bart")
    result = CliRunner().invoke(app, ["heads", sm.SOURCE_TEXT, "--target", sm.TARGET_TEXT, "--model",
                                      str(built("bart")), "--part", part, "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    theirs = out.encoder_attentions if part == "encoder" else out.decoder_attentions
    assert doc["part"] == part and doc["text"]["ids"] == (src if part == "encoder" else dec)
    check_self_scores(doc, torch.stack([a[0] for a in theirs]), src if part == "encoder" else dec, part == "decoder")
