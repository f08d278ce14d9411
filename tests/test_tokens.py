"""Token display labels and the text-length rules, on the tiny checkpoints.

Labels come from offsets into the text (tokenizers' `Encoding.offsets`): a byte-level or
Metaspace token's leading space shows as '␣' (never GPT-2's 'Ġ' or SentencePiece's '▁'),
a WordPiece continuation keeps its '##', special tokens show as themselves. A text longer
than the model's positions is an InputError naming the limit unless the caller asks to
truncate; an empty or blank text is an InputError.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models as tm

SPACE = "␣"
BYTE_LEVEL = ["gpt2", "llama", "qwen2"]
SPACED = BYTE_LEVEL + ["mistral"]  # every tokenizer that carries the space in the token
ALL_TOKENIZERS = ["gpt2", "bert", "llama", "mistral", "qwen2"]
BOS = {"llama": "<|begin_of_text|>", "mistral": "<s>"}


def strings(raw: Any, text: str) -> list[str]:
    return raw.encode(text).tokens


# ----------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", SPACED)
def test_leading_space_shows_as_open_box(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    text = tm.SHORT_TEXT  # "The fluffy creature sat on the mat."
    toks = inspector(name).tokenize(text)
    raw = strings(raw_tokenizer(name), text)
    i = raw.index("Ġfluffy" if name in BYTE_LEVEL else "▁fluffy")
    assert toks.labels[i] == "␣fluffy"
    assert toks.labels[i + 1] == "␣creature"
    assert not [label for label in toks.labels if "Ġ" in label or "▁" in label], toks.labels


def test_gpt2_labels(inspector: Callable) -> None:
    toks = inspector("gpt2").tokenize(tm.SHORT_TEXT)
    assert toks.labels == ["The", "␣fluffy", "␣creature", "␣sat", "␣on", "␣the", "␣mat", "."]
    assert toks.special == [False] * 8


def test_bert_labels(inspector: Callable, raw_tokenizer: Callable) -> None:
    text = tm.SHORT_TEXT
    toks = inspector("bert").tokenize(text)
    assert strings(raw_tokenizer("bert"), text)[3:5] == ["creat", "##ure"]
    assert toks.labels[0] == "[CLS]" and toks.labels[-1] == "[SEP]"
    assert toks.labels[3:5] == ["creat", "##ure"]
    assert toks.special == [True] + [False] * (len(toks.ids) - 2) + [True]


def test_bert_labels_come_from_the_text(inspector: Callable) -> None:
    """The normaliser lowercases the tokens; the labels show the text as written."""
    toks = inspector("bert").tokenize("The FLUFFY Creature")
    assert toks.labels == ["[CLS]", "The", "FLUFFY", "Creat", "##ure", "[SEP]"]


@pytest.mark.parametrize("name", sorted(BOS))
def test_bos_shows_as_itself(name: str, inspector: Callable) -> None:
    toks = inspector(name).tokenize(tm.SHORT_TEXT)
    assert toks.labels[0] == BOS[name]
    assert toks.special == [True] + [False] * (len(toks.ids) - 1)
    assert toks.labels[1] == "The"


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_offsets_are_the_tokenizers(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    text = tm.LONG_TEXT
    enc = raw_tokenizer(name).encode(text)
    toks = inspector(name).tokenize(text)
    assert [tuple(o) for o in toks.offsets] == [tuple(o) for o in enc.offsets]
    assert toks.special == [bool(s) for s in enc.special_tokens_mask]
    for label, (start, end), special in zip(toks.labels, toks.offsets, toks.special):
        if special:
            continue
        piece = text[start:end]
        shown = label.removeprefix("##")
        shown = shown.replace(SPACE, " ") if piece.startswith(" ") else shown
        assert shown == piece, (label, piece)


# ---------------------------------------------------------------------- lengths


def text_of(raw: Any, n: int) -> str:
    """A prefix of a long text that encodes (special tokens included) to exactly n."""
    for first in range(len(tm.SENTENCES)):  # a merge can jump past n; then start elsewhere
        source = " ".join((tm.SENTENCES[first:] + tm.SENTENCES[:first]) * 8)
        guess = raw.encode(source).offsets[n - 1][1]  # where the n-th token ends in the whole
        for end in range(max(1, guess - 40), guess + 40):
            text = source[:end]
            if not text[-1].isspace() and len(raw.encode(text).ids) == n:
                return text
    raise AssertionError(f"no prefix encodes to {n} tokens")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_text_at_the_limit_is_fine(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    m = inspector(name)
    limit = m.config.n_ctx
    text = text_of(raw_tokenizer(name), limit)
    assert m.tokenize(text).ids == raw_tokenizer(name).encode(text).ids
    assert m.attention(text, layers=[0], heads=[0]).probs.shape[-1] == limit


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_text_past_the_limit_names_it(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    from attnscope.errors import InputError

    m = inspector(name)
    limit = m.config.n_ctx
    assert limit == 64
    text = text_of(raw_tokenizer(name), limit + 1)
    for call in (m.tokenize, m.attention, m.topk):
        with pytest.raises(InputError) as err:
            call(text)
        assert "64" in f"{err.value} {err.value.hint or ''}"


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_truncate_keeps_the_first_tokens(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    m = inspector(name)
    limit = m.config.n_ctx
    text = " ".join(tm.SENTENCES * 3)
    full = raw_tokenizer(name).encode(text).ids
    assert len(full) > limit
    toks = m.tokenize(text, truncate=True)
    assert len(toks.ids) == len(toks.labels) == len(toks.offsets) == len(toks.special) == limit
    assert toks.ids[:-1] == full[: limit - 1]  # the last may be a re-added [SEP]
    att = m.attention(text, truncate=True)
    assert tuple(att.probs.shape) == (m.config.n_layers, m.config.n_heads, limit, limit)
    assert att.tokens is not None and att.tokens.ids == toks.ids


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
@pytest.mark.parametrize("text", ["", " ", "  \n\t "], ids=["empty", "space", "blank"])
def test_empty_text_is_an_input_error(name: str, text: str, inspector: Callable) -> None:
    from attnscope.errors import InputError

    m = inspector(name)
    for call in (m.tokenize, m.attention):
        with pytest.raises(InputError):
            call(text)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_too_many_ids_for_learned_positions(name: str, inspector: Callable) -> None:
    from attnscope.errors import InputError

    m = inspector(name)
    with pytest.raises(InputError) as err:
        m.attention_ids([5] * (m.config.n_ctx + 1))
    assert "64" in f"{err.value} {err.value.hint or ''}"
    with pytest.raises(InputError):
        m.attention_ids([])


# ------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", ["gpt2", "bert", "mistral"])
def test_any_short_text(name: str, inspector: Callable, raw_tokenizer: Callable) -> None:
    """Any text of up to 12 characters: the tokenizers' ids, one label per token, no
    label empty or breaking the line, and the pattern's rows are distributions."""
    from attnscope.errors import InputError

    m, raw = inspector(name), raw_tokenizer(name)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12))
    def check(text: str) -> None:
        enc = raw.encode(text)
        if not text.strip():
            with pytest.raises(InputError):
                m.tokenize(text)
            return
        if all(enc.special_tokens_mask):  # nothing left after normalising ("\x00" for BERT)
            try:
                m.tokenize(text)
            except InputError:
                return
        toks = m.tokenize(text)
        assert toks.ids == enc.ids
        assert len(toks.labels) == len(toks.ids)
        for label in toks.labels:
            assert isinstance(label, str) and label, (text, toks.labels)
            assert "\n" not in label and "\r" not in label, (text, toks.labels)
        probs = m.attention(text, layers=[1], heads=[2]).probs
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5, rtol=0)

    check()
