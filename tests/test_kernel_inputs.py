"""The kernel's position tensors and optional inputs (attnscope.parts.attention.attend):
score modifiers and an additive bias see each chunk's query and key positions as tensors
(so a position bias is right on a packed pass), and per-head sink logits take
probability mass as gpt-oss's do. Each against an independent float64 computation, or
transformers' own gpt_oss `eager_attention_forward`, with small query chunks so the
chunked paths (causal key skipping, diagonal blocks) are the ones checked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import attnscope.parts.attention as attention
from attnscope.config import ModelConfig
from attnscope.hooks import Capture, attn_site
from attnscope.kinds import AttnSpec, LayerSpec, MlpSpec, RopeSpec, Stack
from attnscope.model import KVCache, Transformer, build
from attnscope.parts import model_shapes
from attnscope.parts.attention import MaskRule, Packing, attend
from tests.tiny_models import reinit

H, HKV, DH = 4, 2, 8
MLP = MlpSpec("gated", 48, "silu")
ROPE = RopeSpec(10000.0, DH)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three query rows per chunk: every path through the chunk loop runs."""
    monkeypatch.setattr(attention, "chunk_rows", lambda n_heads, n_keys: 3)


def alibi(slopes: torch.Tensor):
    """An ALiBi-style bias from positions: −slope_h · |i − j|, (H, c, K)."""
    def bias(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return -slopes[:, None, None] * (q_pos[:, None] - k_pos[None, :]).abs().to(slopes.dtype)
    return bias


def reference(q, k, v, rule: MaskRule, scale: float, slopes=None, sinks=None, segments=None, positions=None):
    """Attention in float64 by the definition, one query at a time: q, k, v (H, T, dh)."""
    q, k, v = q.double(), k.double(), v.double()
    T = q.shape[1]
    pos = torch.arange(T) if positions is None else positions
    seg = torch.zeros(T, dtype=torch.long) if segments is None else segments
    probs = torch.zeros(H, T, T, dtype=torch.float64)
    for i in range(T):
        s = torch.einsum("hd,hkd->hk", q[:, i], k) * scale  # (H, T)
        if slopes is not None:
            s = s - slopes.double()[:, None] * (pos[i] - pos).abs().double()[None, :]
        see = (seg == seg[i]) & (pos <= pos[i] if rule.causal else torch.ones(T, dtype=torch.bool))
        if rule.window is not None:
            see &= (pos[i] - pos) < rule.window
        s = s.masked_fill(~see[None, :], float("-inf"))
        if sinks is None:
            probs[:, i] = torch.softmax(s, -1)
        else:
            full = torch.cat([s, sinks.double()[:, None]], -1)
            probs[:, i] = torch.softmax(full, -1)[:, :-1]
    return probs, probs @ v


def qkv(T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(H, T, DH, generator=g) for _ in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("rule", [MaskRule(True), MaskRule(True, 4), MaskRule(False)])
def test_bias_from_positions_equals_float64(small_chunks: None, rule: MaskRule) -> None:
    """A callable bias gets each chunk's positions; the same bias as a tensor (H, T, K)
    gives the same attention; both equal the float64 definition."""
    T = 11
    q, k, v = qkv(T)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    pos = torch.arange(T)
    cap = Capture({"x": ["pattern"]})
    z = attend(q, k, v, q_pos=pos, k_pos=pos, rule=rule, scale=DH ** -0.5, bias=alibi(slopes), site="x", hooks=cap)
    want_p, want_z = reference(q, k, v, rule, DH ** -0.5, slopes=slopes)
    torch.testing.assert_close(cap.get("x", "pattern").double(), want_p, rtol=0, atol=1e-6)
    torch.testing.assert_close(z.double(), want_z, rtol=0, atol=1e-5)
    table = alibi(slopes)(pos, pos)  # (H, T, T)
    z2 = attend(q, k, v, q_pos=pos, k_pos=pos, rule=rule, scale=DH ** -0.5, bias=table)
    torch.testing.assert_close(z2, z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", [MaskRule(True), MaskRule(True, 3), MaskRule(False)])
def test_packed_bias_equals_each_text_alone(small_chunks: None, rule: MaskRule) -> None:
    """Two texts in one pass, positions counting within each: a position bias (as a
    bias, and as a score modifier) gives each text exactly what it gets alone."""
    n1, n2 = 5, 7
    q, k, v = qkv(n1 + n2, seed=1)
    slopes = torch.tensor([1.0, 0.5, 0.25, 0.125])
    positions = torch.cat([torch.arange(n1), torch.arange(n2)])
    segments = torch.cat([torch.zeros(n1, dtype=torch.long), torch.ones(n2, dtype=torch.long)])
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def modifier(scores: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        seen.append((q_pos.clone(), k_pos.clone()))
        scores.add_(alibi(slopes)(q_pos, k_pos))

    packed = attend(q, k, v, q_pos=positions, k_pos=positions, rule=rule, scale=0.3, bias=alibi(slopes),
                    segments=segments)
    by_modifier = attend(q, k, v, q_pos=positions, k_pos=positions, rule=rule, scale=0.3, modifiers=[modifier],
                         segments=segments)
    assert seen and all(isinstance(qp, torch.Tensor) and qp.dtype == torch.int64 for qp, _ in seen)
    assert torch.equal(seen[1][0], positions[3:6])  # the second chunk's positions: 3, 4, 0
    torch.testing.assert_close(by_modifier, packed, rtol=0, atol=1e-6)
    _, want = reference(q, k, v, rule, 0.3, slopes=slopes, segments=segments, positions=positions)
    torch.testing.assert_close(packed.double(), want, rtol=0, atol=1e-5)
    for lo, hi in ((0, n1), (n1, n1 + n2)):
        pos = torch.arange(hi - lo)
        alone = attend(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], q_pos=pos, k_pos=pos, rule=rule, scale=0.3,
                       bias=alibi(slopes))
        torch.testing.assert_close(packed[:, lo:hi], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", [MaskRule(True), MaskRule(True, 4), MaskRule(False)])
def test_sinks_equal_float64(small_chunks: None, rule: MaskRule) -> None:
    """Sink logits take mass: rows sum to less than 1, by exactly the sink's share."""
    T = 10
    q, k, v = qkv(T, seed=2)
    sinks = torch.tensor([2.0, -1.0, 0.0, 4.0])
    pos = torch.arange(T)
    cap = Capture({"x": ["pattern"]})
    z = attend(q, k, v, q_pos=pos, k_pos=pos, rule=rule, scale=0.35, sinks=sinks, site="x", hooks=cap)
    want_p, want_z = reference(q, k, v, rule, 0.35, sinks=sinks)
    pattern = cap.get("x", "pattern").double()
    assert pattern.shape == (H, T, T)  # the sink column is not reported
    torch.testing.assert_close(pattern, want_p, rtol=0, atol=1e-6)
    torch.testing.assert_close(z.double(), want_z, rtol=0, atol=1e-5)
    assert bool((pattern.sum(-1) < 1 - 1e-3).all())


def sink_model(seed: int = 7, window: int | None = None) -> Transformer:
    """Two layers of a hand-built kind with sinks (one global, one local), GQA, RoPE."""
    kinds = [LayerSpec(AttnSpec(H, HKV, DH, rope=ROPE, sinks=True), MLP),
             LayerSpec(AttnSpec(H, HKV, DH, window=window or 4, rope=ROPE, sinks=True), MLP)]
    cfg = ModelConfig(family="llama", d_model=32, n_layers=2, n_heads=H, n_kv_heads=HKV, d_mlp=48, vocab_size=40,
                      n_ctx=128, positions="rope", norm="rmsnorm", act="silu", kinds=Stack.of(kinds))
    model = Transformer(cfg)
    reinit(model, seed=seed)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.sinks.mul_(8.0)  # sinks of a few units: a large, visible share
    return build(cfg, model.state_dict().items())  # the declared shapes, checked on every build


def test_sinks_are_a_declared_parameter() -> None:
    model = sink_model()
    shapes = model_shapes(model.cfg)
    assert shapes["blocks.0.attn.sinks"] == (H,) and shapes["blocks.1.attn.sinks"] == (H,)
    assert "blocks.0.attn.sinks" in dict(model.named_parameters())
    plain = ModelConfig(family="llama", d_model=32, n_layers=1, n_heads=H, n_kv_heads=HKV, d_mlp=48, vocab_size=40,
                        n_ctx=128, positions="rope", norm="rmsnorm", act="silu",
                        kinds=Stack.of([LayerSpec(AttnSpec(H, HKV, DH, rope=ROPE), MLP)]))
    assert not any(name.endswith("sinks") for name in model_shapes(plain))


def test_sink_model_equals_gpt_oss_eager(small_chunks: None) -> None:
    """Every layer's pattern and heads' outputs equal transformers' gpt_oss eager
    attention, in float64, on this model's own queries, keys and values."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    model = sink_model()
    T = 13
    ids = torch.randint(0, 40, (T,), generator=torch.Generator().manual_seed(3))
    sites = {attn_site(i): ["q", "k", "v", "pattern", "z"] for i in range(2)}
    cap = Capture(sites)
    model(ids, cap)
    for i, block in enumerate(model.blocks):
        site = attn_site(i)
        q, k, v = (cap.get(site, w).double()[None] for w in ("q", "k", "v"))  # (1, H or Hkv, T, dh)
        pos = torch.arange(T)
        diff = pos[:, None] - pos[None, :]
        see = diff >= 0
        if block.attn.rule.window is not None:
            see &= diff < block.attn.rule.window
        mask = torch.zeros(T, T, dtype=torch.float64).masked_fill(~see, float("-inf"))[None, None]
        module = SimpleNamespace(num_key_value_groups=H // HKV, sinks=block.attn.sinks.detach().double(),
                                 training=False)
        out, weights = eager_attention_forward(module, q, k, v, mask, scaling=block.attn.scale)
        torch.testing.assert_close(cap.get(site, "pattern").double(), weights[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(cap.get(site, "z").double(), out[0].transpose(0, 1), rtol=0, atol=1e-5)
        assert float(weights[0].sum(-1).min()) < 0.9  # the sinks took a visible share


def test_sink_model_cache_and_packing_equal_full_pass(small_chunks: None) -> None:
    """Token by token through the cache equals the full pass; two texts packed in one
    pass equal each text alone (the per-pass state's positions and texts)."""
    model = sink_model(window=3)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 40, (9,), generator=g), torch.randint(0, 40, (6,), generator=g)
    full = model(a)
    cache = KVCache(model.cfg.n_layers)
    steps = torch.cat([model(a[t:t + 1], cache=cache) for t in range(len(a))])
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-5)
    ids = torch.cat([a, b])
    packing = Packing(torch.cat([torch.arange(9), torch.arange(6)]),
                      torch.cat([torch.zeros(9, dtype=torch.long), torch.ones(6, dtype=torch.long)]))
    packed = model(ids, packing=packing)
    torch.testing.assert_close(packed[:9], full, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[9:], model(b), rtol=0, atol=1e-5)
