"""The words of `mask-demo`: each step's title and one-line caption saying why, and the note
on what the chosen mask means for this model. Computed once here, so the terminal view,
`--json` and tests all read the same sentences."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnscope.kinds import kind_words
from attnscope.units import human_bytes, n

if TYPE_CHECKING:
    from torch import Tensor

    from attnscope.kinds import RelativeSpec
    from attnscope.masks import MaskDemo
    from attnscope.parts.attention import MaskRule

# Who uses each mask, for the captions.
WHO = {
    "causal": "a causal (GPT-style) model",
    "sliding-window": "a sliding-window (Mistral-style) model",
    "bidirectional": "a bidirectional (BERT-style) model",
    "local": "a model with local bidirectional layers (ModernBERT-style)",
}


def layer_kind_words(rule: "MaskRule") -> str:
    """A layer's kind, named from the rule its forward pass applies: "local, window 4096"
    (causal within a window), "global" (causal over every earlier key) or "bidirectional
    encoder" (every key; "…, window W" where it also has one)."""
    return kind_words(rule.causal, rule.window)


def _mask_title(kind: str, window: int | None) -> str:
    return {
        "causal": "Causal mask  key after query → −∞",
        "sliding-window": f"Sliding-window mask (W = {window})  keys outside the window → −∞",
        "padding": "Padding mask  [PAD] keys → −∞",
        "bidirectional": "No mask (bidirectional)  nothing → −∞",
        "local": f"Local mask (±{(window or 1) - 1})  keys more than {(window or 1) - 1} away → −∞",
    }[kind]


def model_note(d: "MaskDemo") -> str:
    """What the chosen mask means for this model: its own, or one it was not trained with."""
    if d.kind == "padding":
        return (f"{d.model} is {WHO[d.model_kind]}; only the padding mask is shown here "
                "(a causal model combines it with the causal mask). Its real tokens' queries and keys "
                "come from the text alone, as a batched model's would.")
    layers = f" {d.layer_map} Layer {d.layer} is {d.model_kind}." if d.layer_map else ""
    if d.own_mask:
        return f"{d.model} is {WHO[d.model_kind]}: it uses this very mask.{layers}"
    if d.kind == d.model_kind:  # sliding-window, another window than the layer's own
        return (f"{d.model} is {WHO[d.model_kind]}, with a window of {d.own_window} here: this demo applies "
                f"a window of {d.window} to the head's real scores to show what that would allow.{layers}")
    own = "" if d.kind_given or d.model_kind != "bidirectional" else (
        " Its own pattern, which masks nothing, is step 3 (--kind bidirectional shows it as the last step).")
    return (f"{d.model} is {WHO[d.model_kind]}: this demo applies the {d.kind} mask to the head's real "
            f"scores to show what {WHO[d.kind]} would allow.{layers}{own}")


def _window_phrase(window: int) -> str:
    if window == 1:
        return "itself"
    return f"itself and the {window - 1} previous key" + ("s" if window > 2 else "")


def score_formula(d_head: int, scale: float | None) -> str:
    """How the layer scales q·k: "q·k/√64" where it is 1/√d_head, else its own factor
    (Gemma 3's 1/√query_pre_attn_scalar; Gemma 4's 1, its q and k being RMS-normed)."""
    if scale is None or abs(scale * d_head ** 0.5 - 1) < 1e-9:
        return f"q·k/√{d_head}"
    return "q·k" if scale == 1 else f"q·k × {scale:.4g}"


def _captions(d: "MaskDemo") -> list[str]:
    w = d.window or 0
    scores = (f"Row = query, column = key: {score_formula(d.d_head, d.scale)} says how well each key matches "
              "each query "
              f"(real numbers, layer {d.layer}, head {d.head}).")
    mask = {
        "causal": ("Keys after their query → −∞: in training every position predicts its next token at "
                   "once, so a later token must not influence an earlier one."),
        "sliding-window": (f"Each query keeps only {_window_phrase(w)}, as in Mistral: causal, but each "
                           "layer costs T×W instead of T², and stacked layers still reach further back."),
        "padding": (f"A batch pads shorter texts to the longest ({d.n_pad} [PAD] here); the pads are filler, "
                    "so their keys are −∞ for every query."),
        "bidirectional": ("Nothing masked: every query sees every key, before and after it, as in BERT, "
                          "which reads the whole text at once and never predicts the next token."),
        "local": (f"Each query keeps itself and the {max(w - 1, 0)} keys on either side, as ModernBERT's local "
                  "layers do: each costs T×W instead of T², and its global layers still see the whole text."),
    }[d.kind]
    hidden = {"causal": "later keys", "sliding-window": "keys outside the window", "padding": "the [PAD] keys",
              "local": "keys outside the window"}
    if d.kind == "bidirectional":
        softmax = "Softmax turns each row into weights that sum to 1 (Σ): the pattern a BERT-style model uses."
    else:
        rows = "the real tokens" if d.kind == "padding" else "rows"
        softmax = (f"Softmax turns each row into weights that sum to 1 (Σ); unmasked, {rows} put "
                   f"{d.hidden_share:.0%} of their weight on {hidden[d.kind]}.")
    s = d.size
    size = (f"The pattern has n² entries: {n(s.tokens)}² = {n(s.entries)} here; at {n(s.context)} tokens "
            f"{n(s.context_entries)} ({human_bytes(s.context_bytes)} in float32) per head, "
            f"{human_bytes(s.model_bytes)} for all {s.layers} × {s.heads} heads.")
    if d.kind == "bidirectional":
        masked = "Nothing masked, nothing changes. " + size
    else:
        masked = "e^−∞ = 0: masked entries are exactly 0 (·), and rows still sum to 1. " + size
    if d.sink is not None:  # gpt-oss: a learned logit per head, one more column that is no key
        scores += f" The sink column is the head's learned logit ({d.sink:.2f}), the same in every row."
        mask += " The sink is never masked."
        softmax += " The sink takes its share (Σ counts it): the keys' weights sum to 1 − sink, and it adds no value."
    return [scores, mask, softmax, masked]


def bias_title(relative: "RelativeSpec") -> str:
    """The bias step's title: what the stack adds to every score, by distance."""
    return f"Relative position bias  + b(key − query), {relative.buckets} learned buckets"


def bias_caption(d: "MaskDemo", bias: "Tensor") -> str:
    """Why the bias step matters: what the table holds, and its reach on this head (`bias`
    (T, T), the head's bias as the layer's hook reported it)."""
    r = d.relative
    half = r.buckets // 2 if r.bidirectional else r.buckets
    sides = ("keys before and after the query get their own half" if r.bidirectional
             else "keys after the query share distance 0")
    return (f"Every head adds a learned score for the key's distance from its query: {r.buckets} buckets, one per "
            f"distance below {half // 2}, then log-spaced out to {r.max_distance} ({sides}); one table serves every "
            f"layer. Here it runs from {float(bias.min()):.1f} to {float(bias.max()):.1f}, part of why this head "
            "attends where it does. The mask and softmax act on step 1 + step 2, the layer's real scores.")
