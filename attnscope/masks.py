"""The mask demo: one head's real scores, a mask, and softmax without and with it.

Computation for `attnscope mask-demo`, in four steps on one head of a real model:
scores q·k/√d_head, the masked scores (hidden entries set to −∞), softmax without the
mask and softmax with it. The masks are the model's own rule (`MaskRule`, the one
the forward pass uses) for causal, sliding-window and bidirectional attention, plus a
key mask for padding. With no kind given, a decoder's layer gets its own rule (causal,
or causal within its window on a model's local layers), so the last step is that layer's
attention; an encoder, which masks nothing, gets the causal mask to show what one hides.
Every step carries a caption that says why, so the CLI, `--json` and the renderer all
tell the same story. Nothing here prints.

`build_from_scores()` is pure: tokens and scores in, a `MaskDemo` out (`build()` takes q,
k and a scale instead). `demo_for()` is the one place that runs a model (through an
`api.Inspector`); it reads the real scores from the model's own attention hooks (after its
score modifiers, such as Gemma 2's soft-capping), so the demo's last step is the model's
own pattern whenever the demo's mask is the model's.

In `to_dict()` a masked score (−∞) is written as the string "-inf", which `float()` and
`numpy.asarray(..., dtype=float)` read back as −∞; a masked probability is the number 0.

A head with a learned sink (gpt-oss) gets the sink as one more column of every step
(`Step.sink`): its logit beside the scores, never masked, and its weight beside the
softmax, which normalises over the keys and the sink together, so the keys' weights sum
to 1 − sink, as the model's own pattern does.

A layer that adds the stack's relative position bias (MPNet, T5) gets five steps
(`BIAS_STEPS`): q·k/√d_head, the bias (read from the layer's `bias` hook, never
recomputed), then the mask and softmax on their sum, the layer's real scores.

The demo's data (`MaskDemo`, `Step`) and its pure steps (`build`, `build_from_scores`,
`visible_mask`, `pick_head`) live in `mask_steps` and are re-exported here; this module
describes layers, runs the model and writes `--json`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from attnscope import analysis
from attnscope.errors import InputError, SelectionError, UsageError
from attnscope.parts.attention import MaskRule, mask_rule  # noqa: F401  (re-exported)
from attnscope.mask_captions import _captions, _mask_title, layer_kind_words  # noqa: F401  (re-exported)
from attnscope.mask_captions import model_note  # noqa: F401  (public: the note for a demo)
from attnscope.mask_captions import bias_caption, bias_title, score_formula  # noqa: F401  (re-exported)
from attnscope.mask_steps import (  # noqa: F401  (re-exported: the demo's data and pure steps)
    BIAS_STEPS, BIG_CONTEXT, DEFAULT_TEXT, DEFAULT_WINDOW, KINDS, MAX_WINDOW, PAD_COUNT, STEPS,
    MaskDemo, PatternSize, Step, _softmax, build, build_from_scores, check_kind, later_weight,
    pattern_size, pick_head, visible_mask,
)
from attnscope.hooks import attn_site
from attnscope.tokenize import pad_token, with_padding
from attnscope.tokenize import tokenize, visible

if TYPE_CHECKING:
    from attnscope.api import Inspector
    from attnscope.config import ModelConfig
    from attnscope.tokenize import Tokens


def model_kind(cfg: "ModelConfig", layer: int | None = None) -> str:
    """The mask the model applies in its own forward pass (in `layer`, where layers differ:
    Gemma 2 alternates sliding-window and full layers)."""
    return mask_rule(cfg, layer).kind


def layer_map(cfg: "ModelConfig") -> str:
    """One line naming each kind of layer, where a model mixes them; else empty."""
    kinds = ["linear" if cfg.layer(i).attn.kind == "linear" else model_kind(cfg, i) for i in range(cfg.n_layers)]
    if len(set(kinds)) < 2:
        return ""
    parts = []
    for kind in dict.fromkeys(kinds):
        layers = [str(i) for i, k in enumerate(kinds) if k == kind]
        shown = ", ".join(layers[:6]) + (", …" if len(layers) > 6 else "")
        label = f"sliding-window (W = {cfg.sliding_window})" if kind == "sliding-window" else f"full {kind}"
        if kind == "local":  # bidirectional within a window: named by its reach, as kinds.kind_words names it
            label = f"local (±{cfg.window(int(layers[0])) - 1} tokens)"
        if kind == "linear":  # Gated DeltaNet: no softmax, a hidden attention matrix
            label = "linear (gated delta rule)"
        parts.append(f"{label} on layer{'s' if len(layers) > 1 else ''} {shown}")
    shared = [str(i) for i in range(cfg.n_layers) if cfg.layer(i).attn.kv_source is not None]
    if shared:  # Gemma 4: their own queries against an earlier layer's keys and values
        shown = ", ".join(shared[:6]) + (", …" if len(shared) > 6 else "")
        parts.append(f"KV-shared (an earlier layer's keys and values) on layer{'s' if len(shared) > 1 else ''} {shown}")
    return "Its layers differ: " + "; ".join(parts) + "."


def layer_kind(cfg: "ModelConfig", layer: int) -> str:
    """Layer `layer`'s kind in words, from its declared kind: its mask rule, and "no RoPE"
    where a RoPE model's layer does not rotate (SmolLM3)."""
    return cfg.layer(layer).attn.words(rope_model=cfg.positions == "rope")


def default_kind(cfg: "ModelConfig", layer: int) -> tuple[str, int | None]:
    """The mask and window the demo applies when no kind is given: a decoder layer's own
    rule (causal, or causal within its window), so the last step is the layer's attention;
    so does an encoder's local layer (ModernBERT: "local", both sides of its window).
    An encoder's global layer masks nothing, which would leave steps 2 and 4 copies of 1 and 3, so it
    gets the causal mask, to show what one hides; its own pattern is step 3 (and
    --kind bidirectional shows it as the last step)."""
    rule = mask_rule(cfg, layer)
    if not rule.causal and rule.window is None:
        return "causal", None
    return rule.kind, rule.window


def demo_for(
    inspector: "Inspector",
    text: str = DEFAULT_TEXT,
    layer: str | int = -1,
    head: str | int | None = None,
    kind: str | None = None,
    window: int | None = None,
    truncate: bool = False,
) -> MaskDemo:
    """Run the model on `text` and build the demo for one layer and head (None: `pick_head`),
    applying the mask `kind` (None: `default_kind`, the layer's own on a decoder).
    A text longer than the model's positions is an error unless `truncate` (as
    `Inspector.tokenize`); with padding, room is kept for the pads where positions are learned.

    For padding the real tokens' queries and keys come from the text alone, because a
    batched model masks the pads in every layer, so they cannot change the real tokens;
    the pads' own queries and keys come from a second run over the padded text."""
    check_kind(kind, window)
    cfg = inspector.config
    layers = analysis.select(layer, cfg.n_layers, "layer")
    if len(layers) != 1:
        raise SelectionError("mask-demo shows one layer: give --layer a single index", hint="e.g. --layer -1")
    heads = None if head is None else analysis.select(head, cfg.n_heads, "head")
    if heads is not None and len(heads) != 1:
        raise SelectionError("mask-demo shows one head: give --head a single index", hint="e.g. --head 0")
    kind_given = kind is not None
    if cfg.layer(layers[0]).attn.kind == "linear":
        return _linear_demo(inspector, text, layers[0], head, kind, truncate)
    if kind is None:
        kind, window = default_kind(cfg, layers[0])
    tokens = _tokens_for(inspector, text, kind, truncate)
    site = attn_site(layers[0])
    relative = cfg.layer(layers[0]).attn.relative
    bias = None
    if relative is None:
        tokens, scores = inspector.scores(tokens, layers[0])  # (H, T, T): the model's own
    else:  # the scores and the stack's bias they include, both from the layer's own hooks in one pass
        cap = inspector.capture(tokens, {site: ["scores", "bias"]})
        scores, bias = cap.get(site, "scores").float(), cap.get(site, "bias").float()  # (H, T, T) each
    attn = inspector.model.blocks[layers[0]].attn
    n_real = len(tokens)
    n_pad = 0
    if kind == "padding":
        _, q, k, scale = inspector.qk(tokens, layers[0])
        pad_id, pad_label = pad_token(inspector.tokenizer)
        pad_label = visible(pad_label)  # a label from the tokenizer's file
        padded, q_pad, k_pad, _ = inspector.qk(with_padding(tokens, pad_id, pad_label, PAD_COUNT), layers[0])
        q = torch.cat([q, q_pad[:, n_real:]], dim=1)  # (H, T + pads, d_head)
        k = torch.cat([k, k_pad[:, n_real:]], dim=1)  # (H, T + pads, d_head)
        scores = (q @ k.transpose(-2, -1)) * scale  # (H, T + pads, T + pads)
        pos = torch.arange(scores.shape[-1])  # the padded text's positions, queries and keys alike
        for modify in attn.modifiers:  # the layer's own score modifiers, as its kernel applies them
            modify(scores, pos, pos)
        if relative is not None:  # then its bias, at the padded text's positions, from its hook
            bias = inspector.capture(padded, {site: ["bias"]}).get(site, "bias").float()
            scores += bias
        tokens, n_pad = padded, PAD_COUNT
    chosen = heads[0] if heads is not None else pick_head(scores, n_real)
    sinks = getattr(attn, "sinks", None)  # (H,): the layer's learned sink logits (gpt-oss)
    if sinks is not None and sinks.is_meta:  # under --pipeline the layer lives on another rank
        raise UsageError(f"mask-demo --pipeline cannot read layer {layers[0]}'s sink logits: they live on "
                         "another process", hint="run mask-demo without --pipeline, or pick a layer rank 0 holds")
    demo = build_from_scores(tokens.labels, scores, chosen, kind, window, d_head=cfg.layer(layers[0]).attn.d_head,
                             scale=attn.scale,
                             layer=layers[0], n_pad=n_pad, model=cfg.name or inspector.source,
                             own_kind=model_kind(cfg, layers[0]), own_window=cfg.window(layers[0]),
                             n_layers=cfg.n_layers, text=text,
                             sink=float(sinks[chosen].detach()) if sinks is not None else None, bias=bias, relative=relative)
    demo.auto_head = heads is None
    demo.kind_given = kind_given
    demo.layer_kind = layer_kind(cfg, layers[0])
    demo.layer_map = layer_map(cfg)
    demo.truncated_from = tokens.truncated_from
    return demo


LINEAR_CAPTION = ("No softmax, yet a matrix: this layer keeps a state S_t = g_t (I − β_t k_t k_tᵀ) S_t−1 + "
                  "β_t k_t v_tᵀ and outputs o_t = S_tᵀ q_t, which unrolls exactly to o_t = Σ_j M[t, j] v_j. "
                  "M is its attention: causal by construction (no mask applied), signed, rows not summing to 1 (Σ).")


def _linear_demo(inspector: "Inspector", text: str, layer: int, head: str | int | None, kind: str | None,
                 truncate: bool) -> MaskDemo:
    """A linear layer (Gated DeltaNet) has no scores or softmax to mask: its one step is the
    hidden attention M of one value head, read from the layer's own `pattern` hook (the
    matrix whose rows, times the values, are the layer's kernel output)."""
    cfg = inspector.config
    a = cfg.layer(layer).attn
    if kind not in (None, "causal"):
        raise UsageError(f"layer {layer} is linear (gated delta rule): it has no softmax to mask, so no --kind applies",
                         hint="drop --kind, or pick a softmax layer with --layer")
    heads = None if head is None else analysis.select(head, a.n_heads, "head")
    if heads is not None and len(heads) != 1:
        raise SelectionError("mask-demo shows one head: give --head a single index", hint="e.g. --head 0")
    tokens = inspector.tokenize(text, truncate)
    site = attn_site(layer)
    m = inspector.capture(tokens, {site: ["pattern"]}).get(site, "pattern").float()  # (H_v, T, T)
    n = len(tokens)
    # no --head: the value head whose rows reach furthest from their own token (most |M| off the diagonal)
    chosen = heads[0] if heads is not None else int(m.tril(-1).abs().sum((-1, -2)).argmax())
    d_k = a.d_head
    demo = MaskDemo(tokens.labels, "causal", layer, chosen, cfg.name or inspector.source, model_kind(cfg, layer),
                    d_k, d_k ** -0.5, None, 0, visible_mask("causal", n), [], pattern_size(n, cfg.n_layers, a.n_heads),
                    text=text, own_window=None)
    demo.steps = [Step("hidden_attention", "Hidden attention M (no softmax)", LINEAR_CAPTION, m[chosen], False,
                       signed=True)]
    demo.auto_head = heads is None
    demo.kind_given = kind is not None
    demo.layer_kind = layer_kind(cfg, layer)
    demo.layer_map = layer_map(cfg)
    demo.truncated_from = tokens.truncated_from
    return demo


def _tokens_for(inspector: "Inspector", text: str, kind: str, truncate: bool) -> "Tokens":
    """The text's tokens; for padding on learned positions, short enough to leave room
    for the PAD_COUNT pads (which take positions too)."""
    cfg = inspector.config
    tokens = inspector.tokenize(text, truncate)
    room = cfg.n_ctx - PAD_COUNT
    if kind != "padding" or cfg.positions != "learned" or len(tokens) <= room:
        return tokens
    if not truncate or room < 1:
        raise InputError(
            f"the text is {len(tokens)} tokens; with {PAD_COUNT} padding tokens that is more than "
            f"the model's {cfg.n_ctx} positions",
            hint="shorten it or pass --truncate to keep the first tokens" if room >= 1 else None,
        )
    cut = tokenize(inspector.tokenizer, text, room, truncate=True)
    return replace(cut, truncated_from=tokens.truncated_from or cut.truncated_from)


def _cell(value: float) -> float | str:
    return "-inf" if value == -math.inf else value


def to_dict(demo: MaskDemo, steps: list[int] | None = None) -> dict[str, Any]:
    """A plain dict for --json: −∞ is the string "-inf"; `steps` are 0-based indices."""
    chosen = range(len(demo.steps)) if steps is None else steps
    s = demo.size
    return {
        "text": demo.text,
        **({"truncated_from": demo.truncated_from} if demo.truncated_from else {}),
        "model": demo.model,
        "model_mask": demo.model_kind,
        "layer_map": demo.layer_map,
        "kind": demo.kind,
        "kind_given": demo.kind_given,
        "layer_kind": demo.layer_kind,
        "own_mask": demo.own_mask,
        "layer": demo.layer,
        "head": demo.head,
        "head_picked_automatically": demo.auto_head,
        "window": demo.window,
        "padding": demo.n_pad,
        "d_head": demo.d_head,
        "scale": demo.scale,
        "tokens": list(demo.labels),
        "note": model_note(demo),
        "masked_value": "-inf",
        **({"sink": demo.sink} if demo.sink is not None else {}),
        **({"relative_bias": {"buckets": demo.relative.buckets, "max_distance": demo.relative.max_distance,
                              "bidirectional": demo.relative.bidirectional}} if demo.relative is not None else {}),
        "size": {"tokens": s.tokens, "entries": s.entries, "context": s.context,
                 "context_entries": s.context_entries, "context_bytes_per_head_float32": s.context_bytes,
                 "context_bytes_all_heads_float32": s.model_bytes},
        "steps": [
            {
                "step": i + 1,
                "name": demo.steps[i].name,
                "title": demo.steps[i].title,
                "caption": demo.steps[i].caption,
                "matrix": [[_cell(v) for v in row] for row in demo.steps[i].matrix.tolist()],
                **({"sink": demo.steps[i].sink.tolist()} if demo.steps[i].sink is not None else {}),
                **({"signed": True} if demo.steps[i].signed else {}),
            }
            for i in chosen
        ],
    }
