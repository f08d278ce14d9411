"""T5 in llama.cpp's GGUF form (`t5`): T5 v1.0 (relu, tied head) and v1.1 / FLAN-T5
(gated-gelu, untied head), written with gguf-py's GGUFWriter by a port of T5Model in
convert_hf_to_gguf.py (below: `write_t5_gguf`), from the tiny checkpoints of
tests/tiny_models_seq2seq.py with a SentencePiece Unigram vocabulary.

The converter stores no relative_attention_max_distance (llama.cpp fixes it at 128, as
every T5 release does), so these checkpoints use 128: past it, SOURCE_TEXT's 90+ tokens
still reach the log-spaced buckets of 16.

Checked here:
1. every parameter of the GGUF load equals the safetensors load of the same weights
   (bit for bit), and the encoder's, the decoder's and the cross-attention of every layer
   and head equal transformers' eager T5 on the safetensors checkpoint to 1e-5, the
   logits to 1e-4 relative (v1.0's tied head with its d_model^-0.5 rescale, v1.1's own);
2. the tokenizer: the folder's tokenizer.json is transformers' own T5Tokenizer built from
   the vocabulary, scores and a SentencePiece precompiled charsmap; the GGUF holds the
   same, and both give the same ids on texts with runs of spaces, accents (composed and
   not), ligatures, full-width letters, unknown characters and T5's special tokens;
3. `attend SOURCE --target TARGET --model tiny.gguf` from the CLI, equal to the folder's
   `--json`; `params --model tiny.gguf` counts equal to the folder's;
4. hostile T5 metadata (missing keys, absurd sizes, a missing tensor, UMT5's per-layer
   tables, a tensor past the decoder's layers) is one error line.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models as tm
import tiny_models_seq2seq as sm
from cli_runs import one_error, run

CHARSMAP = (Path(__file__).parent / "data" / "t5_precompiled_charsmap.bin").read_bytes()
# What the charsmap (built by SentencePiece's trainer from a small normalization rule table)
# maps: the ligature ﬁ to "fi", full-width Ｔｅｓｔ to "Test", ① to "1", e + U+0301 to é,
# the ideographic space to a space.
ATOL = 1e-5  # attention probabilities, float32 both sides (as tests/test_family_t5.py)
RTOL = 1e-4  # logits relative to their largest magnitude
PAD, EOS, UNK = 0, 1, 2
NORMAL, UNKNOWN, CONTROL, UNUSED = 1, 2, 3, 5  # llama.cpp's token types
EXTRA_ROWS = 5  # the model's vocabulary is larger than the tokenizer's, as t5-small's 32128 > 32100
TEXTS = [
    sm.SOURCE_TEXT,
    "  leading, inner   and trailing   spaces  ",
    "Café naïve résumé déjà vu, e\u0301cole",
    "ﬁnance Ｔｅｓｔ ① and\u3000ideographic space",
    "unknown 😀😀 characters 中文 and Ωmega",
    "</s> and <unk> and <pad> in the text",
    "",
    "a",
]


@cache
def unigram_vocab() -> tuple[tuple[str, float], ...]:
    """A SentencePiece-style Unigram vocabulary (<pad>, </s>, <unk> first: T5's ids),
    trained by `tokenizers` on the tiny corpus, the pieces then ordered by score and
    spelling (the trainer orders ties differently from run to run)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Precompiled(CHARSMAP)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    trainer = trainers.UnigramTrainer(vocab_size=260, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      max_piece_length=8)
    tok.train_from_iterator(tm.SENTENCES * 4, trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    assert [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]  # internal invariant: T5's ids
    return (*vocab[:3], *sorted(vocab[3:], key=lambda v: (-v[1], v[0])))


def hf_tokenizer(vocab: tuple[tuple[str, float], ...]) -> Any:
    """transformers' own T5Tokenizer on the vocabulary and the charsmap (its backend
    `tokenizers.Tokenizer`, as a T5 checkpoint's tokenizer.json holds it)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(vocab), _spm_precompiled_charsmap=CHARSMAP, extra_ids=0)._tokenizer


def build_t5(folder: Path, v11: bool) -> Path:
    """A tiny T5 (v1.0 tied, or v1.1 gated and untied) with the Unigram tokenizer."""
    vocab = unigram_vocab()
    extra: dict[str, Any] = {"feed_forward_proj": "gated-gelu"} if v11 else {}
    sm._t5(folder, tm.SEED + 7 + v11, tied=not v11, vocab_size=len(vocab) + EXTRA_ROWS,
           relative_attention_max_distance=128, **extra)
    hf_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    return folder


def write_t5_gguf(folder: Path, path: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]
                  | None = None, qtype: str = "F32") -> Path:
    """The folder as convert_hf_to_gguf.py's T5Model writes it: the converter's metadata,
    the vocabulary padded with [PAD{i}] rows to the model's size (score -10000, unused),
    the first of shared / encoder.embed_tokens / decoder.embed_tokens as token_embd, every
    other tensor renamed by gguf-py's map and left as it is. `edit(meta, tensors)` may
    change either before writing (the hostile tests)."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    vocab = unigram_vocab()
    size = cfg["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores, types = [-10000.0] * size, [UNUSED] * size
    for i, (piece, score) in enumerate(vocab):
        tokens[i], scores[i] = piece, score
        types[i] = CONTROL if i in (PAD, EOS) else UNKNOWN if i == UNK else NORMAL
    a = gguf.MODEL_ARCH.T5
    k = gguf.Keys
    arch = "t5"
    meta: dict[str, Any] = {
        k.LLM.CONTEXT_LENGTH.format(arch=arch): ("u32", cfg.get("n_positions", 512)),
        k.LLM.EMBEDDING_LENGTH.format(arch=arch): ("u32", cfg["d_model"]),
        k.LLM.FEED_FORWARD_LENGTH.format(arch=arch): ("u32", cfg["d_ff"]),
        k.LLM.BLOCK_COUNT.format(arch=arch): ("u32", cfg["num_layers"]),
        k.LLM.DECODER_BLOCK_COUNT.format(arch=arch): ("u32", cfg["num_decoder_layers"]),
        k.Attention.HEAD_COUNT.format(arch=arch): ("u32", cfg["num_heads"]),
        k.Attention.KEY_LENGTH.format(arch=arch): ("u32", cfg["d_kv"]),
        k.Attention.VALUE_LENGTH.format(arch=arch): ("u32", cfg["d_kv"]),
        k.Attention.LAYERNORM_EPS.format(arch=arch): ("f32", cfg["layer_norm_epsilon"]),
        k.Attention.REL_BUCKETS_COUNT.format(arch=arch): ("u32", cfg["relative_attention_num_buckets"]),
        k.Attention.LAYERNORM_RMS_EPS.format(arch=arch): ("f32", cfg["layer_norm_epsilon"]),
        k.LLM.DECODER_START_TOKEN_ID.format(arch=arch): ("u32", cfg["decoder_start_token_id"]),
        k.Tokenizer.MODEL: ("str", "t5"),
        k.Tokenizer.PRE: ("str", "default"),
        k.Tokenizer.LIST: ("arr", tokens),
        k.Tokenizer.SCORES: ("arr", scores),
        k.Tokenizer.TOKEN_TYPE: ("arr", types),
        k.Tokenizer.ADD_PREFIX: ("bool", True),
        k.Tokenizer.REMOVE_EXTRA_WS: ("bool", True),
        k.Tokenizer.PRECOMPILED_CHARSMAP: ("arr", CHARSMAP),
        # gguf.SpecialVocab's reading of tokenizer.json: the ids, and `$A </s>` as add_eos
        k.Tokenizer.EOS_ID: ("u32", EOS),
        k.Tokenizer.UNK_ID: ("u32", UNK),
        k.Tokenizer.PAD_ID: ("u32", PAD),
        k.Tokenizer.ADD_BOS: ("bool", False),
        k.Tokenizer.ADD_EOS: ("bool", True),
    }
    names = gguf.get_tensor_name_map(a, max(cfg["num_layers"], cfg["num_decoder_layers"]))
    tensors: dict[str, torch.Tensor] = {}
    shared_found = False
    for name, t in load_file(str(folder / "model.safetensors")).items():
        if name in ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight", "shared.weight"):
            if shared_found:
                continue
            name, shared_found = "shared.weight", True
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name  # internal invariant: the converter maps every T5 tensor
        tensors[gguf_name] = t
    if edit is not None:
        edit(meta, tensors)
    w = gguf.GGUFWriter(path, meta.pop("arch", ("arch", arch))[1])
    w.add_name("tiny-t5")
    for key, (kind, value) in meta.items():
        {"u32": w.add_uint32, "f32": w.add_float32, "str": w.add_string, "bool": w.add_bool,
         "arr": w.add_array, "u64": w.add_uint64}[kind](key, value)
    for name, t in tensors.items():
        q = gguf.GGMLQuantizationType[qtype if t.ndim == 2 else "F32"]
        w.add_tensor(name, gguf.quants.quantize(t.numpy(), q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


NAMES = ["t5", "t5_v11"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """name -> (the safetensors folder, its GGUF)."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            folder = build_t5(root / "folder", v11=name == "t5_v11")
            made[name] = folder, write_t5_gguf(folder, root / "tiny.gguf")
        return made[name]

    return get


@pytest.fixture(scope="module")
def loaded(built: Callable[[str], tuple[Path, Path]]) -> Callable[[str], tuple[Any, Any]]:
    """name -> (our load of the folder, our load of the GGUF)."""
    from attnscope.api import load

    made: dict[str, tuple[Any, Any]] = {}

    def get(name: str) -> tuple[Any, Any]:
        if name not in made:
            folder, gguf_file = built(name)
            made[name] = (load(str(folder), device="cpu", dtype="float32"),
                          load(str(gguf_file), device="cpu", dtype="float32"))
        return made[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_equals_the_safetensors_load(name: str, built: Any, loaded: Any) -> None:
    folder, gguf_file = built(name)
    st, gg = loaded(name)
    # every field (sizes, stacks, relative specs, the tied head and its divisor) but the name
    # and the epsilon, which GGUF stores as a float32
    assert replace(gg.config, name=st.config.name, norm_eps=st.config.norm_eps) == st.config
    assert gg.config.norm_eps == pytest.approx(st.config.norm_eps, rel=1e-7)
    assert (gg.config.decoder is not None and len(gg.config.decoder) == 3 and gg.config.n_layers == 2)
    assert gg.config.tied_embeddings is (name == "t5") and (gg.config.logits_divisor is not None) is (name == "t5")
    assert gg.config.layer(0).mlp.kind == ("gated" if name == "t5_v11" else "dense")
    ours, theirs = gg.model.state_dict(), st.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_three_kinds_of_attention_and_logits_equal_transformers(name: str, built: Any, loaded: Any) -> None:
    folder, _ = built(name)
    _, gg = loaded(name)
    tok = hf_tokenizer(unigram_vocab())
    src, tgt = tok.encode(sm.SOURCE_TEXT).ids, tok.encode(sm.TARGET_TEXT).ids
    assert len(src) >= 90 and len(tgt) >= 60 and src[-1] == EOS
    model = sm.t5_reference(folder)
    dec = [model.config.decoder_start_token_id] + tgt
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
    got = gg.seq2seq(src, tgt)
    assert got.source_ids == src and got.decoder_ids == dec
    for ours, theirs in ((got.encoder, out.encoder_attentions), (got.decoder, out.decoder_attentions),
                         (got.cross, out.cross_attentions)):
        ref = torch.stack([a[0] for a in theirs])
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < ATOL
        assert ref.max(-1).values.mean().item() < 0.9  # spread rows: a wrong bias or scale would show
    ref = out.logits[0]
    assert ((got.logits - ref).abs().max() / ref.abs().max()).item() < RTOL


def test_max_distance_the_file_does_not_store_matters(built: Any, loaded: Any) -> None:
    """The file stores no max distance: read with 24 instead of llama.cpp's 128, transformers'
    encoder patterns move by far more than the tolerance, so the check above can fail."""
    folder, _ = built("t5")
    _, gg = loaded("t5")
    src = hf_tokenizer(unigram_vocab()).encode(sm.SOURCE_TEXT).ids
    model = sm.t5_reference(folder)
    for module in model.modules():
        if hasattr(module, "relative_attention_max_distance"):
            module.relative_attention_max_distance = 24
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([[0]]), output_attentions=True)
    got = gg.seq2seq(src, []).encoder
    assert (got - torch.stack([a[0] for a in out.encoder_attentions])).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_tokenizer_equals_the_folders(text: str, built: Any, loaded: Any) -> None:
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    folder, gguf_file = built("t5")
    ours = gguf_tokenizer(read_gguf(gguf_file))
    theirs = hf_tokenizer(unigram_vocab())
    got, want = ours.encode(text), theirs.encode(text)
    assert got.ids == want.ids, (text, got.tokens, want.tokens)
    assert got.ids[-1:] == [EOS]  # T5's </s> after the text
    st, gg = loaded("t5")
    assert gg.tokenizer.encode(text).ids == st.tokenizer.encode(text).ids
    assert ours.decode(got.ids) == theirs.decode(want.ids)


def test_tokenizer_details(built: Any) -> None:
    """The cases the texts above are chosen for hit the parts they are meant to."""
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    _, gguf_file = built("t5")
    tok = gguf_tokenizer(read_gguf(gguf_file))
    pieces = tok.encode("ﬁ Ｔｅｓｔ ①").tokens
    assert "".join(pieces[:-1]).replace("\u2581", " ").strip() == "fi Test 1"  # the charsmap ran
    assert tok.encode("e\u0301").ids == tok.encode("é").ids
    assert tok.encode("  a   b  ").ids == tok.encode("a b").ids  # extra spaces removed
    # '▁', then a run of unknown characters as one unknown token
    assert tok.encode("😀😀中").ids == [tok.token_to_id("\u2581"), UNK, EOS]
    assert tok.encode("</s>").ids == [EOS, EOS] and tok.encode("<unk>").ids == [UNK, EOS]  # special, kept whole
    # the [PAD{i}] rows the converter pads with stay in the table, at their ids
    vocab = tok.get_vocab()
    n = len(unigram_vocab())
    assert vocab[f"[PAD{n}]"] == n and tok.get_vocab_size() == n + EXTRA_ROWS


def test_attend_from_the_cli_equals_the_folder(built: Any) -> None:
    folder, gguf_file = built("t5_v11")
    src, tgt = "the cat sat on the mat", "a dog ran in the park"
    outs = []
    for where in (folder, gguf_file):
        result = run("attend", src, "--target", tgt, "--model", where, "--json")
        assert result.exit_code == 0, (result.stdout[-2000:], result.stderr)
        outs.append(json.loads(result.stdout))
    # the same ids and weights; the labels differ only where transformers' Metaspace gives a
    # lone '▁' the next character's offsets (its folder shows '␣c' where the GGUF shows '␣')
    labels = [(doc["source"].pop("tokens"), doc["decoder"].pop("tokens")) for doc in outs]
    assert [len(a) for a in labels[0]] == [len(a) for a in labels[1]]
    for doc in outs:
        doc.pop("model", None)
    assert outs[0] == outs[1]
    assert outs[0]["source"]["ids"][-1] == EOS and outs[0]["decoder"]["ids"][0] == PAD
    plain = run("attend", src, "--target", tgt, "--model", gguf_file)
    assert plain.exit_code == 0 and "error" not in plain.stderr, plain.stderr
    assert "source 12 tokens, decoder reads 11 tokens" in plain.stdout and "the" in plain.stdout


def test_generate_from_the_cli_equals_the_folder(built: Any) -> None:
    """Greedy decoding from the source: the same source ids and generated ids (the random
    tiny model picks one of the rows past the tokenizer's vocabulary: the folder's
    tokenizer has no piece for it, the GGUF names it [PAD{id}] as the converter wrote it)."""
    docs = []
    for where in built("t5"):
        result = run("generate", "the cat sat on the mat", "--model", where, "-n", "6", "--json")
        assert result.exit_code == 0, (result.stdout[-2000:], result.stderr)
        docs.append(json.loads(result.stdout))
    folder, gguf = docs
    assert gguf["source"]["ids"] == folder["source"]["ids"]
    assert gguf["generated"]["ids"] == folder["generated"]["ids"] and len(gguf["generated"]["ids"]) == 6


@pytest.mark.parametrize("name", NAMES)
def test_params_counts_equal_the_folders(name: str, built: Any) -> None:
    folder, gguf_file = built(name)
    docs = []
    for where in (folder, gguf_file):
        result = run("params", "--model", where, "--json")
        assert result.exit_code == 0, (result.stdout[-2000:], result.stderr)
        docs.append(json.loads(result.stdout))
    st, gg = docs
    from safetensors.torch import load_file

    stored = sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())
    assert gg["total"] == st["total"] == stored
    for key in st:
        if isinstance(st[key], dict) and "total" in st[key]:
            assert gg[key]["total"] == st[key]["total"], key


def test_cross_attention_table_of_old_checkpoints_is_skipped(built: Any, loaded: Any, tmp_path: Path) -> None:
    """T5's original checkpoints (t5-small ... t5-11b) carry a relative table on the first
    decoder layer's cross-attention, which transformers never loads; the converter writes it
    as dec.blk.0.cross_attn_rel_b. It is skipped: the same model, its tensor not counted."""
    from attnscope.api import load

    folder, _ = built("t5")
    _, gg = loaded("t5")
    table = torch.randn(16, 4) * 10

    def add(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        tensors["dec.blk.0.cross_attn_rel_b.weight"] = table

    path = write_t5_gguf(folder, tmp_path / "old.gguf", add)
    m = load(str(path), device="cpu", dtype="float32")
    ours, theirs = m.model.state_dict(), gg.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    doc = json.loads(run("params", "--model", path, "--json").stdout)
    plain = json.loads(run("params", "--model", built("t5")[1], "--json").stdout)
    assert doc["total"] == plain["total"] and doc["skipped_buffers"] == ["dec.blk.0.cross_attn_rel_b.weight"]


def _encoder_only(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """What T5EncoderModel in convert_hf_to_gguf.py writes: the encoder's tensors and
    metadata only, under `t5encoder`."""
    for name in [n for n in tensors if n.startswith("dec.") or n == "output.weight"]:
        del tensors[name]
    for key in [k for k in meta if k.startswith("t5.")]:
        kind, value = meta.pop(key)
        if "decoder" not in key:
            meta["t5encoder." + key[3:]] = (kind, value)
    meta["arch"] = ("arch", "t5encoder")


def test_t5encoder_is_the_encoder_alone(built: Any, tmp_path: Path) -> None:
    """A `t5encoder` GGUF (T5's encoder without decoder or head, as image pipelines use
    it) loads as an encoder: its patterns equal transformers' T5EncoderModel on the same
    weights, `attend` and `params` work from the CLI, a target is refused in one line."""
    from transformers import T5Config, T5EncoderModel

    from attnscope.api import load

    folder, _ = built("t5_v11")
    path = write_t5_gguf(folder, tmp_path / "encoder.gguf", _encoder_only)
    m = load(str(path), device="cpu", dtype="float32")
    assert m.config.decoder is None and not m.config.lm_head and m.config.n_layers == 2
    raw = json.loads((folder / "config.json").read_text())
    config = T5Config.from_dict({k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = "eager"
    ref = T5EncoderModel(config).eval()
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, _ = ref.load_state_dict({k: v for k, v in state.items() if not k.startswith(("decoder.", "lm_head"))},
                                     strict=False)
    assert set(missing) <= {"encoder.embed_tokens.weight"}, missing
    src = hf_tokenizer(unigram_vocab()).encode(sm.SOURCE_TEXT).ids
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([src]), output_attentions=True)
    got = m.attention_ids(src).probs
    want = torch.stack([a[0] for a in out.attentions])
    assert got.shape == want.shape and (got - want).abs().max().item() < ATOL
    assert m.tokenizer.encode(sm.SOURCE_TEXT).ids == src
    result = run("attend", "the cat sat on the mat", "--model", path)
    assert result.exit_code == 0, (result.stdout[-2000:], result.stderr)
    params = run("params", "--model", path, "--json")
    assert params.exit_code == 0, params.stderr
    assert json.loads(params.stdout)["total"] == sum(t.numel() for k, t in state.items()
                                                     if k.startswith("encoder.") or k == "shared.weight")
    one_error(run("attend", "the cat", "--target", "a dog", "--model", path), 2, "not an encoder-decoder")
    # the same encoder as a T5EncoderModel folder (config.json's architectures say so)
    import shutil

    from safetensors.torch import save_file

    enc = tmp_path / "encoder_folder"
    enc.mkdir()
    shutil.copy(folder / "tokenizer.json", enc / "tokenizer.json")
    save_file({k: v for k, v in state.items() if k.startswith("encoder.") or k == "shared.weight"},
              str(enc / "model.safetensors"))
    (enc / "config.json").write_text(json.dumps({**raw, "architectures": ["T5EncoderModel"]}))
    st = load(str(enc), device="cpu", dtype="float32")
    assert replace(m.config, name=st.config.name, norm_eps=st.config.norm_eps) == st.config
    ours, theirs = m.model.state_dict(), st.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_models_listing_says_a_t5_gguf_is_supported(built: Any) -> None:
    from attnscope.models import gguf_entry

    from safetensors.torch import load_file

    folder, gguf_file = built("t5")
    entry = gguf_entry(gguf_file, "tiny", "package")
    assert entry.supported and entry.reason is None and entry.family == "t5", entry
    assert entry.parameters == sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())


def _drop(key: str) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda meta, tensors: meta.pop(key)


def _set(key: str, kind: str, value: Any) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda meta, tensors: meta.__setitem__(key, (kind, value))


def _no_tensor(name: str) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda meta, tensors: tensors.pop(name)


def _add_tensor(name: str, like: str) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda meta, tensors: tensors.__setitem__(name, tensors[like].clone())


HOSTILE = {
    "no key length": (_drop("t5.attention.key_length"), "t5.attention.key_length"),
    "no block count": (_drop("t5.block_count"), "t5.block_count"),
    "no buckets": (_drop("t5.attention.relative_buckets_count"), "relative_buckets_count"),
    "no rms eps": (_drop("t5.attention.layer_norm_rms_epsilon"), "layer_norm_rms_epsilon"),
    "absurd d_ff": (_set("t5.feed_forward_length", "u64", 10**12), "d_mlp"),
    "large d_ff": (_set("t5.feed_forward_length", "u32", 10**6), "lacks parameters"),
    "absurd width": (_set("t5.embedding_length", "u64", 10**9), "width"),
    "absurd decoder layers": (_set("t5.decoder_block_count", "u32", 10**6), "layers"),
    "absurd heads": (_set("t5.attention.head_count", "u32", 10**7), "heads"),
    "zero heads": (_set("t5.attention.head_count", "u32", 0), "num_heads"),
    "string eps": (_set("t5.attention.layer_norm_rms_epsilon", "str", "tiny"), "layer_norm_rms_epsilon"),
    "value length": (_set("t5.attention.value_length", "u32", 16), "value_length"),
    "start outside": (_set("t5.decoder_start_token_id", "u32", 10**6), "decoder_start_token_id"),
    "two buckets": (_set("t5.attention.relative_buckets_count", "u32", 2), "buckets"),
    "missing tensor": (_no_tensor("dec.blk.1.cross_attn_k.weight"), "decoder.blocks.1.cross.k.weight"),
    "missing table": (_no_tensor("enc.blk.0.attn_rel_b.weight"), "relative.weight"),
    "umt5 tables": (_add_tensor("enc.blk.1.attn_rel_b.weight", "enc.blk.0.attn_rel_b.weight"), "umt5"),
    "decoder layer past": (_add_tensor("dec.blk.3.attn_q.weight", "dec.blk.0.attn_q.weight"), "layers"),
    "gate in one stack": (_no_tensor("dec.blk.0.ffn_gate.weight"), "gated"),
    "no tokenizer scores": (_drop("tokenizer.ggml.scores"), "scores"),
    "unknown id outside": (_set("tokenizer.ggml.unknown_token_id", "u32", 10**6), "unknown_token_id"),
    "charsmap not bytes": (_set("tokenizer.ggml.precompiled_charsmap", "arr", [1, 2, 300]), "charsmap"),
    "charsmap garbage": (_set("tokenizer.ggml.precompiled_charsmap", "arr", b"\x05\x00\x00\x00garbage"), "tokenizer"),
    # a trie whose root points outside it: tokenizers' Precompiled panics on the first text
    "charsmap damaged": (_set("tokenizer.ggml.precompiled_charsmap", "arr", CHARSMAP[:5] + b"\xff" + CHARSMAP[6:]),
                         "tokenizer cannot be built"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_t5_metadata_is_one_line(case: str, built: Any, tmp_path: Path) -> None:
    edit, needle = HOSTILE[case]
    folder, _ = built("t5_v11")
    bad = write_t5_gguf(folder, tmp_path / "bad.gguf", edit)
    result = run("attend", "the cat", "--target", "a dog", "--model", bad)
    one_error(result, result.exit_code or 1, needle)
    assert result.exit_code != 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(CHARSMAP) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.text(max_size=40))
def test_damaged_charsmap_loads_or_is_one_error(damage: list[tuple[int, int]], text: str) -> None:
    """A charsmap with bytes changed anywhere: the tokenizer builds and encodes (the
    precompiled charsmap tried on a probe text when built), or it is one TokenizerError;
    never a Rust panic or another exception."""
    from types import SimpleNamespace

    from attnscope.errors import TokenizerError
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer
    from attnscope.tokenize import tokenize

    blob = bytearray(CHARSMAP)
    for at, value in damage:
        blob[at] = value
    vocab = unigram_vocab()
    meta = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": [p for p, _ in vocab],
            "tokenizer.ggml.scores": [v for _, v in vocab],
            "tokenizer.ggml.token_type": [CONTROL, CONTROL, UNKNOWN] + [NORMAL] * (len(vocab) - 3),
            "tokenizer.ggml.precompiled_charsmap": list(blob)}
    try:
        tok = gguf_tokenizer(SimpleNamespace(metadata=meta, path=Path("x.gguf"), arch="t5"))
        tokenize(tok, "the cat sat " + text, 4096)
    except TokenizerError as exc:
        assert "\n" not in str(exc)


SIZE_KEYS = ["t5.context_length", "t5.embedding_length", "t5.feed_forward_length", "t5.block_count",
             "t5.decoder_block_count", "t5.attention.head_count", "t5.attention.key_length",
             "t5.attention.value_length", "t5.attention.relative_buckets_count", "t5.decoder_start_token_id",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SIZE_KEYS), st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16])))
def test_any_size_in_the_metadata_loads_or_is_one_error(built: Any, tmp_path_factory: pytest.TempPathFactory,
                                                         key: str, value: int) -> None:
    """Any u32 in any size or id the T5 metadata holds: the file loads and runs (the value
    was harmless), or one AttnscopeError, before anything the size would allocate."""
    from attnscope.api import load
    from attnscope.errors import AttnscopeError

    folder, _ = built("t5_v11")
    path = write_t5_gguf(folder, tmp_path_factory.mktemp("fuzz") / "f.gguf", _set(key, "u32", value))
    try:
        m = load(str(path), device="cpu", dtype="float32")
        m.seq2seq("the cat sat", "a dog")
    except AttnscopeError as exc:
        assert "\n" not in str(exc), str(exc)
