"""RoBERTa, XLM-RoBERTa (`roberta`, `xlm-roberta`: attnscope/architectures/roberta.py) and
DistilBERT (`distilbert`: attnscope/architectures/distilbert.py) against transformers.

Seven tiny random checkpoints from tests/tiny_models_encoders.py, one per head class
(RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification, XLMRobertaForMaskedLM
with its padding index at 3, DistilBertForMaskedLM, DistilBertForSequenceClassification
with ReLU, DistilBertModel with the sinusoidal table). Every expected number comes from
transformers: attention in float32 (eager, `output_attentions`) to 1e-5 on KINDS_TEXT
(90+ tokens), every layer and head; several texts packed into one pass against
transformers' padded batch; the stored parameter count against the reference model's
`num_parameters()`; the real configs' published counts. Encoders have no next-token
head, so there are no logits to compare.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

import family_checks
from family_checks import Patterns, cached
import tiny_models as tm
import tiny_models_encoders as te
import tiny_models_kinds as tk
from attnscope.config import from_hf_config, preset
from attnscope.errors import ConfigError
from attnscope.parts.attention import Packing

NAMES = sorted(te.ENCODER_BUILDERS)
ATOL = 1e-5  # attention probabilities, float32 against float32
REAL = Path(__file__).parent / "data" / "real_configs"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
# The published figures, each the class config.json names, built by transformers.
PUBLISHED = {"roberta-base": 124_697_433, "distilbert-base-uncased": 66_985_530}
WIDEST: dict[str, float] = {}  # the largest difference each test saw, for the report
assert_close = partial(family_checks.assert_close, widest=WIDEST)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return cached(lambda name: te.ENCODER_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def ours(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    from attnscope.api import load

    return cached(lambda name: load(str(folder(name)), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def reference(folder: Callable[[str], Path]) -> Callable[[str], Any]:
    return cached(lambda name: tm.load_reference(folder(name)))  # every tensor used, none missing


def ids_of(folder: Path, text: str = tk.KINDS_TEXT) -> list[int]:
    return tm.plain_tokenizer(folder).encode(text).ids


def run(*args: str) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, list(args), env=ENV)


# ------------------------------------------------------------------ the checkpoints


def test_checkpoints_carry_the_quirks(folder: Callable[[str], Path]) -> None:
    """What the parity tests rest on: the real key names and heads on disk, the padding
    index (1, and 3 for the XLM-RoBERTa variant) and the 90+ token text."""
    from safetensors import safe_open

    def keys(name: str) -> set[str]:
        with safe_open(str(folder(name) / "model.safetensors"), "pt") as f:
            return set(f.keys())

    assert {"roberta.embeddings.position_embeddings.weight", "lm_head.dense.weight", "lm_head.layer_norm.weight",
            "lm_head.bias"} <= keys("roberta_mlm")
    assert {"embeddings.position_embeddings.weight", "pooler.dense.weight"} <= keys("roberta_bare")
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= keys("roberta_cls")
    assert {"distilbert.transformer.layer.0.attention.q_lin.weight", "vocab_transform.weight",
            "vocab_layer_norm.bias", "vocab_projector.bias"} <= keys("distilbert_mlm")
    assert {"pre_classifier.weight", "classifier.weight", "distilbert.transformer.layer.1.sa_layer_norm.weight",
            "distilbert.transformer.layer.1.output_layer_norm.bias"} <= keys("distilbert_cls")
    for name, pad in (("roberta_mlm", 1), ("xlm_roberta", 3)):
        raw = json.loads((folder(name) / "config.json").read_text())
        assert raw["pad_token_id"] == pad and raw["max_position_embeddings"] == te.N_POSITIONS + pad + 1
    for name in NAMES:
        assert len(ids_of(folder(name))) >= 90, name


def test_sinusoidal_table_is_stored_as_transformers_writes_it(folder: Callable[[str], Path],
                                                              reference: Callable[[str], Any]) -> None:
    """`sinusoidal_pos_embds`: the table is a parameter like any other, saved and read back."""
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    table = reference("distilbert_sinusoidal").embeddings.position_embeddings.weight
    want = create_sinusoidal_embeddings(te.N_POSITIONS, 32, torch.empty_like(table))
    assert torch.equal(table, want)
    assert torch.equal(te_position_table(folder("distilbert_sinusoidal")), want)


def te_position_table(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    return next(t for n, t in state.items() if n.endswith("position_embeddings.weight"))


def test_config_reads_every_quirk(ours: Callable[[str], Any]) -> None:
    for name, offset, types in (("roberta_mlm", 2, 1), ("xlm_roberta", 4, 1), ("distilbert_mlm", 0, 0)):
        cfg = ours(name).config
        assert (cfg.pos_offset, cfg.n_ctx, cfg.n_types, cfg.causal) == (offset, te.N_POSITIONS, types, False), name
        assert cfg.layer(0).wiring == "post" and cfg.embed_norm and not cfg.final_norm, name
    assert ours("xlm_roberta").config.family == "xlm-roberta"
    assert ours("distilbert_cls").config.act == "relu" and ours("distilbert_mlm").config.act == "gelu"
    heads = {name: (ours(name).config.heads, ours(name).config.n_labels) for name in NAMES}
    assert heads == {
        "roberta_bare": (("pooler",), 0), "roberta_mlm": (("mlm",), 0), "xlm_roberta": (("mlm",), 0),
        "roberta_cls": (("sequence_classifier",), te.CLASSIFIER_LABELS["roberta_cls"]),
        "distilbert_mlm": (("mlm",), 0), "distilbert_sinusoidal": ((), 0),
        "distilbert_cls": (("sequence_classifier",), te.CLASSIFIER_LABELS["distilbert_cls"]),
    }


# ------------------------------------------------------------------ attention


@pytest.mark.parametrize("name", NAMES)
def test_attention_matches_transformers(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Every layer and head, float32 against transformers' eager float32, to 1e-5."""
    ids = ids_of(folder(name))
    want = tm.reference_attention(reference(name), ids)  # (L, H, T, T)
    insp = ours(name)
    hook = Patterns(insp.n_layers, insp.n_heads, len(ids))
    insp.run(ids, hook)
    assert_close(hook.full, want, ATOL, f"{name}: attention")


@pytest.mark.parametrize("name", ["roberta_mlm", "xlm_roberta", "distilbert_cls"])
def test_packed_texts_match_a_padded_batch(name: str, folder: Callable, ours: Callable, reference: Callable) -> None:
    """Our way of running several texts at once (one pass, each text with its own
    positions, masked apart) against transformers' padded batch: right padding with
    the pad id and an attention mask, so RoBERTa's padded positions are its own
    (`create_position_ids_from_input_ids`)."""
    texts = [tk.KINDS_TEXT, tm.SHORT_TEXT, tm.LONG_TEXT]
    rows = [ids_of(folder(name), t) for t in texts]
    n = max(len(r) for r in rows)
    pad = reference(name).config.pad_token_id
    batch = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    with torch.no_grad():
        out = reference(name)(batch, attention_mask=mask, output_attentions=True)
    want = torch.stack(out.attentions, dim=1)  # (B, L, H, n, n)
    insp = ours(name)
    ids = torch.tensor(sum(rows, []))
    positions = torch.cat([torch.arange(len(r)) for r in rows])
    segments = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rows)])
    hook = Patterns(insp.n_layers, insp.n_heads, len(ids))
    insp.model(ids, hook, packing=Packing(positions, segments))
    at = 0
    for b, r in enumerate(rows):
        k = len(r)
        mine = hook.full[:, :, at:at + k, at:at + k]
        assert_close(mine, want[b, :, :, :k, :k], ATOL, f"{name} packed: text {b}")
        assert float(mine.sum(-1).sub(1).abs().max()) < 1e-5  # each row's mass stays within its own text
        at += k


def test_positions_start_after_the_padding_index(folder: Callable, ours: Callable, reference: Callable) -> None:
    """What the offset is for: with it taken as 2 (roberta-base's) the XLM-RoBERTa variant,
    padding index 3, would read the wrong rows and disagree with transformers."""
    from dataclasses import replace

    from attnscope.model import build
    from attnscope.architectures import ARCHITECTURES, to_ours
    from safetensors.torch import load_file

    name = "xlm_roberta"
    ids = ids_of(folder(name))
    want = tm.reference_attention(reference(name), ids)
    cfg = ours(name).config
    wrong = replace(cfg, pos_offset=2, n_ctx=cfg.n_ctx + 2)  # the same table read from row 2
    module = ARCHITECTURES["xlm-roberta"]
    tensors = [(k, v) for hf, t in load_file(folder(name) / "model.safetensors").items()
               for k, v in to_ours(module, hf, t, wrong).items()]
    model = build(wrong, tensors)
    hook = Patterns(cfg.n_layers, cfg.n_heads, len(ids))
    model(torch.tensor(ids), hook)
    assert float((hook.full - want).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["roberta_mlm", "xlm_roberta", "distilbert_mlm"])
def test_mask_demo_last_step_is_the_layers_attention(name: str, folder: Callable, reference: Callable) -> None:
    """`mask-demo --kind bidirectional` (an encoder's own mask): its last step is the
    layer's attention, every layer and head, read from the score hook."""
    ids = ids_of(folder(name))
    want = tm.reference_attention(reference(name), ids)  # (L, H, T, T)
    for layer in range(want.shape[0]):
        for head in range(want.shape[1]):
            result = run("mask-demo", tk.KINDS_TEXT, "--model", str(folder(name)), "--layer", str(layer), "--head",
                         str(head), "--kind", "bidirectional", "--device", "cpu", "--json")
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            where = f"{name} mask-demo: layer {layer} head {head}"
            assert doc["own_mask"] is True and doc["model_mask"] == "bidirectional", where
            step = doc["steps"][-1]
            assert step["name"] == "masked_softmax", where
            assert_close(torch.tensor(step["matrix"], dtype=torch.float64), want[layer, head], ATOL, where)


def test_heads_scores_an_encoder(folder: Callable) -> None:
    result = run("heads", "--model", str(folder("roberta_cls")), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layers"] == [0, 1] and doc["heads"] == [0, 1, 2, 3] and doc["scores"]


# ------------------------------------------------------------------ counts


@pytest.mark.parametrize("name", NAMES)
def test_params_model_counts_what_transformers_holds(name: str, folder: Callable, reference: Callable) -> None:
    """`params --model` from the headers: every stored tensor of each head class, the
    tied decoder once, equals the reference model's own num_parameters()."""
    result = run("params", "--model", str(folder(name)), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == reference(name).num_parameters(), name
    assert doc["rows"]["other"] == 0, doc["rows"]  # every tensor named


@pytest.mark.parametrize("name", ["roberta-base", "xlm-roberta-base", "distilbert-base-uncased"])
def test_real_config_counts(name: str) -> None:
    raw = json.loads((REAL / f"{name}.json").read_text())
    expected = raw.pop("_num_parameters")
    if name in PUBLISHED:
        assert expected == PUBLISHED[name]
    result = run("params", "--config", str(REAL / f"{name}.json"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == expected
    preset_doc = json.loads(run("params", "--config", name, "--json").stdout)  # the preset of the same name
    assert preset_doc["total"] == expected
    assert preset(name).to_dict() == from_hf_config(raw, name=name).to_dict()


@pytest.mark.parametrize("edit, words", [
    (lambda raw: raw.update(pad_token_id=600), "leaves no position after the padding index"),
    (lambda raw: raw.update(pad_token_id=None), "pad_token_id must be a non-negative integer"),
    (lambda raw: raw.update(max_position_embeddings=514.0), "max_position_embeddings must be an integer"),
    (lambda raw: raw.update(hidden_act="swish"), "unsupported roberta hidden_act"),
    (lambda raw: raw.update(is_decoder=True), "as a decoder"),
    (lambda raw: raw.update(position_embedding_type="relative_key"), "position_embedding_type"),
    (lambda raw: raw.update(architectures=["RobertaForSequenceClassification"], num_labels=0), "num_labels"),
    (lambda raw: raw.update(architectures=["RobertaForSequenceClassification"], num_labels=True), "num_labels"),
    (lambda raw: raw.update(architectures="RobertaModel"), "architectures must be a list"),
])
def test_bad_roberta_configs_are_one_config_error(edit: Callable, words: str) -> None:
    raw = json.loads((REAL / "roberta-base.json").read_text())
    edit(raw)
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)


@pytest.mark.parametrize("edit, words", [
    (lambda raw: raw.update(activation="swish"), "unsupported DistilBERT activation"),
    (lambda raw: raw.update(dim=770), "heads do not divide"),
    (lambda raw: raw.update(architectures=[["x"]]), "heads"),
])
def test_bad_distilbert_configs_are_one_config_error(edit: Callable, words: str) -> None:
    raw = json.loads((REAL / "distilbert-base-uncased.json").read_text())
    edit(raw)
    if words == "heads":  # an odd architectures entry is no head at all, not a crash
        assert from_hf_config(raw).heads == ()
        return
    with pytest.raises(ConfigError, match=words):
        from_hf_config(raw)


def test_classifier_labels_follow_id2label() -> None:
    raw = json.loads((REAL / "distilbert-base-uncased.json").read_text())
    raw.update(architectures=["DistilBertForSequenceClassification"], id2label={"0": "NEG", "1": "POS", "2": "MIX"})
    cfg = from_hf_config(raw)
    assert cfg.heads == ("sequence_classifier",) and cfg.n_labels == 3


# ------------------------------------------------------------------ specials and the CLI


@pytest.mark.parametrize("name, text, specials", [
    ("roberta_mlm", "Hello <s> world </s> and <pad> x", ["<s>", "<s>", "</s>", "<pad>", "</s>"]),
    ("xlm_roberta", "Hello <s> world </s> and <pad> x", ["<s>", "<s>", "</s>", "<pad>", "</s>"]),
    ("distilbert_mlm", "hello [SEP] world [CLS] x [PAD]", ["[CLS]", "[SEP]", "[CLS]", "[PAD]", "[SEP]"]),
])
def test_special_tokens_count_as_specials_in_every_view(name: str, text: str, specials: list[str],
                                                        folder: Callable, ours: Callable) -> None:
    """The tokenizer's special tokens are specials wherever they stand: added by its
    post-processor or spelled out in the text, in the tokens and in `attend --json`."""
    toks = ours(name).tokenize(text)
    assert [t for t, s in zip(toks.strings, toks.special) if s] == specials, list(zip(toks.strings, toks.special))
    result = run("attend", text, "--model", str(folder(name)), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [t["label"] for t in doc["tokens"] if t["special"]] == specials


def test_unknown_word_is_not_a_special(ours: Callable) -> None:
    """[UNK] standing for text the vocabulary cannot spell is that text, not a special."""
    toks = ours("distilbert_mlm").tokenize("the € cat")
    unk = [s for t, s in zip(toks.strings, toks.special) if t == "[UNK]"]
    assert unk == [False]


@pytest.mark.parametrize("name", ["roberta_bare", "xlm_roberta", "distilbert_sinusoidal", "distilbert_cls"])
def test_cli_attend(name: str, folder: Callable) -> None:
    result = run("attend", "The cat sat on the mat.", "--model", str(folder(name)), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "specials" in result.stdout


# ------------------------------------------------------------------ fuzzing the readers

_FUZZ_BASES = {
    "roberta": {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 66, "type_vocab_size": 1,
                "pad_token_id": 1, "architectures": ["RobertaForSequenceClassification"], "num_labels": 3},
    "xlm-roberta": {"model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 66,
                    "architectures": ["XLMRobertaForMaskedLM"]},
    "distilbert": {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64,
                   "vocab_size": 100, "max_position_embeddings": 64, "sinusoidal_pos_embds": True,
                   "architectures": ["DistilBertForSequenceClassification"], "id2label": {"0": "a", "1": "b"}},
}
_FUZZ_KEYS = sorted({k for base in _FUZZ_BASES.values() for k in base if k != "model_type"}
                    | {"hidden_act", "activation", "layer_norm_eps", "is_decoder", "position_embedding_type",
                       "tie_word_embeddings"})


def _mutated(values: Any) -> Any:
    from hypothesis import strategies as st

    @st.composite
    def make(draw: Any) -> dict[str, Any]:
        raw = json.loads(json.dumps(draw(st.sampled_from(sorted(_FUZZ_BASES)).map(_FUZZ_BASES.get))))
        for key in draw(st.lists(st.sampled_from(_FUZZ_KEYS), max_size=3, unique=True)):
            if draw(st.booleans()) and key in raw:
                del raw[key]
            else:
                raw[key] = draw(values)
        return raw

    return make()


def _fuzz(test: Callable[..., None]) -> Callable[..., None]:
    from hypothesis import HealthCheck, given, settings

    from test_fuzz import config_values

    return settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])(
        given(raw=_mutated(config_values))(test))


@_fuzz
def test_readers_raise_only_config_errors_and_accepted_configs_build(raw: dict[str, Any]) -> None:
    """Any value in any key: a ConfigError, or a config the model and its count can be built from."""
    from test_fuzz import builds

    try:
        cfg = from_hf_config(raw, name="fuzz")
    except ConfigError as exc:
        assert exc.message
        return
    builds(cfg)
    assert ("sequence_classifier" in cfg.heads) == (cfg.n_labels > 0)
