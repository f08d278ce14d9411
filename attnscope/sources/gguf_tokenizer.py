"""A plain `tokenizers.Tokenizer` from a GGUF's `tokenizer.ggml.*` metadata.

Follows transformers' GGUF tokenizer conversion (integrations/gguf/gguf_tokenizer_mapping.py),
the reference the tests compare against: `gpt2` vocabularies become byte-level BPE with the
file's merges; `llama` (SentencePiece) vocabularies become BPE with byte fallback and
merges rebuilt from the scores (transformers' `generate_merges`), or Gemma's variant
(spaces normalised to '▁', merges in file order). Control tokens (type 3) become special
tokens and user-defined ones (type 4) added tokens, so chat markup stays whole.

Where transformers leaves a choice open, llama.cpp's llama-vocab.cpp decides, as the
format's own reader: the split regexes per `tokenizer.ggml.pre` (a file without one gets
llama.cpp's "default" splits; an unknown one is refused, not guessed), `ignore_merges` and
a BOS for Llama 3's pre-tokenizer, BOS by default for SentencePiece vocabularies,
`add_space_prefix`, and an unknown token for SentencePiece pieces with no byte fallback.
`add_bos_token` / `add_eos_token` are honoured through a TemplateProcessing post-processor.

`gemma4` vocabularies, as Gemma4Model.set_vocab in llama.cpp's conversion/gemma.py writes them:
the pieces of Gemma 4's tokenizer.json as it spells them ('▁' for a space, `<0xNN>` byte
pieces, types from transformers' special tokens, the chat markers `<|channel>`, `<|"|>`, …
user-defined), its merges, scores of −1000, `add_space_prefix` false and `add_bos_token` true.
Built as transformers builds it (GGUF_TOKENIZER_TYPES["gemma4"]: GemmaTokenizer from these
pieces and merges): spaces become '▁', then byte-fallback BPE with the file's merges over the
whole text. Two places where llama.cpp (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_GEMMA4) differs
and transformers is followed: llama.cpp splits the text into runs of newlines and runs of
other characters before merging (the same ids unless a merge joins a newline to another
character), and it adds BOS as the header asks, where transformers adds none because Gemma
4's reference tokenizer adds none (its chat template writes `<bos>`; llama.cpp#21500).

`qwen35` (Qwen3.5's pre-tokenizer, tokenizer.ggml.pre) splits as llama.cpp's
LLAMA_VOCAB_PRE_TYPE_QWEN35 and transformers' Qwen3.5 regex do: Qwen2's, with combining marks
(Unicode category M) continuing a word. Like Qwen2's, it is run without the NFC normalizer Qwen's
tokenizer.json carries, as llama.cpp and transformers' GGUF tokenizer run it.

`bert` (WordPiece) vocabularies, as BertModel in convert_hf_to_gguf.py stores them: every
piece but the control tokens in llama.cpp's "phantom space" form (a word-initial piece
written `▁piece`, a continuation `##piece` written bare), turned back into WordPiece's
`##` pieces, with BERT's normalizer and pre-tokenizer (lower-casing and accent stripping
when the vocabulary holds no upper-case piece, as in every uncased BERT) and `[CLS] text
[SEP]` from the header's ids (llama.cpp's defaults 101 and 102 where it names none).

`t5` (SentencePiece Unigram) vocabularies, as T5Model in convert_hf_to_gguf.py stores them:
the pieces with their scores (a Unigram model, its ids the file's), the SentencePiece
normalizer rebuilt from `precompiled_charsmap`, `remove_extra_whitespaces` and
`add_space_prefix`, then the best segmentation of the whole text, as SentencePiece and
llama.cpp's UGM tokenizer segment it; `</s>` appended (llama.cpp's default for t5, and T5's
own `$A </s>`), `<unk>` and the control tokens kept whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnscope.errors import TokenizerError
from attnscope.sources.gguf_tokenizer_models import (  # noqa: F401 (re-exported)
    _PROBE, BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, _bert_ends, _list, _unigram, _wordpiece,
)
from attnscope.tokenize import byte_chars, visible

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from attnscope.sources.gguf import GGUFFile

MODELS = ("gpt2", "llama", "gemma4", "bert", "t5")  # the tokenizer.ggml.model values built here

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in turn (llm_tokenizer_bpe)
_SPLITS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"],
    **{name: [_LLAMA3] for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                    "midm-2.0", "lfm2", "dbrx", "smaug-bpe")},
    **{name: [r"\p{N}", _GPT2] for name in ("starcoder", "refact", "command-r", "smollm", "codeshell",
                                           "exaone", "minerva-7b")},
    **{name: [_GPT2] for name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                                  "a.x-4.0", "mellum", "mpt", "olmo", "jais", "trillion", "granite-docling",
                                  "exaone4", "modern-bert", "roberta-bpe", "jina-v1-en", "jina-v2-code")},
    **{name: [_QWEN2] for name in ("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez", "hunyuan")},
    "qwen35": [_QWEN35],
    "tekken": [_TEKKEN],
    **{name: [_GPT4O] for name in ("gpt-4o", "llama4")},
}
# pre-tokenizers for which llama.cpp matches whole words before merging and adds a BOS
_LLAMA3_LIKE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "tekken")
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two
    known pieces, best score first (transformers' `generate_merges`, which llama.cpp's
    score-driven SentencePiece merging amounts to)."""
    merges: list[tuple[str, str, float]] = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep vocabulary order
    return [(left, right) for left, right, _ in merges]


def _file_merges(meta: dict[str, Any], where: str) -> list[tuple[str, str]] | None:
    merges = _list(meta, "tokenizer.ggml.merges", str, None, where)
    if merges is None:
        return None
    pairs = [tuple(m.split(" ")) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise TokenizerError(f"{where}: tokenizer.ggml.merges holds an entry that is not two tokens")
    return pairs  # type: ignore[return-value]


def _check_merges(merges: list[tuple[str, str]], vocab: dict[str, int], where: str) -> None:
    """Each merge joins two tokens of the vocabulary into a third (tokenizers' BPE builder
    panics, or errs, on any other)."""
    for left, right in merges:
        for token in (left, right, left + right):
            if token not in vocab:
                raise TokenizerError(f"{where}: tokenizer.ggml.merges names {visible(token)!r} "
                                     f"(in the merge {visible(left + ' ' + right)!r}), which is not in the vocabulary",
                                     hint="the file's vocabulary and merges do not belong together")


def _byte_level(meta: dict[str, Any], tokens: list[str], pre: str, where: str) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    spelling = byte_chars()
    alphabet = set(spelling.values())
    # a token outside the byte alphabet (some converters store added tokens as text) is
    # spelled out from its UTF-8 bytes, as transformers does
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)}
    merges = _file_merges(meta, where)
    if merges is None:
        raise TokenizerError(f"{where}: a byte-level BPE vocabulary without tokenizer.ggml.merges")
    _check_merges(merges, vocab, where)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False, byte_fallback=False,
                               ignore_merges=pre in _LLAMA3_LIKE))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _SPLITS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, alphabet


def _sentencepiece(meta: dict[str, Any], tokens: list[str], arch: str, where: str, model: str = "llama") -> Any:
    """SentencePiece-style BPE with byte fallback: a `llama` vocabulary (Gemma's variant for
    the gemma archs), or a `gemma4` one (Gemma's pieces as its tokenizer.json spells them,
    with the file's merges; see the module's docstring)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    gemma = arch in _GEMMA_ARCHS or model == "gemma4"
    if gemma and model != "gemma4":  # Gemma's SentencePiece stores runs of spaces as spaces, its pieces '▁'
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _file_merges(meta, where)
    if merges is None and model == "gemma4":  # Gemma4Model.set_vocab always writes them; scores say nothing
        raise TokenizerError(f"{where}: a gemma4 vocabulary without tokenizer.ggml.merges",
                             hint="convert the model again with llama.cpp")
    if merges is None:
        scores = _list(meta, "tokenizer.ggml.scores", float, len(tokens), where)
        if gemma:  # Gemma's scores do not follow its merge order; its file order does
            by = {t: -float(i) for i, t in enumerate(tokens)}
        elif scores is None:
            raise TokenizerError(f"{where}: a SentencePiece vocabulary without tokenizer.ggml.scores or merges")
        else:
            by = dict(zip(tokens, scores))
        merges = merges_from_scores(vocab, by)
    else:
        _check_merges(merges, vocab, where)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=True, byte_fallback=True, unk_token=unk))
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    else:
        prefix = meta.get("tokenizer.ggml.add_space_prefix", True) is not False
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                     split=False)
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok, None


def gguf_tokenizer(f: GGUFFile) -> Tokenizer:
    """The tokenizer a GGUF describes (`f` from `sources.gguf.read_gguf`), with padding and
    truncation off, as `attnscope.tokenize.load_tokenizer` returns one. Its regexes and
    normalizer are this module's own, so it runs in-process; what the file supplies (the
    vocabulary, merges, scores) is checked here, and a build that still fails is one
    TokenizerError naming the file."""
    from attnscope.bounded import is_failure, quiet_stderr

    meta, where = f.metadata, str(f.path)
    model = meta.get("tokenizer.ggml.model")
    tokens = _list(meta, "tokenizer.ggml.tokens", str, None, where)
    if model is None or not tokens:
        raise TokenizerError(f"{where} carries no tokenizer (tokenizer.ggml.model and tokens)",
                             hint="use a GGUF converted with its vocabulary")
    types = _list(meta, "tokenizer.ggml.token_type", int, len(tokens), where) or []
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model == "gpt2":
        if not isinstance(pre, str) or pre not in _SPLITS:
            raise TokenizerError(f"{where}: unknown pre-tokenizer {visible(repr(pre))[:100]}",
                                 hint=f"supported: {', '.join(sorted(_SPLITS))}")
        add_bos_default = pre in _LLAMA3_LIKE
    elif model in ("llama", "bert"):
        add_bos_default = True
    elif model == "gemma4":  # transformers adds no BOS, whatever the header says (see the module's docstring)
        meta, add_bos_default = {**meta, "tokenizer.ggml.add_bos_token": False}, False
    elif model == "t5":  # llama.cpp's UGM defaults: no BOS, an EOS after the text (T5's </s>)
        add_bos_default = False
    else:
        raise TokenizerError(f"{where}: tokenizer model {visible(repr(model))[:100]} is not supported",
                             hint=f"supported: {', '.join(MODELS)}")
    try:
        with quiet_stderr():  # a Rust panic prints its backtrace before it is raised
            if model == "bert":
                tok, tokens = _wordpiece(meta, tokens, types, where)
                return _finish(tok, None, meta, tokens, types, add_bos_default, ends=_bert_ends(meta, tokens))
            if model == "t5":
                # llama.cpp's defaults for t5: </s> is 1, the unknown piece (kept whole, as T5's own
                # tokenizer keeps <unk>) 2
                ids = {"tokenizer.ggml.eos_token_id": 1, **meta}
                return _finish(_unigram(meta, tokens, types, where), None, ids, tokens, types, False,
                               add_eos_default=True, special=(CONTROL, UNKNOWN))
            tok, alphabet = (_byte_level(meta, tokens, pre, where) if model == "gpt2"
                             else _sentencepiece(meta, tokens, f.arch, where, model))
            return _finish(tok, alphabet, meta, tokens, types, add_bos_default)
    except BaseException as exc:
        if isinstance(exc, TokenizerError) or not is_failure(exc):
            raise
        raise TokenizerError(f"{where}: its tokenizer cannot be built: {(str(exc).splitlines() or [''])[0][:200]}",
                             hint="the file's tokenizer metadata is damaged") from None


def _finish(tok: Any, alphabet: set[str] | None, meta: dict[str, Any], tokens: list[str], types: list[int],
            add_bos_default: bool, ends: tuple[int | None, int | None] | None = None,
            add_eos_default: bool = False, special: tuple[int, ...] = (CONTROL,)) -> Tokenizer:
    """Special and added tokens, and the post-processor that adds BOS/EOS (`ends`: the
    first and last ids to add, where the vocabulary decides them otherwise: BERT's;
    `special`: the token types kept whole as special tokens)."""
    from tokenizers import AddedToken, processors

    # control tokens outside a byte-level alphabet are llama.cpp mislabels; transformers skips them
    control = [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, types)
               if kind in special and (alphabet is None or set(t) <= alphabet)]
    tok.add_special_tokens(control)
    vocab = tok.get_vocab()
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, kind in zip(tokens, types)
                    if kind == USER_DEFINED and t in vocab])
    # a list of pieces, not one string, so that a token with a space stays one piece
    single: list[str] = ["$A:0"]
    specials: list[tuple[str, int]] = []
    for i, (key, default) in enumerate((("bos", add_bos_default), ("eos", add_eos_default))):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id") if ends is None else ends[i]
        if (ends is not None or meta.get(f"tokenizer.ggml.add_{key}_token", default) is True) \
                and isinstance(token_id, int) and 0 <= token_id < len(tokens):
            piece = f"{tokens[token_id]}:0"
            single = [piece, *single] if key == "bos" else [*single, piece]
            if (tokens[token_id], token_id) not in specials:
                specials.append((tokens[token_id], token_id))
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    tok.no_padding()
    tok.no_truncation()
    return tok
