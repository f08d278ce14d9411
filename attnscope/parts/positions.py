"""Position parts acting on queries and keys: rotary embeddings (RoPE) and their scalings.

Learned absolute positions are a table added to the embeddings (`model.Embedding`);
schemes that act on scores are the kernel's: relative position buckets (T5, MPNet) are a
learned bias the stack owns (`parts.relative`), and ALiBi would be a score modifier in
`parts.attention`. Every part here takes absolute positions, so a KV cache's offset is
nothing special.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnscope.config import ModelConfig
from attnscope.kinds import RopeSpec


def rope_inv_freq(rope: "RopeSpec | ModelConfig", n_ctx: int | None = None, long: bool = False) -> Tensor:
    """RoPE inverse frequencies (rotary_dim/2,) of one kind of layer, with Llama 3's
    frequency-dependent scaling, YaRN's ramp, or longrope's short factors (`long`: its long ones).
    Given a ModelConfig: its first rotating layer's RoPE."""
    if isinstance(rope, ModelConfig):
        cfg = rope
        # the first layer that rotates (a hybrid's linear layers, Qwen3.5's layer 0, do not)
        rope = next((spec.attn.rope for spec, _ in cfg.stack.kinds() if spec.attn.rope is not None), None)
        n_ctx = cfg.n_ctx
        assert rope is not None  # internal invariant: asked of a RoPE model
    dh = rope.rotary_dim
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    scaling = rope.scaling_dict
    if scaling and rope.scaling_type == "longrope":
        # Phi-3: each frequency divided by its own factor, from one of two sets (as
        # transformers' _compute_longrope_parameters, in the same float32 order)
        ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        return 1.0 / (ext * rope.theta ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    if scaling and rope.scaling_type == "proportional":
        # Gemma 4's global layers: the first partial_rotary_factor · dh/2 frequencies of a
        # full-width RoPE turn (exponents over the whole head), the rest stand still
        # (transformers' _compute_proportional_rope_parameters), all divided by `factor`
        angles = int(float(scaling.get("partial_rotary_factor", 1.0)) * dh // 2)
        turning = 1.0 / (rope.theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / dh))
        still = torch.zeros(dh // 2 - angles, dtype=torch.float32)
        return torch.cat((turning, still)) / float(scaling.get("factor", 1.0))
    if scaling and rope.scaling_type == "linear":
        # positions slowed by `factor` (transformers' _compute_linear_scaling_rope_parameters;
        # Gemma 3 4B/12B global layers: 8)
        return inv_freq / float(scaling["factor"])
    if scaling and rope.scaling_type == "yarn":
        return _yarn_inv_freq(rope.theta, dh, scaling, n_ctx)
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


def _yarn_factor(scaling: dict, n_ctx: int | None) -> float:
    """YaRN's stretch: `factor`, else the context over the original one."""
    factor = scaling.get("factor")
    return float(factor) if factor is not None else n_ctx / scaling["original_max_position_embeddings"]


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(theta: float, dim: int, scaling: dict, n_ctx: int | None) -> Tensor:
    """YaRN (OLMo 3's full layers): frequencies that turn fewer than `beta_slow` times over
    the original context are slowed by `factor`, those turning more than `beta_fast` times
    kept, and a linear ramp over the dimensions between (transformers'
    _compute_yarn_parameters, in its float32 order; the ramp's ends rounded outwards
    unless `truncate` is false)."""
    factor = _yarn_factor(scaling, n_ctx)
    original = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)  # (dim/2,)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # (dim/2,): 1 = extrapolate (unchanged), 0 = interpolate (slowed)
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def rope_attention_factor(rope: "RopeSpec", n_ctx: int) -> float:
    """What longrope and YaRN multiply cos and sin by (1 for every other RoPE). longrope: the config's
    `attention_factor`, else sqrt(1 + ln f / ln original) with f = `factor` or
    n_ctx / original (1 when f <= 1). It scales only the rotated dimensions, at every
    length (Phi-4-mini: f = 32, 1.19024)."""
    scaling = rope.scaling_dict
    if scaling and rope.scaling_type == "yarn":  # given, else 0.1·ln(factor) + 1 (with DeepSeek's mscales)
        if scaling.get("attention_factor") is not None:
            return float(scaling["attention_factor"])
        factor = _yarn_factor(scaling, n_ctx)
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all:
            return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        return _yarn_mscale(factor)
    if not scaling or rope.scaling_type != "longrope":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or n_ctx / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


class Rotary:
    """Rotates queries and keys by their absolute positions (Hugging Face's `rotate_half`
    layout, which its Llama checkpoints are permuted for); with partial rotary (NeoX,
    Phi) only the first `rotary_dim` dimensions of each head turn. One per distinct
    `RopeSpec` of a model (Gemma 3's local and global layers have two).

    longrope (Phi-3) picks one factor set for the whole pass, as transformers does: the
    long one when the pass's last position + 1 exceeds the original context, else the
    short one; so keys cached below that length keep the short set's rotation."""

    def __init__(self, rope: "RopeSpec", n_ctx: int) -> None:
        self.rope = rope
        self.n_ctx = n_ctx
        self._inv_freq: dict[bool, Tensor] = {}  # by `long`: longrope's factor set
        self._factor = rope_attention_factor(rope, n_ctx)
        scaling = rope.scaling_dict
        self._switch = (int(scaling["original_max_position_embeddings"])
                        if scaling and rope.scaling_type == "longrope" else None)

    def tables(self, start: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return self.tables_at(torch.arange(start, start + n, device=device))

    def tables_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (T, rotary_dim) for any absolute positions (T,), e.g. packed texts'."""
        device = positions.device
        long = self._switch is not None and positions.numel() > 0 and int(positions.max()) + 1 > self._switch
        inv_freq = self._inv_freq.get(long)
        if inv_freq is None or inv_freq.device != device:
            inv_freq = self._inv_freq[long] = rope_inv_freq(self.rope, self.n_ctx, long).to(device)
        pos = positions.to(torch.float32)
        freqs = torch.outer(pos, inv_freq)  # (T, rotary_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, rotary_dim): the two halves share frequencies
        if self._factor != 1.0:  # longrope's attention factor, on the rotated dimensions only
            return emb.cos() * self._factor, emb.sin() * self._factor
        return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (H, T, d_head) by position (cos, sin: (T, rotary_dim))."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]  # (H, T, rd), (H, T, d_head - rd)
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)  # (H, T, rd)
    out = (x_rot * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


def sinusoidal(positions: Tensor, d: int) -> Tensor:
    """Fixed sinusoidal positions (Marian; Vaswani et al. 2017), (T, d) float32: angle
    p / 10000^(2·⌊j/2⌋/d) for dimension j, the sines of the even j in the first half and the
    cosines of the odd j in the second (not interleaved), computed in float64 and rounded
    once, as transformers' MarianSinusoidalPositionalEmbedding builds its table."""
    j = torch.arange(d, dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d)
    half = (d + 1) // 2
    out = torch.empty(positions.shape[0], d, dtype=torch.float64, device=positions.device)
    out[:, :half] = torch.sin(angle[:, 0::2])
    out[:, half:] = torch.cos(angle[:, 1::2])
    return out.float()
