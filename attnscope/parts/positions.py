"""Position parts acting on queries and keys: rotary embeddings (RoPE) and their scalings.

Learned absolute positions are a table added to the embeddings (`model.Embedding`); later
schemes that act on scores (ALiBi, relative buckets) will be score modifiers in
`parts.attention`. Every part here takes absolute positions, so a KV cache's offset is
nothing special.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnscope.config import ModelConfig
from attnscope.kinds import RopeSpec


def rope_inv_freq(rope: "RopeSpec | ModelConfig", n_ctx: int | None = None) -> Tensor:
    """RoPE inverse frequencies (rotary_dim/2,) of one kind of layer, with Llama 3's
    frequency-dependent scaling. Given a ModelConfig: its first layer's RoPE."""
    if isinstance(rope, ModelConfig):
        cfg = rope
        rope, n_ctx = cfg.layer(0).attn.rope, cfg.n_ctx
        assert rope is not None  # internal invariant: asked of a RoPE model
    dh = rope.rotary_dim
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    scaling = rope.scaling_dict
    if scaling and rope.scaling_type == "linear":
        # positions slowed by `factor` (transformers' _compute_linear_scaling_rope_parameters;
        # Gemma 3 4B/12B global layers: 8)
        return inv_freq / float(scaling["factor"])
    if scaling and rope.scaling_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", n_ctx))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the middle blended.
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


class Rotary:
    """Rotates queries and keys by their absolute positions (Hugging Face's `rotate_half`
    layout, which its Llama checkpoints are permuted for); with partial rotary (NeoX,
    Phi) only the first `rotary_dim` dimensions of each head turn. One per distinct
    `RopeSpec` of a model (Gemma 3's local and global layers have two)."""

    def __init__(self, rope: "RopeSpec", n_ctx: int) -> None:
        self.rope = rope
        self.n_ctx = n_ctx
        self._inv_freq: Tensor | None = None

    def tables(self, start: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return self.tables_at(torch.arange(start, start + n, device=device))

    def tables_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (T, rotary_dim) for any absolute positions (T,), e.g. packed texts'."""
        device = positions.device
        if self._inv_freq is None or self._inv_freq.device != device:
            self._inv_freq = rope_inv_freq(self.rope, self.n_ctx).to(device)
        pos = positions.to(torch.float32)
        freqs = torch.outer(pos, self._inv_freq)  # (T, rotary_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, rotary_dim): the two halves share frequencies
        return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (H, T, d_head) by position (cos, sin: (T, rotary_dim))."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]  # (H, T, rd), (H, T, d_head - rd)
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)  # (H, T, rd)
    out = (x_rot * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out
