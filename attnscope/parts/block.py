"""A block: attention and an MLP slot joined to the residual stream by a declared wiring.

Wirings (`LayerSpec.wiring`; what each holds, in order, is declared in `parts.WIRING_ORDER`):
  * pre       x += attn(norm(x)); x += mlp(norm(x))                 GPT-2, Llama
  * post      x = norm(x + attn(x)); x = norm(x + mlp(x))           BERT, OPT-350m
  * parallel  x += attn(norm1(x)) + mlp(norm2(x))                   GPT-NeoX
  * parallel_shared  h = norm(x); x += attn(h) + mlp(h)             Phi
  * sandwich  x += norm(attn(norm(x))); x += norm(mlp(norm(x)))     Gemma 2, Gemma 3
  * post_sublayer  x += norm(attn(x)); x += norm(mlp(x))            OLMo 2, OLMo 3
  * pre_no_attn_norm  x += attn(x); x += mlp(norm(x))               ModernBERT's layer 0
  * sandwich_moe  x += norm(attn(norm(x))); x += norm(mlp(norm(x), x))  Gemma 4's 26B-A4B: a dense
                MLP on norm(x) beside experts routed from x (parts.experts, ExpertSpec.d_dense)

Each layer is built from its own kind (`ModelConfig.layer(i)`, an `attnscope.kinds.LayerSpec`):
its wiring, its attention and its MLP, and a scale on what each adds to the residual
stream (Granite's residual_multiplier; 1 elsewhere, and then no multiplication at all).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.hooks import attn_site, block_site, cross_site, mlp_site
from attnscope.kinds import Stack
from attnscope.parts import WIRING_NORMS
from attnscope.parts.attention import Attention
from attnscope.parts.cross import CrossAttention
from attnscope.parts.deltanet import LinearAttention
from attnscope.parts.latent import LatentAttention
from attnscope.parts.mlp import ACTIVATIONS, make_mlp
from attnscope.parts.norms import make_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, stack: Stack | None = None, prefix: str = "") -> None:
        """`stack`, `prefix`: a layer of another stack and its sites' prefix (an
        encoder-decoder's decoder: `cfg.decoder`, "decoder.")."""
        super().__init__()
        spec = (stack or cfg.stack).layer(layer)
        self.wiring = spec.wiring
        self.scale = spec.residual_scale
        for name in WIRING_NORMS[self.wiring]:
            setattr(self, name, make_norm(cfg))
        kinds = {"latent": LatentAttention, "linear": LinearAttention}  # else softmax attention
        self.attn = (kinds.get(spec.attn.kind, Attention)(cfg, layer) if not prefix
                     else Attention(cfg, layer, spec.attn, f"{prefix}{attn_site(layer)}"))  # another stack's layer
        self.cross = None
        if spec.cross is not None:  # a decoder layer: keys and values from the encoder (parts.cross)
            self.cross_norm = make_norm(cfg)
            self.cross = CrossAttention(cfg, layer, spec.cross, cross_site(layer))
            self._forward = getattr(self, f"_{self.wiring}_cross")
        self.mlp = make_mlp(cfg, spec.mlp)
        self.site = f"{prefix}{block_site(layer)}"
        self.mlp_site = mlp_site(layer) if spec.mlp.kind == "experts" else None  # reports its routes
        if self.cross is None:
            self._forward = getattr(self, f"_{self.wiring}")
        self.layer = layer
        if spec.per_layer is not None:  # Gemma 4: the layer's own input, through a gate, after the MLP
            self.ple_gate = nn.Linear(cfg.d_model, spec.per_layer.width, bias=False)
            self.ple_proj = nn.Linear(spec.per_layer.width, cfg.d_model, bias=False)
            self.ple_norm = make_norm(cfg)
            self.ple_act = ACTIVATIONS[spec.mlp.act]
        if spec.out_scalar:  # Gemma 4's layer_scalar on the block's whole output
            self.layer_scalar = nn.Parameter(torch.empty(1))

    def forward(self, x: Tensor, state: Any, cache: Any = None, hooks: Any = None) -> Tensor:
        """`state`: the pass's `model.PassState`, built once per forward pass."""
        start = state.start
        if hooks is not None and hooks.wants(self.site, "resid_pre"):
            hooks.report(self.site, "resid_pre", x, start, start)
        mlp = self.mlp
        if self.mlp_site is not None and hooks is not None:  # experts report each token's routes
            mlp = lambda h, **raw: self.mlp(h, hooks, self.mlp_site, start, **raw)  # noqa: E731
        cross = () if self.cross is None else (lambda h: self.cross(h, state, hooks),)
        out = self._forward(x, lambda h: self.attn(h, state, cache, hooks), mlp, *cross)
        if hasattr(self, "ple_gate"):  # x += norm(W_up(act(W_gate x) · this layer's input))
            gated = self.ple_act(self.ple_gate(out)) * state.per_layer[:, self.layer]  # (T, p)
            out = out + self.ple_norm(self.ple_proj(gated))
        if hasattr(self, "layer_scalar"):
            out = out * self.layer_scalar
        if hooks is not None and hooks.wants(self.site, "resid_post"):
            hooks.report(self.site, "resid_post", out, start, start)
        return out

    def _pre(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        if self.scale != 1.0:  # Granite: residual + update * residual_multiplier
            x = x + attn(self.attn_norm(x)) * self.scale
            return x + mlp(self.mlp_norm(x)) * self.scale
        x = x + attn(self.attn_norm(x))
        return x + mlp(self.mlp_norm(x))

    def _pre_cross(self, x: Tensor, attn: Any, mlp: Any, cross: Any) -> Tensor:
        x = x + attn(self.attn_norm(x))  # T5, mBART: x += cross(norm(x)) between the two
        x = x + cross(self.cross_norm(x))
        return x + mlp(self.mlp_norm(x))

    def _post_cross(self, x: Tensor, attn: Any, mlp: Any, cross: Any) -> Tensor:
        x = self.attn_norm(x + attn(x))  # BART: x = norm(x + cross(x)) between the two
        x = self.cross_norm(x + cross(x))
        return self.mlp_norm(x + mlp(x))

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

    def _sandwich_moe(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + self.post_attn_norm(attn(self.attn_norm(x)))  # the experts' router and norm read x itself
        return x + self.post_mlp_norm(mlp(self.mlp_norm(x), residual=x))

    def _post_sublayer(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + self.post_attn_norm(attn(x))
        return x + self.post_mlp_norm(mlp(x))

    def _pre_no_attn_norm(self, x: Tensor, attn: Any, mlp: Any) -> Tensor:
        x = x + attn(x)  # the embedding norm just normalised x: ModernBERT's first layer adds none
        return x + mlp(self.mlp_norm(x))
