"""A block: attention and an MLP slot joined to the residual stream by a declared wiring.

Wirings (`LayerSpec.wiring`; what each holds, in order, is declared in `parts.WIRING_ORDER`):
  * pre       x += attn(norm(x)); x += mlp(norm(x))                 GPT-2, Llama
  * post      x = norm(x + attn(x)); x = norm(x + mlp(x))           BERT, OPT-350m
  * parallel  x += attn(norm1(x)) + mlp(norm2(x))                   GPT-NeoX
  * parallel_shared  h = norm(x); x += attn(h) + mlp(h)             Phi
  * sandwich  x += norm(attn(norm(x))); x += norm(mlp(norm(x)))     Gemma 2, Gemma 3
  * post_sublayer  x += norm(attn(x)); x += norm(mlp(x))            OLMo 2, OLMo 3
  * pre_no_attn_norm  x += attn(x); x += mlp(norm(x))               ModernBERT's layer 0

Each layer is built from its own kind (`ModelConfig.layer(i)`, an `attnscope.kinds.LayerSpec`):
its wiring, its attention and its MLP, and a scale on what each adds to the residual
stream (Granite's residual_multiplier; 1 elsewhere, and then no multiplication at all).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.hooks import block_site, mlp_site
from attnscope.parts import WIRING_NORMS
from attnscope.parts.attention import Attention
from attnscope.parts.latent import LatentAttention
from attnscope.parts.mlp import make_mlp
from attnscope.parts.norms import make_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        spec = cfg.layer(layer)
        self.wiring = spec.wiring
        self.scale = spec.residual_scale
        for name in WIRING_NORMS[self.wiring]:
            setattr(self, name, make_norm(cfg))
        self.attn = LatentAttention(cfg, layer) if spec.attn.kind == "latent" else Attention(cfg, layer)
        self.mlp = make_mlp(cfg, spec.mlp)
        self.site = block_site(layer)
        self.mlp_site = mlp_site(layer) if spec.mlp.kind == "experts" else None  # reports its routes
        self._forward = getattr(self, f"_{self.wiring}")

    def forward(self, x: Tensor, state: Any, cache: Any = None, hooks: Any = None) -> Tensor:
        """`state`: the pass's `model.PassState`, built once per forward pass."""
        start = state.start
        if hooks is not None and hooks.wants(self.site, "resid_pre"):
            hooks.report(self.site, "resid_pre", x, start, start)
        mlp = self.mlp
        if self.mlp_site is not None and hooks is not None:  # experts report each token's routes
            mlp = lambda h: self.mlp(h, hooks, self.mlp_site, start)  # noqa: E731
        out = self._forward(x, lambda h: self.attn(h, state, cache, hooks), mlp)
        if hooks is not None and hooks.wants(self.site, "resid_post"):
            hooks.report(self.site, "resid_post", out, start, start)
        return out

    def _pre(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        if self.scale != 1.0:  # Granite: residual + update * residual_multiplier
            x = x + attn(self.attn_norm(x)) * self.scale
            return x + mlp(self.mlp_norm(x)) * self.scale
        x = x + attn(self.attn_norm(x))
        return x + mlp(self.mlp_norm(x))

    def _post(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = self.attn_norm(x + attn(x))
        return self.mlp_norm(x + mlp(x))

    def _parallel(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        return x + attn(self.attn_norm(x)) + mlp(self.mlp_norm(x))

    def _parallel_shared(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        h = self.attn_norm(x)
        return x + attn(h) + mlp(h)

    def _sandwich(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + self.post_attn_norm(attn(self.attn_norm(x)))
        return x + self.post_mlp_norm(mlp(self.mlp_norm(x)))

    def _post_sublayer(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + self.post_attn_norm(attn(x))
        return x + self.post_mlp_norm(mlp(x))

    def _pre_no_attn_norm(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + attn(x)  # the embedding norm just normalised x: ModernBERT's first layer adds none
        return x + mlp(self.mlp_norm(x))
