"""SmolLM3 and Granite (issue 24), checked against transformers itself.

SmolLM3 is Llama with some layers left without RoPE (`no_rope_layers`, where 1 means the
layer *does* rotate); Granite is Llama with four multipliers (embeddings, the score scale
that replaces 1/sqrt(d), each sublayer's update, and a divisor on the logits). The tiny
checkpoints come from tests/tiny_models_kinds.py: SmolLM3 leaves layer 1 unrotated (not the
every-fourth default), Granite's multipliers are 12 / 0.3 / 0.22 / 8.

Every expected number comes from transformers (eager attention, `output_attentions=True`;
float64 where float32 noise would matter) or from its `num_parameters()` on the meta
device (tests/data/real_configs). The GGUF forms cannot be read by transformers (it does
not support `smollm3` or `granite`), so a tiny GGUF is written as llama.cpp's converter
writes it (q/k rows permuted, Granite's multipliers as metadata) from the very weights of
a safetensors twin, and must give what transformers gives on that twin.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnscope.architectures.granite import MULTIPLIERS
from attnscope.kinds import Stack

import tiny_gguf as tg
import tiny_models as tm
import tiny_models_kinds as kinds
from conftest import _cached
from test_families import assert_attention_close
from test_logits_cache import LOGITS_RTOL, assert_logits_close, check_against_full_pass, reference_run

NAMES = ["smollm3", "granite"]
ATOL = 1e-5  # attention probabilities, float32 against transformers' float32 or float64
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
PRESETS = {"smollm3": "smollm3-3b", "granite": "granite-3.3-2b"}
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def ref(reference: Callable[[str], Any]) -> Callable[[str], Any]:
    """transformers on the folder, eager, float32 (conftest's `reference`)."""
    return reference


@pytest.fixture(scope="module")
def ref64(ref: Callable[[str], Any]) -> Callable[[str], Any]:
    return _cached(lambda name: copy.deepcopy(ref(name)).double().eval())


@pytest.fixture(scope="module")
def ids_of(folder: Callable[[str], Path]) -> Callable[[str], list[int]]:
    def get(name: str) -> list[int]:
        ids = tm.plain_tokenizer(folder(name)).encode(kinds.KINDS_TEXT).ids
        assert len(ids) >= 90
        return ids

    return _cached(get)


def our_patterns(cfg: Any, state: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """(L, H, T, T) from a model built from `cfg` with our-named weights `state`."""
    from attnscope.hooks import Capture, attn_site
    from attnscope.model import build

    model = build(cfg, state.items(), "cpu", torch.float32)
    capture = Capture({attn_site(i): ["pattern"] for i in range(cfg.n_layers)})
    model(torch.tensor(ids), capture)
    return torch.stack([capture.get(attn_site(i), "pattern") for i in range(cfg.n_layers)])


# ------------------------------------------------------------------------ the configs


def test_smollm3_layers_without_rope_are_read_as_transformers_reads_them(ours: Callable, ref: Callable) -> None:
    cfg, hf = ours("smollm3").config, ref("smollm3").config
    rotates = [cfg.layer(i).attn.rope is not None for i in range(cfg.n_layers)]
    assert rotates == [bool(x) for x in hf.no_rope_layers] == [bool(x) for x in kinds.SMOLLM3_NO_ROPE_LAYERS]
    assert {cfg.layer(i).attn.rope.theta for i in range(cfg.n_layers) if rotates[i]} == {kinds.SMOLLM3_THETA}
    assert all(cfg.window(i) is None for i in range(cfg.n_layers))


@pytest.mark.parametrize("edit, rotates, windows", [
    # the default: every fourth layer (3, 7) goes without RoPE
    ({"no_rope_layers": None}, [1, 1, 1, 0, 1, 1, 1, 0], [None] * 8),
    ({"no_rope_layers": None, "no_rope_layer_interval": 2}, [1, 0] * 4, [None] * 8),
    # sliding windows land on the layers without RoPE, unless layer_types says otherwise
    ({"no_rope_layers": None, "use_sliding_window": True, "sliding_window": 5},
     [1, 1, 1, 0, 1, 1, 1, 0], [None, None, None, 5, None, None, None, 5]),
    ({"no_rope_layers": [0] * 8 + [1, 1], "use_sliding_window": True, "sliding_window": 5,
      "layer_types": ["sliding_attention", "full_attention"] * 4}, [0] * 8, [5, None] * 4),
])
def test_smollm3_default_rules_match_transformers(edit: dict[str, Any], rotates: list[int],
                                                  windows: list[int | None]) -> None:
    from transformers import SmolLM3Config

    from attnscope.config import from_hf_config

    raw = {"model_type": "smollm3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, **edit}
    raw = {k: v for k, v in raw.items() if v is not None}
    hf = SmolLM3Config(**{k: v for k, v in raw.items() if k != "model_type"})
    cfg = from_hf_config(raw)
    assert [int(cfg.layer(i).attn.rope is not None) for i in range(8)] == hf.no_rope_layers[:8] == rotates
    hf_windows = [hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
    assert [cfg.window(i) for i in range(8)] == hf_windows == windows
    assert cfg.layer(0).attn.score_scale == (32 // 4) ** -0.5
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"] == 2_000_000.0  # SmolLM3's default base


def test_granite_multipliers_are_read_as_transformers_reads_them(ours: Callable, ref: Callable) -> None:
    cfg, hf = ours("granite").config, ref("granite").config
    m = kinds.GRANITE_MULTIPLIERS
    assert cfg.embed_multiplier == hf.embedding_multiplier == m["embedding_multiplier"]
    assert cfg.logits_divisor == hf.logits_scaling == m["logits_scaling"]
    for i in range(cfg.n_layers):
        assert cfg.layer(i).attn.score_scale == hf.attention_multiplier == m["attention_multiplier"]
        assert cfg.layer(i).residual_scale == hf.residual_multiplier == m["residual_multiplier"]


@pytest.mark.parametrize("name, key, value, words", [
    ("smollm3", "no_rope_layers", [1, 0], "0 or 1 for each of the 4 layers"),
    ("smollm3", "no_rope_layers", [1, 2, 1, 1], "0 or 1"),
    ("smollm3", "no_rope_layers", "1011", "0 or 1"),
    ("granite", "attention_multiplier", 0, "attention_multiplier must be a finite positive number"),
    ("granite", "residual_multiplier", "x", "residual_multiplier must be a finite positive number"),
    ("granite", "logits_scaling", -8.0, "logits_scaling must be a finite positive number"),
])
def test_bad_values_are_one_clear_line(name: str, key: str, value: Any, words: str, folder: Callable,
                                       tmp_path: Path) -> None:
    from attnscope.cli import app

    bad = tmp_path / name
    shutil.copytree(folder(name), bad)
    tm.rewrite_config(bad, lambda raw: raw.update({key: value}))
    result = CliRunner().invoke(app, ["params", "--config", str(bad / "config.json")], env=ENV)
    assert result.exit_code != 0 and words in result.output, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_smollm3_interval_zero_is_one_clear_line(folder: Callable, tmp_path: Path) -> None:
    from attnscope.cli import app

    bad = tmp_path / "smollm3"
    shutil.copytree(folder("smollm3"), bad)
    tm.rewrite_config(bad, lambda raw: (raw.pop("no_rope_layers"), raw.update(no_rope_layer_interval=0)))
    result = CliRunner().invoke(app, ["params", "--config", str(bad / "config.json")], env=ENV)
    assert result.exit_code != 0 and "no_rope_layer_interval must be a positive integer" in result.output


# ---------------------------------------------------------------- attention and logits


@pytest.mark.parametrize("name", NAMES)
def test_attention_equals_transformers_eager(name: str, ours: Callable, ref: Callable, ids_of: Callable) -> None:
    """Every layer and head, 90+ tokens, float32 against transformers' float32."""
    ids = ids_of(name)
    assert_attention_close(ours(name).attention_ids(ids).probs, tm.reference_attention(ref(name), ids),
                           what=name)


@pytest.mark.parametrize("name", NAMES)
def test_each_quirk_changes_the_attention(name: str, ours: Callable, ref: Callable, ids_of: Callable) -> None:
    """The parity above means something: with the quirk dropped (SmolLM3: RoPE on every
    layer; Granite: 1/sqrt(d) and no multipliers) the attention is far from transformers'."""
    insp, ids = ours(name), ids_of(name)
    cfg = insp.config
    if name == "smollm3":
        plain = replace(cfg, kinds=None)
        assert all(plain.layer(i).attn.rope is not None for i in range(cfg.n_layers))
    else:
        plain = replace(cfg, attn_scale=None, embed_multiplier=None, logits_divisor=None, kinds=None)
    state = {k: v for k, v in insp.model.state_dict().items()}
    diff = (our_patterns(plain, state, ids) - tm.reference_attention(ref(name), ids)).abs()  # (L, H, T, T)
    assert float(diff.max()) > 0.05, f"{name}: dropping the quirk changes the attention by only {float(diff.max()):.3g}"
    torch.testing.assert_close(our_patterns(cfg, state, ids), insp.attention_ids(ids).probs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(name: str, ours: Callable, ref64: Callable, ids_of: Callable) -> None:
    ids = ids_of(name)
    logits = ours(name).logits(ids)
    expected, _ = reference_run(ref64(name), ids)
    assert_logits_close(logits, expected, LOGITS_RTOL, name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pieces", ["one_by_one", "prefill_then_steps"])
def test_cache_steps_equal_one_full_pass(name: str, pieces: str, ours: Callable, ref64: Callable,
                                         ids_of: Callable) -> None:
    ids = ids_of(name)
    split = [[i] for i in ids] if pieces == "one_by_one" else [ids[:7], ids[7:10]] + [[i] for i in ids[10:]]
    check_against_full_pass(name, ours(name), ref64(name), ids, split)


# ---------------------------------------------------------------------------- mask-demo


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_each_layers_attention(name: str, folder: Callable, ref64: Callable,
                                                      ids_of: Callable) -> None:
    from attnscope.cli import app

    text = kinds.KINDS_TEXT
    ids = ids_of(name)
    attentions = tm.reference_attention(ref64(name), ids)  # (L, H, T, T)
    n_layers, n_heads = attentions.shape[:2]
    for layer in range(n_layers):
        for head in range(n_heads):
            result = CliRunner().invoke(app, ["mask-demo", text, "--model", str(folder(name)), "--layer", str(layer),
                                              "--head", str(head), "--device", "cpu", "--json"], env=ENV)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"{name} layer {layer} head {head}"
            assert doc["kind_given"] is False and doc["own_mask"] is True, where
            # the mask rule (global: causal over every key); whether the words also say
            # "no RoPE" on SmolLM3's layer 1 is masks.layer_kind's business, not this family's
            assert doc["layer_kind"].split(",")[0] == "global", f"{where}: {doc['layer_kind']}"
            assert doc["window"] is None and doc["kind"] == doc["model_mask"] == "causal", where
            assert len(doc["tokens"]) == len(ids) and doc["steps"][-1]["name"] == "masked_softmax"
            last = torch.tensor(doc["steps"][-1]["matrix"], dtype=torch.float64)  # (T, T)
            torch.testing.assert_close(last, attentions[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m, where=where: f"{where}: {m}")


# ------------------------------------------------------------------------- counting, CLI


@pytest.mark.parametrize("name", NAMES)
def test_real_config_count_equals_transformers(name: str) -> None:
    from attnscope.config import load_config
    from attnscope.params import report

    path = REAL_CONFIGS / f"{PRESETS[name]}.json"
    expected = json.loads(path.read_text())["_num_parameters"]
    assert report(load_config(path)).total == expected
    result = CliRunner().invoke(__import__("attnscope.cli", fromlist=["app"]).app,
                                ["params", "--config", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    assert f"{expected:,}" in result.output


@pytest.mark.parametrize("name", NAMES)
def test_attend_cli_runs_on_the_tiny_folder(name: str, folder: Callable) -> None:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", kinds.KINDS_TEXT, "--model", str(folder(name)), "--device", "cpu"],
                                env=ENV)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------- GGUF


def _gguf_meta(hf: Any, name: str) -> Callable[[Any], None]:
    """What llama.cpp's LlamaModel (and GraniteModel) write for these configs."""
    def meta(w: Any) -> None:
        tg._llama_meta(hf)(w)
        if name == "granite":  # GraniteModel.set_gguf_parameters, each only when non-zero
            w.add_attention_scale(hf.attention_multiplier)
            w.add_embedding_scale(hf.embedding_multiplier)
            w.add_residual_scale(hf.residual_multiplier)
            w.add_logit_scale(hf.logits_scaling)
    return meta


def write_gguf(path: Path, name: str, model: Any) -> Path:
    """A GGUF of `model` as convert_hf_to_gguf.py writes it (SmolLM3Model and GraniteModel
    are LlamaModels: q/k rows permuted to adjacent pairs), every tensor F32 so that its
    weights are exactly the safetensors twin's."""
    import gguf

    hf = model.config
    # pre-tokenizer "gpt-2": the tiny tokenizers split as GPT-2 does (llama-bpe would cut
    # 6789 into 678 + 9, and the ids would no longer be the twin's)
    if name == "smollm3":
        vocab = tg.byte_level_vocab(tm.llama3_tokenizer(), "gpt-2", tm.LLAMA3_SPECIALS, *tm.LLAMA3_SPECIALS,
                                    add_bos=True)
    else:
        vocab = tg.byte_level_vocab(tm.gpt2_tokenizer(), "gpt-2", ["<|endoftext|>"], "<|endoftext|>",
                                    "<|endoftext|>", add_bos=False)
    vocab.pad(hf.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[name.upper()], hf.num_hidden_layers)
    w = gguf.GGUFWriter(path, name)
    w.add_name(f"tiny-{name}")
    _gguf_meta(hf, name)(w)
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for key, value in vocab.ids.items():
        getattr(w, f"add_{key}_token_id")(value)
    w.add_add_bos_token(vocab.flags["add_bos"])
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and hf.tie_word_embeddings:
            continue
        t = t.detach().float().clone()
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            t = tg.permute(t, hf.num_attention_heads)
        if key.endswith(("k_proj.weight", "k_proj.bias")):
            t = tg.permute(t, hf.num_key_value_heads)
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, key  # internal invariant
        w.add_tensor(gguf_name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_twin(folder: Callable, ref: Callable, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """(our Inspector on the GGUF, transformers float64 on its safetensors twin, our
    Inspector on that twin). SmolLM3's GGUF cannot say which layers go without RoPE, so
    llama.cpp takes every fourth: the twin is the tiny folder with `no_rope_layers` dropped
    from config.json (the same default in transformers)."""
    from attnscope.api import load

    def make(name: str) -> Any:
        twin = folder(name)
        if name == "smollm3":
            twin = tmp_path_factory.mktemp("smollm3_twin") / "smollm3"
            shutil.copytree(folder(name), twin)
            tm.rewrite_config(twin, lambda raw: raw.pop("no_rope_layers"))
        path = write_gguf(tmp_path_factory.mktemp(f"{name}_gguf") / f"tiny-{name}.gguf", name, ref(name))
        reference = tm.load_reference(twin).double().eval()
        return load(str(path), device="cpu", dtype="float32"), reference, load(str(twin), device="cpu", dtype="float32")

    return _cached(make)


@pytest.mark.parametrize("name", NAMES)
def test_gguf_config_is_the_twins(name: str, gguf_twin: Callable) -> None:
    from_gguf, reference, twin = gguf_twin(name)
    # GGUF stores Granite's multipliers as float32 (0.3 -> 0.30000001192...), as llama.cpp uses them
    ours_, theirs = from_gguf.config.layer(0), twin.config.layer(0)
    assert ours_.attn.score_scale == pytest.approx(theirs.attn.score_scale, rel=1e-7)
    assert ours_.residual_scale == pytest.approx(theirs.residual_scale, rel=1e-7)
    exact = replace(ours_.with_attn(scale=theirs.attn.scale), residual_scale=theirs.residual_scale)
    assert Stack.of(exact if s == ours_ else s for s in from_gguf.config.stack) == twin.config.stack
    for attr in ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "vocab_size", "norm_eps", "tied_embeddings",
                 "embed_multiplier", "logits_divisor", "rope_theta"):
        mine, theirs_ = getattr(from_gguf.config, attr), getattr(twin.config, attr)
        assert mine == (theirs_ if theirs_ is None else pytest.approx(theirs_, rel=1e-7)), attr
    if name == "smollm3":
        assert [from_gguf.config.layer(i).attn.rope is not None for i in range(4)] == [True, True, True, False]
        assert reference.config.no_rope_layers == [1, 1, 1, 0]


@pytest.mark.parametrize("name", NAMES)
def test_gguf_attention_and_logits_equal_transformers_on_the_twin(name: str, gguf_twin: Callable,
                                                                  ids_of: Callable) -> None:
    from_gguf, reference, twin = gguf_twin(name)
    ids = ids_of(name)
    ref_logits, ref_attn = reference_run(reference, ids)
    assert_attention_close(from_gguf.attention_ids(ids).probs, ref_attn.float(), what=f"{name} GGUF")
    assert_logits_close(from_gguf.logits(ids), ref_logits, LOGITS_RTOL, f"{name} GGUF")
    # the same weights; only Granite's float32-stored multipliers differ, in the 8th digit
    assert_logits_close(from_gguf.logits(ids), twin.logits(ids).double(), 1e-6, f"{name} GGUF vs safetensors")
    assert from_gguf.tokenize(kinds.KINDS_TEXT).ids == ids


def test_granite_gguf_without_scale_keys_means_what_llama_cpp_reads() -> None:
    """The converter writes each multiplier only when non-zero; llama.cpp reads an absent
    attention scale as 1/sqrt(head size) and the other three as no scaling."""
    from attnscope.architectures import granite
    from attnscope.config import from_hf_config

    meta = {"granite.embedding_length": 64, "granite.block_count": 2, "granite.attention.head_count": 4,
            "granite.attention.head_count_kv": 2, "granite.feed_forward_length": 96,
            "granite.context_length": 128, "granite.attention.layer_norm_rms_epsilon": 1e-5,
            "granite.rope.dimension_count": 16}
    raw = granite.config_from_gguf(meta, "granite", {})
    cfg = from_hf_config({**raw, "vocab_size": 100})
    assert cfg.layer(0).attn.score_scale == pytest.approx(16 ** -0.5)
    assert cfg.embed_multiplier is None and cfg.logits_divisor is None and cfg.layer(0).residual_scale == 1.0


# ------------------------------------------------------------------------ hostile values

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)
_SMOLLM3_KEYS = ("no_rope_layers", "no_rope_layer_interval", "use_sliding_window", "sliding_window", "layer_types")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_SMOLLM3_KEYS + MULTIPLIERS), _JSONISH | st.lists(st.integers(0, 1), max_size=6),
                       max_size=4),
       st.sampled_from(NAMES))
def test_any_value_of_these_keys_is_a_config_or_one_config_error(edit: dict[str, Any], name: str) -> None:
    """Whatever config.json says in the keys these readers add, reading it gives a config
    whose layer kinds pass ModelConfig's checks, or a ConfigError: never another exception."""
    from attnscope.config import from_hf_config
    from attnscope.errors import ConfigError

    raw = {"model_type": name, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, **edit}
    try:
        cfg = from_hf_config(raw)
    except ConfigError:
        return
    assert len(cfg.stack) == 4
    for spec, _ in cfg.stack.kinds():
        assert spec.attn.score_scale > 0 and spec.residual_scale > 0
