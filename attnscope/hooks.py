"""Hooks at named sites: how a forward pass reports what it computed to whoever asked.

After TransformerLens's hook points (`hook_q`, `hook_k`, `hook_v`, `hook_attn_scores`,
`hook_pattern`, `hook_z`, `hook_result`), but pull rather than push: every attention site
has a name (`blocks.3.attn`) and asks its hooks, once per forward pass, whether anyone
wants each quantity; nothing is computed for a quantity nobody asked for. Quantities that
come in query chunks (scores, pattern, z, result) are reported chunk by chunk, so a hook
can keep as little as it likes.

What a site reports (H query heads, H_kv key/value heads, c query rows of a chunk, K keys):
  * `q`       (H, T, d_head) queries after positions (RoPE), before the score scale;
  * `k`, `v`  (H_kv, K, d_head) keys (after RoPE) and values, the cache's included;
  * `scores`  (H, c, K) float32, after score modifiers (soft-capping) and any bias, before the mask;
  * `bias`    (H, c, K) float32, only where the layer takes the stack's relative position
              bias (T5, MPNet): what was added to `scores`, read by mask-demo as a step;
  * `pattern` (H, c, K) float32 softmax; a causal chunk stops at its last query's key,
              the rest of each row is exactly 0; at a linear layer's site (Gated
              DeltaNet, parts.deltanet) the hidden attention M over its value heads:
              signed, rows not summing to 1 (`SiteInfo.stochastic` False), which the
              outputs rank by |weight| and draw on a diverging scale
              (`analysis.signed_layers`);
  * `sink`    (H, c) float32, only where the kind has sinks (gpt-oss): the weight of each
              row's sink column, from the same softmax, so a row of `pattern` sums to
              1 − sink;
  * `z`       (H, c, d_head) each head's weighted sum of values;
  * `result`  (H, c, d_model) each head's share of the output projection (no bias),
              what the head writes back to the residual stream before heads are summed;
  * `fnorm`   (H, K) ‖f_h(x_j)‖₂, the size of what head h would move from key j at full
              weight: f_h(x) = (x W_V^h + b_V^h) W_O^h (Kobayashi et al. 2020), with the
              key/value head serving h; one vector per head.
Each block's own site, `blocks.{layer}`, reports the residual stream (T, d_model) entering
it (`resid_pre`) and leaving it (`resid_post`). A block whose MLP is a mixture of experts
has a site `blocks.{layer}.mlp` reporting each token's routes: `routes` (T, k) int64, the
experts it visits, and `route_weights` (T, k) float32, their weights, in the router's order.

`q_start` is the absolute position of the first query row, `k_start` of the first key.
A reported tensor is never modified after the report, but it may be reused memory the
site no longer needs: a hook that keeps one keeps a copy or what it computed from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from attnscope.config import ModelConfig

WHATS = ("q", "k", "v", "scores", "pattern", "sink", "z", "result", "fnorm", "resid_pre", "resid_post", "bias",
         "routes", "route_weights")
CHUNKED = ("scores", "pattern", "sink", "z", "result", "bias")
# An encoder-decoder's second stack names its sites under this prefix: `decoder.blocks.3.attn`
# (its self-attention), `decoder.blocks.3.cross` (its cross-attention), `decoder.blocks.3`.
DECODER = "decoder."
PARTS = ("encoder", "decoder", "cross")
_SITE = re.compile(r"^blocks\.(\d+)\.attn$")


def attn_site(layer: int) -> str:
    """The name of layer `layer`'s self-attention site."""
    return f"blocks.{layer}.attn"


def mlp_site(layer: int) -> str:
    """The name of layer `layer`'s mixture-of-experts site (its routes)."""
    return f"blocks.{layer}.mlp"


def cross_site(layer: int) -> str:
    """The name of an encoder-decoder's decoder layer `layer`'s cross-attention site."""
    return f"{DECODER}blocks.{layer}.cross"


def block_site(layer: int) -> str:
    """The name of layer `layer`'s block site (the residual stream around it)."""
    return f"blocks.{layer}"


def site_layer(site: str) -> int | None:
    """The layer of a `blocks.N.attn` site; None for any other site."""
    m = _SITE.match(site)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class SiteInfo:
    """One attention site as selections, results and saves read it: its name, layer,
    kind in words ("global", "local, window 4096"), its own query heads, whether each
    pattern row is a distribution (softmax sums to 1; sinks take a share, so less), and
    whether it has sinks (it then reports `sink`)."""

    name: str
    layer: int
    kind: str
    n_heads: int
    stochastic: bool
    sinks: bool = field(default=False, compare=False)  # from the same kind as `stochastic`


def sites(cfg: "ModelConfig", part: str = "encoder") -> list[SiteInfo]:
    """The model's attention sites, one per layer, read from its layer kinds (each kind's
    fields found once, so a long run of one kind costs a name per layer).

    `part`, for an encoder-decoder (`cfg.decoder`; PARTS): "encoder" (the model's own stack,
    `blocks.{i}.attn`, the default and the only part of every other model), "decoder" (its
    causal self-attention, `decoder.blocks.{i}.attn`) or "cross" (`decoder.blocks.{i}.cross`,
    rows target tokens, keys source tokens); `layer` counts within the stack."""
    rope_model = cfg.positions == "rope"
    out: list[SiteInfo] = []
    if part != "encoder":
        assert part in PARTS and cfg.decoder is not None, f"no {part} sites"  # internal invariant
        for spec, count in cfg.decoder.runs:
            a = spec.attn if part == "decoder" else spec.cross
            kind = "causal decoder" if part == "decoder" else "cross-attention, whole source"
            name = (lambda i: f"{DECODER}{attn_site(i)}") if part == "decoder" else cross_site
            out.extend(SiteInfo(name(i), i, kind, a.n_heads, True) for i in range(len(out), len(out) + count))
        return out
    for spec, count in cfg.stack.runs:
        a = spec.attn
        kind, stochastic = a.words(rope_model), a.kind == "softmax" and not a.sinks
        out.extend(SiteInfo(attn_site(i), i, kind, a.n_heads, stochastic, a.sinks)
                   for i in range(len(out), len(out) + count))
    return out


class Hook(Protocol):
    """Anything a forward pass can report to."""

    def wants(self, site: str, what: str) -> bool: ...

    def report(self, site: str, what: str, value: "Tensor", q_start: int, k_start: int) -> None: ...


class Hooks:
    """Several hooks fed by one forward pass."""

    def __init__(self, *hooks: Any) -> None:
        self.hooks = [h for h in hooks if h is not None]

    def wants(self, site: str, what: str) -> bool:
        return any(h.wants(site, what) for h in self.hooks)

    def report(self, site: str, what: str, value: "Tensor", q_start: int, k_start: int) -> None:
        for h in self.hooks:
            if h.wants(site, what):
                h.report(site, what, value, q_start, k_start)


class Capture:
    """Keeps whole tensors of the quantities asked for: `Capture({"blocks.0.attn": ["pattern"]})`,
    then `.get("blocks.0.attn", "pattern")`. Chunked quantities are assembled over the
    query rows; rows a causal chunk left short are completed with 0 (pattern, z, result)
    or −∞ (scores, where a key after the query was never scored)."""

    def __init__(self, wanted: dict[str, Iterable[str]]) -> None:
        for site, whats in wanted.items():
            unknown = set(whats) - set(WHATS)
            assert not unknown, f"unknown quantities {unknown} at {site}"  # internal invariant
        self.wanted = {site: set(whats) for site, whats in wanted.items()}
        self._parts: dict[tuple[str, str], list[tuple[int, int, Tensor]]] = {}

    def wants(self, site: str, what: str) -> bool:
        return what in self.wanted.get(site, ())

    def report(self, site: str, what: str, value: "Tensor", q_start: int, k_start: int) -> None:
        self._parts.setdefault((site, what), []).append((q_start, k_start, value.detach().cpu()))

    def get(self, site: str, what: str) -> "Tensor":
        import torch

        parts = self._parts.get((site, what))
        if not parts:
            raise KeyError(f"nothing captured for {what} at {site}")
        if what not in CHUNKED:
            return parts[-1][2]
        if what in ("sink", "z", "result"):
            return torch.cat([p[2] for p in parts], dim=1)
        width = max(p[2].shape[-1] for p in parts)
        fill = float("-inf") if what == "scores" else 0.0
        rows = [torch.nn.functional.pad(p[2], (0, width - p[2].shape[-1]), value=fill) for p in parts]
        return torch.cat(rows, dim=1)  # (H, T, K)
