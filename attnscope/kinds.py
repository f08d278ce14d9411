"""Layers by kind: what one layer of a model is, as frozen, hashable specs.

A model is model-wide fields (`config.ModelConfig`) plus a stack of layers, held as a
run-length list of `LayerSpec`s: Gemma 3 1B is ((local, 5), (global, 1)) × 4 + ((local, 2)).
A family maps its config.json onto kinds; a quirk lives in its layer's spec, never in a
model-wide flag. Everything downstream reads the same list: the parts build one layer
from its spec (`parts.block.Block`), shapes and counts are declared per kind
(`parts.layer_shapes`; counting sums count × numel), the cache keeps what each kind
needs (`AttnSpec.cache_tokens`, `bytes_per_token`), and the per-pass state holds one
RoPE table per distinct `RopeSpec`.

After transformers' `layer_types` (each layer names its attention kind; Gemma 3 builds
one rotary embedding per kind), vLLM's per-layer KV-cache specs (each knows its own bytes
per token and window) and mlx-lm's `make_cache()` (one cache object per layer kind).
This module is free of torch, so `params` and `--dry-run` read it without importing it.

How a new kind goes in: a linear-attention layer, say, is an `AttnSpec(kind="linear",
…)` with its own fields (state size), its shapes in `parts.attention_shapes`, its cache
in `cache_tokens`/`bytes_per_token` (a fixed state, whatever the context), and its module
chosen by `kind` in `parts.block`. Experts are an `MlpSpec(kind="experts", …)`; shared
key/values an `AttnSpec.kv_source` naming the layer that owns them; a relative position
bias or sinks a field of `AttnSpec` that the kernel's optional arguments receive.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

ATTENTION_KINDS = ("softmax",)
MLP_KINDS = ("dense", "gated")
# How a block joins attention and MLP to the residual stream (see parts.block).
WIRINGS = ("pre", "post", "parallel", "parallel_shared", "sandwich", "post_sublayer")
QK_NORMS = ("head", "projection")  # over each head's dims (Qwen3, Gemma 3) or the whole projection (OLMo 2)


def freeze(value: Any) -> Any:
    """A JSON-like value made hashable: dicts become sorted item tuples, lists tuples."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """`freeze`'s inverse for a frozen dict (item pairs), lists left as tuples."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value):
        return {k: thaw(v) for k, v in value}
    return value


@dataclass(frozen=True)
class RopeSpec:
    """Rotary positions of one kind of layer: the base, how many of each head's
    dimensions turn (partial rotary), and a scaling (linear, llama3, longrope, … as
    config.json writes it, frozen)."""

    theta: float
    rotary_dim: int
    scaling: tuple[tuple[str, Any], ...] | None = None

    @property
    def scaling_dict(self) -> dict[str, Any] | None:
        return thaw(self.scaling) if self.scaling is not None else None

    @property
    def scaling_type(self) -> str | None:
        s = self.scaling_dict
        return None if not s else s.get("rope_type", s.get("type"))


@dataclass(frozen=True)
class AttnSpec:
    """One layer's attention: heads, sizes, the mask rule (causal, window), positions
    (a RopeSpec, or None for a layer without RoPE), the score scale (None: 1/√d_head),
    soft-capping, q/k norms ("head" or "projection"), biases and attention sinks."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    causal: bool = True
    window: int | None = None
    rope: RopeSpec | None = None
    scale: float | None = None
    softcap: float | None = None
    qk_norm: str | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    kind: str = "softmax"
    sinks: bool = False  # gpt-oss: a learned sink logit per head, an extra softmax column

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def score_scale(self) -> float:
        return self.scale if self.scale is not None else self.d_head ** -0.5

    def cache_tokens(self, context: int) -> int:
        """Positions this layer's cache keeps after `context` tokens (a window keeps its last)."""
        return context if self.window is None else min(self.window, context)

    def bytes_per_token(self, bytes_per_value: int) -> int:
        """Bytes one cached position costs: a key and a value per key/value head."""
        return 2 * self.n_kv_heads * self.d_head * bytes_per_value

    def words(self, rope_model: bool = False) -> str:
        """The kind in words, as mask-demo and params name it (`rope_model`: the model
        rotates positions elsewhere, so a layer without RoPE is worth naming)."""
        return kind_words(self.causal, self.window, no_rope=self.rope is None and rope_model)


def kind_words(causal: bool, window: int | None, no_rope: bool = False) -> str:
    """A layer's kind in words: "local, window 4096" (causal within a window), "global"
    (causal over every earlier key) or "bidirectional encoder" ("…, window W" where it
    also has one), and ", no RoPE" for a layer that does not rotate."""
    if not causal:
        words = "bidirectional encoder" + (f", window {window}" if window is not None else "")
    else:
        words = "global" if window is None else f"local, window {window}"
    return words + (", no RoPE" if no_rope else "")


@dataclass(frozen=True)
class MlpSpec:
    """One layer's MLP slot: dense (up, down) or gated (gate, up, down)."""

    kind: str
    d_mlp: int
    act: str
    bias: bool = False


@dataclass(frozen=True)
class LayerSpec:
    """One kind of layer: its attention, its MLP, how they join the residual stream, and
    a scale on what each adds to it (Granite's residual_multiplier)."""

    attn: AttnSpec
    mlp: MlpSpec
    wiring: str = "pre"
    residual_scale: float = 1.0

    def with_attn(self, **changes: Any) -> "LayerSpec":
        return replace(self, attn=replace(self.attn, **changes))


@dataclass(frozen=True)
class Stack:
    """Layers as a run-length list of kinds: ((spec, count), …) in order."""

    runs: tuple[tuple[LayerSpec, int], ...]
    _starts: tuple[int, ...] = field(default=(), compare=False, repr=False)
    _kinds: tuple[tuple[LayerSpec, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        starts, at = [], 0
        # Kinds found once, by object first: a spec's hash is not cached and costs ~10 µs,
        # and a run list may repeat one object 10^5 times; equal objects merge after.
        by_object: dict[int, list[Any]] = {}
        for spec, count in self.runs:
            starts.append(at)
            at += count
            entry = by_object.get(id(spec))
            if entry is None:
                by_object[id(spec)] = [spec, count]
            else:
                entry[1] += count
        totals: dict[LayerSpec, int] = {}
        for spec, count in by_object.values():
            totals[spec] = totals.get(spec, 0) + count
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_kinds", tuple(totals.items()))

    @classmethod
    def of(cls, layers: Iterable[LayerSpec]) -> "Stack":
        """The run-length form of a per-layer list."""
        runs: list[list[Any]] = []
        for spec in layers:
            if runs and (runs[-1][0] is spec or runs[-1][0] == spec):
                runs[-1][1] += 1
            else:
                runs.append([spec, 1])
        return cls(tuple((spec, count) for spec, count in runs))

    def __len__(self) -> int:
        return sum(count for _, count in self._kinds)

    def layer(self, i: int) -> LayerSpec:
        """Layer i's spec, by bisecting the runs (never expanding them)."""
        return self.runs[bisect_right(self._starts, i) - 1][0]

    def kinds(self) -> list[tuple[LayerSpec, int]]:
        """Each distinct spec with its total layer count, in first-seen order."""
        return list(self._kinds)

    def __iter__(self) -> Iterator[LayerSpec]:
        for spec, count in self.runs:
            for _ in range(count):
                yield spec
