"""The mask demo's data (`MaskDemo`, its `Step`s) and its pure steps: tokens and scores in, a demo out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from attnscope.errors import SelectionError, UsageError
from attnscope.mask_captions import _captions, _mask_title, bias_caption, bias_title, score_formula
from attnscope.parts.attention import MaskRule

KINDS = ("causal", "padding", "sliding-window", "bidirectional", "local")  # local: both sides of a window (ModernBERT)
STEPS = ("scores", "masked_scores", "softmax", "masked_softmax")
# A layer that adds the stack's relative position bias (MPNet, T5) shows it as a step of its own.
BIAS_STEPS = ("scores", "bias", "masked_scores", "softmax", "masked_softmax")
DEFAULT_TEXT = "a fluffy blue creature roamed the verdant forest"
DEFAULT_WINDOW = 3
PAD_COUNT = 3  # [PAD] positions appended for --kind padding
MAX_WINDOW = 2**31  # as config windows: beyond any text, and torch's index arithmetic stays exact
BIG_CONTEXT = 2048  # the context the size caption compares with



@dataclass
class Step:
    """One matrix of the demo. `matrix` is (T, T) float32, −∞ where a score is masked."""

    name: str  # one of STEPS
    title: str
    caption: str
    matrix: Tensor
    probabilities: bool  # softmax output (rows sum to 1) rather than scores
    sink: Tensor | None = None  # (T,): the sink column (its logit, or its weight), for a head with a sink
    signed: bool = False  # a linear layer's hidden attention M: signed weights, rows not summing to 1


@dataclass
class PatternSize:
    """How big one head's pattern is: n² entries, here and at BIG_CONTEXT tokens."""

    tokens: int
    entries: int
    context: int
    context_entries: int
    context_bytes: int  # float32, one head of one layer
    model_bytes: int  # float32, every head of every layer at once
    layers: int
    heads: int


@dataclass
class MaskDemo:
    """Everything `mask-demo` shows: tokens, the mask, and the four steps."""

    labels: list[str]
    kind: str
    layer: int
    head: int
    model: str
    model_kind: str  # the mask the model itself uses: causal, sliding-window or bidirectional
    d_head: int
    scale: float
    window: int | None
    n_pad: int
    visible: Tensor  # (T, T) bool: may query i see key j?
    steps: list[Step]
    size: PatternSize
    text: str = ""
    auto_head: bool = False
    layer_map: str = ""  # where a model mixes kinds of layer (Gemma 2), which layers are which
    layer_kind: str = ""  # the layer's own kind in words: "local, window 4096", "global", "bidirectional encoder"
    own_window: int | None = None  # the layer's own window (None: it sees every allowed key)
    kind_given: bool = True  # False: no --kind, so the demo chose the mask (`default_kind`)
    hidden_share: float = 0.0  # unmasked softmax weight on keys the mask hides, mean over real rows
    truncated_from: int | None = None  # the text's full length in tokens, when --truncate cut it
    sink: float | None = None  # the head's learned sink logit (gpt-oss), an extra softmax column
    relative: Any = None  # the layer's relative position bias (kinds.RelativeSpec), shown as a step; else None


    @property
    def own_mask(self) -> bool:
        """Is the mask applied the layer's own, so the last step is its attention?"""
        return self.kind == self.model_kind and self.window == self.own_window


def check_kind(kind: str | None, window: int | None) -> int | None:
    """Validate --kind/--window; the window to use (DEFAULT_WINDOW for sliding-window and
    local: the rule's W, keys less than W away, so W − 1 on each side of a local query).
    `kind` None (no --kind: the layer's own rule) takes no window."""
    if kind is None:
        if window is not None:
            raise UsageError("--window applies only to --kind sliding-window or local",
                             hint=f"e.g. attnscope mask-demo --kind sliding-window --window {DEFAULT_WINDOW}")
        return None
    if kind not in KINDS:
        raise UsageError(f"unknown mask kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if kind not in ("sliding-window", "local"):
        if window is not None:
            raise UsageError("--window applies only to --kind sliding-window or local",
                             hint=f"e.g. attnscope mask-demo --kind sliding-window --window {DEFAULT_WINDOW}")
        return None
    window = DEFAULT_WINDOW if window is None else window
    if window < 1:
        raise UsageError(f"--window must be at least 1, got {window}")
    if window > MAX_WINDOW:
        raise UsageError(f"--window must be at most 2**31, got {window}",
                         hint="a window longer than the text is the causal mask: use --kind causal")
    return window


def visible_mask(kind: str, n_tokens: int, window: int | None = None, n_pad: int = 0) -> Tensor:
    """(T, T) bool: may query i see key j under `kind`? Padding hides the last `n_pad`
    keys from every query; every kind is the model's own rule, `parts.attention.MaskRule`."""
    positions = torch.arange(n_tokens)
    key_valid = None
    if kind == "padding":
        key_valid = positions < n_tokens - n_pad
    rule = MaskRule(kind in ("causal", "sliding-window"), window if kind in ("sliding-window", "local") else None)
    ok = rule.visible(positions, positions, key_valid)
    if ok is None:  # bidirectional: every key visible
        return torch.ones(n_tokens, n_tokens, dtype=torch.bool)
    return ok


def later_weight(scores: Tensor, n_real: int) -> Tensor:
    """Per head, the mean unmasked softmax weight a query puts on keys after it, over
    the first `n_real` tokens, from (H, T, T) scores: (H,). How much a causal mask
    changes each head."""
    later = ~visible_mask("causal", n_real)  # (T, T)
    return (scores[:, :n_real, :n_real].float().softmax(-1) * later).sum(-1).mean(-1)  # (H,)


def pick_head(scores: Tensor, n_real: int) -> int:
    """The head whose unmasked pattern leans most on later keys: the one a causal mask
    changes most, so the demo has something to show. Independent of --kind, so the same
    head is shown for every kind."""
    return int(later_weight(scores, n_real).argmax())


def pattern_size(n_tokens: int, n_layers: int, n_heads: int, context: int = BIG_CONTEXT) -> PatternSize:
    entries = context * context
    return PatternSize(n_tokens, n_tokens * n_tokens, context, entries, 4 * entries,
                       4 * entries * n_layers * n_heads, n_layers, n_heads)


def build(labels: list[str], q: Tensor, k: Tensor, scale: float, head: int, kind: str = "causal",
          window: int | None = None, **options: Any) -> MaskDemo:
    """The four steps for one head from q, k: (H, T, d_head) after RoPE and `scale` =
    1/√d_head; `options` as for `build_from_scores` (layer, n_pad, model, ...)."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (H, T, T)
    return build_from_scores(labels, scores, head, kind, window, d_head=q.shape[-1], scale=scale, **options)


def build_from_scores(
    labels: list[str],
    all_scores: Tensor,
    head: int,
    kind: str = "causal",
    window: int | None = None,
    *,
    d_head: int,
    scale: float,
    layer: int = 0,
    n_pad: int = 0,
    model: str = "the model",
    own_kind: str = "bidirectional",
    own_window: int | None = None,
    n_layers: int = 1,
    text: str = "",
    sink: float | None = None,
    bias: Tensor | None = None,
    relative: Any = None,
) -> MaskDemo:
    """The four steps for one head from a layer's real scores (H, T, T), before any mask;
    `sink`: the head's learned sink logit, one more column of the softmax (gpt-oss).
    `bias` (H, T, T): the relative position bias those scores include (the hook's `bias`,
    of the stack's `relative`, a kinds.RelativeSpec): then step 1 is q·k/√d_head alone
    (the scores less the bias) and the bias is step 2, before the mask and softmax, which
    act on the scores as the model's kernel does (`BIAS_STEPS`)."""
    window = check_kind(kind, window)
    n_heads, n_tokens, _ = all_scores.shape
    if not 0 <= head < n_heads:
        raise SelectionError(f"--head {head} is out of range: the model has {n_heads} heads (0..{n_heads - 1})")
    assert len(labels) == n_tokens, f"{len(labels)} labels for {n_tokens} tokens"  # internal invariant
    if kind != "padding":
        n_pad = 0
    ok = visible_mask(kind, n_tokens, window, n_pad)  # (T, T)
    scores = all_scores[head].float()  # (T, T)
    masked = scores.masked_fill(~ok, float("-inf"))  # (T, T)
    logits = torch.full((n_tokens,), float(sink)) if sink is not None else None  # (T,): never masked
    probs, sink_probs = _softmax(scores, logits)  # (T, T), (T,) or None
    masked_probs, masked_sink = _softmax(masked, logits)  # exp(−∞) = 0 exactly
    n_real = n_tokens - n_pad
    hidden_share = float((probs[:n_real] * ~ok[:n_real]).sum(-1).mean()) if n_real else 0.0
    size = pattern_size(n_tokens, n_layers, n_heads)
    demo = MaskDemo(labels, kind, layer, head, model, own_kind, d_head, scale, window, n_pad, ok, [], size,
                    text=text, hidden_share=hidden_share, own_window=own_window, sink=sink)
    captions = _captions(demo)
    demo.steps = [
        Step("scores", f"Scores  {score_formula(d_head, scale).replace('/', ' / ')}", captions[0], scores, False,
             logits),
        Step("masked_scores", _mask_title(kind, window), captions[1], masked, False, logits),
        Step("softmax", "Softmax without the mask", captions[2], probs, True, sink_probs),
        Step("masked_softmax", "Softmax with the mask", captions[3], masked_probs, True, masked_sink),
    ]
    if bias is not None:
        b = bias[head].float()  # (T, T)
        demo.relative = relative
        demo.steps[0] = replace(demo.steps[0], matrix=scores - b)  # q·k/√d_head: the scores less the bias
        demo.steps.insert(1, Step("bias", bias_title(relative), bias_caption(demo, b), b, False))
    return demo


def _softmax(scores: Tensor, sink: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Each row's softmax (T, T), over its keys and, given `sink` logits (T,), the sink
    column too, whose weights (T,) come back apart: the keys then sum to 1 − sink."""
    if sink is None:
        return scores.softmax(-1), None
    full = torch.cat([scores, sink[:, None]], -1).softmax(-1)  # (T, T + 1)
    return full[:, :-1], full[:, -1]
