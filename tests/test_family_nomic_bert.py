"""nomic-bert (`nomic_bert`, attnscope/architectures/nomic_bert.py) against transformers.

Two tiny random checkpoints from tests/tiny_models_nomic.py, saved by transformers'
NomicBertModel / NomicBertForMaskedLM (Nomic's own tensor names: fused `attn.Wqkv`,
`mlp.fc11`/`fc12`/`fc2`, `norm1`/`norm2`, `emb_ln`), with a RoPE base of 700 and weights
at std 0.25 (`initializer_range` 0.25). `KINDS_TEXT` is 90+ tokens in their tokenizer.

Every expected number comes from transformers (eager attention, `output_attentions`):
attention in float32 to 1e-5 on every layer and head, the mask demo's last step, the
count of the real nomic-embed-text-v1.5 config (transformers' NomicBertModel on the meta
device), and the same model read from a config.json in Nomic's own keys. The GGUF form is
in tests/test_gguf_encoders.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from family_checks import assert_close as max_diff
from family_checks import cached
import tiny_models as tm
import tiny_models_kinds as tk
import tiny_models_nomic as tn
from attnscope.cli import app
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError

NAMES = list(tn.NOMIC_BUILDERS)
ATOL = 1e-5  # attention probabilities, float32 against float32
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
# nomic-embed-text-v1.5 as transformers 5.25 counts it (NomicBertModel, meta device)
NOMIC_V15_PARAMETERS = 136_731_648


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: tn.NOMIC_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    return cached(lambda name: tm.load_reference(folder(name)))  # every tensor used, none missing


def ids_of(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable[[str], Path], reference: Callable[[str], Any]) -> None:
    """What the parity tests rest on: Nomic's fused names on disk, a RoPE base of 700 that
    transformers applies, 90+ tokens, and patterns that are not flat."""
    from safetensors import safe_open

    with safe_open(str(folder("nomic_bert") / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("encoder.layers.0.attn.Wqkv.weight").get_shape() == [3 * 64, 64]
    assert {"encoder.layers.2.mlp.fc11.weight", "encoder.layers.2.mlp.fc12.weight", "emb_ln.weight",
            "embeddings.token_type_embeddings.weight"} <= keys
    assert not any("position_embeddings" in k for k in keys)
    ref = reference("nomic_bert")
    assert ref.config.rope_parameters["rope_theta"] == tn.NOMIC_THETA
    assert ref.config.initializer_range >= 0.2
    ids = ids_of(folder("nomic_bert"))
    assert len(ids) >= 90
    att = tm.reference_attention(ref, ids)
    assert float(att.max()) > 0.5 and float(att.min()) < 1e-3  # peaked rows, not uniform ones


def test_config_reads_every_quirk(ours: Callable[[str], Any]) -> None:
    cfg = ours("nomic_bert").config
    spec = cfg.layer(0)
    assert (cfg.family, cfg.causal, cfg.positions, cfg.n_types, cfg.embed_norm, cfg.final_norm) == \
        ("nomic_bert", False, "rope", 2, True, False)
    assert spec.wiring == "post" and spec.mlp.kind == "gated" and spec.mlp.act == "silu"
    assert spec.attn.rope is not None and spec.attn.rope.theta == tn.NOMIC_THETA and spec.attn.rope.rotary_dim == 16
    assert not (spec.attn.qkv_bias or spec.attn.out_bias or spec.mlp.bias)
    assert cfg.heads == () and ours("nomic_mlm").config.heads == ("mlm",)


# ------------------------------------------------------------------ attention


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable[[str], Path], ours: Callable[[str], Any],
                                        reference: Callable[[str], Any]) -> None:
    """Every layer and head of 90+ tokens, float32 against transformers' eager float32."""
    ids = ids_of(folder(name))
    att = ours(name).attention(tk.KINDS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    ref = tm.reference_attention(reference(name), ids)
    cfg = reference(name).config
    assert tuple(att.probs.shape) == (cfg.num_hidden_layers, cfg.num_attention_heads, len(ids), len(ids))
    max_diff(att.probs, ref, ATOL, name)


def test_a_wrong_rope_base_is_caught(folder: Callable[[str], Path], ours: Callable[[str], Any],
                                     reference: Callable[[str], Any]) -> None:
    """The comparison above can fail: with NomicBertConfig's default base (1,000) in place
    of the checkpoint's 700, the same weights attend measurably elsewhere."""
    from attnscope.architectures import ARCHITECTURES, to_ours
    from attnscope.model import build
    from safetensors.torch import load_file

    cfg = ours("nomic_bert").config
    wrong = replace(cfg, rope_theta=1000.0)
    module = ARCHITECTURES["nomic_bert"]
    tensors = load_file(str(folder("nomic_bert") / "model.safetensors"))
    named = {k: v for name, t in tensors.items() for k, v in to_ours(module, name, t, wrong).items()}
    from attnscope.api import Inspector

    insp = ours("nomic_bert")
    other = Inspector(wrong, build(wrong, iter(named.items()), torch.device("cpu"), torch.float32), insp.tokenizer,
                      "wrong-base", torch.device("cpu"), torch.float32)
    ids = ids_of(folder("nomic_bert"))
    ref = tm.reference_attention(reference("nomic_bert"), ids)
    assert float((other.attention_ids(ids).probs - ref).abs().max()) > 1e-2


def test_nomic_style_config_reads_the_same(folder: Callable[[str], Path], ours: Callable[[str], Any],
                                           tmp_path: Path) -> None:
    """config.json in Nomic's keys (n_embd, rotary_emb_base, activation_function …), as
    the Hub first published nomic-embed-text: the same layers, the same attention."""
    copy = tmp_path / "nomic-keys"
    shutil.copytree(folder("nomic_bert"), copy)
    tn.nomic_hub_config(copy)
    raw = json.loads((copy / "config.json").read_text())
    assert "hidden_size" not in raw and raw["n_embd"] == 64 and raw["rotary_emb_base"] == tn.NOMIC_THETA
    from attnscope.api import load

    theirs = load(str(copy), device="cpu", dtype="float32")
    base = ours("nomic_bert")
    assert theirs.config.stack == base.config.stack and theirs.config.n_ctx == base.config.n_ctx
    assert torch.equal(theirs.attention(tk.KINDS_TEXT).probs, base.attention(tk.KINDS_TEXT).probs)


@pytest.mark.parametrize("change, words", [
    ({"prenorm": True}, "prenorm"),
    ({"rotary_emb_interleaved": True}, "interleaved"),
    ({"rotary_scaling_factor": 2.0}, "rotary_scaling_factor"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"mlp_fc1_bias": True}, "one MLP projection"),
    ({"moe_every_n_layers": 2}, "experts"),
])
def test_unsupported_settings_are_one_clear_line(change: dict[str, Any], words: str, tmp_path: Path) -> None:
    raw = json.loads((REAL / "nomic-embed-text-v1.5.json").read_text())
    raw.pop("_num_parameters")
    raw.update(change)
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    res = CliRunner().invoke(app, ["params", "--config", str(path)], env=ENV)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) <= 2 and words in res.stderr


# ------------------------------------------------------------------ mask-demo


def test_mask_demo_last_step_is_the_layers_attention(folder: Callable[[str], Path],
                                                     reference: Callable[[str], Any]) -> None:
    """An encoder's own mask is `--kind bidirectional` (without it the demo shows what a
    causal mask would do to the same scores); its last step is the layer's attention."""
    ids = ids_of(folder("nomic_bert"))
    attentions = tm.reference_attention(reference("nomic_bert"), ids)  # (L, H, T, T)
    for layer in range(attentions.shape[0]):
        for head in range(attentions.shape[1]):
            res = CliRunner().invoke(app, ["mask-demo", tk.KINDS_TEXT, "--model", str(folder("nomic_bert")),
                                           "--layer", str(layer), "--head", str(head), "--kind", "bidirectional", "--device", "cpu",
                                           "--json"],
                                     env=ENV)
            assert res.exit_code == 0, res.output
            doc = json.loads(res.stdout)
            where = f"layer {layer} head {head}"
            assert doc["layer_kind"].startswith("bidirectional encoder") and doc["own_mask"] is True, where
            step = doc["steps"][-1]
            assert step["name"] == "masked_softmax", where
            max_diff(torch.tensor(step["matrix"], dtype=torch.float64), attentions[layer, head], ATOL, where)


# ------------------------------------------------------------------ counting and the CLI


def _transformers_count(raw: dict[str, Any]) -> int:
    import transformers

    config = transformers.AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "_num_parameters"})
    with torch.device("meta"):
        model = getattr(transformers, raw["architectures"][0])(config)
    return model.num_parameters()


def test_real_config_count_is_transformers_own() -> None:
    """nomic-embed-text-v1.5's config.json counts, through `params --config FILE` and the
    preset, to what transformers' NomicBertModel holds on the meta device."""
    path = REAL / "nomic-embed-text-v1.5.json"
    raw = json.loads(path.read_text())
    assert raw["_num_parameters"] == NOMIC_V15_PARAMETERS == _transformers_count(raw)
    for source in (str(path), "nomic-embed-text-v1.5"):
        res = CliRunner().invoke(app, ["params", "--config", source, "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["total"] == NOMIC_V15_PARAMETERS, source


@pytest.mark.parametrize("name", NAMES)
def test_params_of_the_checkpoint_equal_transformers(name: str, folder: Callable[[str], Path],
                                                     reference: Callable[[str], Any]) -> None:
    res = CliRunner().invoke(app, ["params", "--model", str(folder(name)), "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["total"] == reference(name).num_parameters()


def test_attend_from_the_cli(folder: Callable[[str], Path]) -> None:
    res = CliRunner().invoke(app, ["attend", tk.KINDS_TEXT, "--model", str(folder("nomic_bert")), "--json",
                                   "--layer", "2", "--head", "3"], env=ENV)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["tokens"][0]["id"] == tm.plain_tokenizer(folder("nomic_bert")).token_to_id("[CLS]")
