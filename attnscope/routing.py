"""Where each token's MLP computation went: the experts a mixture-of-experts layer sent it
to, and with what weights — the other half of "where did this token's computation go".

Each block whose MLP is experts reports every token's routes at its site
`blocks.{layer}.mlp` (`hooks.mlp_site`): `routes` (T, k) int64 and `route_weights` (T, k)
float32, in the router's order (largest weight first for a softmax-then-top-k router).
`RouteProbe` keeps them for the layers asked, as one (layers, n, k) tensor each, so one
forward pass serves attention views and routes alike. `LoadProbe` only counts them per
expert (the expert load `heads` reports), per text of a packed pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from attnscope.config import ModelConfig


def moe_layers(cfg: "ModelConfig") -> list[int]:
    """The layers whose MLP is a mixture of experts, in order."""
    out: list[int] = []
    at = 0
    for spec, count in cfg.stack.runs:
        if spec.mlp.kind == "experts":
            out.extend(range(at, at + count))
        at += count
    return out


def top_k(cfg: "ModelConfig", layers: list[int]) -> int:
    """The experts per token of `layers` (all alike in every supported family)."""
    ks = {cfg.layer(i).mlp.experts.top_k for i in layers}  # type: ignore[union-attr]
    assert len(ks) == 1, f"layers {layers} route to different numbers of experts"  # internal invariant
    return ks.pop()


def n_experts(cfg: "ModelConfig", layers: list[int]) -> int:
    """The routed experts of `layers` (all alike in every supported family)."""
    es = {cfg.layer(i).mlp.experts.n_experts for i in layers}  # type: ignore[union-attr]
    assert len(es) == 1, f"layers {layers} hold different numbers of experts"  # internal invariant
    return es.pop()


def plan(cfg: "ModelConfig", layers: list[int]) -> dict[str, Any] | None:
    """What a pass over `layers` routes, for a model with experts (None without):
    {"layers": the MoE layers among them, "experts": E, "top_k": k}."""
    every = moe_layers(cfg)
    if not every:
        return None
    chosen = set(layers)
    return {"layers": [layer for layer in every if layer in chosen], "experts": n_experts(cfg, every),
            "top_k": top_k(cfg, every)}


def expert_counts(experts: "Tensor", n: int) -> "Tensor":
    """(L, n) int64 from routes (L, T, k): how many (token, choice) pairs each expert received."""
    import torch

    assert experts.numel() == 0 or int(experts.min()) >= 0, "a route was never reported"  # internal invariant
    if len(experts) == 0:
        return torch.zeros((0, n), dtype=torch.long)
    return torch.stack([torch.bincount(e.reshape(-1), minlength=n) for e in experts])  # (L, T, k) -> (L, n)


def spread(counts: "Tensor") -> list[dict[str, float]]:
    """Per layer of (L, E) counts, how unevenly the router loads its experts: the largest
    and smallest share, and the coefficient of variation of the shares (their standard
    deviation over their mean 1/E; 0 = perfectly even, √(E/k − 1) = k experts take all)."""
    out = []
    for row in counts.double():
        share = row / max(1.0, float(row.sum()))
        mean = float(share.mean())
        cv = float(share.std(unbiased=False)) / mean if mean > 0 else 0.0
        out.append({"max_share": float(share.max()), "min_share": float(share.min()), "cv": cv})
    return out


@dataclass
class Routes:
    """Each token's experts and weights in `layers`: experts (L, n, k) int64 and weights
    (L, n, k) float32, both in the router's order."""

    layers: list[int]
    experts: "Tensor"
    weights: "Tensor"

    def load(self, n_experts: int) -> "Tensor":
        """(L, n_experts) float32: the share of (token, choice) pairs each expert received."""
        return expert_counts(self.experts, n_experts).float() / max(1, self.experts.shape[1] * self.experts.shape[2])


class RouteProbe:
    """A hook keeping the routes of `layers` for a pass over `n` tokens (its `layers`
    also tell the pass how far it must run)."""

    def __init__(self, layers: list[int], n: int, k: int) -> None:
        import torch

        self.layers = list(layers)
        self._row = {f"blocks.{layer}.mlp": i for i, layer in enumerate(self.layers)}
        self.experts = torch.full((len(self.layers), n, k), -1, dtype=torch.long)
        self.weights = torch.zeros((len(self.layers), n, k), dtype=torch.float32)

    def wants(self, site: str, what: str) -> bool:
        return site in self._row and what in ("routes", "route_weights")

    def report(self, site: str, what: str, value: "Tensor", q_start: int, k_start: int) -> None:
        target = self.experts if what == "routes" else self.weights
        target[self._row[site], q_start:q_start + value.shape[0]] = value.to(target.device, target.dtype)

    def result(self) -> Routes:
        return Routes(self.layers, self.experts, self.weights)


class LoadProbe:
    """A hook counting, for each text of a pass (several when texts are packed, each its
    (start, end) in `bounds`), how many (token, choice) pairs each expert of `layers`
    received: (texts, layers, E) int64, kept on the pass's device (one bincount a layer,
    no copy to the host until `result`), never the (layers, n, k) routes themselves."""

    def __init__(self, layers: list[int], n_experts: int, bounds: list[tuple[int, int]]) -> None:
        self.layers, self.n_experts, self.bounds = list(layers), n_experts, list(bounds)
        self._row = {f"blocks.{layer}.mlp": i for i, layer in enumerate(self.layers)}
        self._counts: "Tensor | None" = None  # (texts, L, E)
        self._segment: "Tensor | None" = None  # (n,): each position's text
        self._seen = [0] * len(self.layers)  # tokens reported per layer

    def wants(self, site: str, what: str) -> bool:
        return site in self._row and what == "routes"

    def report(self, site: str, what: str, value: "Tensor", q_start: int, k_start: int) -> None:
        import torch

        texts, E = len(self.bounds), self.n_experts
        if self._counts is None:
            self._counts = torch.zeros((texts, len(self.layers), E), dtype=torch.long, device=value.device)
            self._segment = torch.cat([torch.full((b - a,), t, dtype=torch.long)
                                       for t, (a, b) in enumerate(self.bounds)]).to(value.device)
        assert self._segment is not None  # set with the counts
        rows = value.shape[0]
        row = self._row[site]
        value = value.to(self._counts.device)  # blocks placed on several devices report from each
        pair = self._segment[q_start:q_start + rows, None] * E + value  # (c, k): text × E + expert
        self._counts[:, row] += torch.bincount(pair.reshape(-1), minlength=texts * E).reshape(texts, E)
        self._seen[row] += rows

    def result(self) -> "Tensor":
        """(texts, layers, E) int64 on the host."""
        n = self.bounds[-1][1] if self.bounds else 0
        assert self._counts is not None and self._seen == [n] * len(self.layers), "a route was never reported"
        return self._counts.cpu()


def route(m: Any, ids: Any, layers: list[int] | None = None) -> Routes:
    """The routes of token ids through the model of an `api.Inspector` (default: every MoE layer)."""
    chosen = moe_layers(m.config) if layers is None else layers
    probe = RouteProbe(chosen, len(ids), top_k(m.config, chosen))
    m.run(ids, probe, max(chosen))
    return probe.result()
