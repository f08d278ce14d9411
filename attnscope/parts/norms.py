"""Normalisation parts: LayerNorm (with or without its bias: ModernBERT has none), and RMSNorm
in Llama's and Gemma's variants."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnscope.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32. Gemma scales by (1 + weight) in
    float32 before casting back; Llama casts back, then scales by the weight."""

    def __init__(self, d: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d))
        self.eps = eps
        self.offset = offset

    def forward(self, x: Tensor) -> Tensor:
        h = x.float() if x.dtype != torch.float64 else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (h * (self.offset + self.weight.to(h.dtype))).to(x.dtype)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: ModelConfig, d: int | None = None) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(d or cfg.d_model, cfg.norm_eps, cfg.norm_offset)
    return nn.LayerNorm(d or cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm != "layernorm_no_bias")
