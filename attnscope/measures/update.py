"""The update of one word, as the lesson tells it: in one layer, how much each earlier word
wrote into the chosen token's embedding through attention, summed over heads and per
head, beside the size of the whole update and of the embedding itself.

With α_hij the pattern, f_h(x) = (x W_V^h + b_V^h) W_O^h (Kobayashi et al. 2020) and i the
chosen token: word j writes Σ_h α_hij f_h(x_j) into token i (the output bias left out);
the whole update is Σ_j of that, and the embedding is the residual stream x_i entering the
layer. Read from the hooks at `blocks.{layer}` (`resid_pre`) and `blocks.{layer}.attn`
(`v`, `pattern`); the head's output projection is read from the layer's own part while
the layer runs, so offloaded blocks work too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnscope.hooks import attn_site


@dataclass
class WordUpdate:
    layer: int
    query: int
    per_key: Tensor  # (K,) ‖Σ_h α_hij f_h(x_j)‖ for each key j
    per_head: Tensor  # (H, K) ‖α_hij f_h(x_j)‖
    update: float  # ‖Σ_j Σ_h α_hij f_h(x_j)‖: the whole attention update of token i
    embedding: float  # ‖x_i‖ entering the layer


class WordUpdateHook:
    def __init__(self, model: Any, layer: int, query: int) -> None:
        self.attn = model.blocks[layer].attn
        # a pipeline's model (`pipeline.Driver`) holds other ranks' layers on the meta device:
        # it lends this layer's W_O from its owner, before the pass
        fetch = getattr(model, "fetch", None)
        self.o_weight = fetch(f"blocks.{layer}.attn.o.weight") if fetch is not None else None
        self.layer, self.query = layer, query
        self.site, self.block = attn_site(layer), f"blocks.{layer}"
        self.f: Tensor | None = None  # (H, K, d)
        self.embedding = 0.0
        self.result: WordUpdate | None = None

    def wants(self, site: str, what: str) -> bool:
        return (site, what) in ((self.block, "resid_pre"), (self.site, "v"), (self.site, "pattern"))

    def report(self, site: str, what: str, value: Tensor, q_start: int, k_start: int) -> None:
        if what == "resid_pre":
            self.embedding = float(value[self.query - q_start].double().norm())
        elif what == "v":
            cfg = self.attn.cfg
            o = self.attn.o.weight if self.o_weight is None else self.o_weight
            w = o.view(cfg.d_model, cfg.n_heads, -1).double()  # (d, H, dv): a head's value width
            v = value.double().repeat_interleave(self.attn.spec.group_size, dim=0)  # (H, K, dh): this layer's groups
            self.f = torch.einsum("hkd,mhd->hkm", v, w)  # (H, K, d): f_h(x_j)
        elif q_start <= self.query < q_start + value.shape[1]:
            assert self.f is not None  # internal invariant: values come before the pattern
            alpha = value[:, self.query - q_start].double()  # (H, Kc)
            moved = alpha[:, :, None] * self.f[:, : alpha.shape[1]]  # (H, Kc, d)
            by_key = moved.sum(0)  # (Kc, d)
            self.result = WordUpdate(self.layer, self.query, by_key.norm(dim=-1).float().cpu(),
                                     moved.norm(dim=-1).float().cpu(), float(by_key.sum(0).norm()), self.embedding)
            self.f = None
