"""Head scores: an atlas of what every attention head does, one number per layer and head.

After the head taxonomies of Olsson et al. (2022), "In-context Learning and Induction
Heads", and TransformerLens's induction score: each score is a mean of one kind of entry
of a head's n x n pattern A on a tokenized text (special tokens included):

  previous_token   mean over i >= 1 of A[i, i-1]
  first_token      mean over i >= 1 of A[i, 0] (the attention sink)
  self             mean over all i of A[i, i]
  next_token       mean over i <= n-2 of A[i, i+1] (bidirectional models only)
  duplicate_token  over the rows i whose token id occurs earlier in the text, the mean of
                   the attention row i puts on those earlier occurrences (summed)
  induction        on [prefix] + R + R [+ suffix], R a run of T random token ids, the mean
                   over the rows i of the second copy after its first token of A[i, i-T+1]
  entropy          mean over rows of H(A[i]) / log(keys row i may see): 0 one key, 1 uniform
  sink             mean over all i of row i's sink weight, 1 − Σ_j A[i, j]: the share of
                   a learned sink (gpt-oss's extra softmax column, read from the kernel's
                   own softmax); only on models with sinks, where it joins the default

The probe (`head_probe.ScoreProbe`) receives one query chunk of one layer at a time from `model.Transformer`
and keeps only per-(layer, head) sums, so every score of every head costs one forward
pass for the text and one for the induction input, and never more memory than a chunk.
It, its terms and the induction input live in `head_probe` and are re-exported here;
this module names the scores, runs the passes and writes `--json`.
Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from attnscope import routing
from attnscope.analysis import select, select_heads, signed_layers
from attnscope.errors import InputError, UsageError
from attnscope.head_probe import (  # noqa: F401  (re-exported: the probe, its terms, the induction input)
    _AFFIX_PROBE_TEXT, ScoreProbe, Term, _column, _earlier_copies, _entropy, _Padded, _rows_with_earlier_copies,
    _sink_rows, _stripe, candidate_ids, has_sinks, induction_input, induction_terms, special_affixes, text_terms,
)

if TYPE_CHECKING:
    from attnscope.api import Inspector, Selector
    from attnscope.config import ModelConfig
    from attnscope.tokenize import Tokens

SCORES = ("previous_token", "first_token", "self", "next_token", "duplicate_token", "induction", "entropy")
ALL_SCORES = SCORES + ("sink",)  # sink: only a model whose attention has sinks has one (`default_scores`)
TEXT_SCORES = tuple(name for name in ALL_SCORES if name != "induction")

DEFINITIONS = {
    "previous_token": "mean over i ≥ 1 of A[i, i−1]",
    "first_token": "mean over i ≥ 1 of A[i, 0] (the attention sink)",
    "self": "mean over all i of A[i, i]",
    "next_token": "mean over i ≤ n−2 of A[i, i+1] (bidirectional models only)",
    "duplicate_token": "over rows i whose token occurred earlier, the mean of the attention A[i, ·] puts on those earlier occurrences",
    "induction": "on prefix + R + R (R: T random tokens), mean over rows i of the second copy after its first token of A[i, i−T+1]",
    "entropy": "mean over rows of the row's entropy / log(visible keys): 0 = one key, 1 = uniform",
    "sink": "mean over all i of row i's sink weight 1 − Σ_j A[i, j]: the learned sink column's share (gpt-oss)",
}

# Repeated words, so that duplicate_token has rows to average over on any tokenizer.
DEFAULT_TEXT = (
    "The cat sat on the mat. The dog sat on the rug. "
    "The cat saw the dog, and the dog saw the cat."
)
DEFAULT_REPEAT = 20


@dataclass
class HeadScores:
    """Per selected layer and head, every score asked for (see DEFINITIONS)."""

    layers: list[int]
    heads: list[int]
    scores: dict[str, Tensor]  # name -> (L_sel, H_sel) float32; only scores with a value
    n_tokens: int  # tokens in the scored text (0 when only induction was asked for)
    tokens: "Tokens | None" = None
    induction_ids: list[int] | None = None  # the whole induction input, prefix and suffix included
    repeat: int = 0  # T, the length of the random run (after clamping to the context)
    seed: int = 0
    prefix: list[int] = field(default_factory=list)  # special ids before R R
    suffix: list[int] = field(default_factory=list)  # special ids after R R
    undefined: dict[str, str] = field(default_factory=dict)  # score -> why it has no value here
    # Each selected layer's kind in words ("local, ±64 tokens"), where the model's layers
    # differ in kind (ModernBERT, Gemma 2); empty where every layer is of one kind.
    layer_kinds: dict[int, str] = field(default_factory=dict)
    # Scores with no value on some selected layers (NaN there), and why: entropy on a
    # linear layer, whose rows are signed (`analysis.signed_layers`).
    partly: dict[str, str] = field(default_factory=dict)
    signed: list[int] = field(default_factory=list)  # the selected layers whose patterns are signed
    # A model with experts: its selected MoE layers and, per layer, how many (token,
    # choice) pairs each expert received on the text(s), (len(moe_layers), E) int64;
    # None on a dense model, or with no text scored.
    moe_layers: list[int] = field(default_factory=list)
    expert_counts: Tensor | None = None
    top_k: int = 0

    def expert_load(self) -> Tensor:
        """(len(moe_layers), E) float64: each expert's share of its layer's (token, choice) pairs."""
        assert self.expert_counts is not None  # internal invariant: asked only of a model with experts
        counts = self.expert_counts.double()
        return counts / counts.sum(-1, keepdim=True).clamp(min=1)

    def ranked(self, name: str, top: int) -> list[tuple[int, int, float]]:
        """The `top` heads with the highest `name` score: (layer, head, value), best first.

        Highest for entropy too: a high entropy marks a head that averages broadly, a kind
        the other scores do not name (the sharp heads are the top of the others)."""
        values = self.scores[name]
        flat = values.flatten()
        order = torch.argsort(flat.nan_to_num(float("-inf")), descending=True, stable=True)
        order = [k for k in order.tolist() if not torch.isnan(flat[k])][:top]  # a NaN cell has no value
        n_heads = len(self.heads)
        return [(self.layers[k // n_heads], self.heads[k % n_heads], float(values.flatten()[k])) for k in order]


def load_probe(cfg: "ModelConfig", ls: list[int], bounds: list[tuple[int, int]]) -> "routing.LoadProbe | None":
    """A probe counting each text's routes (its tokens `bounds` of the pass) in the MoE
    layers among `ls`; None on a dense model or where no selected layer has experts."""
    plan = routing.plan(cfg, ls)
    if plan is None or not plan["layers"]:
        return None
    return routing.LoadProbe(plan["layers"], plan["experts"], bounds)


def default_scores(cfg: "ModelConfig") -> list[str]:
    """The scores a run computes when none is named: every model's, and `sink` where it has sinks."""
    return list(ALL_SCORES if has_sinks(cfg) else SCORES)


# ------------------------------------------------------------------------- scoring


def check_measure(measure: str) -> None:
    """Refuse, before a model loads, a measure that has no heads to score (rollout, alti
    and value-zeroing give one matrix a layer)."""
    from attnscope.measures import KINDS

    if measure not in KINDS or not KINDS[measure].per_head:
        raise UsageError(f"heads scores each head; --measure {measure} is per layer, not per head",
                         hint=f"use --measure weight or norm; attnscope attend --measure {measure} shows it per layer")


def head_scores(
    inspector: "Inspector",
    text: "str | Tokens" = DEFAULT_TEXT,
    names: Sequence[str] | None = None,
    layers: "Selector" = None,
    heads: "Selector" = None,
    seed: int = 0,
    repeat: int = DEFAULT_REPEAT,
    truncate: bool = False,
    measure: str = "weight",
) -> HeadScores:
    """Score every selected head: one forward pass on the text (if a text score is asked
    for) and one on the induction input (if induction is). Under `measure="norm"` every
    score reads the row-normalised norms ‖α·f(x)‖ instead of the weights α."""
    from attnscope.hooks import Hooks
    from attnscope.measures.transforms import wrap

    check_measure(measure)
    wanted = default_scores(inspector.config) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in ALL_SCORES]
    if unknown:
        raise UsageError(f"unknown score {unknown[0]!r}", hint=f"choose from {', '.join(ALL_SCORES)}")
    cfg = inspector.config
    ls = select(layers, cfg.n_layers, "layer")
    by_count: dict[int, list[int]] = {}  # head count -> the selected layers that have it
    for layer in ls:
        by_count.setdefault(inspector.sites[layer].n_heads, []).append(layer)
    # By default every head of every layer, where the layers' head counts differ too
    # (Qwen3.5: 8 query heads, 16 value heads in its linear layers): one grid as wide as
    # the most heads, a cell with no head NaN. A --head selection names the same heads
    # in every layer (`select_heads`).
    padded = heads is None and len(by_count) > 1
    hs = list(range(max(by_count))) if padded else select_heads(heads, inspector.sites, ls)
    out = HeadScores(ls, hs, {}, 0, seed=seed)

    def probe_for(terms: dict[str, Term], counts: dict[str, int]) -> Any:
        return _Padded(ls, hs, by_count, terms, counts) if padded else ScoreProbe(ls, hs, terms, counts)
    if len({site.kind for site in inspector.sites}) > 1:
        out.layer_kinds = {i: inspector.sites[i].kind for i in ls}

    text_names = [name for name in wanted if name in TEXT_SCORES]
    if text_names:
        tokens = text if not isinstance(text, str) else inspector.tokenize(text, truncate)
        if len(tokens) < 2:
            raise InputError(f"the text is {len(tokens)} token; the scores compare each token with its neighbours",
                             hint="give a text of at least two tokens")
        terms, counts, undefined = text_terms(tokens.ids, cfg, text_names, measure)
        out.tokens, out.n_tokens, out.undefined = tokens, len(tokens), undefined
        routes = load_probe(cfg, ls, [(0, len(tokens))])
        if terms or routes is not None:  # the routes ride on the scores' pass: no pass of their own
            probe = probe_for(terms, counts)
            scored = wrap(measure, len(tokens), max(ls), probe, sites=inspector.sites)
            inspector.run(tokens.ids, Hooks(scored, routes) if terms else routes, max(ls))
            out.scores.update(probe.result() if terms else {})
        if routes is not None:
            out.moe_layers, out.top_k = routes.layers, routing.top_k(cfg, routes.layers)
            out.expert_counts = routes.result()[0]  # (MoE layers, E)

    if "induction" in wanted:
        ids, prefix, suffix, T = induction_input(inspector.tokenizer, cfg, repeat, seed)
        terms, counts = induction_terms(len(prefix), T)
        probe = probe_for(terms, counts)
        inspector.run(ids, wrap(measure, len(ids), max(ls), probe, sites=inspector.sites), max(ls))
        out.scores.update(probe.result())
        out.induction_ids, out.prefix, out.suffix, out.repeat = ids, prefix, suffix, T

    signed_entropy(out, signed_layers(inspector.sites, measure), {i: inspector.sites[i].kind for i in ls})
    if padded:
        fewer = "; ".join(f"layer{'s' if len(g) > 1 else ''} {', '.join(map(str, g[:8]))}"
                          f"{', …' if len(g) > 8 else ''} {'have' if len(g) > 1 else 'has'} {count} heads"
                          for count, g in sorted(by_count.items()) if count < len(hs))
        for name in out.scores:
            out.partly[name] = "; ".join(why for why in (out.partly.get(name), fewer) if why)
    out.scores = {name: out.scores[name] for name in wanted if name in out.scores}  # in the order asked
    return out


def signed_entropy(out: HeadScores, signed: frozenset[int], kinds: dict[int, str]) -> None:
    """Entropy is defined only where rows are distributions: on the selected `signed`
    layers (a linear layer's hidden attention) it is NaN, with the reason in `partly`
    (some layers) or `undefined` (every selected layer). The other scores stay: means of
    the signed entries, as on any layer."""
    mine = [li for li, layer in enumerate(out.layers) if layer in signed]
    out.signed = [out.layers[li] for li in mine]
    if not mine or "entropy" not in out.scores:
        return
    words = sorted({kinds[out.layers[li]] for li in mine})
    why = (f"rows of {' and '.join(words)} layers are signed and do not sum to 1 "
           f"(layer{'s' if len(mine) > 1 else ''} {', '.join(str(out.layers[li]) for li in mine)})")
    if len(mine) == len(out.layers):
        del out.scores["entropy"]
        out.undefined["entropy"] = why
        return
    out.scores["entropy"][mine] = float("nan")
    out.partly["entropy"] = why


def _json_grid(values: Tensor) -> list[list[float | None]]:
    """[layer][head] floats, null where a cell is NaN (no value there)."""
    return [[None if v != v else v for v in row] for row in values.tolist()]


def scores_dict(result: HeadScores) -> dict[str, Any]:
    """The `--json` document: scores as [layer][head] lists, null where undefined."""
    names = list(result.scores) + [name for name in result.undefined if name not in result.scores]
    order = [name for name in ALL_SCORES if name in names]
    doc: dict[str, Any] = {
        "layers": result.layers,
        "heads": result.heads,
        "scores": {name: (_json_grid(result.scores[name]) if name in result.scores else None) for name in order},
        "definitions": {name: DEFINITIONS[name] for name in order},
    }
    if result.undefined:
        doc["undefined"] = dict(result.undefined)
    if result.partly:  # null cells: the score has no value on those layers
        doc["partly_undefined"] = dict(result.partly)
    if result.signed:
        doc["signed_layers"] = list(result.signed)
    if result.layer_kinds:  # one per entry of "layers", where the layers differ in kind
        doc["layer_kinds"] = [result.layer_kinds[layer] for layer in result.layers]
    if result.tokens is not None:
        doc["text"] = {"n_tokens": result.n_tokens, "ids": result.tokens.ids, "tokens": result.tokens.labels}
    if result.expert_counts is not None:  # {layer: [per expert]}, keyed by the MoE layer as a string (JSON)
        keys = [str(layer) for layer in result.moe_layers]
        doc["expert_load"] = dict(zip(keys, result.expert_load().tolist()))
        doc["expert_counts"] = dict(zip(keys, result.expert_counts.tolist()))
        doc["expert_spread"] = dict(zip(keys, routing.spread(result.expert_counts)))
        doc["top_k"] = result.top_k
    if result.induction_ids is not None:
        doc["induction"] = {"repeat": result.repeat, "seed": result.seed, "ids": result.induction_ids,
                            "prefix": result.prefix, "suffix": result.suffix}
    return doc
