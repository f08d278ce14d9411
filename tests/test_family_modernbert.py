"""ModernBERT (`modernbert`, attnscope/architectures/modernbert.py) against transformers.

Tiny random checkpoints from tests/tiny_models_modernbert.py: `modernbert` (4 layers:
global, local, local, global; no biases; config.json in the Hub's legacy form),
`modernbert_biased` (every bias flag on; local, global, local; transformers 5's
`layer_types` + nested `rope_parameters`) and `modernbert_bare` (ModernBertModel, no MLM
head). Local layers see 8 keys on either side (`local_attention` 16) and the text is 110
tokens, so every local row is cut on both sides; the global and local RoPE bases differ.

Every expected number comes from transformers (eager attention, `output_attentions`, one
unpadded sequence): attention in float32 to 1e-5 against transformers' float32 and float64
runs; the last hidden state and the MLM logits to 1e-4 relative against a float64
reference; the mask demo's last step; `heads` naming the local layers; the real config's
count against transformers' `num_parameters()` on the meta device.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from family_checks import assert_close, cached
from family_checks import assert_logits_close as assert_relative
import tiny_models as tm
import tiny_models_modernbert as tmb
from attnscope.architectures import modernbert, to_ours
from attnscope.config import from_hf_config, load_config
from attnscope.errors import ConfigError

NAMES = list(tmb.MODERNBERT_BUILDERS)
ATOL = 1e-5  # attention probabilities, ours in float32 against transformers' float32 and float64
RTOL = 1e-4  # hidden states and logits, relative to each entry and to the tensor's scale, against float64
REAL = Path(__file__).parent / "data" / "real_configs" / "modernbert-base.json"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
REACH = tmb.LOCAL_ATTENTION // 2  # keys a local query sees on either side, as transformers' mask has it


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: tmb.MODERNBERT_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[..., Any]:
    """transformers' model for the folder (every tensor used), float32 or float64."""
    made: dict[tuple[str, bool], Any] = {}

    def get(name: str, double: bool = False) -> Any:
        if (name, double) not in made:
            model = made.get((name, False)) or tm.load_reference(folder(name))
            made[(name, False)] = model
            made[(name, double)] = copy.deepcopy(model).double().eval() if double else model
        return made[(name, double)]

    return get


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


def ids_of(folder: Path) -> list[int]:
    return tm.plain_tokenizer(folder).encode(tmb.MODERNBERT_TEXT).ids


def run(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


def refused(result: Any, *words: str) -> None:
    """One clear line on stderr, exit 1, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.stdout == ""
    first = result.stderr.strip().splitlines()[0]
    for word in words:
        assert word in first, first


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable, reference: Callable) -> None:
    """What the parity tests rest on: the Hub's legacy keys on disk, layer 0 with no norm
    before its attention, fused Wqkv and Wi, a text far longer than the local reach, and
    transformers' own mask cutting local rows at exactly ±8 on both sides."""
    from safetensors import safe_open

    raw = json.loads((folder("modernbert") / "config.json").read_text())
    assert "layer_types" not in raw and "rope_parameters" not in raw
    assert (raw["global_attn_every_n_layers"], raw["local_attention"]) == (tmb.GLOBAL_EVERY, tmb.LOCAL_ATTENTION)
    assert (raw["global_rope_theta"], raw["local_rope_theta"]) == (tmb.GLOBAL_THETA, tmb.LOCAL_THETA)
    with safe_open(str(folder("modernbert") / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.layers.1.attn.Wqkv.weight").get_shape() == [3 * 32, 32]
        assert f.get_slice("model.layers.1.mlp.Wi.weight").get_shape() == [2 * 48, 32]
    assert "model.layers.0.attn_norm.weight" not in keys and "model.layers.1.attn_norm.weight" in keys
    assert not any(k.endswith(".bias") and "decoder" not in k for k in keys)  # norm_bias, attention_bias, mlp_bias off
    ref = reference("modernbert")
    assert ref.config.layer_types == tmb.LAYER_TYPES
    n = len(ids_of(folder("modernbert")))
    assert n >= 90 and n > 2 * REACH + 1
    att = tm.reference_attention(ref, ids_of(folder("modernbert")))  # (L, H, T, T)
    i = torch.arange(n)
    outside = (i[:, None] - i[None, :]).abs() > REACH
    assert (att[1][:, outside] == 0).all() and (att[1][:, ~outside] > 0).all()  # layer 1: local
    assert (att[0] > 0).all()  # layer 0: global


def test_config_reads_every_quirk(ours: Callable) -> None:
    cfg = ours("modernbert").config
    assert cfg.family == "modernbert" and not cfg.causal and cfg.positions == "rope"
    assert (cfg.n_heads, cfg.d_head, cfg.d_mlp) == (4, 8, 48)
    assert cfg.norm == "layernorm_no_bias" and cfg.embed_norm and cfg.final_norm
    assert cfg.heads == ("mlm_no_dense_bias",) and cfg.tied_embeddings
    windows = [cfg.window(i) for i in range(4)]
    assert windows == [None, REACH + 1, REACH + 1, None]  # our rule keeps |i − j| < W
    assert [cfg.layer(i).attn.rope.theta for i in range(4)] == [tmb.GLOBAL_THETA, tmb.LOCAL_THETA,
                                                               tmb.LOCAL_THETA, tmb.GLOBAL_THETA]
    assert [cfg.layer(i).wiring for i in range(4)] == ["pre_no_attn_norm", "pre", "pre", "pre"]
    assert all(cfg.layer(i).mlp.kind == "gated" and not cfg.layer(i).mlp.bias for i in range(4))
    assert [cfg.layer(i).attn.words() for i in range(4)] == ["bidirectional encoder", f"local, ±{REACH} tokens",
                                                             f"local, ±{REACH} tokens", "bidirectional encoder"]
    biased = ours("modernbert_biased").config
    assert biased.norm == "layernorm" and biased.heads == ("mlm",)
    assert biased.layer(0).attn.qkv_bias and biased.layer(0).attn.out_bias and biased.layer(0).mlp.bias
    assert [biased.window(i) for i in range(3)] == [REACH + 1, None, REACH + 1]
    assert biased.layer(0).wiring == "pre_no_attn_norm"  # layer 0 is local here: its own kind still
    assert ours("modernbert_bare").config.heads == () and not ours("modernbert_bare").config.lm_head
    assert "attn_norm.weight" not in dict(ours("modernbert").model.blocks[0].named_parameters())


# ------------------------------------------------------------------ attention, hidden states, logits


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, 110 tokens: against transformers' float32 and float64 runs."""
    ids = ids_of(folder(name))
    att = ours(name).attention(tmb.MODERNBERT_TEXT)
    assert att.tokens.ids == ids and att.probs.dtype == torch.float32
    assert att.probs.shape[:2] == (reference(name).config.num_hidden_layers, 4)
    assert_close(att.probs, tm.reference_attention(reference(name), ids), ATOL, f"{name} vs float32")
    assert_close(att.probs, tm.reference_attention(reference(name, True), ids), ATOL, f"{name} vs float64")


def _mlm_logits(cfg: Any, folder: Path, hidden: torch.Tensor) -> torch.Tensor:
    """The MLM head on our final hidden states, with the checkpoint's head tensors read
    through our weight map (mlm.dense, mlm.norm, the tied decoder and its bias)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for hf_name, tensor in load_file(str(folder / "model.safetensors")).items():
        tensors.update(to_ours(modernbert, hf_name, tensor.double(), cfg))
    h = hidden.double() @ tensors["mlm.dense.weight"].T
    if "mlm.dense.bias" in tensors:
        h = h + tensors["mlm.dense.bias"]
    h = torch.nn.functional.gelu(h)
    h = torch.nn.functional.layer_norm(h, (cfg.d_model,), tensors["mlm.norm.weight"], tensors.get("mlm.norm.bias"),
                                       cfg.norm_eps)
    return h @ tensors["embed.tok.weight"].T + tensors["mlm.bias"]


@pytest.mark.parametrize("name", ["modernbert", "modernbert_biased"])
def test_hidden_state_and_mlm_logits_match_transformers(name: str, folder: Callable, ours: Callable,
                                                        reference: Callable) -> None:
    ids = ids_of(folder(name))
    insp = ours(name)
    with torch.no_grad():
        ref = reference(name, True)(torch.tensor([ids]), output_hidden_states=True)
        hidden = insp.model.final_norm(insp.run(ids))  # (T, d)
    assert hidden.dtype == torch.float32
    assert_relative(hidden, ref.hidden_states[-1][0], RTOL, f"{name} last hidden state")
    assert_relative(_mlm_logits(insp.config, folder(name), hidden), ref.logits[0], RTOL, f"{name} MLM logits")


# ------------------------------------------------------------------ mask-demo, heads, attend


def _demo(folder: Path, layer: int, head: int, *args: str) -> dict[str, Any]:
    result = run("mask-demo", tmb.MODERNBERT_TEXT, "--model", str(folder), "--layer", str(layer), "--head", str(head),
                 "--device", "cpu", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _step(doc: dict[str, Any], name: str) -> torch.Tensor:
    matrix = next(s for s in doc["steps"] if s["name"] == name)["matrix"]  # a masked score is the string "-inf"
    return torch.tensor([[float(v) for v in row] for row in matrix], dtype=torch.float64)


def test_mask_demo_shows_each_layers_own_pattern(folder: Callable, reference: Callable) -> None:
    """Every layer and head: a local layer's default demo applies its own two-sided window
    and its last step is transformers' attention; a global layer's own pattern is the last
    step under --kind bidirectional (and step 3 of the default, which teaches the causal
    mask, as for every encoder). Every demo names which layers are local."""
    ids = ids_of(folder("modernbert"))
    want = tm.reference_attention(reference("modernbert", True), ids)  # (L, H, T, T)
    for layer, kind in enumerate(tmb.LAYER_TYPES):
        for head in range(want.shape[1]):
            where = f"layer {layer} head {head}"
            doc = _demo(folder("modernbert"), layer, head)
            assert "local (±8 tokens) on layers 1, 2" in doc["layer_map"], doc["layer_map"]
            assert len(doc["tokens"]) == len(ids)
            if kind == "sliding_attention":
                assert doc["layer_kind"] == f"local, ±{REACH} tokens", where
                assert doc["kind"] == doc["model_mask"] == "local" and doc["own_mask"] and not doc["kind_given"]
                assert doc["window"] == REACH + 1 and "uses this very mask" in doc["note"], doc["note"]
                assert doc["steps"][-1]["name"] == "masked_softmax"
                assert_close(_step(doc, "masked_softmax"), want[layer, head], ATOL, where)
            else:
                assert doc["layer_kind"] == "bidirectional encoder" and doc["model_mask"] == "bidirectional", where
                assert doc["kind"] == "causal" and not doc["own_mask"], where
                assert_close(_step(doc, "softmax"), want[layer, head], ATOL, f"{where} step 3")
                own = _demo(folder("modernbert"), layer, head, "--kind", "bidirectional")
                assert own["own_mask"] is True
                assert_close(_step(own, "masked_softmax"), want[layer, head], ATOL, f"{where} bidirectional")


def test_mask_demo_local_kind_and_view(folder: Callable) -> None:
    """--kind local applies a two-sided window to any layer (here a global one, so it is
    not its own); the terminal view names the layer's reach as the user knows it."""
    doc = _demo(folder("modernbert"), 0, 0, "--kind", "local", "--window", "3")
    ok = _step(doc, "masked_scores") != float("-inf")
    i = torch.arange(ok.shape[0])
    assert torch.equal(ok, (i[:, None] - i[None, :]).abs() < 3) and not doc["own_mask"]
    result = run("mask-demo", tmb.MODERNBERT_TEXT, "--model", str(folder("modernbert")), "--layer", "2",
                 "--device", "cpu", "--step", "2")
    assert result.exit_code == 0, result.output
    assert f"layer 2: local, ±{REACH} tokens · its own mask is shown" in result.stdout.splitlines()
    assert f"local mask (±{REACH})" in result.stdout and f"keys more than {REACH} away" in result.stdout


def test_heads_names_the_local_layers(folder: Callable) -> None:
    result = run("heads", "--model", str(folder("modernbert")), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layers"] == [0, 1, 2, 3]
    assert doc["layer_kinds"] == ["bidirectional encoder", f"local, ±{REACH} tokens", f"local, ±{REACH} tokens",
                                  "bidirectional encoder"]
    assert doc["scores"]["next_token"] is not None  # an encoder: every token sees the next
    picked = run("heads", "--model", str(folder("modernbert")), "--device", "cpu", "--json", "--layer", "1-2")
    assert json.loads(picked.stdout)["layer_kinds"] == [f"local, ±{REACH} tokens"] * 2
    view = run("heads", "--model", str(folder("modernbert")), "--device", "cpu")
    assert view.exit_code == 0, view.output
    line = f"layer kinds: bidirectional encoder: layers 0, 3 · local, ±{REACH} tokens: layers 1, 2"
    assert line in view.stdout.splitlines(), view.stdout[:800]


def test_heads_json_unchanged_where_layers_are_alike(folder: Callable) -> None:
    """A model whose layers are all of one kind gets no layer_kinds: the document is as before."""
    from attnscope.heads import HeadScores, scores_dict

    assert "layer_kinds" not in scores_dict(HeadScores([0], [0], {}, 0))


@pytest.mark.parametrize("name", NAMES)
def test_attend_from_the_cli(name: str, folder: Callable) -> None:
    """`attend` on the folder, in the terminal and as JSON: [CLS] and [SEP] count as specials."""
    text = "the fluffy creature sat on the mat"
    result = run("attend", text, "--model", str(folder(name)), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"{len(ids_of_text(folder(name), text))} tokens" in result.stdout
    doc = json.loads(run("attend", text, "--model", str(folder(name)), "--device", "cpu", "--json").stdout)
    tokens = doc["tokens"]
    assert [t["id"] for t in tokens] == ids_of_text(folder(name), text)
    assert [t["label"] for t in tokens if t["special"]] == ["[CLS]", "[SEP]"]
    assert (tokens[0]["label"], tokens[-1]["label"]) == ("[CLS]", "[SEP]")


def ids_of_text(folder: Path, text: str) -> list[int]:
    return tm.plain_tokenizer(folder).encode(text).ids


# ------------------------------------------------------------------ counts


@pytest.mark.parametrize("name", NAMES)
def test_tiny_counts_equal_transformers(name: str, folder: Callable) -> None:
    """`params --model` (the stored tensors, fused ones cut by `stored_parts`) and the
    config's own count both equal transformers' count of the saved class on the meta device."""
    import transformers

    hf = transformers.AutoConfig.from_pretrained(folder(name))
    with torch.device("meta"):
        expected = getattr(transformers, hf.architectures[0])(hf).num_parameters()
    from attnscope.params import report

    assert report(load_config(folder(name))).total_full == expected
    result = run("params", "--model", str(folder(name)), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == expected


def test_classifier_checkpoint_runs_and_counts(tmp_path: Path) -> None:
    """A ModernBertForSequenceClassification folder (a reranker, a classifier): its encoder's
    attention equals transformers', and `params --model` counts every stored tensor, the
    prediction head and classifier included, to transformers' own total."""
    folder = tmb.modernbert_classifier(tmp_path / "classifier")
    from attnscope.api import load

    ids = ids_of(folder)
    ref = tm.load_reference(folder)
    assert_close(load(str(folder), device="cpu", dtype="float32").attention(tmb.MODERNBERT_TEXT).probs,
                 tm.reference_attention(ref, ids), ATOL, "classifier attention")
    result = run("params", "--model", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == ref.num_parameters()
    assert run("attend", "the fluffy creature", "--model", str(folder), "--device", "cpu").exit_code == 0


def test_real_config_count() -> None:
    """modernbert-base counts to transformers' ModernBertForMaskedLM on the meta device,
    through `params --config FILE` and through the preset; transformers recomputes it."""
    import transformers

    raw = json.loads(REAL.read_text())
    expected = raw.pop("_num_parameters")
    assert expected == 149_655_232
    for args in (("--config", str(REAL)), ("--config", "modernbert-base")):
        result = run("params", *args, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["total"] == expected, args
    hf = transformers.ModernBertConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    with torch.device("meta"):
        assert transformers.ModernBertForMaskedLM(hf).num_parameters() == expected
    cfg = from_hf_config(raw, "modernbert-base")
    assert [cfg.window(i) for i in range(4)] == [None, 65, 65, None]
    assert cfg.layer(1).attn.words() == "local, ±64 tokens"


def test_params_view_names_each_kind() -> None:
    result = run("params", "--config", "modernbert-base")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "local, ±64 tokens, RoPE base 10,000" in out
    assert "layer 0 (1): bidirectional encoder, RoPE base 160,000, no norm before attention" in out
    assert "149,655,232" in out


# ------------------------------------------------------------------ bad configs


BAD = [
    ({"layer_types": ["full_attention", "chunked_attention"]}, "layer type"),
    ({"layer_types": ["full_attention"]}, "one type per layer"),
    ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers"),
    ({"local_attention": 0}, "local_attention"),
    ({"local_attention": 2**40}, "local_attention"),
    ({"local_attention": "128"}, "local_attention"),
    ({"hidden_activation": "gelu_fancy"}, "hidden_activation"),
    ({"hidden_activation": ["gelu"]}, "hidden_activation"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}}, "rope scaling"),
    ({"rope_parameters": [1, 2]}, "rope_parameters"),
    ({"global_rope_theta": "big"}, "rope_theta"),
    ({"local_rope_theta": 0.5}, "rope_theta"),
    ({"norm_bias": "no"}, "norm_bias"),
    ({"decoder_bias": False}, "decoder bias"),
    ({"norm_eps": -1}, "norm_eps"),
    ({"architectures": "ModernBertForMaskedLM"}, "architectures"),
]


@pytest.mark.parametrize(("change", "words"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_config_is_one_line(change: dict[str, Any], words: str, tmp_path: Path) -> None:
    raw = {"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"], "hidden_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48, "vocab_size": 64,
           "max_position_embeddings": 64, **change}
    with pytest.raises(ConfigError):
        from_hf_config(raw, "bad")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    refused(run("params", "--config", str(path)), words)


def test_fused_tensors_split_by_rows() -> None:
    """`Wqkv` rows are q, k, v in that order, `Wi` rows the activated half, then the gate it
    multiplies: our gated MLP's gate, then up. A tensor whose rows do not add up passes on
    whole, for the loader to refuse by name."""
    cfg = from_hf_config({"model_type": "modernbert", "hidden_size": 8, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "intermediate_size": 6, "vocab_size": 16,
                          "max_position_embeddings": 16}, "t")
    qkv = torch.arange(24.0)[:, None].expand(24, 8)
    parts = modernbert.split("blocks.0.attn.qkv_proj.weight", qkv, cfg)
    assert [float(parts[f"blocks.0.attn.{p}.weight"][0, 0]) for p in "qkv"] == [0.0, 8.0, 16.0]
    wi = torch.arange(12.0)[:, None].expand(12, 8)
    parts = modernbert.split("blocks.0.mlp.gate_up.weight", wi, cfg)
    assert float(parts["blocks.0.mlp.gate.weight"][0, 0]) == 0.0 and float(parts["blocks.0.mlp.up.weight"][0, 0]) == 6.0
    odd = torch.zeros(10, 8)
    assert set(modernbert.split("blocks.0.mlp.gate_up.weight", odd, cfg)) == {"blocks.0.mlp.gate_up.weight"}


# Any JSON value in any of the keys ModernBERT's reader takes: a ModelConfig or one ConfigError, never another exception.
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_KEYS = ["layer_types", "global_attn_every_n_layers", "local_attention", "rope_parameters", "rope_scaling",
         "global_rope_theta", "local_rope_theta", "hidden_activation", "norm_eps", "norm_bias", "attention_bias",
         "mlp_bias", "decoder_bias", "classifier_bias", "tie_word_embeddings", "architectures"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=3), kind=st.sampled_from(
    ["full_attention", "sliding_attention", "nonsense"]))
def test_any_value_is_a_config_or_one_error(changes: dict[str, Any], kind: str) -> None:
    raw = {"model_type": "modernbert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 48, "vocab_size": 64, "max_position_embeddings": 64,
           "rope_parameters": {kind: {"rope_theta": 1000.0}}, **changes}
    try:
        cfg = from_hf_config(raw, "fuzz")
    except ConfigError:
        return
    assert cfg.n_layers == 2 and all(cfg.window(i) is None or cfg.window(i) >= 1 for i in range(2))
