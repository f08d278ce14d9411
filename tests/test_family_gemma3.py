"""Gemma 3 (`gemma3_text`, and the text tower of `gemma3` checkpoints) against transformers.

The tiny checkpoints of tests/tiny_models_kinds.py (`gemma3`: layer_types and nested
rope_parameters; `gemma3_legacy`: gemma-3-1b's legacy keys; `gemma3_multimodal`: a
`gemma3` checkpoint with a vision tower, text settings under `text_config`, weights under
`language_model.model.`) each have local layers (window 8, RoPE base 500) and global ones
(RoPE base 20000), q/k norms, query_pre_attn_scalar 24 ≠ head size 16, and KINDS_TEXT
(91 tokens) crosses every window. Checked here:

1. attention equals transformers' eager attention (float32) to 1e-5, every layer and head;
2. logits equal transformers' float64 ones to 1e-4 relative, and token by token through
   our KVCache equals the full pass (logits and patterns);
3. `mask-demo --json`'s last step equals the model's own pattern on every layer and head;
4. the real configs' counts (gemma-3-270m, gemma-3-1b) equal transformers' `_num_parameters`;
5. a tiny GGUF (arch `gemma3`, written with gguf-py's GGUFWriter as llama.cpp's converter
   writes it) loads and equals transformers' own GGUF loading;
6. the CLI: `attend --model` on each folder, `params --config` on each real config;
plus linear RoPE scaling on the global layers only (gemma-3-4b's ×8), and bad configs as
one ConfigError each.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from family_checks import reference_run
import tiny_models as tm
import tiny_models_kinds as kinds
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from test_logits_cache import (
    LOGITS_RTOL,
    PatternChunks,
    assert_logits_close,
    check_against_full_pass,
)

NAMES = ["gemma3", "gemma3_legacy", "gemma3_multimodal"]
REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
REAL = ["gemma-3-270m", "gemma-3-1b"]
# Attention probabilities in float32, ours against transformers' float32: both carry
# float32 rounding through four layers (measured: under 6e-6).
ATOL = 1e-5
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


class TextView:
    """A transformers model seen through its text config (a `gemma3` model keeps the
    layer count, layer types and vocabulary in `config.text_config`), as the shared
    cache checks read `ref.config`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = getattr(model.config, "text_config", model.config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


@pytest.fixture(scope="module")
def ref64(reference: Callable[[str], Any]) -> Callable[[str], Any]:
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = TextView(copy.deepcopy(reference(name)).double().eval())
        return made[name]

    return get


def ids_of(folder: Path, text: str = kinds.KINDS_TEXT) -> list[int]:
    return tm.plain_tokenizer(folder).encode(text).ids


def assert_attention_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs()
    worst = float(diff.max())
    if worst > ATOL:
        layer, head, i, j = (int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        pytest.fail(f"{what}: attention differs by {worst:.3g} at layer {layer} head {head} query {i} key {j}")


def edited_copy(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    shutil.copytree(src, dst)
    tm.rewrite_config(dst, edit)
    return dst


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("name", NAMES)
def test_layer_kinds_are_transformers(name: str, ours: Callable, reference: Callable) -> None:
    """Each layer's window and RoPE base are the ones transformers' config gives it."""
    cfg = ours(name).config
    hf = TextView(reference(name)).config
    assert cfg.family == "gemma3" and cfg.n_layers == hf.num_hidden_layers
    assert cfg.vocab_size == hf.vocab_size and cfg.d_head == hf.head_dim
    for i, kind in enumerate(hf.layer_types):
        attn = cfg.layer(i).attn
        assert attn.window == (hf.sliding_window if kind == "sliding_attention" else None), i
        assert attn.rope is not None and attn.rope.theta == hf.rope_parameters[kind]["rope_theta"], i
        assert attn.rope.scaling is None and attn.rope.rotary_dim == hf.head_dim
        assert attn.scale == pytest.approx(hf.query_pre_attn_scalar ** -0.5) and attn.qk_norm == "head"
        assert cfg.layer(i).wiring == "sandwich"
    assert cfg.norm_offset == 1.0 and cfg.embed_scale and cfg.tied_embeddings
    assert cfg.final_softcap is None and cfg.layer(0).attn.softcap is None
    # two kinds, local and global, as runs of the stack
    assert len(cfg.stack.kinds()) == 2


def test_legacy_pattern_and_bases() -> None:
    """gemma-3-1b's file style: `sliding_window_pattern` and top-level bases; without a
    pattern, transformers' default 6; `_sliding_window_pattern` is never read."""
    base = {"model_type": "gemma3_text", "num_hidden_layers": 8, "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 128,
            "sliding_window": 16, "rope_theta": 30000.0, "rope_local_base_freq": 700.0}
    for extra, globals_ in (({"sliding_window_pattern": 3}, {2, 5}), ({}, {5}),
                            ({"_sliding_window_pattern": 2}, {5})):
        cfg = from_hf_config({**base, **extra})
        got = {i for i in range(8) if cfg.layer(i).attn.window is None}
        assert got == globals_, extra
        for i in range(8):
            assert cfg.layer(i).attn.rope.theta == (30000.0 if i in globals_ else 700.0)
    # defaults: Gemma3TextConfig's bases 1e6 (global) and 1e4 (local)
    cfg = from_hf_config({k: v for k, v in base.items() if not k.startswith("rope")})
    assert (cfg.layer(0).attn.rope.theta, cfg.layer(5).attn.rope.theta) == (10000.0, 1000000.0)


def test_multimodal_text_config_defaults() -> None:
    """A `gemma3` file lists only the text tower's non-default settings: the rest are
    Gemma3TextConfig's (vocab 262208, pattern 6, window 4096, head 256, ...), as
    transformers reads them; counts equal transformers' text model on the meta device."""
    from transformers import AutoModelForCausalLM, Gemma3Config

    raw = {"model_type": "gemma3", "text_config": {"hidden_size": 256, "intermediate_size": 512,
                                                   "num_hidden_layers": 7, "num_attention_heads": 2,
                                                   "num_key_value_heads": 1, "head_dim": 64,
                                                   "rope_scaling": {"rope_type": "linear", "factor": 8.0}}}
    cfg = from_hf_config(raw)
    hf = Gemma3Config.from_dict(json.loads(json.dumps(raw))).text_config
    assert cfg.vocab_size == hf.vocab_size == 262208
    assert [cfg.layer(i).attn.window for i in range(7)] == [
        hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
    assert cfg.layer(5).attn.rope.scaling_dict == {"rope_type": "linear", "factor": 8.0}
    assert cfg.layer(0).attn.rope.scaling is None  # the local layers are not scaled
    from attnscope.params import report

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    assert report(cfg).total_full == model.num_parameters()


@pytest.mark.parametrize("edit, words", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported gemma3 rope scaling"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -1}}, "factor must be a finite positive"),
    ({"rope_scaling": {"rope_type": "linear"}}, "factor must be a finite positive"),
    ({"rope_scaling": [8]}, "rope_scaling must be an object"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}, "per layer kind"),
    ({"rope_parameters": {"full_attention": 3}}, "must be an object"),
    ({"rope_local_base_freq": "big"}, "rope_theta must be a finite number"),
    ({"rope_theta": 0.5}, "rope_theta must be a finite number of at least 1"),
    ({"sliding_window_pattern": 0}, "sliding_window_pattern must be a positive integer"),
    ({"sliding_window_pattern": True}, "sliding_window_pattern must be a positive integer"),
    ({"layer_types": ["sliding_attention"]}, "layer_types must list one type per layer"),
    ({"layer_types": ["chunked_attention"] * 2}, "unsupported layer type"),
    ({"query_pre_attn_scalar": 0}, "query_pre_attn_scalar must be a finite positive"),
    ({"sliding_window": -3}, "sliding_window must be a positive integer"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_configs_are_one_config_error(edit: dict[str, Any], words: str) -> None:
    raw = {"model_type": "gemma3_text", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 64,
           "sliding_window": 8, **edit}
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)
    with pytest.raises(ConfigError, match=words):  # the same under a multimodal file's text_config
        from_hf_config({"model_type": "gemma3", "text_config": raw})


def test_bad_text_config_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="text_config must be an object"):
        from_hf_config({"model_type": "gemma3", "text_config": [1]})
    # a boolean spelt as a string would read as True: checked inside text_config too
    with pytest.raises(ConfigError, match="tie_word_embeddings must be true or false"):
        from_hf_config({"model_type": "gemma3", "text_config": {"tie_word_embeddings": "false"}})


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, float32 against transformers' eager float32, on 91 tokens
    (every local layer's window of 8 crossed)."""
    ids = ids_of(folder(name))
    ref = TextView(reference(name))
    assert len(ids) >= 90 and len(ids) > 2 * ref.config.sliding_window
    att = ours(name).attention(kinds.KINDS_TEXT)
    assert att.tokens is not None and att.tokens.ids == ids
    _, want = reference_run(ref, ids)
    assert att.layers == list(range(ref.config.num_hidden_layers))
    assert att.heads == list(range(ref.config.num_attention_heads))
    assert_attention_close(att.probs, want, name)
    # the windows really cut: no weight beyond 8 keys on local layers, some on global ones
    n = len(ids)
    beyond = torch.arange(n)[None, :] <= torch.arange(n)[:, None] - ref.config.sliding_window  # (n, n)
    for layer, kind in enumerate(ref.config.layer_types):
        mass = float(att.probs[layer][:, beyond].abs().max())
        assert (mass == 0.0) if kind == "sliding_attention" else (mass > 1e-3), (layer, kind)


@pytest.mark.parametrize("name", NAMES)
def test_one_layer_selection_keeps_its_kind(name: str, folder: Callable, ours: Callable,
                                            reference: Callable) -> None:
    ids = ids_of(folder(name))
    _, want = reference_run(TextView(reference(name)), ids)
    for layer in range(want.shape[0]):
        att = ours(name).attention_ids(ids, layers=[layer], heads=[1, 3])
        assert_attention_close(att.probs, want[[layer]][:, [1, 3]], f"{name} layer {layer}")


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, ref64: Callable) -> None:
    ids = ids_of(folder(name))
    want, _ = reference_run(ref64(name), ids)
    got = ours(name).logits(ids)
    assert got.shape == want.shape
    assert_logits_close(got, want, LOGITS_RTOL, name)


@pytest.mark.parametrize("name", NAMES)
def test_one_token_at_a_time_is_one_full_pass(name: str, folder: Callable, ours: Callable, ref64: Callable) -> None:
    ids = ids_of(folder(name))
    check_against_full_pass(name, ours(name), ref64(name), ids, [[i] for i in ids])


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_steps_is_one_full_pass(name: str, folder: Callable, ours: Callable, ref64: Callable) -> None:
    """A prefix longer than the window, three tokens at once, then one at a time."""
    ids = ids_of(folder(name))
    cut = kinds.GEMMA3_WINDOW + 3
    pieces = [ids[:cut], ids[cut:cut + 3]] + [[i] for i in ids[cut + 3:]]
    check_against_full_pass(name, ours(name), ref64(name), ids, pieces)


def test_cache_keeps_each_layers_own_window(folder: Callable, ours: Callable) -> None:
    """After 90 tokens a local layer's step reads at most its window's keys (those the
    cache keeps) plus the new token; a global layer's, every position."""
    insp = ours("gemma3")
    ids = ids_of(folder("gemma3"))
    cache = insp.new_cache()
    hook = PatternChunks()
    insp.step(ids[:-1], cache)
    insp.step(ids[-1:], cache, hook)
    keys = {layer: value.shape[-1] for layer, _, _, value in hook.chunks}
    for layer, kind in enumerate(kinds.GEMMA3_LAYER_TYPES):
        if kind == "sliding_attention":
            assert keys[layer] <= kinds.GEMMA3_WINDOW + 1, layer
        else:
            assert keys[layer] == len(ids), layer


def test_linear_scaling_reaches_the_global_layers_only(folder: Callable, tmp_path: Path) -> None:
    """gemma-3-4b's `rope_scaling` {"rope_type": "linear", "factor": 8.0}: transformers
    merges it into the global kind; attention and logits still equal its own, and differ
    from the unscaled model on the global layer only."""
    from attnscope.api import load

    def scaled(raw: dict[str, Any]) -> None:
        raw["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}

    src = folder("gemma3_legacy")
    dst = edited_copy(src, tmp_path / "scaled", scaled)
    ref = tm.load_reference(dst)
    assert ref.config.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert ref.config.rope_parameters["sliding_attention"]["rope_type"] == "default"
    insp = load(str(dst), device="cpu", dtype="float32")
    assert insp.config.layer(1).attn.rope.scaling_type == "linear"
    assert insp.config.layer(0).attn.rope.scaling is None
    ids = ids_of(dst)
    logits, want = reference_run(ref, ids)
    got = insp.attention_ids(ids).probs
    assert_attention_close(got, want, "linear x8")
    _, plain = reference_run(tm.load_reference(src), ids)
    moved = [float((want[i] - plain[i]).abs().max()) for i in range(want.shape[0])]
    assert moved[0] == 0.0 and moved[1] > 1e-3, moved  # layer 0 local, layer 1 global
    ref64 = copy.deepcopy(ref).double()
    assert_logits_close(insp.logits(ids), reference_run(ref64, ids)[0], LOGITS_RTOL, "linear x8 logits")


# ---------------------------------------------------------------------- mask-demo


def run_cli(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, ours: Callable,
                                                     ref64: Callable) -> None:
    """No --kind: every layer's last step is the model's own pattern (ours and
    transformers'), and the demo names the layer's kind."""
    ids = ids_of(folder(name))
    _, want = reference_run(ref64(name), ids)  # (L, H, T, T)
    mine = ours(name).attention_ids(ids).probs
    config = ref64(name).config
    heads = range(config.num_attention_heads) if name == "gemma3" else [2]
    for layer, kind in enumerate(config.layer_types):
        window = config.sliding_window if kind == "sliding_attention" else None
        for head in heads:
            result = run_cli("mask-demo", kinds.KINDS_TEXT, "--model", str(folder(name)), "--layer", str(layer),
                             "--head", str(head), "--device", "cpu", "--json")
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"{name} layer {layer} head {head}"
            assert doc["kind_given"] is False and doc["own_mask"] is True, where
            assert doc["window"] == window, where
            assert doc["layer_kind"] == ("global" if window is None else f"local, window {window}"), where
            step = doc["steps"][-1]
            assert step["name"] == "masked_softmax", where
            got = torch.tensor(step["matrix"], dtype=torch.float64)  # (T, T)
            torch.testing.assert_close(got, want[layer, head], rtol=0, atol=ATOL, msg=lambda m: f"{where}: {m}")
            torch.testing.assert_close(got, mine[layer, head].double(), rtol=0, atol=ATOL,
                                       msg=lambda m: f"{where} (ours): {m}")


# ---------------------------------------------------------------------- counts


@pytest.mark.parametrize("preset", REAL)
def test_real_config_counts(preset: str) -> None:
    """The count `params --config FILE` gives equals transformers' `_num_parameters`."""
    from attnscope.config import load_config
    from attnscope.params import report

    path = REAL_CONFIGS / f"{preset}.json"
    expected = json.loads(path.read_text())["_num_parameters"]
    assert report(load_config(path)).total_full == expected
    result = run_cli("params", "--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == expected
    if preset == "gemma-3-1b":
        assert expected == 999_885_952  # issue 24's published figure


@pytest.mark.parametrize("name", NAMES)
def test_tiny_counts_equal_the_checkpoint(name: str, folder: Callable) -> None:
    """`params --model` on each folder counts the text model exactly (transformers' text
    model on the meta device; a multimodal file's vision tower is not ours)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.from_pretrained(folder(name))
    text = getattr(hf, "text_config", hf)
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(text).num_parameters()
    from attnscope.config import load_config
    from attnscope.params import report

    assert report(load_config(folder(name))).total_full == expected


# ---------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", NAMES)
def test_attend_cli(name: str, folder: Callable) -> None:
    result = run_cli("attend", kinds.KINDS_TEXT, "--model", str(folder(name)), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


# ---------------------------------------------------------------------- GGUF


GGUF_WINDOW = 4
GGUF_LAYERS = 7  # pattern 6: layers 0-4 and 6 local, 5 global
# GGUF holds no query_pre_attn_scalar: llama.cpp scales by 1/sqrt(head size), transformers'
# GGUF reader keeps Gemma3TextConfig's 256; they agree only for a head size of 256.
GGUF_HEAD = 256


def write_gemma3_gguf(path: Path) -> Path:
    """A tiny `gemma3` GGUF as convert_hf_to_gguf.py's Gemma3Model writes one: every
    norm weight (the q/k norms too) + 1, Gemma 2's and the q/k norms' names, no output
    tensor (tied), the global base and the window as metadata. Its settings are those
    llama.cpp and transformers' GGUF reader both assume for what the file cannot say:
    pattern 6, local base 10^4, query_pre_attn_scalar = head size = 256."""
    import tiny_gguf as tg
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    vocab = tg.gemma_vocab()
    cfg = Gemma3TextConfig(vocab_size=tg._padded(len(vocab.tokens)), hidden_size=64, intermediate_size=96,
                           num_hidden_layers=GGUF_LAYERS, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=GGUF_HEAD, max_position_embeddings=128, rms_norm_eps=1e-6,
                           sliding_window=GGUF_WINDOW, query_pre_attn_scalar=GGUF_HEAD,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    model = tg._model(cfg, Gemma3ForCausalLM)
    stored = copy.deepcopy(model)
    with torch.no_grad():
        for pname, param in stored.named_parameters():
            if pname.endswith("norm.weight"):  # Gemma3Model.norm_shift
                param.add_(1.0)

    def meta(w: Any) -> None:  # Gemma3Model.set_gguf_parameters
        tg.gemma_meta(w, cfg)
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
        w.add_add_space_prefix(False)

    return tg.write(path, "gemma3", stored, vocab.pad(cfg.vocab_size), meta)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    return write_gemma3_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")


@pytest.fixture(scope="module")
def gguf_reference(gguf_file: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def test_gguf_config_is_transformers(gguf_file: Path, gguf_reference: Any) -> None:
    from attnscope.sources.gguf import gguf_config, read_gguf

    cfg = from_hf_config(gguf_config(read_gguf(gguf_file)), name="tiny")
    hf = gguf_reference.config
    assert hf.model_type == "gemma3_text" and cfg.family == "gemma3"
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.vocab_size) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim,
        hf.vocab_size)
    for i, kind in enumerate(hf.layer_types):
        attn = cfg.layer(i).attn
        assert attn.window == (hf.sliding_window if kind == "sliding_attention" else None), i
        assert attn.rope.theta == hf.rope_parameters[kind]["rope_theta"], i
        assert attn.scale == pytest.approx(hf.query_pre_attn_scalar ** -0.5)
    assert "full_attention" in hf.layer_types and "sliding_attention" in hf.layer_types


def test_gguf_equals_transformers_gguf_loading(gguf_file: Path, gguf_reference: Any) -> None:
    """Dequantized weights equal transformers' bit for bit (norms back to w); attention
    and logits equal transformers' on random ids longer than every window."""
    from attnscope.api import load
    from attnscope.architectures import gemma3, to_ours
    from attnscope.sources.gguf import gguf_config, iter_gguf_tensors, read_gguf

    f = read_gguf(gguf_file)
    cfg = from_hf_config(gguf_config(f), name="tiny")
    mine = dict(iter_gguf_tensors(f, cfg, gemma3))
    theirs: dict[str, torch.Tensor] = {}
    for hf_name, tensor in gguf_reference.state_dict().items():
        theirs.update(to_ours(gemma3, hf_name, tensor, cfg))
    theirs.pop("unembed.weight", None)  # tied
    assert sorted(mine) == sorted(theirs)
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key

    insp = load(str(gguf_file), device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=gen).tolist()
    logits, want = reference_run(gguf_reference, ids)
    assert_attention_close(insp.attention_ids(ids).probs, want, "gguf")
    ref64 = copy.deepcopy(gguf_reference).double()
    assert_logits_close(insp.logits(ids), reference_run(ref64, ids)[0], LOGITS_RTOL, "gguf logits")


def test_gguf_without_window_is_all_global(gguf_file: Path) -> None:
    """llama.cpp: no `sliding_window` key (or 0) means no local layers at all."""
    from attnscope.architectures import gemma3

    meta = {"gemma3.block_count": 3, "gemma3.embedding_length": 64, "gemma3.attention.head_count": 2,
            "gemma3.feed_forward_length": 96, "gemma3.context_length": 128,
            "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.attention.key_length": 32,
            "gemma3.attention.value_length": 32, "gemma3.rope.freq_base": 1e6}
    for extra in ({}, {"gemma3.attention.sliding_window": 0}):
        raw = gemma3.config_from_gguf({**meta, **extra}, "gemma3", {})
        cfg = from_hf_config({**raw, "vocab_size": 64})
        assert all(cfg.layer(i).attn.window is None for i in range(3))
        assert cfg.layer(0).attn.rope.theta == 1e6
    raw = gemma3.config_from_gguf({**meta, "gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0,
                                   "gemma3.attention.sliding_window": 4, "gemma3.block_count": 6}, "gemma3", {})
    cfg = from_hf_config({**raw, "vocab_size": 64})
    assert cfg.layer(5).attn.rope.scaling_dict == {"rope_type": "linear", "factor": 8.0}
    assert cfg.layer(0).attn.rope.scaling is None and cfg.layer(0).attn.rope.theta == 1e4
