"""The per-model GGUF tokenizer builders that stand apart from the byte-level and
SentencePiece BPE ones: the SentencePiece Unigram tokenizer of a `t5` vocabulary
(`_unigram`), BERT's WordPiece tokenizer of a `bert` one (`_wordpiece`) and its [CLS] and
[SEP] ends (`_bert_ends`), with the llama.cpp token types and the typed-list reader
(`_list`) they share with `sources.gguf_tokenizer`, which assembles them and re-exports
every name here.
"""

from __future__ import annotations

from typing import Any

from attnscope.errors import TokenizerError
from attnscope.tokenize import visible

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6  # llama.cpp's token types


def _list(meta: dict[str, Any], key: str, kind: type, n: int | None, where: str) -> list[Any] | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise TokenizerError(f"{where}: {key} must be a list of {kind.__name__}")
    if n is not None and len(value) != n:
        raise TokenizerError(f"{where}: {key} has {len(value)} entries for {n} tokens")
    return value



# every printable ASCII character, Latin-1's letters, a ligature, full-width and CJK ones
_PROBE = ("".join(map(chr, range(32, 127))) + "".join(map(chr, range(0xC0, 0x100)))
          + " ﬁ Ｔｅｓｔ ① e\u0301 中文 😀")


def _unigram(meta: dict[str, Any], tokens: list[str], types: list[int], where: str) -> Any:
    """A SentencePiece Unigram tokenizer from a `t5` vocabulary (T5Model in
    convert_hf_to_gguf.py: the pieces with their scores, the normalizer's precompiled
    charsmap and flags), run as SentencePiece and llama.cpp's UGM tokenizer run it: the
    charsmap, then (remove_extra_whitespaces) spaces stripped at both ends and runs of
    them collapsed, spaces escaped as '▁', a '▁' prefixed (add_space_prefix), and the best
    segmentation of the whole text by the scores (no splitting into words first), runs
    of characters no piece covers becoming one unknown token. The normalizer's growth
    (the charsmap's longest replacement) is checked as a tokenizer.json's is."""
    import base64

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers

    from attnscope.tokenizer_checks import check_spec

    scores = _list(meta, "tokenizer.ggml.scores", float, len(tokens), where)
    if scores is None:
        raise TokenizerError(f"{where}: a Unigram (t5) vocabulary without tokenizer.ggml.scores")
    charsmap = _list(meta, "tokenizer.ggml.precompiled_charsmap", int, None, where)
    if charsmap is not None and not all(0 <= b < 256 for b in charsmap):
        raise TokenizerError(f"{where}: tokenizer.ggml.precompiled_charsmap must be a list of bytes")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id", 2)  # llama.cpp's default for t5
    if isinstance(unk_id, bool) or not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens):
        raise TokenizerError(f"{where}: tokenizer.ggml.unknown_token_id {visible(repr(unk_id))[:40]} is not a token "
                             f"of its {len(tokens)}")
    steps: list[dict[str, Any]] = []
    if charsmap:
        steps.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(bytes(charsmap)).decode()})
    if meta.get("tokenizer.ggml.remove_extra_whitespaces", True) is not False:
        steps += [{"type": "Replace", "pattern": {"Regex": r"\A +| +\z"}, "content": ""},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    steps.append({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"})
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True) is not False
    if prefix:
        steps.append({"type": "Prepend", "prepend": "\u2581"})
    norm, _ = check_spec({"normalizer": {"type": "Sequence", "normalizers": steps}}, where)
    byte_fallback = BYTE in types
    tok = Tokenizer(models.Unigram(list(zip(tokens, scores)), unk_id=unk_id, byte_fallback=byte_fallback))
    built = []
    for step in steps:
        if step["type"] == "Precompiled":
            built.append(normalizers.Precompiled(bytes(charsmap or ())))
        elif step["type"] == "Prepend":
            built.append(normalizers.Prepend(step["prepend"]))
        else:
            pattern = step["pattern"]
            built.append(normalizers.Replace(Regex(pattern["Regex"]) if "Regex" in pattern else pattern["String"],
                                             step["content"]))
    tok.normalizer = normalizers.Sequence(built)
    if charsmap:  # a damaged charsmap panics on the texts that reach it: try one here, naming the file
        tok.encode(_PROBE)
    steps_back = [decoders.Replace("\u2581", " "), *([decoders.ByteFallback()] if byte_fallback else []), decoders.Fuse()]
    if prefix:
        steps_back.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps_back)
    tok.attnscope_growth = norm  # what tokenize.tokenize bounds a text's normalized length by
    return tok


def _wordpiece(meta: dict[str, Any], tokens: list[str], types: list[int], where: str) -> tuple[Any, list[str]]:
    """A WordPiece tokenizer from a `bert` vocabulary (see the module's docstring), and
    the pieces in WordPiece's spelling. The same static checks as a tokenizer.json's
    (`tokenizer_checks.check_spec`: the unknown token in the vocabulary, the normalizer's
    growth, words of at most 100 characters) run before it is built."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from attnscope.tokenizer_checks import check_spec

    kinds = types or [NORMAL] * len(tokens)
    # files from before llama.cpp's phantom-space form keep WordPiece's own spelling
    phantom = any(t.startswith("\u2581") for t, kind in zip(tokens, kinds) if kind != CONTROL)
    pieces = [t if kind == CONTROL or not phantom else t[1:] if t.startswith("\u2581") else "##" + t
              for t, kind in zip(tokens, kinds)]
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        if piece:
            vocab.setdefault(piece, i)  # a repeated piece keeps its first id
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = pieces[unk_id] if isinstance(unk_id, int) and not isinstance(unk_id, bool) and 0 <= unk_id < len(pieces) \
        else "[UNK]"  # BERT's, where the header names none
    # an uncased vocabulary (bert-base-uncased, all-MiniLM) holds no piece that lower-casing
    # changes (it keeps 'ℝ', a capital without a small form); a cased one holds thousands
    lowercase = not any(piece != piece.lower() for piece, kind in zip(pieces, kinds) if kind == NORMAL)
    spec = {"normalizer": {"type": "BertNormalizer", "lowercase": lowercase},
            "model": {"type": "WordPiece", "vocab": vocab, "unk_token": unk, "max_input_chars_per_word": 100}}
    norm, trusted = check_spec(spec, where)
    assert trusted  # internal invariant: BERT's own parts, words of 100 characters
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.attnscope_growth = norm  # what tokenize.tokenize bounds a text's normalized length by
    return tok, pieces


def _bert_ends(meta: dict[str, Any], pieces: list[str]) -> tuple[int | None, int | None]:
    """[CLS] and [SEP]: the header's BOS (else its CLS id, else llama.cpp's 101) unless
    add_bos_token is false; its EOS where add_eos_token says so, else its separator (else
    102) unless add_sep_token is false (llama.cpp adds the separator by default)."""
    def given(*keys: str, default: int) -> int:
        for key in keys:
            value = meta.get(f"tokenizer.ggml.{key}")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return default

    first = given("bos_token_id", "cls_token_id", default=101) \
        if meta.get("tokenizer.ggml.add_bos_token", True) is True else None
    if meta.get("tokenizer.ggml.add_eos_token") is True and "tokenizer.ggml.eos_token_id" in meta:
        last: int | None = given("eos_token_id", default=102)
    elif meta.get("tokenizer.ggml.add_sep_token", True) is True:
        last = given("seperator_token_id", "eos_token_id", default=102)
    else:
        last = None
    return first, last
