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

The probe below receives one query chunk of one layer at a time from `model.Transformer`
and keeps only per-(layer, head) sums, so every score of every head costs one forward
pass for the text and one for the induction input, and never more memory than a chunk.
Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from attnscope import routing
from attnscope.analysis import ProbeBase, normalised_entropy, select, select_heads, signed_layers, visible_counts
from attnscope.errors import InputError, UsageError

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
_AFFIX_PROBE_TEXT = "a"


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


# ---------------------------------------------------------------------- the probe

# (probs (H, c, K), start, layer) -> (H,) sum over the chunk's rows. K <= T: a causal
# chunk carries only the keys up to its last query (the rest are exactly 0).
Term = Callable[[Tensor, int, int], Tensor]


def _stripe(offset: int, lo: int, hi: int, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over query rows lo <= i < hi of A[i, i + offset], for this chunk's rows."""
    stop = start + probs.shape[1]
    first, last = max(lo, start, -offset), min(hi, stop, probs.shape[2] - offset)
    if first >= last:
        return probs.new_zeros(probs.shape[0])
    rows = torch.arange(first, last, device=probs.device)
    return probs[:, rows - start, rows + offset].sum(-1)  # (H, m) -> (H,)


def _column(col: int, lo: int, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over query rows i >= lo of A[i, col]."""
    skip = max(0, lo - start)
    return probs[:, skip:, col].sum(-1)  # (H, c - skip) -> (H,)


def _earlier_copies(ids: Tensor, probs: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over rows of the attention each row puts on earlier occurrences of its token."""
    c, n = probs.shape[1], probs.shape[2]
    ids = ids.to(probs.device)
    rows = torch.arange(start, start + c, device=probs.device)
    cols = torch.arange(n, device=probs.device)
    same = (ids[start : start + c, None] == ids[None, :n]) & (cols[None, :] < rows[:, None])  # (c, K)
    # One matrix-vector product instead of an (H, c, T) masked copy.
    return probs.reshape(probs.shape[0], c * n) @ same.reshape(c * n).to(probs.dtype)  # (H, c*T) @ (c*T,) -> (H,)


def _sink_rows(weights: Tensor, start: int, layer: int = 0) -> Tensor:
    """Sum over the chunk's rows of each row's sink weight, (H, c) -> (H,): a term of
    the kernel's `sink` quantity, not of the pattern."""
    return weights.sum(-1)


def _entropy(counts: Callable[[int], Tensor], probs: Tensor, start: int, layer: int = 0) -> Tensor:
    rows = counts(layer)[start : start + probs.shape[1]].to(probs.device)
    return normalised_entropy(probs, rows).sum(-1)  # (H, c) -> (H,)


class ScoreProbe(ProbeBase):
    """Accumulates, per selected layer and head, a sum for each term over all query rows.

    `terms` maps a score name to a function of one chunk (of the pattern, or for
    `_sink_rows` of the sink weights); `counts` maps it to the number of rows it averages
    over, so `result()` is sums / counts."""

    def __init__(self, layers: list[int], heads: list[int], terms: dict[str, Term], counts: dict[str, int]) -> None:
        super().__init__(layers, heads)
        self.terms = terms
        self.counts = counts
        self.sums: dict[str, Tensor] = {}
        self.sink_terms = {name for name, term in terms.items() if term is _sink_rows}
        if self.sink_terms:
            self.WHAT = ("pattern", "sink")

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        self._add(layer, start, probs, False)

    def sink(self, layer: int, start: int, weights: Tensor) -> None:
        self._add(layer, start, weights, True)

    def _add(self, layer: int, start: int, values: Tensor, sink: bool) -> None:
        chunk = self._pick(values).float()  # (H_sel, c, T), or the sink weights (H_sel, c)
        pos = self._layer_pos[layer]
        for name, term in self.terms.items():
            if (name in self.sink_terms) != sink:
                continue
            if name not in self.sums:  # on the probabilities' device, so a GPU run never syncs per chunk
                self.sums[name] = torch.zeros(len(self.layers), len(self.heads), dtype=torch.float64, device=chunk.device)
            self.sums[name][pos] += term(chunk, start, layer).double()

    def result(self) -> dict[str, Tensor]:
        zeros = torch.zeros(len(self.layers), len(self.heads), dtype=torch.float64)  # selected layers without sinks
        return {name: (self.sums.get(name, zeros) / self.counts[name]).float().cpu() for name in self.terms}


def text_terms(ids: Sequence[int], cfg: "ModelConfig", names: Sequence[str],
               measure: str = "weight") -> tuple[dict[str, Term], dict[str, int], dict[str, str]]:
    """Terms and row counts for the text scores in `names`, and why any has no value
    (under `measure`: the sink has no value vector, so only `weight` has a sink score)."""
    n = len(ids)
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    earlier = _rows_with_earlier_copies(ids_t.tolist())
    available: dict[str, tuple[Term, int]] = {
        "previous_token": (partial(_stripe, -1, 1, n), n - 1),
        "first_token": (partial(_column, 0, 1), n - 1),
        "self": (partial(_stripe, 0, 0, n), n),
        "next_token": (partial(_stripe, 1, 0, n - 1), n - 1),
        "duplicate_token": (partial(_earlier_copies, ids_t), earlier),
        "entropy": (partial(_entropy, partial(visible_counts, cfg, n)), n),
        "sink": (_sink_rows, n),
    }
    undefined: dict[str, str] = {}
    if cfg.causal:
        undefined["next_token"] = "the model is causal: no token sees the one after it"
    if earlier == 0:
        undefined["duplicate_token"] = "no token of the text repeats an earlier one"
    if not has_sinks(cfg):
        undefined["sink"] = "the model's attention has no sinks: every row sums to 1"
    elif measure != "weight":
        undefined["sink"] = f"--measure {measure}: the sink has no value vector, so it moves nothing"
    terms = {name: available[name][0] for name in names if name not in undefined}
    counts = {name: available[name][1] for name in terms}
    return terms, counts, {name: why for name, why in undefined.items() if name in names}


def load_probe(cfg: "ModelConfig", ls: list[int], bounds: list[tuple[int, int]]) -> "routing.LoadProbe | None":
    """A probe counting each text's routes (its tokens `bounds` of the pass) in the MoE
    layers among `ls`; None on a dense model or where no selected layer has experts."""
    plan = routing.plan(cfg, ls)
    if plan is None or not plan["layers"]:
        return None
    return routing.LoadProbe(plan["layers"], plan["experts"], bounds)


def has_sinks(cfg: "ModelConfig") -> bool:
    """Whether any layer's attention has learned sinks (gpt-oss)."""
    return any(spec.attn.sinks for spec, _ in cfg.stack.kinds())


def default_scores(cfg: "ModelConfig") -> list[str]:
    """The scores a run computes when none is named: every model's, and `sink` where it has sinks."""
    return list(ALL_SCORES if has_sinks(cfg) else SCORES)


def _rows_with_earlier_copies(ids: Sequence[int]) -> int:
    """How many positions hold a token id seen earlier (a set, not an n x n comparison)."""
    seen: set[int] = set()
    count = 0
    for token in ids:
        count += token in seen
        seen.add(token)
    return count


def induction_terms(prefix_len: int, repeat: int) -> tuple[dict[str, Term], dict[str, int]]:
    """Rows of the second copy after its first token, each scored on the key T-1 back:
    the token that followed the current token's first occurrence."""
    lo, hi = prefix_len + repeat + 1, prefix_len + 2 * repeat
    return {"induction": partial(_stripe, 1 - repeat, lo, hi)}, {"induction": repeat - 1}


# ------------------------------------------------------------------ induction input


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after any text: ([CLS], [SEP])
    for BERT, ([BOS], []) for Llama, ([], []) for GPT-2 and Qwen2."""
    full = list(tokenizer.encode(_AFFIX_PROBE_TEXT).ids)
    plain = list(tokenizer.encode(_AFFIX_PROBE_TEXT, add_special_tokens=False).ids)
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return full[:k], full[k + len(plain) :]
    return [], []  # a post-processor that rewrites the text's own ids: assume no affixes


def candidate_ids(tokenizer: Any, vocab_size: int, exclude: Sequence[int] = ()) -> list[int]:
    """Token ids the random run may use: the tokenizer's, within the model's embedding,
    without special tokens."""
    size = min(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
    special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    special.update(exclude)
    return [i for i in range(size) if i not in special]


def induction_input(tokenizer: Any, cfg: "ModelConfig", repeat: int, seed: int) -> tuple[list[int], list[int], list[int], int]:
    """prefix + R + R + suffix with R a seeded run of random ids, drawn without
    replacement where the vocabulary allows (so 'what followed last time' is unique).
    Returns (ids, prefix, suffix, T), T clamped so the input fits the model's positions."""
    if repeat < 2:
        raise UsageError(f"the induction run must be at least 2 tokens, got {repeat}", hint="use --repeat 2 or more")
    prefix, suffix = special_affixes(tokenizer)
    room = (cfg.n_ctx - len(prefix) - len(suffix)) // 2
    T = min(repeat, room)
    if T < 2:
        raise InputError(f"the model's {cfg.n_ctx} positions leave no room for a repeated run",
                         hint="score the text only: --score with another score")
    pool = candidate_ids(tokenizer, cfg.vocab_size, prefix + suffix)
    if not pool:
        raise InputError("the tokenizer has no ordinary tokens to draw the induction run from")
    gen = torch.Generator().manual_seed(seed)
    if len(pool) >= T:
        picks = torch.randperm(len(pool), generator=gen)[:T]
    else:
        picks = torch.randint(len(pool), (T,), generator=gen)
    run = [pool[k] for k in picks.tolist()]
    return prefix + run + run + suffix, prefix, suffix, T


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


class _Padded:
    """Score probes for layers of different head counts, one a count, fed by one pass;
    `result()` is one (L_sel, H_max) grid a score, NaN where a layer has no such head."""

    def __init__(self, layers: list[int], heads: list[int], by_count: dict[int, list[int]], terms: dict[str, Term],
                 counts: dict[str, int]) -> None:
        self.layers, self.heads = layers, heads
        self.parts = [(group, ScoreProbe(group, list(range(count)), terms, counts))
                      for count, group in by_count.items()]

    def wants(self, site: str, what: str) -> bool:
        return any(p.wants(site, what) for _, p in self.parts)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        for _, p in self.parts:
            if p.wants(site, what):
                p.report(site, what, value, q_start, k_start)

    def result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group, p in self.parts:
            for name, values in p.result().items():  # (len(group), count)
                grid = out.setdefault(name, torch.full((len(self.layers), len(self.heads)), float("nan")))
                for i, layer in enumerate(group):
                    grid[self.layers.index(layer), : values.shape[1]] = values[i]
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
