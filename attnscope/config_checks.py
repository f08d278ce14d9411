"""The checks `config.ModelConfig` runs on what a config declares: bounds, number helpers,
the family's layer kinds, and the RoPE scalings (llama3, longrope, YaRN).

After TransformerLens's config validation: each message names the bad value, cut short
(`_shown`), so a user can find it in config.json. Every number is checked against what
can exist before anything is sized from it (rule 10). Free of torch, like `kinds`, so
`params` and `--help` read it without importing torch. The family readers in
`architectures/` use the same number helpers (re-exported by `attnscope.config`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from attnscope.errors import ConfigError
from attnscope.kinds import (
    ATTENTION_KINDS, MLP_KINDS, QK_NORMS, ROUTERS, WIRINGS, AttnSpec, ExpertSpec, LatentSpec, LayerSpec, LinearSpec,
    MlpSpec, PerLayerSpec, RelativeSpec, Stack,
)

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")

# Bounds on what a config may declare: far above any real model, low enough that nothing
# sized from them (a list per layer, an index into a tensor) can run away.
MAX_LAYERS = 100_000  # the deepest published models have a few hundred; per-layer lists stay small
MAX_SIZE = 2**31  # widths, vocabulary, positions, windows: int32 indexing; real ones are below 2**18..2**24


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN, not ±inf: json.loads('1e400') is inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


def _positive_number(value: Any) -> bool:
    """A finite number above 0: what a scale, a soft-cap or a factor that divides must be."""
    return _number(value) and value > 0


def _positive_int(value: Any, limit: int = MAX_SIZE) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def _shown(value: Any, limit: int = 60) -> str:
    """A declared value for an error message, cut short (a 10**4000 or a 1e6-long list)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond str()'s digit limit
        text = f"an integer of about {value.bit_length() * 3 // 10:,} digits" if isinstance(value, int) else "?"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_optional_positive(pairs: Iterable[tuple[str, Any]], prefix: str) -> None:
    """Each (name, value) either None or a finite positive number; the error reads
    "<prefix><name> must be …"."""
    for name, value in pairs:
        if value is not None and not _positive_number(value):
            raise ConfigError(f"{prefix}{name} must be a finite positive number, got {_shown(value)}")


def _check_names(spec: LayerSpec, where: str) -> None:
    """A layer kind's names: attention and MLP kind, wiring and q/k norm all known."""
    a = spec.attn
    if a.kind not in ATTENTION_KINDS or spec.mlp.kind not in MLP_KINDS or spec.wiring not in WIRINGS:
        raise ConfigError(f"{where}unsupported layer kind {a.kind}/{spec.mlp.kind}/{spec.wiring}")
    if a.qk_norm is not None and a.qk_norm not in QK_NORMS:
        raise ConfigError(f"{where}unknown q/k norm {a.qk_norm!r}")


def check_relative(r: Any, where: str) -> None:
    """A relative position bias (`kinds.RelativeSpec`), where a layer takes one: at least
    one exact bucket per side (4 buckets bidirectional, 2 causal), a `max_distance` beyond
    the exact ones (the log-spaced buckets divide by its log), a table holding every
    bucket, all bounded."""
    if r is None:
        return
    if not isinstance(r, RelativeSpec) or not isinstance(r.bidirectional, bool):
        raise ConfigError(f"{where}a relative position bias must be a RelativeSpec, got {_shown(r)}")
    least = 4 if r.bidirectional else 2
    if not _positive_int(r.buckets) or r.buckets < least:
        raise ConfigError(f"{where}relative_attention_num_buckets must be an integer of at least {least} "
                          f"up to 2**31, got {_shown(r.buckets)}")
    exact = (r.buckets // 2 if r.bidirectional else r.buckets) // 2
    if not _positive_int(r.max_distance) or r.max_distance <= exact:
        raise ConfigError(f"{where}relative_attention_max_distance must be an integer above {exact} (the exact "
                          f"buckets) up to 2**31, got {_shown(r.max_distance)}")
    if r.rows is not None and (not _positive_int(r.rows) or r.rows < r.buckets):
        raise ConfigError(f"{where}the relative position table needs at least {r.buckets} rows, got {_shown(r.rows)}")


def check_template(t: Any, where: str) -> None:
    """The family's layer kind: a LayerSpec of known kinds, wiring and q/k norm, its
    flags true or false (a template's sizes are placeholders, checked once filled)."""
    if not isinstance(t, LayerSpec) or not isinstance(t.attn, AttnSpec) or not isinstance(t.mlp, MlpSpec):
        raise ConfigError(f"{where}layer_template must be a LayerSpec, got {_shown(t)}")
    _check_names(t, where)
    check_relative(t.attn.relative, where)
    check_latent(t.attn, where, sized=False)
    for name, value in (("qkv_bias", t.attn.qkv_bias), ("out_bias", t.attn.out_bias), ("mlp bias", t.mlp.bias)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}the layer's {name} must be true or false, got {_shown(value)}")
    if not _positive_number(t.residual_scale):
        raise ConfigError(f"{where}a layer's residual scale must be a finite positive number, got {_shown(t.residual_scale)}")


MAX_EXPERTS = 2**16  # real models route among 8 to 384 experts


def check_experts(m: MlpSpec, where: str) -> None:
    """An MLP of kind "experts" carries a sound ExpertSpec (and no other kind carries one):
    a bounded expert count, 1 ≤ top_k ≤ experts, a known router, a bounded shared width."""
    e = m.experts
    if m.kind != "experts":
        if e is not None:
            raise ConfigError(f"{where}a {m.kind} MLP cannot carry experts")
        return
    if not isinstance(e, ExpertSpec):
        raise ConfigError(f"{where}an experts MLP needs its ExpertSpec, got {_shown(e)}")
    if not _positive_int(e.n_experts, MAX_EXPERTS):
        raise ConfigError(f"{where}the number of experts must be a positive integer up to {MAX_EXPERTS:,}, "
                          f"got {_shown(e.n_experts)}")
    if not _positive_int(e.top_k, e.n_experts):
        raise ConfigError(f"{where}experts per token must be from 1 to the {e.n_experts} experts, got {_shown(e.top_k)}")
    if e.router not in ROUTERS:
        raise ConfigError(f"{where}unsupported router {_shown(e.router)}", hint=f"supported: {', '.join(ROUTERS)}")
    for name, value in (("shared expert width", e.d_shared), ("shared expert count", e.n_shared),
                        ("dense MLP width beside the experts", e.d_dense)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
            raise ConfigError(f"{where}the {name} must be a non-negative integer up to 2**31, got {_shown(value)}")
    for name, flag in (("norm_topk_prob", e.norm_topk_prob), ("shared_gate", e.shared_gate),
                       ("router_bias", e.router_bias), ("expert_bias", e.expert_bias),
                       ("router_norm", e.router_norm), ("expert_scale", e.expert_scale)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{where}the experts' {name} must be true or false, got {_shown(flag)}")
    if e.shared_gate and not e.d_shared:
        raise ConfigError(f"{where}a shared-expert gate needs a shared expert")
    if e.d_dense and e.d_shared:
        raise ConfigError(f"{where}experts take a shared expert or a dense MLP beside them, not both")
    _check_groups(e, where)
    for name, value in (("swiglu_alpha", e.swiglu_alpha), ("swiglu_limit", e.swiglu_limit)):  # gpt-oss
        if value is not None and not _positive_number(value):
            raise ConfigError(f"{where}{name} must be a finite positive number, got {_shown(value)}")


def _check_groups(e: ExpertSpec, where: str) -> None:
    """DeepSeek-V3's grouped routing: `n_group` equal groups of at least two experts (a
    group is scored by its two best), 1 ≤ topk_group ≤ n_group, enough experts in the kept
    groups for top_k, and a finite positive routed scale."""
    if not _positive_int(e.n_group, e.n_experts) or e.n_experts % e.n_group:
        raise ConfigError(f"{where}n_group must divide the {e.n_experts} experts, got {_shown(e.n_group)}")
    if e.n_group > 1 and e.n_experts // e.n_group < 2:
        raise ConfigError(f"{where}each of the {e.n_group} expert groups needs two experts or more")
    if not _positive_int(e.topk_group, e.n_group):
        raise ConfigError(f"{where}topk_group must be from 1 to n_group ({e.n_group}), got {_shown(e.topk_group)}")
    if e.n_group > 1 and e.top_k > e.topk_group * (e.n_experts // e.n_group):
        raise ConfigError(f"{where}{e.top_k} experts per token do not fit in {e.topk_group} groups of "
                          f"{e.n_experts // e.n_group}")
    if not _positive_number(e.routed_scale):
        raise ConfigError(f"{where}routed_scaling_factor must be a finite positive number, got {_shown(e.routed_scale)}")


def check_latent(a: AttnSpec, where: str, sized: bool) -> None:
    """Latent attention (kind "latent") carries a sound LatentSpec, and no other kind one:
    bounded positive ranks and widths (the rotated part even), a known interleave flag;
    once `sized`, a head's query/key width is nope + rope, every head has its own keys and
    values, and RoPE turns exactly the rotated part."""
    m = a.latent
    if a.kind != "latent":
        if m is not None:
            raise ConfigError(f"{where}a {a.kind} attention cannot carry latent projections")
        return
    if not isinstance(m, LatentSpec):
        raise ConfigError(f"{where}latent attention needs its LatentSpec, got {_shown(m)}")
    for name, value in (("kv_lora_rank", m.kv_rank), ("qk_nope_head_dim", m.nope_dim),
                        ("qk_rope_head_dim", m.rope_dim), ("v_head_dim", m.v_dim), ("q_lora_rank", m.q_rank)):
        if not (value is None and name == "q_lora_rank") and not _positive_int(value):
            raise ConfigError(f"{where}{name} must be a positive integer up to 2**31, got {_shown(value)}")
    if m.rope_dim % 2 or not isinstance(m.rope_interleave, bool) or not _number(m.norm_eps) or m.norm_eps < 0:
        raise ConfigError(f"{where}bad latent attention settings: {_shown(m)}")
    if a.qk_norm is not None or a.sinks or a.relative is not None:  # parts.latent has none of them
        raise ConfigError(f"{where}latent attention has no q/k norm, sinks or relative bias")
    if sized and (a.d_head != m.nope_dim + m.rope_dim or a.n_kv_heads != a.n_heads
                  or (a.rope is not None and a.rope.rotary_dim != m.rope_dim)):
        raise ConfigError(f"{where}latent attention's heads must be qk_nope_head_dim + qk_rope_head_dim wide, "
                          f"with RoPE on the qk_rope_head_dim part, got {_shown(a)}")


def check_linear(a: AttnSpec, where: str) -> None:
    """Linear attention (kind "linear", parts.deltanet) carries a sound LinearSpec, and no
    other kind one: bounded positive head counts and sizes, value heads a multiple of key
    heads, a kernel of 1 to 64 taps, its heads read as n_heads = value heads, n_kv_heads =
    key heads, d_head = d_k; none of softmax's options (positions, window, norms, gate)."""
    m = a.linear
    if a.kind != "linear":
        if m is not None:
            raise ConfigError(f"{where}a {a.kind} attention cannot carry linear-attention sizes")
        return
    if not isinstance(m, LinearSpec):
        raise ConfigError(f"{where}linear attention needs its LinearSpec, got {_shown(m)}")
    for name, value in (("linear_num_key_heads", m.n_k_heads), ("linear_num_value_heads", m.n_v_heads),
                        ("linear_key_head_dim", m.d_k), ("linear_value_head_dim", m.d_v)):
        if not _positive_int(value, 2**16):
            raise ConfigError(f"{where}{name} must be a positive integer up to 65,536, got {_shown(value)}")
    if m.n_v_heads % m.n_k_heads:
        raise ConfigError(f"{where}linear_num_value_heads ({m.n_v_heads}) must be a multiple of "
                          f"linear_num_key_heads ({m.n_k_heads})")
    if not _positive_int(m.conv_kernel, 64):
        raise ConfigError(f"{where}linear_conv_kernel_dim must be an integer from 1 to 64, got {_shown(m.conv_kernel)}")
    if m.conv_channels * m.conv_kernel > MAX_SIZE or m.n_v_heads * m.d_k * m.d_v > MAX_SIZE:
        raise ConfigError(f"{where}linear attention's sizes are too large: {_shown(m)}")
    if not _number(m.norm_eps) or m.norm_eps < 0:
        raise ConfigError(f"{where}linear attention's norm epsilon must be a non-negative number, got {_shown(m.norm_eps)}")
    if (a.n_heads, a.n_kv_heads, a.d_head) != (m.n_v_heads, m.n_k_heads, m.d_k):
        raise ConfigError(f"{where}a linear layer's heads are its value heads over its key heads, got {_shown(a)}")
    if (a.rope is not None or a.window is not None or a.qk_norm is not None or a.out_gate or a.sinks
            or a.relative is not None or a.softcap is not None or not a.causal):
        raise ConfigError(f"{where}linear attention is causal and has no positions, window, q/k norm, gate, "
                          "sinks, soft-cap or relative bias")


def check_shared_kv(stack: Stack, spec: LayerSpec, where: str) -> None:
    """Gemma 4's KV-shared layers and per-layer inputs: a layer reads the keys and values of
    an earlier layer that owns its own, of the same heads, mask and positions (so its own
    queries meet those keys as the owner's would); values that are the keys need a key
    projection; every layer that takes a per-layer input names the same bounded one."""
    a = spec.attn
    for name, flag in (("k_eq_v", a.k_eq_v), ("v_norm", a.v_norm), ("out_scalar", spec.out_scalar)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{where}a layer's {name} must be true or false, got {_shown(flag)}")
    if a.kv_source is not None:
        first = next(i for i, (s, _) in enumerate(stack.runs) if s is spec or s == spec)
        at = sum(count for _, count in stack.runs[:first])  # the first layer of this kind
        if isinstance(a.kv_source, bool) or not isinstance(a.kv_source, int) or not 0 <= a.kv_source < at:
            raise ConfigError(f"{where}a KV-shared layer must read an earlier layer's keys, got {_shown(a.kv_source)}")
        owner = stack.layer(a.kv_source).attn
        same = ("n_kv_heads", "d_head", "causal", "window", "rope", "kind")
        if owner.kv_source is not None or any(getattr(owner, k) != getattr(a, k) for k in same):
            raise ConfigError(f"{where}layer {a.kv_source} cannot lend its keys and values: it must own them, "
                              "with the same heads, mask and positions as the layers reading them")
    p = spec.per_layer
    if p is not None:
        if not isinstance(p, PerLayerSpec) or not _positive_int(p.width, 2**16) or not _positive_int(p.vocab):
            raise ConfigError(f"{where}per-layer inputs need a width up to 65,536 and a vocabulary, got {_shown(p)}")
        if len({s.per_layer for s, _ in stack.kinds()}) > 1:
            raise ConfigError(f"{where}every layer takes the same per-layer input embeddings, or none does")


def check_stack(stack: Any, n_layers: int, heads: tuple[int, int, int], where: str) -> None:
    """A family's own layer kinds: every number bounded, every name known, and the
    sizes every consumer still reads model-wide (`heads`: query heads, key/value heads,
    head size) shared by all."""
    if not isinstance(stack, Stack) or len(stack) != n_layers:
        raise ConfigError(f"{where}the layer kinds do not cover the {n_layers} layers")
    for spec, _ in stack.kinds():
        a, m = spec.attn, spec.mlp
        _check_names(spec, where)
        check_relative(a.relative, where)
        if a.relative is not None and len({s.attn.relative for s, _ in stack.kinds()} - {None}) > 1:
            raise ConfigError(f"{where}a stack owns one relative position table: its layers name different ones")
        check_linear(a, where)
        if a.kind != "linear" and (a.n_heads, a.n_kv_heads, a.d_head) != heads:  # a linear layer has its own heads
            # Gemma 4's global layers: wider heads, fewer key/value heads, the same query heads
            if (a.n_heads != heads[0] or a.kind != "softmax" or not _positive_int(a.n_kv_heads)
                    or not _positive_int(a.d_head) or a.n_heads % a.n_kv_heads or a.n_heads * a.d_head > MAX_SIZE):
                raise ConfigError(f"{where}layers with different head counts (of queries) are not supported yet")
        check_shared_kv(stack, spec, where)
        if not _positive_int(m.d_mlp) or m.act not in ACTIVATIONS:
            raise ConfigError(f"{where}a layer's MLP has a bad size or activation: {_shown(m)}")
        check_experts(m, where)
        if (spec.wiring == "sandwich_moe") != (m.kind == "experts" and bool(m.experts.d_dense)):  # type: ignore[union-attr]
            raise ConfigError(f"{where}the sandwich_moe wiring and a dense MLP beside experts (d_dense) go together")
        check_latent(a, where, sized=True)
        if a.window is not None and not _positive_int(a.window):
            raise ConfigError(f"{where}sliding windows must be positive integers up to 2**31, got {_shown(a.window)}")
        _check_optional_positive((("scale", a.scale), ("softcap", a.softcap), ("residual scale", spec.residual_scale)),
                                 f"{where}a layer's ")
        if a.rope is not None:
            if not _number(a.rope.theta) or a.rope.theta < 1:
                raise ConfigError(f"{where}rope_theta must be a finite number of at least 1, got {_shown(a.rope.theta)}")
            if a.rope.scaling_type == "yarn":  # a layer kind's own YaRN (OLMo 3's full layers)
                check_yarn(a.rope.scaling_dict or {}, f"{where}rope_scaling", a.rope.theta)
            if not isinstance(a.rope.rotary_dim, int) or not 0 < a.rope.rotary_dim <= a.d_head or a.rope.rotary_dim % 2:
                raise ConfigError(f"{where}rotary dimension {_shown(a.rope.rotary_dim)} must be even and within the head size {a.d_head}")


# Values one declared tensor may hold. The largest real ones hold ~2**42 (DeepSeek-V3's
# stacked experts); each size alone is bounded by MAX_SIZE, but a product of two such
# sizes (a d_model × d_model pooler at d_model = 2**31) would overflow a torch storage's
# byte count even on the meta device.
MAX_TENSOR = 2**48


def check_tensor_sizes(cfg: Any, where: str) -> None:
    """Every tensor the config declares (per kind: arithmetic, never per layer) holds at
    most MAX_TENSOR values, so that an accepted config always builds."""
    from math import prod

    from attnscope.parts import block_shapes, embedding_shapes, head_shapes

    shapes = {**embedding_shapes(cfg), **head_shapes(cfg)}
    for stack in (cfg.stack, cfg.decoder):
        for spec, _ in (stack.kinds() if stack is not None else ()):
            shapes.update(block_shapes(cfg, spec))
    for name, shape in shapes.items():
        n = prod(shape)
        if n > MAX_TENSOR:
            raise ConfigError(f"{where}{name} would hold {n:,} values ({' × '.join(map(str, shape))}): "
                              "more than any model has (the limit is 2**48)")


def check_decoder(stack: Any, where: str) -> None:
    """An encoder-decoder model's second stack (`ModelConfig.decoder`): up to MAX_LAYERS
    causal layers of sound kinds, each with a cross-attention that sees the whole source
    (softmax, no window, no relative bias: T5's and BART's)."""
    if not isinstance(stack, Stack) or not 0 < len(stack) <= MAX_LAYERS:
        raise ConfigError(f"{where}the decoder's layers must be 1 to {MAX_LAYERS:,} layer kinds, got {_shown(stack)}")
    first = stack.layer(0).attn
    check_stack(stack, len(stack), (first.n_heads, first.n_kv_heads, first.d_head), f"{where}decoder: ")
    for spec, _ in stack.kinds():
        c = spec.cross
        if not spec.attn.causal or not isinstance(c, AttnSpec):
            raise ConfigError(f"{where}every decoder layer is causal and holds a cross-attention")
        sizes = (c.n_heads, c.n_kv_heads, c.d_head)
        if not all(_positive_int(v) for v in sizes) or c.n_heads % c.n_kv_heads or c.n_heads * c.d_head > MAX_SIZE:
            raise ConfigError(f"{where}a cross-attention has bad head counts or sizes: {_shown(sizes)}")
        if c.causal or c.window is not None or c.relative is not None or c.kind != "softmax" or c.rope is not None:
            raise ConfigError(f"{where}a cross-attention sees the whole source: no mask, window, positions or bias")
        _check_optional_positive((("scale", c.scale),), f"{where}a cross-attention's ")


def check_rope_scaling(scaling: dict[str, Any], where: str, theta: float, n_ctx: int, rotary: int) -> None:
    """The model-wide rope_scaling (`where` ends in "rope_scaling"): llama3's factors each
    a positive number, high above low (they divide); longrope (Phi-3) and YaRN (OLMo 3)
    see their own checks. `rotary`: the dimensions each head turns."""
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "longrope":
        check_longrope(scaling, where, rotary)
        return
    if rope_type == "yarn":
        check_yarn(scaling, where, theta)
        return
    values = {}
    for key, default in (("factor", None), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                         ("original_max_position_embeddings", n_ctx)):
        value = scaling.get(key, default)
        if not _positive_number(value):
            raise ConfigError(f"{where} {key} must be a finite positive number, got {_shown(value)}")
        values[key] = value
    if values["high_freq_factor"] <= values["low_freq_factor"]:
        raise ConfigError(f"{where} high_freq_factor must exceed low_freq_factor")


def _check_original_context(scaling: dict[str, Any], where: str) -> None:
    value = scaling.get("original_max_position_embeddings")
    if not _positive_int(value):
        raise ConfigError(f"{where} original_max_position_embeddings must be a positive integer up to 2**31, "
                          f"got {_shown(value)}")


def check_yarn(scaling: dict[str, Any], where: str, theta: float) -> None:
    """YaRN (OLMo 3): a positive original context, the optional numbers positive, and a
    base above 1 (its ramp divides by ln base)."""
    _check_original_context(scaling, where)
    keys = ("factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
    _check_optional_positive(((k, scaling.get(k)) for k in keys), f"{where} ")
    if not isinstance(scaling.get("truncate", True), bool):
        raise ConfigError(f"{where} truncate must be true or false, got {_shown(scaling.get('truncate'))}")
    if theta <= 1:
        raise ConfigError(f"{where}: YaRN needs a rope_theta above 1, got {_shown(theta)}")


def check_longrope(scaling: dict[str, Any], where: str, rotary: int) -> None:
    """longrope (Phi-3): one short and one long factor per rotated frequency (`rotary`
    dimensions turn), each a finite positive number (they divide the frequencies); a
    positive original context (the switch between the sets); factor and
    attention_factor, if given, positive."""
    for key in ("short_factor", "long_factor"):
        value = scaling.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != rotary // 2:
            raise ConfigError(f"{where} {key} must list {rotary // 2} numbers (one per rotated frequency), "
                              f"got {_shown(value)}")
        if not all(_positive_number(v) for v in value):
            raise ConfigError(f"{where} {key} must hold finite positive numbers, got {_shown(value)}")
    _check_original_context(scaling, where)
    _check_optional_positive(((k, scaling.get(k)) for k in ("factor", "attention_factor")), f"{where} ")
