"""Our transformer, with attention written out: scores, mask, softmax, pattern.

After nanoGPT's `model.py`: one readable file, a shape comment on every reshape, and
`scores = q @ k.T / sqrt(d_head)` in plain sight. After gpt-fast: the model is built on
the meta device and the checkpoint's tensors are assigned, never first allocated at
random. Batch size is always 1: one text at a time, shapes (T, ...) without a batch.

Attention runs in query chunks with the softmax in float32, and every chunk of
probabilities is handed to a `Probe` before it is used and dropped, so a caller can keep
full patterns, only top-k, or only summaries, and memory stays linear in T when it keeps
little. The model itself keeps nothing and prints nothing.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError
from attnscope.params import param_shapes

# float32 scores per query chunk (all heads of one layer). Small chunks stay in cache:
# on a GPT-2-small shape at n = 2,048, 8 MiB ran the top-k capture 28% faster than 64 MiB.
CHUNK_BYTES = 8 * 1024 * 1024
MIN_CHUNK_ROWS = 64  # below this, per-chunk overhead wins (measured at n = 8,192)


class Probe(Protocol):
    """What a forward pass reports to. All methods are optional to act upon."""

    def wants(self, layer: int) -> bool: ...

    def pattern(self, layer: int, start: int, probs: Tensor) -> None:
        """probs: (n_heads, chunk, K) float32, rows start..start+chunk of the layer's
        pattern over its first K keys; keys K..T-1 of these rows are exactly 0 (a causal
        chunk stops at its last query)."""

    def qk(self, layer: int, q: Tensor, k: Tensor, scale: float) -> None:
        """q: (n_heads, T, d_head), k: (n_heads, T, d_head) after RoPE, float32."""


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32. Gemma scales by (1 + weight) in
    float32 before casting back; Llama casts back, then scales by the weight."""

    def __init__(self, d: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d))
        self.eps = eps
        self.offset = offset

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (h * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: ModelConfig, d: int | None = None) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(d or cfg.d_model, cfg.norm_eps, cfg.norm_offset)
    return nn.LayerNorm(d or cfg.d_model, eps=cfg.norm_eps)


def activation(name: str) -> Callable[[Tensor], Tensor]:
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }[name]


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """RoPE inverse frequencies (rotary_dim/2,), with Llama 3's frequency-dependent scaling."""
    dh = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    scaling = cfg.rope_scaling
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", cfg.n_ctx))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the middle blended.
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


def rope_tables(cfg: ModelConfig, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    inv_freq = rope_inv_freq(cfg).to(device)
    freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)  # (T, rotary_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, rotary_dim): the two halves share frequencies
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (H, T, d_head) by position, rotating the two halves of the first rotary_dim
    dimensions together (Hugging Face's `rotate_half` layout, which its Llama checkpoints
    are permuted for); with partial rotary (NeoX, Phi) the rest pass through."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]  # (H, T, rd), (H, T, d_head - rd)
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)  # (H, T, rd)
    out = (x_rot * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


def _upper(c: int, device: torch.device) -> Tensor:
    """(c, c) bool, True above the diagonal: within a diagonal block, keys after the query."""
    return torch.ones(c, c, dtype=torch.bool, device=device).triu_(1)


def visible(q_pos: Tensor, k_pos: Tensor, causal: bool, window: int | None) -> Tensor | None:
    """Boolean (chunk, T): may query i see key j? None when every key is visible."""
    if not causal and window is None:
        return None
    diff = q_pos[:, None] - k_pos[None, :]  # (chunk, T): i - j
    ok = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        ok &= diff >= 0  # a key after the query is masked
    if window is not None:
        ok &= diff < window  # only the last `window` keys (self included) stay
        if not causal:
            ok &= diff > -window
    return ok


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        q_out, kv_out = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
        self.q = nn.Linear(cfg.d_model, q_out, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.d_model, kv_out, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.d_model, kv_out, bias=cfg.qkv_bias)
        self.o = nn.Linear(q_out, cfg.d_model, bias=cfg.out_bias)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dimensions, before RoPE
            self.q_norm = make_norm(cfg, cfg.d_head)
            self.k_norm = make_norm(cfg, cfg.d_head)

    def forward(self, x: Tensor, layer: int, rope: tuple[Tensor, Tensor] | None, probe: Probe | None) -> Tensor:
        cfg = self.cfg
        T = x.shape[0]
        H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        q = self.q(x).view(T, H, dh)  # (T, H, dh)
        k = self.k(x).view(T, Hkv, dh)  # (T, Hkv, dh)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(0, 1)  # (H, T, dh)
        k = k.transpose(0, 1)  # (Hkv, T, dh)
        v = self.v(x).view(T, Hkv, dh).transpose(0, 1)  # (Hkv, T, dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if Hkv != H:  # grouped/multi-query: each key/value head serves `group_size` query heads
            k = k.repeat_interleave(cfg.group_size, dim=0)  # (H, T, dh)
            v = v.repeat_interleave(cfg.group_size, dim=0)  # (H, T, dh)
        scale = cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(dh)
        window = cfg.window(layer)
        qf, kf = q.float(), k.float()
        watching = probe is not None and probe.wants(layer)
        if watching and hasattr(probe, "qk"):
            probe.qk(layer, qf, kf, scale)
        qf = qf * scale  # once per layer rather than on every chunk of scores
        positions = torch.arange(T, device=x.device)
        out = torch.empty_like(q)  # (H, T, dh)
        chunk = max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * H * T))
        for start in range(0, T, chunk):
            stop = min(T, start + chunk)
            # A causal chunk never sees keys after its last query: leave them out (K <= T),
            # which halves the work; probes are told the rest of each row is exactly 0.
            K = stop if cfg.causal else T
            scores = torch.matmul(qf[:, start:stop], kf[:, :K].transpose(-2, -1))  # (H, c, K)
            if cfg.attn_softcap is not None:  # Gemma 2: squash logits smoothly into (-cap, cap)
                scores.div_(cfg.attn_softcap).tanh_().mul_(cfg.attn_softcap)
            if cfg.causal and window is None:
                # keys before the chunk are visible to all its rows: mask the diagonal block only
                diagonal = scores[..., start:stop]  # (H, c, c)
                diagonal.masked_fill_(_upper(stop - start, x.device), float("-inf"))
            else:
                ok = visible(positions[start:stop], positions[:K], cfg.causal, window)
                if ok is not None:
                    scores.masked_fill_(~ok, float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # (H, c, K), float32 whatever the weights' dtype
            del scores
            if watching:
                probe.pattern(layer, start, probs)
            out[:, start:stop] = torch.matmul(probs.to(v.dtype), v[:, :K])  # (H, c, dh)
        out = out.transpose(0, 1).reshape(T, H * dh)  # (T, H*dh)
        return self.o(out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.gated_mlp
        if cfg.gated_mlp:
            self.gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        self.act = activation(cfg.act)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """One layer. Four wirings, by config: pre-norm (GPT-2, Llama), post-norm (BERT, OPT
    without do_layer_norm_before), parallel attention and MLP (NeoX with two norms, Phi
    with one shared), and pre-norm with extra norms after each sublayer (Gemma 2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        if not cfg.shared_norm:
            self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        if cfg.post_norms:
            self.post_attn_norm = make_norm(cfg)
            self.post_mlp_norm = make_norm(cfg)

    def forward(self, x: Tensor, layer: int, rope: tuple[Tensor, Tensor] | None, probe: Probe | None) -> Tensor:
        cfg = self.cfg
        if cfg.post_norm:  # BERT: normalise after each residual add
            x = self.attn_norm(x + self.attn(x, layer, rope, probe))
            return self.mlp_norm(x + self.mlp(x))
        if cfg.parallel:  # attention and MLP both read the block's input
            h = self.attn_norm(x)
            return x + self.attn(h, layer, rope, probe) + self.mlp(h if cfg.shared_norm else self.mlp_norm(x))
        if cfg.post_norms:
            x = x + self.post_attn_norm(self.attn(self.attn_norm(x), layer, rope, probe))
            return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))
        x = x + self.attn(self.attn_norm(x), layer, rope, probe)
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        if cfg.d_embed != cfg.d_model:  # OPT-350m: narrow embeddings projected to the width
            self.proj_in = nn.Linear(cfg.d_embed, cfg.d_model, bias=False)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.n_ctx + cfg.pos_offset, cfg.d_model)
        if cfg.n_types:
            self.types = nn.Embedding(cfg.n_types, cfg.d_model)
        if cfg.embed_norm:
            self.norm = make_norm(cfg)


class Transformer(nn.Module):
    """The attention-relevant part of a model: embeddings and blocks (no output heads)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # Offloading: blocks stay on the meta device and `block_source(i)` supplies one
        # block's weights (our names, relative to the block) just before it runs.
        self.block_source: Callable[[int], dict[str, Tensor]] | None = None

    @torch.inference_mode()
    def forward(self, ids: Tensor, probe: Probe | None = None, last_layer: int | None = None) -> Tensor:
        """Run layers 0..last_layer on token ids (T,) and return the residual stream (T, d)."""
        cfg = self.cfg
        T = ids.shape[0]
        positions = torch.arange(T, device=ids.device)
        x = self.embed.tok(ids)  # (T, d_embed)
        if cfg.d_embed != cfg.d_model:
            x = self.embed.proj_in(x)  # (T, d)
        if cfg.embed_scale:  # Gemma: sqrt(d) in the activations' dtype, as the reference rounds it
            x = x * torch.tensor(cfg.d_model**0.5, dtype=x.dtype)
        if cfg.positions == "learned":
            x = x + self.embed.pos(positions + cfg.pos_offset)
        if cfg.n_types:
            x = x + self.embed.types(torch.zeros_like(ids))  # a single segment: type 0
        if cfg.embed_norm:
            x = self.embed.norm(x)
        rope = rope_tables(cfg, T, ids.device) if cfg.positions == "rope" else None
        stop = cfg.n_layers - 1 if last_layer is None else last_layer
        for i, block in enumerate(self.blocks):
            if i > stop:
                break
            if self.block_source is None:
                x = block(x, i, rope, probe)
                continue
            block.load_state_dict(self.block_source(i), strict=True, assign=True)
            try:
                x = block(x, i, rope, probe)
            finally:
                block.to_empty(device="meta")  # drop this block's weights before the next loads
        return x


def expected_shapes(cfg: ModelConfig, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The parameters the model holds, checked against the accounting's single list."""
    shapes = param_shapes(cfg)
    own = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, shape in own.items():
        assert shapes.get(name) == shape, f"model and params disagree on {name}"  # internal invariant
    return own


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip nn.init while building on the meta device: the weights come from the
    checkpoint, and the init functions cost a second of lazy imports on first use."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "ones_", "zeros_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, Tensor]],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: bool = False,
) -> Transformer:
    """Build on the meta device, then assign checkpoint tensors (already in our names).

    Every parameter the model needs must arrive with exactly its expected shape; tensors
    the model does not use (pooler, output heads) are accepted and dropped. With
    `offload`, the blocks stay on the meta device (see `Transformer.block_source`).
    """
    with torch.device("meta"), _no_init():
        model = Transformer(cfg)
    need = expected_shapes(cfg, model)
    if offload:
        need = {name: shape for name, shape in need.items() if not name.startswith("blocks.")}
    state = _collect(cfg, tensors, need, device, dtype, "the model")
    model.load_state_dict(state, strict=not offload, assign=True)
    return model.eval()


def block_tensors(cfg: ModelConfig, layer: int, tensors: Iterable[tuple[str, Tensor]],
                  device: str | torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """One block's state dict (names relative to the block) from tensors in our names,
    with the same checks as `build`."""
    prefix = f"blocks.{layer}."
    need = [name for name in param_shapes(cfg) if name.startswith(prefix)]
    state = _collect(cfg, tensors, need, device, dtype, f"block {layer}")
    return {name[len(prefix):]: tensor for name, tensor in state.items()}


def _collect(cfg: ModelConfig, tensors: Iterable[tuple[str, Tensor]], need: Iterable[str],
             device: str | torch.device, dtype: torch.dtype, what: str) -> dict[str, Tensor]:
    """The tensors named in `need`, on `device` in `dtype`; every tensor's shape checked
    against the accounting, and every needed one present."""
    shapes = param_shapes(cfg)
    order = list(need)  # load order, for the message
    need = set(order)
    state: dict[str, Tensor] = {}
    for name, tensor in tensors:
        want = shapes.get(name)
        if want is not None and tuple(tensor.shape) != want:
            raise CheckpointError(
                f"tensor {name} has shape {tuple(tensor.shape)} but config.json implies {want}",
                hint="the weights and config.json belong to different models",
            )
        if name in need:
            state[name] = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor.to(device)
    missing = [name for name in order if name not in state]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors {what} needs: {shown}",
                              hint="is this checkpoint complete, and does config.json match it?")
    return state
