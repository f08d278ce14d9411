"""tokenizer.json -> token ids, readable labels and offsets, with the `tokenizers` library.

Special tokens are added as the tokenizer's post-processor says; padding and truncation
stored in tokenizer.json are switched off (all-MiniLM-L6-v2's would pad to and cut at
128), so a long text is an error that names the model's limit, or is cut only when the
caller asks. Labels come from offsets into the text, after the tokenizers docs: a
byte-level BPE token's leading space (GPT-2's 'Ġ') shows as '␣', a WordPiece
continuation keeps its '##'.

A tokenizer.json is code as well as data: `attnscope.tokenizer_checks` judges the file
before it is built (`check_spec`) and runs one with regexes of its own in a bounded child
(`BoundedTokenizer`); its names are re-exported here. A Rust panic anywhere is caught by
name and reported in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnscope.errors import AttnscopeError, InputError, TokenizerError
from attnscope.tokenizer_checks import (  # noqa: F401 (re-exported: tests and callers import them from here)
    MAX_GROWTH,
    MAX_NORMALIZED,
    MAX_WORD_CHARS,
    BoundedTokenizer,
    check_spec,
    growth,
)
from attnscope.units import plural

SPACE = "␣"
_SPACE_MARKS = ("Ġ", "▁")
_INVISIBLE = {"\n": "↵", "\r": "↵", "\t": "⇥"}


# Bidirectional formatting characters: an override or isolate reorders the rest of the
# line on screen (U+202E shows "txt.exe" as "exe.txt"), marks are invisible. Lone
# surrogates cannot be printed at all. Each is shown as \\uNNNN, as controls are as \\xNN.
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def visible(text: str, keep: str = "") -> str:
    """Text from a user or a file, safe to print: line breaks and tabs as ↵ and ⇥ (unless
    in `keep`), every other control character (C0, DEL, C1: ESC starts terminal escapes)
    as \\xNN, bidirectional overrides, isolates and marks and lone surrogates as \\uNNNN."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in keep:
            out.append(ch)
        elif ch in _INVISIBLE:
            out.append(_INVISIBLE[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in _BIDI or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Tokens:
    """A tokenized text: ids with a readable label and a character span each."""

    text: str
    ids: list[int]
    labels: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    truncated_from: int | None = None  # the full length, when --truncate cut the text
    strings: list[str] = field(default_factory=list)  # the tokenizer's own token strings

    def __len__(self) -> int:
        return len(self.ids)


def _builds(text: str) -> None:
    """Build a tokenizer and drop it: run in a bounded child before building in-process."""
    from tokenizers import Tokenizer

    Tokenizer.from_str(text)


def _failure(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def load_tokenizer(path: Path | None, where: str = "") -> Any:
    """A tokenizer from tokenizer.json, with padding and truncation off: a
    `tokenizers.Tokenizer`, or a `BoundedTokenizer` where the file carries code of its own
    (see `check_spec`). A file that cannot be built is one TokenizerError naming it."""
    from tokenizers import Tokenizer

    from attnscope import bounded
    from attnscope.safe_io import loads_json, read_regular

    if path is None or not Path(path).is_file():
        raise TokenizerError(
            f"no tokenizer.json {'in ' + where if where else 'found'}",
            hint="put the model's tokenizer.json beside config.json",
        )
    # A regular file of bounded size, read once: never a FIFO, never swapped after a check.
    data = read_regular(Path(path), "tokenizer.json", error=TokenizerError)
    text = data.decode("utf-8", errors="replace")
    norm, trusted = check_spec(loads_json(text, str(path), TokenizerError), str(path))
    try:
        if not trusted and bounded.CAN_FORK:  # its regexes compile within the budget first
            bounded.run(_builds, text)
        with bounded.quiet_stderr():  # a panic's message and backtrace: we say it in one line
            tok = Tokenizer.from_str(text)
    except bounded.Exceeded as exc:
        raise TokenizerError(f"{path}: building the tokenizer {exc}") from None
    except BaseException as exc:  # tokenizers raises plain Exception, or a Rust panic
        if not bounded.is_failure(exc):
            raise
        raise TokenizerError(f"{path} is not a valid tokenizer.json: {_failure(exc)}") from None
    tok.no_padding()
    tok.no_truncation()
    tok.attnscope_growth = norm  # Tokenizer objects carry a __dict__
    return tok if trusted else BoundedTokenizer(tok, str(path))


def _label(text: str, start: int, end: int, token: str, special: bool) -> str:
    if special or end <= start:
        return visible(token)
    piece = text[start:end]
    continuation = token.startswith("##")
    # A space-marked token shows its space only where the text has one: SentencePiece
    # marks the first word too, and some tokenizers leave the space out of the offsets.
    spaced = piece[:1].isspace() or (token.startswith(_SPACE_MARKS) and start > 0 and text[start - 1].isspace())
    core = piece.strip() or piece
    core = visible(core)
    if core.isspace():
        core = SPACE
    if continuation:
        return "##" + core
    return (SPACE if spaced and core != SPACE else "") + core


def byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (`bytes_to_unicode`), which
    byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTES = {ch: b for b, ch in byte_chars().items()}  # character -> byte


def token_label(tokenizer: Any, token_id: int) -> str:
    """A readable label for one token id outside any text (a generated token): its
    decoded text with a leading space as ␣ and line breaks and tabs made visible, the
    token string itself for a special token, and a piece of a multi-byte character as
    its bytes (<e2 80>) rather than a replacement character."""
    piece = tokenizer.decode([token_id], skip_special_tokens=False)
    raw = tokenizer.id_to_token(token_id) or ""
    if not piece:
        return raw or f"<{token_id}>"
    if "\ufffd" in piece and raw and all(ch in _BYTES for ch in raw):
        data = bytes(_BYTES[ch] for ch in raw)
        return "<" + " ".join(f"{b:02x}" for b in data) + ">"
    core = visible(piece.lstrip(" "))
    return (SPACE if piece.startswith(" ") else "") + (core or "")


def encode(tokenizer: Any, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> Any:
    """`tokenizer.encode(text)` (truncated to `max_length` tokens if given), with whatever
    the tokenizer's own code does wrong as one TokenizerError: a missing unknown token, a
    Rust panic (a regex past Onig's retry limit), or, for a `BoundedTokenizer`, its child
    over time or memory."""
    from attnscope import bounded

    try:
        if max_length is not None:
            tokenizer.enable_truncation(max_length=max_length)
        try:
            if isinstance(tokenizer, BoundedTokenizer):
                return tokenizer.encode(text, add_special_tokens=add_special_tokens)
            with bounded.quiet_stderr():  # a panic prints its backtrace before it is raised
                return tokenizer.encode(text, add_special_tokens=add_special_tokens)
        finally:
            if max_length is not None:
                tokenizer.no_truncation()
    except BaseException as exc:
        if not bounded.is_failure(exc) or isinstance(exc, AttnscopeError):
            raise
        raise TokenizerError(f"the tokenizer could not encode this text: {_failure(exc)}",
                             hint=f"{tokenizer._where} may be damaged" if isinstance(tokenizer, BoundedTokenizer)
                             else "is the model's tokenizer.json damaged?") from None


def tokenize(tokenizer: Any, text: str, n_ctx: int, truncate: bool = False, add_special_tokens: bool = True) -> Tokens:
    """Encode `text`; longer than `n_ctx` tokens is an error unless `truncate`.
    `add_special_tokens=False` for a text that already carries them (a rendered chat)."""
    if not text or not text.strip():
        raise InputError("the text is empty", hint='give some text, e.g. attnscope attend "a fluffy blue creature"')
    factor, extra = getattr(tokenizer, "attnscope_growth", (1.0, 0.0))
    if len(text) * factor + extra > MAX_NORMALIZED:
        raise InputError(f"the text of {len(text):,} characters is too long to tokenize"
                         + (f" (this tokenizer's normalizer may lengthen it {factor:g}-fold)" if factor > 1 else ""),
                         hint=f"give at most {int((MAX_NORMALIZED - extra) // factor):,} characters")
    enc = encode(tokenizer, text, add_special_tokens)
    ids = list(enc.ids)
    n = len(ids)
    if n == 0:
        raise InputError("the text produced no tokens")
    truncated_from = None
    if n > n_ctx:
        if not truncate:
            raise InputError(
                f"the text is {plural(n, 'token')}, longer than the model's {n_ctx} positions",
                hint="shorten it or pass --truncate to keep the first tokens",
            )
        truncated_from = n
        # tokenizers' own truncation keeps room for the specials its post-processor adds
        # ([CLS] … [SEP], <s>), as transformers' truncation=True does.
        enc = encode(tokenizer, text, add_special_tokens, max_length=n_ctx)
        ids = list(enc.ids)
    offsets = [tuple(o) for o in enc.offsets]
    specials = special_flags(tokenizer, text, ids, offsets, enc.special_tokens_mask)
    strings = list(enc.tokens)
    unk = getattr(getattr(tokenizer, "model", None), "unk_token", None)
    labels = [
        t if (unk is not None and t == unk) else _label(text, s, e, t, sp)  # the model sees [UNK], not the text
        for (s, e), t, sp in zip(offsets, strings, specials)
    ]
    return Tokens(text, ids, labels, offsets, specials, truncated_from, strings)  # type: ignore[arg-type]


def special_flags(tokenizer: Any, text: str, ids: list[int], offsets: list[tuple[int, int]],
                  added: list[int]) -> list[bool]:
    """Which tokens are special: what the post-processor added (`added`, the encoding's
    special-tokens mask), and any of the tokenizer's own special tokens (`<s>`, `</s>`,
    `<pad>`, `[CLS]`, `[SEP]`, a GGUF's control tokens) that the text itself spells out,
    which the mask leaves unmarked. A property of the tokenizer's special tokens, not of
    their names; the unknown token standing for text it cannot spell (its span is not
    the token) stays a text token."""
    table = getattr(tokenizer, "get_added_tokens_decoder", None)
    special = {i: t.content for i, t in table().items() if t.special} if table is not None else {}
    return [bool(a) or (i in special and (e <= s or text[s:e].strip() == special[i].strip()))
            for i, (s, e), a in zip(ids, offsets, added)]


# Tried in order when the tokenizer names no padding token (GPT-2 and Llama pad with EOS).
PAD_NAMES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def pad_token(tokenizer: Any) -> tuple[int, str]:
    """The tokenizer's padding token (id, string): its own, else the first of PAD_NAMES."""
    padding = getattr(tokenizer, "padding", None)
    if padding and padding.get("pad_token") is not None and padding.get("pad_id") is not None:
        return int(padding["pad_id"]), str(padding["pad_token"])
    for name in PAD_NAMES:
        pid = tokenizer.token_to_id(name)
        if pid is not None:
            return int(pid), name
    raise TokenizerError("this tokenizer has no padding token to append",
                         hint="try another --kind (causal, sliding-window, bidirectional)")


def with_padding(tokens: Tokens, pad_id: int, pad_label: str, count: int) -> Tokens:
    """`tokens` followed by `count` padding tokens, as a batch would pad it."""
    end = len(tokens.text)
    return replace(
        tokens,
        ids=tokens.ids + [pad_id] * count,
        labels=tokens.labels + [pad_label] * count,
        offsets=tokens.offsets + [(end, end)] * count,
        special=tokens.special + [True] * count,
        strings=tokens.strings + [pad_label] * count,
    )
