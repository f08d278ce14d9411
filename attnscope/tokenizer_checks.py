"""Checks for a tokenizer.json that may be hostile, and the bounded tokenizer that runs one.

A tokenizer.json is code as well as data: its regexes, normalizers and model run on
every text. `check_spec` refuses, before building, what can be judged from the file
(a normalizer or decoder that grows text absurdly, an unknown token missing from a
WordLevel or WordPiece vocabulary) and says whether the file may run in-process; a file
whose regexes are not the well-known ones encodes in one forked child for the run
(`BoundedTokenizer`, after `attnscope.bounded`). `growth` bounds how long a normalizer
can make a text, which `tokenize.tokenize` checks against `MAX_NORMALIZED` before
encoding. `attnscope.tokenize` loads tokenizers through these and re-exports them.
"""

from __future__ import annotations

from typing import Any, Iterator

from attnscope.errors import TokenizerError


# Regexes that attnscope's own GGUF tokenizers split with, and that real tokenizer.json
# files carry (GPT-2, Llama 3, Qwen 2, Mistral's Tekken, GPT-4o's): tokenizers holding only
# these run in-process; any other regex is untrusted code, run in a bounded child.
def _known_regexes() -> frozenset[str]:
    from attnscope.sources.gguf_tokenizer import _SPLITS

    return frozenset(r for splits in _SPLITS.values() for r in splits)


MAX_GROWTH = 1000  # a normalizer or decoder may lengthen text at most this many times
MAX_NORMALIZED = 2 * 1024 * 1024  # characters a text may become: ~200 bytes each (= corpus MAX_WINDOW)
MAX_WORD_CHARS = 1000  # WordPiece's max_input_chars_per_word: real ones say 100 or 200
# Longest expansion of one character: NFKD/NFKC (U+FDFA: 18), NFD/NFC, case folding,
# BERT's spaces around CJK characters with its lower-casing and accent stripping.
_GROWTH = {"NFKC": 18, "NFKD": 18, "NFC": 4, "NFD": 4, "Lowercase": 3, "BertNormalizer": 12, "ByteLevel": 4}


def _precompiled_growth(node: dict[str, Any]) -> int:
    """The longest replacement in a SentencePiece charsmap: a u32 trie size, the trie,
    then the replacements, NUL-separated."""
    import base64
    import binascii

    try:
        blob = base64.b64decode(node.get("precompiled_charsmap") or b"", validate=False)
    except (binascii.Error, TypeError, ValueError):
        return 1
    if len(blob) < 4:
        return 1
    size = int.from_bytes(blob[:4], "little")
    return max([1, *(len(piece) for piece in blob[4 + size:].split(b"\0"))])


def growth(node: Any) -> tuple[float, float]:
    """(factor, extra): a normalizer or decoder (tokenizer.json's JSON) turns n characters
    into at most factor * n + extra, by the worst case of each step."""
    if not isinstance(node, dict):
        return 1.0, 0.0
    kind = node.get("type")
    if kind == "Sequence":
        factor, extra = 1.0, 0.0
        for step in node.get("normalizers") or node.get("decoders") or node.get("pretokenizers") or []:
            f, e = growth(step)
            factor, extra = f * factor, f * extra + e
        return factor, extra
    if kind == "Replace":
        content = node.get("content")
        n = len(content) if isinstance(content, str) else 1
        pattern = node.get("pattern") if isinstance(node.get("pattern"), dict) else {}
        literal = pattern.get("String")
        if isinstance(literal, str) and literal:  # each match eats len(literal) characters
            return max(1.0, n / len(literal)), 0.0
        return float(n + 1), float(n)  # a regex may match the empty string between characters
    if kind == "Prepend":
        prepend = node.get("prepend")
        return 1.0, float(len(prepend) if isinstance(prepend, str) else 0)
    if kind == "Precompiled":
        return float(_precompiled_growth(node)), 0.0
    return float(_GROWTH.get(kind, 1) if isinstance(kind, str) else 1), 0.0


def _regexes(node: Any) -> Iterator[str]:
    """Every regex pattern a tokenizer.json names, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Regex" and isinstance(value, str):
                yield value
            else:
                yield from _regexes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _regexes(value)


def check_spec(spec: Any, where: str) -> tuple[tuple[float, float], bool]:
    """Static checks of a parsed tokenizer.json before it is built, so that the common
    hostile file fails fast in one line: a normalizer or decoder that can lengthen text
    absurdly, a WordLevel or WordPiece model whose unknown token is not in its
    vocabulary. Returns the normalizer's growth and whether the tokenizer is trusted to
    run in-process (no regex beyond the known ones, WordPiece words of a sane length)."""
    if not isinstance(spec, dict):
        raise TokenizerError(f"{where} must hold a JSON object, not {type(spec).__name__}")
    norm = growth(spec.get("normalizer"))
    for part, (factor, extra) in (("normalizer", norm), ("decoder", growth(spec.get("decoder")))):
        if factor > MAX_GROWTH or extra > MAX_NORMALIZED:
            raise TokenizerError(f"{where}: its {part} can lengthen a text {factor:.3g}-fold, past the "
                                 f"{MAX_GROWTH}-fold any real tokenizer needs", hint="is this file damaged?")
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    kind = model.get("type")
    trusted = True
    if kind in ("WordLevel", "WordPiece"):
        vocab = model.get("vocab")
        unk = model.get("unk_token", "<unk>" if kind == "WordLevel" else "[UNK]")
        if isinstance(vocab, dict) and isinstance(unk, str) and unk not in vocab:
            from attnscope.tokenize import visible  # that module imports this one at its top

            raise TokenizerError(f"{where}: its {kind} model's unknown token {visible(unk)!r} is not in its vocabulary",
                                 hint="add the token to the vocabulary, or use the model's own tokenizer.json")
        words = model.get("max_input_chars_per_word", 100)
        trusted = not (kind == "WordPiece" and (not isinstance(words, int) or words > MAX_WORD_CHARS))
    known = _known_regexes()
    return norm, trusted and all(r in known for r in _regexes(spec))


class _Encoding:
    """What `Tokenizer.encode` returns, as far as attnscope reads it, sent back by a child."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]], tokens: list[str], special: list[int]) -> None:
        self.ids, self.offsets, self.tokens, self.special_tokens_mask = ids, offsets, tokens, special


def _serve(tok: Any, request: tuple[Any, ...]) -> Any:
    """In the bounded child: one encode or decode with the child's copy of the tokenizer."""
    if request[0] == "encode":
        _, text, add_special_tokens, max_length = request
        if max_length is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length=max_length)
        enc = tok.encode(text, add_special_tokens=add_special_tokens)
        return list(enc.ids), [tuple(o) for o in enc.offsets], list(enc.tokens), list(enc.special_tokens_mask)
    _, ids, skip_special_tokens = request
    return tok.decode(ids, skip_special_tokens=skip_special_tokens)


class BoundedTokenizer:
    """A tokenizer whose file carries code attnscope does not know (a regex of its own, an
    unbounded WordPiece): encoding and decoding run in one forked child for the whole
    run (`bounded.Child`), each within the time and memory budget; vocabulary look-ups,
    which run no such code, stay in-process. Otherwise it answers as the
    `tokenizers.Tokenizer` it wraps."""

    def __init__(self, tokenizer: Any, where: str) -> None:
        self._tok, self._where = tokenizer, where
        self._max_length: int | None = None
        self._child: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def _ask(self, request: tuple[Any, ...]) -> Any:
        from attnscope import bounded

        if not bounded.CAN_FORK:
            with bounded.quiet_stderr():
                return _serve(self._tok, request)
        if self._child is None:
            tok = self._tok
            self._child = bounded.Child(lambda req: _serve(tok, req))
        return self._child.ask(request)

    def encode(self, text: str, add_special_tokens: bool = True) -> _Encoding:
        return _Encoding(*self._ask(("encode", text, add_special_tokens, self._max_length)))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._ask(("decode", list(ids), skip_special_tokens)))

    def enable_truncation(self, max_length: int, **_: Any) -> None:
        self._max_length = max_length

    def no_truncation(self) -> None:
        self._max_length = None
