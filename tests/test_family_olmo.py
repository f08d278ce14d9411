"""OLMo 2 (`olmo2`) and OLMo 3 (`olmo3`) against transformers (issue 24).

Every expected number comes from transformers (rule 7 of STYLE.md), on the tiny random
checkpoints of `tiny_models_kinds` (`olmo2`: 2 layers; `olmo3`: sliding, full, sliding,
sliding with a window of 8, on `KINDS_TEXT`, 90+ tokens):

* attention per layer and head equals transformers' eager attention in float32 to 1e-5;
* logits equal a float64 transformers reference to 1e-4 of each entry plus 1e-4 of their
  scale (tests/test_logits_cache.py's bound and reasoning), and token-by-token or
  prefill-then-steps through our KVCache equals the full pass (logits and patterns);
* `mask-demo --json`'s final step (no --kind) equals the layer's own pattern, every layer
  and head, and names its kind;
* OLMo 3's RoPE rules: each spelling of the RoPE settings gives the bases transformers'
  `Olmo3Config` settles on (a legacy top-level `rope_theta` reaches only the full layers),
  and on a checkpoint whose config.json is rewritten that way the attention still equals
  transformers' (its sliding layers then rotate with 500000, not the file's 5000);
* YaRN (OLMo-3-7B's file: factor 8 over 8,192 positions, on the full layers only): our
  frequencies and cos/sin factor equal transformers' `_compute_yarn_parameters` bit for
  bit, and a tiny OLMo 3 written that way matches in attention, logits and cache;
* counting: OLMo-2-7B's published config counts to its `_num_parameters` through the path
  `params --config` takes, and OLMo 3 shapes count to transformers' meta-device count;
* GGUF (llama.cpp arch `olmo2`, which transformers cannot load): a tiny F32 GGUF written with
  gguf-py's GGUFWriter from the safetensors checkpoint's own tensors, under llama.cpp's
  names, loads to the same config and weights, and its attention and logits equal those
  from the safetensors folder and transformers'.
"""

from __future__ import annotations

import copy
import json
import shutil
from math import prod
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_gguf as tg
import tiny_models as tm
import tiny_models_kinds as tk
from test_logits_cache import LOGITS_RTOL, assert_logits_close, check_against_full_pass, reference_run
from test_mask_demo_layers import demo_json, expected_words, matrix, reference_window

pytest.importorskip("gguf")

NAMES = ["olmo2", "olmo3"]
ATOL = 1e-5  # attention probabilities in float32, as every parity test
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
REAL = Path(__file__).parent / "data" / "real_configs"

YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 32.0,
        "beta_slow": 1.0, "attention_factor": 1.2079441541679836}
# OLMo-3-7B (from memory of the Hub's config.json and quoted copies of it; the count is
# checked against transformers' own, not against a published figure), YaRN on full layers.
OLMO3_7B = {
    "model_type": "olmo3", "architectures": ["Olmo3ForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100278,
    "max_position_embeddings": 65536, "rms_norm_eps": 1e-6, "rope_theta": 500000, "sliding_window": 4096,
    "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"] * 8,
    "rope_scaling": YARN,
}


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ref64(reference: Callable[[str], Any]) -> Callable[[str], Any]:
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = copy.deepcopy(reference(name)).double().eval()
        return made[name]

    return get


def text_ids(folder: Path) -> list[int]:
    ids = tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids
    assert len(ids) >= 90
    return ids


def assert_attention_close(ours_: torch.Tensor, ref: torch.Tensor, what: str, atol: float = ATOL) -> None:
    assert ours_.shape == ref.shape, f"{what}: shape {tuple(ours_.shape)} != {tuple(ref.shape)}"
    diff = (ours_.double() - ref.double()).abs()  # (L, H, n, n)
    worst = float(diff.max())
    if worst > atol:
        layer, head, i, j = (int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        pytest.fail(f"{what}: attention differs by {worst:.3g} > {atol:g} at layer {layer} head {head} "
                    f"query {i} key {j}")


# ----------------------------------------------------------------- the checkpoints


@pytest.mark.parametrize("name", NAMES)
def test_config_reads_the_kinds(name: str, ours: Callable, reference: Callable) -> None:
    """Every layer: post_sublayer wiring, q/k norm over the projection, its own window
    and RoPE base as transformers' config gives them."""
    cfg, hf = ours(name).config, reference(name).config
    assert (cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (
        hf.model_type, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, 8)
    for layer in range(cfg.n_layers):
        spec = cfg.layer(layer)
        assert spec.wiring == "post_sublayer" and spec.attn.qk_norm == "projection"
        assert spec.attn.window == reference_window(hf, layer)
        kind = hf.layer_types[layer] if name == "olmo3" else None
        params = hf.rope_parameters[kind] if kind else hf.rope_parameters
        assert spec.attn.rope is not None and spec.attn.rope.theta == params["rope_theta"] == tk.OLMO_THETA
        assert spec.attn.rope.scaling is None


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, ours: Callable, reference: Callable, folder: Callable) -> None:
    ids = text_ids(folder(name))
    windows = [reference_window(reference(name).config, i) for i in range(reference(name).config.num_hidden_layers)]
    assert all(w is None or w < len(ids) for w in windows), "the text must be longer than every window"
    att = ours(name).attention(tk.KINDS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    assert att.probs.dtype == torch.float32
    assert_attention_close(att.probs, tm.reference_attention(reference(name), ids), name)


def test_olmo_quirks_change_the_reference(folder: Callable, reference: Callable) -> None:
    """The checks above mean something: the tiny checkpoint's q norm weights are far from
    1, so a reader that dropped or misplaced them would move transformers' own attention
    by far more than 1e-5."""
    model = reference("olmo2")
    ids = text_ids(folder("olmo2"))
    base = tm.reference_attention(model, ids)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for layer in changed.model.layers:
            layer.self_attn.q_norm.weight.fill_(1.0)
    assert float((tm.reference_attention(changed, ids) - base).abs().max()) > 1e-2


# ------------------------------------------------------------------- logits, cache


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, ours: Callable, ref64: Callable, folder: Callable) -> None:
    ids = text_ids(folder(name))
    expected, _ = reference_run(ref64(name), ids)
    assert_logits_close(ours(name).logits(ids), expected, LOGITS_RTOL, name)


@pytest.mark.parametrize("name", NAMES)
def test_one_token_at_a_time_is_one_full_pass(name: str, ours: Callable, ref64: Callable, folder: Callable) -> None:
    ids = text_ids(folder(name))
    check_against_full_pass(name, ours(name), ref64(name), ids, [[i] for i in ids])


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_steps_is_one_full_pass(name: str, ours: Callable, ref64: Callable, folder: Callable) -> None:
    """A prefix longer than the window (8), three tokens at once, then one at a time."""
    ids = text_ids(folder(name))
    cut = 11
    pieces = [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]]
    check_against_full_pass(name, ours(name), ref64(name), ids, pieces)


# ----------------------------------------------------------------------- mask-demo


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_each_layers_attention(name: str, folder: Callable, ref64: Callable) -> None:
    model = ref64(name)
    ids = tm.plain_tokenizer(folder(name)).encode(tm.LONG_TEXT).ids
    attentions = tm.reference_attention(model, ids)  # (L, H, T, T)
    n_layers, n_heads = attentions.shape[:2]
    for layer in range(n_layers):
        window = reference_window(model.config, layer)
        assert window is None or window < len(ids)
        for head in range(n_heads):
            doc = demo_json(folder(name), layer, head)
            where = f"{name} layer {layer} head {head}"
            assert doc["kind_given"] is False and doc["own_mask"] is True, where
            assert doc["layer_kind"] == expected_words(model.config, layer), f"{where}: {doc['layer_kind']}"
            assert doc["window"] == window, where
            assert doc["steps"][-1]["name"] == "masked_softmax"
            torch.testing.assert_close(matrix(doc, "masked_softmax"), attentions[layer, head], rtol=0, atol=ATOL,
                                       msg=lambda m, where=where: f"{where}: {m}")


# ------------------------------------------------------------------ OLMo 3's RoPE


def _hf_rope(raw: dict[str, Any]) -> dict[str, float]:
    from transformers import Olmo3Config

    params = Olmo3Config.from_dict(copy.deepcopy(raw)).rope_parameters
    return {kind: float(params[kind]["rope_theta"]) for kind in ("full_attention", "sliding_attention")}


def _our_rope(raw: dict[str, Any]) -> dict[str, float]:
    from attnscope.config import from_hf_config

    cfg = from_hf_config(copy.deepcopy(raw))
    out: dict[str, float] = {}
    for layer in range(cfg.n_layers):
        rope = cfg.layer(layer).attn.rope
        assert rope is not None
        kind = "sliding_attention" if cfg.layer(layer).attn.window is not None else "full_attention"
        assert out.setdefault(kind, rope.theta) == rope.theta
    return out


# OLMo 3 in small, without YaRN (None values are dropped before use).
SMALL_OLMO3 = {**OLMO3_7B, "num_hidden_layers": 4, "layer_types": None, "rope_scaling": None, "hidden_size": 64,
               "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 128,
               "max_position_embeddings": 256}
ROPE_SPELLINGS = {
    "legacy_theta": {"rope_theta": 1000.0},
    "nothing": {"rope_theta": None},
    "nested": {"rope_theta": None, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 7000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}}},
    "nested_full_only_and_legacy": {"rope_theta": 3.0, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 7000.0}}},
    "nested_sliding_only_and_legacy": {"rope_theta": 3.0, "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}}},
}


@pytest.mark.parametrize("change", ROPE_SPELLINGS.values(), ids=list(ROPE_SPELLINGS))
def test_olmo3_rope_bases_as_transformers_settles_them(change: dict[str, Any]) -> None:
    raw = {**SMALL_OLMO3, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    want = _hf_rope(raw)
    assert _our_rope(raw) == want
    if change.get("rope_theta") == 1000.0:  # surprise 3: the legacy base reaches only the full layers
        assert want == {"full_attention": 1000.0, "sliding_attention": 500000.0}


def test_olmo3_default_layer_types_every_fourth_full() -> None:
    from attnscope.config import from_hf_config

    cfg = from_hf_config({k: v for k, v in {**SMALL_OLMO3, "num_hidden_layers": 8}.items() if v is not None})
    assert [cfg.window(i) for i in range(8)] == [4096, 4096, 4096, None] * 2


def test_olmo3_legacy_config_keeps_parity(folder: Callable, tmp_path: Path) -> None:
    """The tiny OLMo 3 with its RoPE written the old way (`rope_theta` 5000 at the top
    level): transformers rotates its sliding layers with 500000, and so must we."""
    from attnscope.api import load

    copy_ = tmp_path / "olmo3_legacy"
    shutil.copytree(folder("olmo3"), copy_)

    def legacy(raw: dict[str, Any]) -> None:
        raw.pop("rope_parameters")
        raw["rope_theta"] = tk.OLMO_THETA

    tm.rewrite_config(copy_, legacy)
    ref = tm.load_reference(copy_)
    assert ref.config.rope_parameters["sliding_attention"]["rope_theta"] == 500000.0
    ids = text_ids(copy_)
    expected = tm.reference_attention(ref, ids)
    assert float((expected - tm.reference_attention(tm.load_reference(folder("olmo3")), ids)).abs().max()) > 1e-2
    assert_attention_close(load(str(copy_), device="cpu", dtype="float32").attention_ids(ids).probs, expected,
                           "olmo3 legacy rope_theta")


# YaRN as the released OLMo-3-7B file has it (`attention_factor` given), and the ways
# transformers infers what a file leaves out.
YARN_SPELLINGS = {
    "olmo3_7b": YARN,
    "inferred_attention_factor": {k: v for k, v in YARN.items() if k != "attention_factor"},
    "mscales": {**{k: v for k, v in YARN.items() if k != "attention_factor"}, "mscale": 0.8, "mscale_all_dim": 0.5},
    "factor_from_context": {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 4096},
    "short_original": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                       "beta_fast": 16.0, "beta_slow": 2.0},
}


@pytest.mark.parametrize("scaling", YARN_SPELLINGS.values(), ids=list(YARN_SPELLINGS))
@pytest.mark.parametrize("head_dim", [128, 8])
def test_yarn_tables_equal_transformers(scaling: dict[str, Any], head_dim: int) -> None:
    """Our YaRN frequencies and cos/sin factor for the full layers equal transformers'
    `_compute_yarn_parameters` on the same OLMo 3 config (bit for bit: the same float32
    order), and the sliding layers keep plain RoPE."""
    from transformers import Olmo3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from attnscope.config import from_hf_config
    from attnscope.parts.positions import rope_attention_factor, rope_inv_freq

    raw = {**OLMO3_7B, "head_dim": head_dim, "num_attention_heads": 4096 // head_dim,
           "num_key_value_heads": 4096 // head_dim, "rope_scaling": scaling}
    hf = Olmo3Config.from_dict(copy.deepcopy(raw))
    want_freq, want_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu", layer_type="full_attention")
    cfg = from_hf_config(copy.deepcopy(raw))
    full, sliding = cfg.layer(3).attn.rope, cfg.layer(0).attn.rope
    assert full is not None and sliding is not None and full.scaling_type == "yarn" and sliding.scaling is None
    assert torch.equal(rope_inv_freq(full, cfg.n_ctx), want_freq)
    assert rope_attention_factor(full, cfg.n_ctx) == pytest.approx(want_factor, rel=1e-12)
    assert rope_attention_factor(sliding, cfg.n_ctx) == 1.0
    assert not torch.equal(want_freq, rope_inv_freq(replace_scaling(full, None), cfg.n_ctx))


def replace_scaling(rope: Any, scaling: Any) -> Any:
    import dataclasses

    return dataclasses.replace(rope, scaling=scaling)


@pytest.fixture(scope="module")
def olmo3_yarn(folder: Callable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny OLMo 3 with its config.json written as OLMo-3-7B's is: `rope_theta` and a
    YaRN `rope_scaling` at the top level (transformers: YaRN with base 5000 on the full
    layer, plain RoPE with base 500000 on the sliding ones); original context 32 of 256."""
    copy_ = tmp_path_factory.mktemp("olmo3_yarn") / "olmo3_yarn"
    shutil.copytree(folder("olmo3"), copy_)

    def yarn(raw: dict[str, Any]) -> None:
        raw.pop("rope_parameters")
        raw["rope_theta"] = tk.OLMO_THETA
        raw["rope_scaling"] = YARN_SPELLINGS["short_original"]

    tm.rewrite_config(copy_, yarn)
    return copy_


def test_olmo3_yarn_checkpoint_attention_logits_and_cache(olmo3_yarn: Path, tmp_path: Path) -> None:
    from attnscope.api import load

    ref = tm.load_reference(olmo3_yarn)
    assert ref.config.rope_parameters["full_attention"]["rope_type"] == "yarn"
    assert ref.config.rope_parameters["sliding_attention"] == {"rope_type": "default", "rope_theta": 500000.0}
    ids = text_ids(olmo3_yarn)
    expected = tm.reference_attention(ref, ids)
    # YaRN shows: without it (legacy base only) the full layer's attention differs
    plain = tmp_path / "olmo3_plain"
    shutil.copytree(olmo3_yarn, plain)
    tm.rewrite_config(plain, lambda raw: raw.pop("rope_scaling"))
    layer = ref.config.layer_types.index("full_attention")
    assert float((tm.reference_attention(tm.load_reference(plain), ids)[layer] - expected[layer]).abs().max()) > 1e-2
    ours_ = load(str(olmo3_yarn), device="cpu", dtype="float32")
    assert_attention_close(ours_.attention_ids(ids).probs, expected, "olmo3 YaRN")
    ref64_ = copy.deepcopy(ref).double().eval()
    logits, _ = reference_run(ref64_, ids)
    assert_logits_close(ours_.logits(ids), logits, LOGITS_RTOL, "olmo3 YaRN")
    check_against_full_pass("olmo3 YaRN", ours_, ref64_, ids, [[i] for i in ids])


BAD_YARN = {
    "no_original": {"original_max_position_embeddings": None},
    "zero_original": {"original_max_position_embeddings": 0},
    "negative_factor": {"factor": -2.0},
    "inf_beta": {"beta_fast": float("inf")},
    "string_factor": {"attention_factor": "big"},
}


@pytest.mark.parametrize("change", BAD_YARN.values(), ids=list(BAD_YARN))
@pytest.mark.parametrize("model_type", ["olmo2", "olmo3"])
def test_bad_yarn_is_one_line(change: dict[str, Any], model_type: str, tmp_path: Path) -> None:
    from attnscope.cli import app

    scaling = {k: v for k, v in {**YARN, **change}.items() if v is not None}
    raw = {k: v for k, v in {**SMALL_OLMO3, "model_type": model_type, "rope_scaling": scaling}.items()
           if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["params", "--config", str(path)], env=ENV)
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert "rope_scaling" in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2, result.stderr


def test_yarn_truncate() -> None:
    """OLMo 2 honours a `truncate` that is not a boolean by refusing it; OLMo 3 drops it,
    as transformers (which reads it where OLMo 3's nested parameters never put it) does."""
    from attnscope.config import from_hf_config
    from attnscope.errors import ConfigError

    scaling = {**YARN, "truncate": "no"}
    raw = {k: v for k, v in {**SMALL_OLMO3, "rope_scaling": scaling}.items() if v is not None}
    with pytest.raises(ConfigError, match="truncate"):
        from_hf_config({**raw, "model_type": "olmo2"})
    rope = from_hf_config(raw).layer(3).attn.rope
    assert rope is not None and "truncate" not in (rope.scaling_dict or {})


def test_yarn_theta_one_is_refused() -> None:
    from attnscope.config import from_hf_config
    from attnscope.errors import ConfigError

    raw = {k: v for k, v in {**SMALL_OLMO3, "rope_theta": 1.0, "rope_scaling": YARN}.items() if v is not None}
    with pytest.raises(ConfigError, match="above 1"):
        from_hf_config(raw)


@pytest.mark.parametrize("change", [
    {"layer_types": ["sliding_attention"] * 3},
    {"layer_types": ["local"] * 4},
    {"num_hidden_layers": 10**15},
    {"rope_parameters": {"full_attention": "x"}},
    {"rope_parameters": [1]},
    {"sliding_window": -3},
], ids=["short_types", "unknown_type", "huge_depth", "bad_entry", "bad_params", "bad_window"])
def test_bad_olmo3_configs_are_one_config_error(change: dict[str, Any]) -> None:
    from attnscope.config import from_hf_config
    from attnscope.errors import ConfigError

    raw = {k: v for k, v in {**SMALL_OLMO3, **change}.items() if v is not None}
    with pytest.raises(ConfigError):
        from_hf_config(raw)


# ------------------------------------------------------------------------- params


def _meta_count(raw: dict[str, Any]) -> int:
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    hf = CONFIG_MAPPING[raw["model_type"]].from_dict(json.loads(json.dumps(raw)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return model.num_parameters()


def run_params_json(*args: str) -> dict[str, Any]:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["params", *args, "--json"], env=ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def test_olmo2_7b_real_config_count() -> None:
    """OLMo-2-7B: 7,298,617,344, through `params --config FILE`'s path and the CLI itself."""
    from attnscope.config import load_config
    from attnscope.params import report

    path = REAL / "olmo-2-7b.json"
    expected = json.loads(path.read_text())["_num_parameters"]
    assert expected == 7_298_617_344
    assert report(load_config(path)).total_full == expected
    doc = run_params_json("--config", str(path))
    assert doc["total"] == doc["totals"]["full"] == expected


@pytest.mark.parametrize("raw", [OLMO3_7B, {**OLMO3_7B, "num_key_value_heads": 8, "attention_bias": True,
                                            "num_hidden_layers": 6, "layer_types": None}], ids=["7b", "gqa_bias"])
def test_olmo3_counts_match_transformers(raw: dict[str, Any]) -> None:
    from attnscope.config import from_hf_config
    from attnscope.params import param_shapes, report

    raw = {k: v for k, v in raw.items() if v is not None}
    expected = _meta_count(raw)
    cfg = from_hf_config(copy.deepcopy(raw))
    assert report(cfg).total_full == expected
    assert sum(prod(shape) for shape in param_shapes(cfg).values()) == expected


@pytest.mark.parametrize("name", NAMES)
def test_tiny_counts_match_transformers(name: str, folder: Callable, reference: Callable) -> None:
    assert run_params_json("--model", str(folder(name)))["total"] == reference(name).num_parameters()


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", NAMES)
def test_attend_cli_on_the_tiny_folder(name: str, folder: Callable) -> None:
    from attnscope.cli import app

    result = CliRunner().invoke(app, ["attend", tm.SHORT_TEXT, "--model", str(folder(name)), "--device", "cpu"],
                                env=ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stdout.strip()


# --------------------------------------------------------------------------- GGUF


def write_gguf(path: Path, name: str, model: Any, folder: Path) -> Path:
    """The checkpoint's own tensors under llama.cpp's names (gguf-py's map for the `olmo2`
    arch), all F32, with the metadata llama.cpp's Olmo2Model converter writes: TextModel's
    keys, plus `attention.sliding_window` and the per-layer `sliding_window_pattern` for
    OLMo 3. The vocabulary is the folder's byte-level BPE, padded to the model's rows."""
    import gguf

    cfg = model.config
    vocab = tg.byte_level_vocab(tm.gpt2_tokenizer(), "olmo", ["<|endoftext|>"], None, "<|endoftext|>",
                                add_bos=False).pad(cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.OLMO2, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, "olmo2")
    w.add_name(f"tiny-{name}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    params = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    w.add_rope_freq_base(params["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    if name == "olmo3":
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    w.add_add_bos_token(False)
    from safetensors.torch import load_file

    for hf_name, t in load_file(str(folder / "model.safetensors")).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, hf_name
        w.add_tensor(gguf_name, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(folder: Callable, reference: Callable, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            path = tmp_path_factory.mktemp(f"{name}_gguf") / f"{name}.gguf"
            made[name] = write_gguf(path, name, reference(name), folder(name))
        return made[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_gguf_config_and_weights_equal_the_folders(name: str, gguf_file: Callable, ours: Callable,
                                                   folder: Callable) -> None:
    """Same layer kinds (wiring, q/k norm, window, RoPE base per layer), same sizes, and
    every tensor bit for bit the folder's, under our names."""
    from safetensors.torch import load_file

    from attnscope.architectures import family_for, to_ours
    from attnscope.config import from_hf_config
    from attnscope.sources.gguf import gguf_config, gguf_family, iter_gguf_tensors, read_gguf

    f = read_gguf(gguf_file(name))
    assert f.arch == "olmo2"
    cfg = from_hf_config(gguf_config(f), name=name)
    want = ours(name).config
    assert cfg.family == want.family == name
    assert cfg.stack == want.stack
    assert (cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_ctx, cfg.tied_embeddings) == (
        want.d_model, want.d_mlp, want.vocab_size, want.n_ctx, want.tied_embeddings)
    assert cfg.norm_eps == pytest.approx(want.norm_eps, rel=1e-7)  # GGUF stores it as a float32
    tensors = dict(iter_gguf_tensors(f, cfg, gguf_family(f)))
    expected: dict[str, torch.Tensor] = {}
    for hf_name, t in load_file(str(folder(name) / "model.safetensors")).items():
        expected.update(to_ours(family_for({"model_type": name}), hf_name, t, want))
    assert set(tensors) == set(expected)
    for key, t in tensors.items():
        assert torch.equal(t, expected[key].float()), key


@pytest.mark.parametrize("name", NAMES)
def test_gguf_attention_and_logits_equal_the_folders(name: str, gguf_file: Callable, ours: Callable,
                                                     reference: Callable, ref64: Callable, folder: Callable) -> None:
    from attnscope.api import load

    m = load(str(gguf_file(name)), device="cpu", dtype="float32")
    ids = text_ids(folder(name))
    assert m.tokenize(tk.KINDS_TEXT).ids == ids  # the GGUF vocabulary tokenizes as tokenizer.json does
    got = m.attention_ids(ids).probs
    torch.testing.assert_close(got, ours(name).attention_ids(ids).probs, rtol=0, atol=0)
    assert_attention_close(got, tm.reference_attention(reference(name), ids), f"{name} GGUF")
    expected, _ = reference_run(ref64(name), ids)
    assert_logits_close(m.logits(ids), expected, LOGITS_RTOL, f"{name} GGUF")
