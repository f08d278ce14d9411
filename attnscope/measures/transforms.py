"""What a pattern chunk becomes under each `--measure`, as hook wrappers.

A wrapper sits between the model's attention sites and the probes (top-k, focus,
summaries, full patterns, streamed saves, head scores), which all read `pattern`
chunks: it reads the hooks it needs and hands its own values on as if they were the
pattern, so every view, export and score works under every measure unchanged.

* weight: the softmax weights α themselves (no wrapper).
* norm (Kobayashi et al., "Attention is Not Only a Weight", EMNLP 2020): ‖α_hij f_h(x_j)‖₂
  = α_hij ‖f_h(x_j)‖₂ with f_h(x) = (x W_V^h + b_V^h) W_O^h, read from the `pattern` and
  `fnorm` hooks. Views get each row normalised to sum 1; saves get the raw values.
  On a layer whose pattern is signed (a linear layer's hidden attention M, its site not
  row-stochastic: `analysis.signed_layers`) the output is o_t = Σ_j M[t, j] v_j, but what
  follows (a gated RMSNorm, then W_O) is not linear in o_t, so no f(x_j) through W_O
  exists: norm there is ‖M[t, j] v_j‖ = |M[t, j]| ‖v_j‖, what key j moves into the
  layer's own output before its gated norm, read from `pattern` and `v` (a linear site
  reports `v` after its pattern: the layer's chunks wait for it, one layer at most).
* rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  Ā_l = 0.5 · mean_h A_l + 0.5 · I with rows renormalised, R_0 = Ā_0, R_l = Ā_l R_{l−1};
  one n × n matrix per layer, handed on as a single "head" once the layer is complete.
  It reads each row as a distribution of flow: a signed layer up to the last one asked
  for is refused in one line (`check_rollout`).
* alti, value-zeroing (the context-mixing measures: the whole layer read, residual,
  norms and MLP included): `measures.mixing`, one matrix a layer as rollout's.

A sink column (gpt-oss) is a weight with no value vector: only `weight` hands the
`sink` quantity on; under norm it moves nothing and rollout has no heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from attnscope.hooks import attn_site, site_layer

if TYPE_CHECKING:
    from attnscope.hooks import SiteInfo

MEASURE_NAMES = ("weight", "norm", "rollout", "alti", "value-zeroing")
DESCRIPTIONS = {
    "weight": "attention weight α (softmax)",
    "norm": "‖α·f(x)‖: how much each key moves the query (Kobayashi et al. 2020), rows normalised to 1",
    "rollout": "attention rollout (Abnar & Zuidema 2020): flow from each input token through all layers so far",
    "alti": "ALTI (Ferrando et al. 2022): each token's share of the layer's output, residual and norm counted, "
            "rolled out through the layers so far",
    "value-zeroing": "Value Zeroing (Mohebbi et al. 2023): how far zeroing each token's values moves the layer's "
                     "output (cosine distance), rows normalised to 1",
}


class NormMeasure:
    """Pattern chunks -> α_hij ‖f_h(x_j)‖: normalised rows to `views`, raw ones to `raw`;
    at a `signed` layer's site, |M_hij| ‖v_hj‖ (see the module docstring)."""

    def __init__(self, views: Any = None, raw: Any = None, signed: frozenset[int] = frozenset()) -> None:
        self.targets = [(t, normalise) for t, normalise in ((views, True), (raw, False)) if t is not None]
        self.fnorm: dict[str, Tensor] = {}
        self.signed = {attn_site(layer) for layer in signed}
        self.waiting: dict[str, list[tuple[Tensor, int, int]]] = {}  # a signed site's chunks before its `v`

    def wants(self, site: str, what: str) -> bool:
        size = "v" if site in self.signed else "fnorm"
        return what in ("pattern", size) and any(t.wants(site, "pattern") for t, _ in self.targets)

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "fnorm":
            self.fnorm[site] = value
            return
        if what == "v":  # (H, K, d_v): one value vector per head and key
            self.fnorm[site] = value.float().norm(dim=-1)  # (H, K)
            waiting = self.waiting.pop(site, [])
            for chunk in waiting:
                self._pattern(site, *chunk)
            if waiting:  # these values were this pass's, reported after its rows: the next pass brings its own
                del self.fnorm[site]
            return
        if site in self.signed and site not in self.fnorm:
            self.waiting.setdefault(site, []).append((value.clone(), q_start, k_start))
            return
        self._pattern(site, value, q_start, k_start)

    def _pattern(self, site: str, value: Tensor, q_start: int, k_start: int) -> None:
        size = self.fnorm[site][:, None, : value.shape[-1]].to(value.device)
        if size.shape[-1] < value.shape[-1]:  # a cached step: the values of earlier passes are not reported
            from attnscope.errors import UsageError

            raise UsageError(f"--measure norm on {site}'s hidden attention needs every value in one pass, "
                             "not a cached step's", hint="use --measure weight here")
        if size.shape[0] != value.shape[0]:  # key/value heads each serving a group of query heads
            size = size.repeat_interleave(value.shape[0] // size.shape[0], dim=0)
        norms = (value.abs() if site in self.signed else value) * size  # (H, c, K)
        for target, normalise in self.targets:
            if not target.wants(site, "pattern"):
                continue
            out = norms / norms.sum(-1, keepdim=True).clamp_min(1e-30) if normalise else norms
            target.report(site, "pattern", out, q_start, k_start)


class RolloutMeasure:
    """Pattern chunks of every layer up to the last one wanted -> R_l, one (1, n, n)
    matrix per layer, handed to the targets as a single head."""

    def __init__(self, n: int, last_layer: int, views: Any = None, raw: Any = None) -> None:
        self.targets = [t for t in (views, raw) if t is not None]
        self.n = n
        self.last = last_layer
        self.current: Tensor | None = None  # (n, n): this layer's mean over heads
        self.rolled: Tensor | None = None  # (n, n): R of the layer before

    def wants(self, site: str, what: str) -> bool:
        layer = site_layer(site)
        return what == "pattern" and layer is not None and layer <= self.last

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        assert k_start == 0, "rollout reads whole-text passes"  # internal invariant
        n = self.n
        if self.current is None:
            self.current = torch.zeros(n, n, dtype=torch.float32, device=value.device)
        c, K = value.shape[1], value.shape[2]
        self.current[q_start:q_start + c, :K] = value.float().mean(0)  # (c, K)
        self.current[q_start:q_start + c, K:] = 0.0
        if q_start + c < n:
            return
        mixed = self.current.mul_(0.5)
        mixed.diagonal().add_(0.5)
        mixed.div_(mixed.sum(-1, keepdim=True))  # rows renormalised (they already sum to 1 up to rounding)
        self.rolled = mixed.clone() if self.rolled is None else mixed @ self.rolled  # (n, n)
        self.current = None
        for target in self.targets:
            if target.wants(site, "pattern"):
                target.report(site, "pattern", self.rolled[None], 0, 0)  # (1, n, n)


def check_rollout(sites: Sequence["SiteInfo"], last_layer: int) -> None:
    """Rollout reads every row up to `last_layer` as a distribution: a layer whose rows
    are signed (`analysis.signed_layers`) is refused in one line."""
    from attnscope.analysis import signed_layers
    from attnscope.errors import UsageError

    bad = sorted(layer for layer in signed_layers(sites) if layer <= last_layer)
    if bad:
        raise UsageError(f"--measure rollout needs row-stochastic layers (rows that are distributions); layer {bad[0]} "
                         f"is {sites[bad[0]].kind}, whose hidden attention is signed and its rows do not sum to 1",
                         hint="use --measure weight or norm on this model")


def check_norm(cfg: Any, layers: Sequence[int]) -> None:
    """norm reads ‖α_hij f_h(x_j)‖ with f_h through W_O alone; a layer with an output gate
    (Qwen3.5, Qwen3-Next: each head's output × σ(gate of query i) before W_O) moves
    ‖α_hij (v_j ⊙ σ(g_i)) W_O^h‖ instead, no per-key size: refused in one line."""
    from attnscope.errors import UsageError

    gated = sorted(layer for layer in set(layers) if cfg.layer(layer).attn.out_gate)
    if gated:
        raise UsageError(f"--measure norm has no per-key size on layer {gated[0]}: its output gate scales each "
                         "head's output by the query's own σ(gate) before W_O",
                         hint="use --measure weight on this layer (or --layer a linear layer)")


def wrap(measure: str, n: int, last_layer: int, views: Any = None, raw: Any = None, model: Any = None,
         sites: Sequence["SiteInfo"] = ()) -> Any:
    """The hook to run: the targets themselves under `weight`, else the measure's wrapper.
    `sites` (the model's, `hooks.sites`): which layers' patterns are signed."""
    from attnscope.analysis import signed_layers

    if measure == "weight":
        from attnscope.hooks import Hooks

        return Hooks(views, raw)
    if measure == "norm":
        return NormMeasure(views, raw, signed_layers(sites))
    if measure == "rollout":
        check_rollout(sites, last_layer)
        return RolloutMeasure(n, last_layer, views, raw)
    if measure in ("alti", "value-zeroing"):  # the whole layer read: measures.mixing
        from attnscope.measures import mixing

        return mixing.wrap(measure, model, n, last_layer, views, raw)
    raise AssertionError(f"unknown measure {measure}")  # internal invariant: the CLI offers only these


