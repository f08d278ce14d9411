"""Phi-3 / Phi-3.5 / Phi-4-mini (`phi3`, attnscope/architectures/phi3.py) against transformers.

Two tiny random checkpoints from tests/tiny_models_kinds.py: `phi3` (Phi-3-mini-4k in
small: fused projections, full rotary, a window of 40 on every layer) and `phi4_mini`
(grouped keys, rotary on 12 of 16 dimensions, `longrope` trained for 32 positions and
stretched to 128, tied). `KINDS_TEXT` is 91 tokens: longer than the window, and past
`phi4_mini`'s original context, so its full passes use the long factor set.

Every expected number comes from transformers (eager attention, `output_attentions`):
attention in float32 to 1e-5, logits against a float64 reference to 1e-4 relative, the
mask demo's last step, the real configs' published counts, and GGUF files written as
llama.cpp's Phi3MiniModel writes them (F32, so the same weights), read back by us and
compared with transformers' own GGUF loading where it keeps the settings (it drops the
partial rotary, longrope and the window), and with the model they were written from.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import tiny_gguf as tg
from family_checks import Patterns, assert_close, assert_logits_close, reference_run
import tiny_models as tm
import tiny_models_kinds as tk
from attnscope.architectures import phi3, to_ours
from attnscope.config import from_hf_config
from attnscope.errors import ConfigError
from attnscope.hooks import attn_site
from attnscope.model import build
from attnscope.sources.gguf import gguf_config, gguf_family, iter_gguf_tensors, read_gguf

NAMES = ["phi3", "phi4_mini"]
ATOL = 1e-5  # attention probabilities, float32 against float32 (and against float64)
LOGITS_RTOL = 1e-4  # logits, relative to each entry and to the logits' scale
STEP_RTOL = 1e-5  # token by token against one full pass, both ours in float32
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    """transformers' Phi3ForCausalLM in float32 (`name`) and float64 (`name`, True)."""
    made: dict[tuple[str, bool], Any] = {}

    def get(name: str, double: bool = False) -> Any:
        if (name, double) not in made:
            model = tm.load_reference(folder(name))  # every tensor used, none missing
            made[(name, double)] = copy.deepcopy(model).double().eval() if double else model
        return made[(name, double)]

    return get


def ids_of(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids


def stepped(insp: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and patterns of `ids` fed one token at a time through our KV cache."""
    cache, hook = insp.new_cache(), Patterns(insp.n_layers, insp.n_heads, len(ids))
    rows = [insp.step([i], cache, hook) for i in ids]
    return torch.cat(rows), hook.full


def full_pass(insp: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    hook = Patterns(insp.n_layers, insp.n_heads, len(ids))
    insp.run(ids, hook)
    return insp.logits(ids), hook.full


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable[[str], Path], reference: Callable[[str], Any]) -> None:
    """What the parity tests below rest on: fused tensors on disk, the window shorter
    than the text, the long factor set chosen for the text and the short one below 33."""
    from safetensors import safe_open

    with safe_open(str(folder("phi4_mini") / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.layers.0.self_attn.qkv_proj.weight").get_shape() == [(4 + 2 * 2) * 16, 64]
        assert f.get_slice("model.layers.0.mlp.gate_up_proj.weight").get_shape() == [2 * 96, 64]
    assert "lm_head.weight" not in keys
    assert reference("phi3").config.sliding_window == tk.PHI3_WINDOW < len(ids_of(folder("phi3")))
    n = len(ids_of(folder("phi4_mini")))
    assert n > tk.PHI4_ORIGINAL_CONTEXT
    rotary = reference("phi4_mini").model.rotary_emb
    x = torch.zeros(1)
    cos_long, _ = rotary(x, torch.arange(n)[None])
    cos_short, _ = rotary(x, torch.arange(tk.PHI4_ORIGINAL_CONTEXT)[None])
    assert not torch.allclose(cos_long[0, :tk.PHI4_ORIGINAL_CONTEXT], cos_short[0])


def test_config_reads_every_quirk(ours: Callable[[str], Any]) -> None:
    cfg = ours("phi3").config
    assert cfg.family == "phi3" and cfg.n_heads == cfg.n_kv_heads == 4 and cfg.d_head == 8
    assert all(cfg.window(i) == tk.PHI3_WINDOW for i in range(cfg.n_layers))
    assert cfg.layer(0).attn.rope.rotary_dim == 8 and cfg.layer(0).attn.rope.scaling is None
    assert not cfg.tied_embeddings
    cfg = ours("phi4_mini").config
    rope = cfg.layer(0).attn.rope
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, rope.rotary_dim) == (4, 2, 16, 12)
    assert cfg.window(0) is None and cfg.tied_embeddings
    s = rope.scaling_dict
    assert s["rope_type"] == "longrope" and s["original_max_position_embeddings"] == tk.PHI4_ORIGINAL_CONTEXT
    assert list(s["short_factor"]) == tk.PHI4_SHORT_FACTOR and list(s["long_factor"]) == tk.PHI4_LONG_FACTOR
    assert cfg.n_ctx == tk.PHI4_CONTEXT


def test_attention_factor_as_transformers(reference: Callable[[str], Any], ours: Callable[[str], Any]) -> None:
    from attnscope.parts.positions import rope_attention_factor

    cfg = ours("phi4_mini").config
    ours_factor = rope_attention_factor(cfg.layer(0).attn.rope, cfg.n_ctx)
    assert ours_factor == pytest.approx(reference("phi4_mini").model.rotary_emb.attention_scaling, rel=1e-12)
    assert ours_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(32)), rel=1e-12)


# ------------------------------------------------------------------ attention, logits


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, 91 tokens (past the window, past the original context)."""
    ids = ids_of(folder(name))
    att = ours(name).attention(tk.KINDS_TEXT)
    assert att.tokens.ids == ids
    ref = tm.reference_attention(reference(name), ids)
    assert att.probs.dtype == torch.float32
    assert_close(att.probs, ref, ATOL, f"{name} attention")


@pytest.mark.parametrize("n", [tk.PHI4_ORIGINAL_CONTEXT, tk.PHI4_ORIGINAL_CONTEXT + 1, tk.PHI4_CONTEXT])
def test_phi4_factor_sets_at_the_switch(n: int, ours: Callable, reference: Callable) -> None:
    """32 positions use the short set, 33 the long one, 128 (the whole context) too."""
    vocab = reference("phi4_mini").config.vocab_size
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(3)).tolist()
    att = ours("phi4_mini").attention_ids(ids)
    assert_close(att.probs, tm.reference_attention(reference("phi4_mini"), ids), ATOL, f"phi4_mini n={n}")


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    ids = ids_of(folder(name))
    ref_logits, _ = reference_run(reference(name, True), ids)
    got = ours(name).logits(ids)
    assert got.dtype == torch.float32
    assert_logits_close(got, ref_logits, LOGITS_RTOL, f"{name} logits")


def _cache_ids(name: str, folder: Callable) -> list[int]:
    ids = ids_of(folder(name))
    return ids[:tk.PHI4_ORIGINAL_CONTEXT] if name == "phi4_mini" else ids


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_equals_full_pass(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Token by token through our KVCache gives one full pass's logits and patterns, and
    transformers'. For `phi4_mini` the text stops at its original context (32 tokens):
    longrope picks one factor set for a whole pass from its last position, so once a
    sequence crosses `original_max_position_embeddings` the cached keys (rotated with the
    short set) no longer match a full pass (long set) — in transformers as in attnscope
    (transformers' generate() drops its cache at the crossing). `phi3` (no longrope) steps
    through all 91 tokens, across its window of 40."""
    insp, ids = ours(name), _cache_ids(name, folder)
    logits, patterns = stepped(insp, ids)
    full_logits, full_patterns = full_pass(insp, ids)
    assert_logits_close(logits, full_logits, STEP_RTOL, f"{name} stepped vs full logits")
    assert_close(patterns, full_patterns, ATOL, f"{name} stepped vs full patterns")
    ref_logits, ref_attn = reference_run(reference(name, True), ids)
    assert_logits_close(logits, ref_logits, LOGITS_RTOL, f"{name} stepped logits vs transformers")
    assert_close(patterns, ref_attn, ATOL, f"{name} stepped patterns vs transformers")


@torch.no_grad()
def test_phi4_steps_across_the_switch_as_transformers_cache(folder: Callable, ours: Callable,
                                                            reference: Callable) -> None:
    """Past the original context, stepping differs from a full pass, and equals
    transformers' own cache stepped the same way (each step rotated with the set its own
    last position picks)."""
    from transformers import DynamicCache

    ids = ids_of(folder("phi4_mini"))[:tk.PHI4_ORIGINAL_CONTEXT + 8]
    model = reference("phi4_mini", True)
    cache, rows = DynamicCache(config=model.config), []
    for i, token in enumerate(ids):
        out = model(torch.tensor([[token]]), cache=cache, use_cache=True,
                    position_ids=torch.tensor([[i]]))
        rows.append(out.logits[0])
    theirs = torch.cat(rows)
    logits, _ = stepped(ours("phi4_mini"), ids)
    assert_logits_close(logits, theirs, LOGITS_RTOL, "phi4_mini stepped across the switch vs transformers' cache")
    full_logits, _ = full_pass(ours("phi4_mini"), ids)
    assert float((logits[-1] - full_logits[-1]).abs().max()) > 1e-3  # the factor sets differ


# -------------------------------------------------------------------------- mask-demo


@pytest.mark.parametrize("name", NAMES)
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, reference: Callable) -> None:
    from attnscope.cli import app

    ids = ids_of(folder(name))
    attentions = tm.reference_attention(reference(name, True), ids)  # (L, H, T, T)
    window = reference(name).config.sliding_window
    for layer in range(attentions.shape[0]):
        for head in range(attentions.shape[1]):
            result = CliRunner().invoke(app, ["mask-demo", tk.KINDS_TEXT, "--model", str(folder(name)), "--layer",
                                              str(layer), "--head", str(head), "--device", "cpu", "--json"], env=ENV)
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"{name} layer {layer} head {head}"
            assert doc["window"] == window and doc["own_mask"] is True, where
            assert doc["layer_kind"] == ("global" if window is None else f"local, window {window}"), where
            step = doc["steps"][-1]
            assert step["name"] == "masked_softmax", where
            assert_close(torch.tensor(step["matrix"], dtype=torch.float64), attentions[layer, head], ATOL, where)


# ---------------------------------------------------------------------------- params


def _real(name: str) -> tuple[dict[str, Any], int]:
    raw = json.loads((REAL / f"{name}.json").read_text())
    return raw, raw.pop("_num_parameters")


@pytest.mark.parametrize("name, published", [("phi-3-mini-4k", 3_821_079_552), ("phi-4-mini", 3_836_021_760)])
def test_real_config_counts(name: str, published: int) -> None:
    from attnscope.cli import app
    from attnscope.params import report

    raw, expected = _real(name)
    assert expected == published
    cfg = from_hf_config(raw, name=name)
    assert report(cfg).total_full == expected
    result = CliRunner().invoke(app, ["params", "--config", str(REAL / f"{name}.json"), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["full"] == expected


def test_real_configs_read_as_transformers_does() -> None:
    cfg = from_hf_config(_real("phi-3-mini-4k")[0])
    assert cfg.window(0) == 2047 and cfg.layer(0).attn.rope.rotary_dim == 96 and cfg.layer(0).attn.rope.scaling is None
    cfg = from_hf_config(_real("phi-4-mini")[0])
    rope = cfg.layer(0).attn.rope
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, rope.rotary_dim) == (24, 8, 128, 96)
    assert rope.scaling_dict["original_max_position_embeddings"] == 4096 and len(rope.scaling_dict["long_factor"]) == 48


def test_stored_parts_count_the_fused_tensors(ours: Callable[[str], Any]) -> None:
    cfg = ours("phi4_mini").config
    parts = phi3.stored_parts("blocks.0.attn.qkv_proj.weight", ((4 + 2 + 2) * 16, 64), cfg)
    assert parts == {"blocks.0.attn.q.weight": (64, 64), "blocks.0.attn.k.weight": (32, 64),
                     "blocks.0.attn.v.weight": (32, 64)}
    assert phi3.stored_parts("blocks.0.mlp.gate_up.weight", (192, 64), cfg) == {
        "blocks.0.mlp.gate.weight": (96, 64), "blocks.0.mlp.up.weight": (96, 64)}


def _phi4_raw() -> dict[str, Any]:
    raw, _ = _real("phi-4-mini")
    return raw


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.update(short_factor=s["short_factor"][:-1]), "short_factor must list 48"),
    (lambda s: s.update(long_factor="many"), "long_factor must list 48"),
    (lambda s: s.update(long_factor=[0.0] * 48), "finite positive"),
    (lambda s: s.update(short_factor=[-1.0] * 48), "finite positive"),
    (lambda s: s.update(short_factor=[1.0] * 47 + [float("inf")]), "finite positive"),
    (lambda s: s.update(short_factor=[1.0] * 47 + [True]), "finite positive"),
    (lambda s: s.update(attention_factor=float("nan")), "attention_factor"),
    (lambda s: s.update(type="dynamic"), "unsupported phi3 rope scaling"),
])
def test_bad_longrope_is_one_config_error(edit: Callable, words: str) -> None:
    raw = _phi4_raw()
    edit(raw["rope_scaling"])
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)


@pytest.mark.parametrize("value", [0, -5, 2.5, "4096", None])
def test_bad_original_context_is_one_config_error(value: Any) -> None:
    raw = _phi4_raw()
    raw["original_max_position_embeddings"] = value
    with pytest.raises(ConfigError, match="original_max_position_embeddings"):
        from_hf_config(raw)


def test_llama3_checks_still_hold() -> None:
    raw = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 96, "vocab_size": 100,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}}
    with pytest.raises(ConfigError, match="high_freq_factor must exceed"):
        from_hf_config(raw)


# ------------------------------------------------------------------------------ CLI


def test_cli_attend_and_params(folder: Callable[[str], Path]) -> None:
    from attnscope.cli import app

    for name in NAMES:
        result = CliRunner().invoke(app, ["attend", "The cat sat on the mat.", "--model", str(folder(name)),
                                          "--device", "cpu"], env=ENV)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["params", "--config", str(REAL / "phi-4-mini.json")], env=ENV)
    assert result.exit_code == 0, result.output
    assert "3,836,021,760" in result.stdout


# ----------------------------------------------------------------------------- GGUF


def _gguf_model(name: str, vocab_size: int) -> Any:
    """The tiny checkpoint's settings (tests/tiny_models_kinds.py) with the GGUF
    vocabulary's size, and weights redrawn as the builders draw them."""
    from transformers import Phi3Config, Phi3ForCausalLM

    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # <unk>, <s>, </s> in the GGUF vocabulary
    if name == "phi3":
        cfg = Phi3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         original_max_position_embeddings=256, sliding_window=tk.PHI3_WINDOW,
                         tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **ids)
    else:
        cfg = Phi3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tk.PHI4_CONTEXT,
                         original_max_position_embeddings=tk.PHI4_ORIGINAL_CONTEXT, sliding_window=None,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                          "partial_rotary_factor": tk.PHI4_ROTARY,
                                          "short_factor": tk.PHI4_SHORT_FACTOR, "long_factor": tk.PHI4_LONG_FACTOR},
                         **ids)
    cfg._attn_implementation = "eager"
    model = Phi3ForCausalLM(cfg)
    tm.reinit(model, tm.SEED)
    return model.eval()


def _phi3_meta(cfg: Any) -> Callable[[Any], None]:
    """Phi3MiniModel.set_gguf_parameters and generate_extra_tensors' attention factor."""
    params = cfg.rope_parameters
    rot = params.get("partial_rotary_factor", 1.0)

    def meta(w: Any) -> None:
        w.add_context_length(cfg.max_position_embeddings)
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(int(rot * cfg.hidden_size) // cfg.num_attention_heads)
        w.add_rope_freq_base(params["rope_theta"])
        w.add_sliding_window(cfg.sliding_window or 0)
        if params.get("long_factor"):
            scale = cfg.max_position_embeddings / cfg.original_max_position_embeddings
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(cfg.original_max_position_embeddings)))

    return meta


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Any]]:
    """`gguf_file(name) -> (path, transformers model it was written from)`: every tensor
    F32, so the file holds exactly that model's weights."""
    made: dict[str, tuple[Path, Any]] = {}

    def get(name: str) -> tuple[Path, Any]:
        if name not in made:
            vocab = tg.sentencepiece_vocab([("<unk>", tg.UNKNOWN), ("<s>", tg.CONTROL), ("</s>", tg.CONTROL)],
                                           "<s>", "</s>", "<unk>")
            vocab.ids["pad"] = 0  # else transformers' GGUF reader keeps Phi3Config's 32000, past this vocabulary
            model = _gguf_model(name, tg._padded(len(vocab.tokens)))
            params = model.config.rope_parameters
            extra = ()
            if params.get("long_factor"):
                extra = (("rope_factors_long.weight", torch.tensor(params["long_factor"], dtype=torch.float32)),
                         ("rope_factors_short.weight", torch.tensor(params["short_factor"], dtype=torch.float32)))
            path = tmp_path_factory.mktemp("gguf") / f"{name}.gguf"
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tg, "QUANT", {})  # F32 everywhere
                tg.write(path, "phi3", model, vocab.pad(model.config.vocab_size), _phi3_meta(model.config), extra)
            made[name] = path, model
        return made[name]

    return get


def _our_gguf_attention(path: Path, ids: list[int]) -> tuple[Any, torch.Tensor]:
    from attnscope.hooks import Capture

    f = read_gguf(path)
    cfg = from_hf_config(gguf_config(f), name=path.stem)
    model = build(cfg, iter_gguf_tensors(f, cfg, gguf_family(f)), "cpu", torch.float32)
    capture = Capture({attn_site(i): ["pattern"] for i in range(cfg.n_layers)})
    model(torch.tensor(ids), capture)
    return cfg, torch.stack([capture.get(attn_site(i), "pattern") for i in range(cfg.n_layers)])


def _gguf_ids(model: Any, n: int) -> list[int]:
    return torch.randint(3, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(7)).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_gguf_equals_the_model_it_was_written_from(name: str, gguf_file: Callable) -> None:
    """Our GGUF reading keeps the window, the partial rotary and longrope (factor sets
    from the tensors, the converter's attention factor): 91 positions, every layer and
    head, equal to transformers on the safetensors-side model."""
    path, model = gguf_file(name)
    ids = _gguf_ids(model, 91)
    cfg, att = _our_gguf_attention(path, ids)
    assert cfg.family == "phi3"
    assert cfg.window(0) == model.config.sliding_window
    assert cfg.layer(0).attn.rope.rotary_dim == (12 if name == "phi4_mini" else 8)
    assert (cfg.layer(0).attn.rope.scaling is None) == (name == "phi3")
    assert_close(att, tm.reference_attention(model, ids), ATOL, f"{name} GGUF vs its model")


def test_gguf_phi3_equals_transformers_gguf_loading(gguf_file: Callable) -> None:
    """transformers' own GGUF reader keeps phi3's full rotary but drops the window, so
    the two agree on texts up to the window (40): compared there."""
    from transformers import AutoModelForCausalLM

    path, model = gguf_file("phi3")
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    assert getattr(theirs.config, "sliding_window", None) is None  # dropped, as docs/layer-kinds.md says
    ids = _gguf_ids(model, tk.PHI3_WINDOW)
    _, att = _our_gguf_attention(path, ids)
    assert_close(att, tm.reference_attention(theirs, ids), ATOL, "phi3 GGUF vs transformers' GGUF loading")


def test_gguf_factor_tensors_must_come_in_pairs() -> None:
    from attnscope.errors import CheckpointError

    with pytest.raises(CheckpointError, match="rope_factors_long"):
        phi3.gguf_config_tensors({}, lambda name: [1.0] if name == "rope_factors_long.weight" else None)


def test_gguf_cli_attend(gguf_file: Callable) -> None:
    from attnscope.cli import app

    path, _ = gguf_file("phi4_mini")
    result = CliRunner().invoke(app, ["attend", "The cat sat on the mat.", "--model", str(path), "--device", "cpu"],
                                env=ENV)
    assert result.exit_code == 0, result.output


def test_safetensors_split_matches_transformers_rows(folder: Callable, reference: Callable) -> None:
    """The fused rows land where transformers slices them (q, then k, then v; gate, then up)."""
    model = reference("phi4_mini")
    cfg = from_hf_config(json.loads((folder("phi4_mini") / "config.json").read_text()))
    state = model.state_dict()
    parts = to_ours(phi3, "model.layers.1.self_attn.qkv_proj.weight", state["model.layers.1.self_attn.qkv_proj.weight"], cfg)
    qkv = state["model.layers.1.self_attn.qkv_proj.weight"]
    assert torch.equal(parts["blocks.1.attn.q.weight"], qkv[:64])
    assert torch.equal(parts["blocks.1.attn.k.weight"], qkv[64:96])
    assert torch.equal(parts["blocks.1.attn.v.weight"], qkv[96:])
    gate_up = state["model.layers.1.mlp.gate_up_proj.weight"]
    parts = to_ours(phi3, "model.layers.1.mlp.gate_up_proj.weight", gate_up, cfg)
    assert torch.equal(parts["blocks.1.mlp.gate.weight"], gate_up[:96])
    assert torch.equal(parts["blocks.1.mlp.up.weight"], gate_up[96:])


@pytest.mark.parametrize("n, error, words", [
    (2**16 + 2, "CheckpointError", "far more than a setting needs"),  # refused before it is read
    (4, "ConfigError", "must list 6 numbers"),  # 12 rotary dimensions: 6 frequencies
])
def test_gguf_bad_factor_tensors_are_one_error(n: int, error: str, words: str, tmp_path: Path) -> None:
    import attnscope.errors as errors

    vocab = tg.sentencepiece_vocab([("<unk>", tg.UNKNOWN), ("<s>", tg.CONTROL), ("</s>", tg.CONTROL)],
                                   "<s>", "</s>", "<unk>")
    vocab.ids["pad"] = 0
    model = _gguf_model("phi4_mini", tg._padded(len(vocab.tokens)))
    extra = (("rope_factors_long.weight", torch.ones(n)), ("rope_factors_short.weight", torch.ones(n)))
    path = tg.write(tmp_path / "bad.gguf", "phi3", model, vocab.pad(model.config.vocab_size),
                    _phi3_meta(model.config), extra)
    with pytest.raises(getattr(errors, error), match=words):
        from_hf_config(gguf_config(read_gguf(path)))
