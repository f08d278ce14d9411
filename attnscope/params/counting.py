"""Parameter counts from a ModelConfig's declared shapes, by arithmetic alone: rows by
category, each layer kind's block times its layers (never enumerating depth), one head's
share, the `ParamReport` and the `--json` document (`report_dict`). Which row a name
belongs to is `params.categories`.

`param_shapes()` is the single list of every parameter our model holds, by our names;
the model builds itself from it and the loader checks checkpoints against it, so the
count and the model cannot drift apart. Per-head shapes follow TransformerLens
((n_heads, d_model, d_head)), which makes per-head counts fall out of a product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

from attnscope.config import ModelConfig
from attnscope.kinds import LayerSpec
from attnscope.parts import (
    NOT_COUNTED, attention_shapes, block_shapes, embedding_shapes, head_shapes, mlp_shapes, model_shapes,
)
from attnscope.params.categories import (  # noqa: F401  (re-exported)
    _EXPERT_PIECE, _PARTS, ROWS_3B1B, ROWS_OTHER, category, count_by_category,
)

if TYPE_CHECKING:
    from attnscope.params.context import ContextReport
    from attnscope.params.stored import QuantRow

CONVENTIONS = ("3b1b", "full")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model by our name, in load order (the parts' declarations,
    `parts.model_shapes`). Tied unembeddings are absent, and so are the tensors the model
    loads that are buffers, not parameters, in transformers (`parts.NOT_COUNTED`: DeepSeek-V3's
    score-correction biases)."""
    return {name: shape for name, shape in model_shapes(cfg).items() if not name.endswith(NOT_COUNTED)}


def declared_counts(cfg: ModelConfig) -> dict[str, int]:
    """Counts by category of every declared parameter, by arithmetic: each layer kind's
    block times the layers of that kind, so no depth is ever enumerated."""
    counts = count_by_category(list(embedding_shapes(cfg).items()) + list(head_shapes(cfg).items()))
    decoder = cfg.decoder.kinds() if cfg.decoder is not None else []
    for spec, count in cfg.stack.kinds() + decoder:
        block = _block_rows(cfg, spec)
        for row in counts:
            counts[row] += count * block[row]
    return counts


def _block_rows(cfg: ModelConfig, spec: LayerSpec) -> dict[str, int]:
    """One block of kind `spec`, counted by category."""
    return count_by_category((f"blocks.0.{name}", shape) for name, shape in block_shapes(cfg, spec).items())


def layer_ranges(cfg: ModelConfig) -> dict[LayerSpec, list[list[int]]]:
    """Each kind's layers as [first, last] ranges, adjacent runs merged, in order; read off
    the run-length list (each run's kind found by object first: a spec's hash is not cached),
    never enumerating layers."""
    kinds = [spec for spec, _ in cfg.stack.kinds()]
    ranges: list[list[list[int]]] = [[] for _ in kinds]
    kind_of: dict[int, int] = {}  # a run's spec object -> its kind's index
    at = 0
    for run, count in cfg.stack.runs:
        index = kind_of.get(id(run))
        if index is None:
            index = kind_of[id(run)] = next(i for i, k in enumerate(kinds) if k is run or k == run)
        rows = ranges[index]
        if rows and rows[-1][1] == at - 1:
            rows[-1][1] = at + count - 1
        else:
            rows.append([at, at + count - 1])
        at += count
    return dict(zip(kinds, ranges))


def ranges_text(ranges: list[list[int]], most: int = 3) -> str:
    """'0-4, 6-10, 12-16 …': the first `most` ranges, an ellipsis for the rest."""
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:most]]
    return ", ".join(shown) + (" …" if len(ranges) > most else "")


def kind_labels(cfg: ModelConfig) -> dict[LayerSpec, str]:
    """Each kind in words (`AttnSpec.words`), with what else sets it apart where the words
    alone would not (a RoPE base, an MLP width), so no two kinds read alike."""
    kinds = [spec for spec, _ in cfg.stack.kinds()]
    rope_model = any(spec.attn.rope is not None for spec in kinds)
    thetas = {spec.attn.rope.theta for spec in kinds if spec.attn.rope is not None}
    widths = {spec.mlp.d_mlp for spec in kinds}
    wirings = {spec.wiring for spec in kinds}
    labels: dict[LayerSpec, str] = {}
    for spec in kinds:
        words = [spec.attn.words(rope_model)]
        if len(thetas) > 1 and spec.attn.rope is not None:
            theta = spec.attn.rope.theta
            words.append(f"RoPE base {int(theta):,}" if theta == int(theta) else f"RoPE base {theta:g}")
        if len(widths) > 1:
            words.append(f"MLP {spec.mlp.d_mlp:,}")
        if len(wirings) > 1 and spec.wiring == "pre_no_attn_norm":  # ModernBERT's layer 0
            words.append("no norm before attention")
        label = ", ".join(words)
        if label in labels.values():
            label = f"{label} (kind {len(labels) + 1})"
        labels[spec] = label
    return labels


@dataclass
class KindRow:
    """One layer kind of a model: which layers, in words, and one such block's counts."""

    spec: LayerSpec
    label: str  # "local, window 512"
    n_layers: int
    ranges: list[list[int]]  # [first, last] layer ranges
    block: dict[str, int]  # attention, mlp, biases, norms, total (as ParamReport.block)

    @property
    def total(self) -> int:
        return self.n_layers * self.block["total"]


def kind_rows(cfg: ModelConfig) -> list[KindRow]:
    """Every distinct layer kind with its layers and its block's breakdown."""
    labels, ranges = kind_labels(cfg), layer_ranges(cfg)
    rows = [KindRow(spec, labels[spec], count, ranges[spec], _block_summary(_block_rows(cfg, spec), cfg, spec))
            for spec, count in cfg.stack.kinds()]
    if cfg.decoder is None:
        return rows
    # An encoder-decoder (T5, BART): the encoder's blocks, then the decoder's, each with its
    # cross-attention (counted in the attention rows), layers numbered within each stack.
    for row in rows:
        row.label = f"encoder: {row.label}"
    at = 0
    for spec, count in cfg.decoder.runs:
        block = _block_summary(_block_rows(cfg, spec), cfg, spec)
        if rows[-1].spec == spec and rows[-1].label.startswith("decoder"):
            rows[-1].n_layers += count
            rows[-1].ranges[-1][1] = at + count - 1
        else:
            rows.append(KindRow(spec, "decoder: causal, with cross-attention", count, [[at, at + count - 1]], block))
        at += count
    return rows


def _block_summary(per_block: dict[str, int], cfg: ModelConfig | None = None,
                   spec: LayerSpec | None = None) -> dict[str, int]:
    """One block's parts; a block with experts adds its router, its routed experts (all,
    and one), its shared experts and what one token uses of it (`active`)."""
    attn = sum(per_block[r] for r in ("query", "key", "value", "output", "latent", "linear"))
    mlp = sum(per_block[r] for r in ("gate", "up", "down"))
    biases, norms, router = per_block["biases"], per_block["norms"], per_block["router"]
    gate = per_block["per_layer"]  # Gemma 4's per-layer input gate and projection
    out = {"attention": attn, "mlp": mlp, "biases": biases, "norms": norms,
           "total": attn + mlp + biases + norms + router + gate}
    if gate:
        out["per_layer"] = gate
    if cfg is not None and spec is not None and spec.mlp.kind == "experts":
        e = spec.mlp.experts
        assert e is not None  # internal invariant: kind "experts" carries its ExpertSpec
        shapes = mlp_shapes(cfg, spec.mlp)
        routed = sum(prod(shape) for name, shape in shapes.items() if name.startswith("experts."))
        one = routed // e.n_experts
        out.update({
            "router": router,
            "experts": routed,
            "expert": one,
            "shared": sum(prod(shape) for name, shape in shapes.items() if name.startswith("shared.")),
            # Gemma 4's dense MLP beside the experts (ExpertSpec.d_dense): the slot's own gate, up, down
            "dense": sum(prod(shape) for name, shape in shapes.items() if name.split(".")[0] in ("gate", "up", "down")),
            "active": out["total"] - (e.n_experts - e.top_k) * one,
        })
    return out


def inactive(cfg: ModelConfig) -> tuple[int, int]:
    """Parameters one token does not use, as (3b1b, full): in every layer with experts,
    the routed experts it does not visit (n_experts − top_k of them); 3b1b counts their
    weights, full their weights and biases. (0, 0) for a model without experts."""
    weights = every = 0
    for spec, count in cfg.stack.kinds():
        e = spec.mlp.experts
        if spec.mlp.kind != "experts" or e is None:
            continue
        shapes = mlp_shapes(cfg, spec.mlp)
        unused = count * (e.n_experts - e.top_k)
        weights += unused * sum(prod(s[1:]) for n, s in shapes.items() if n.startswith("experts.") and n.endswith(".weight"))
        every += unused * sum(prod(s[1:]) for n, s in shapes.items() if n.startswith("experts."))
    return weights, every


@dataclass
class HeadCount:
    """Per attention head, after the video: W_Q, W_K, W_V↓ (value down), W_V↑ (value up)."""

    shapes: dict[str, tuple[int, int]]
    per_query_head: int  # W_Q + W_V↑ (the output share)
    per_kv_head: int  # W_K + W_V↓
    per_head: int | None  # all four, where every query head has its own K and V
    shared: int = 0  # latent attention: the low-rank factors all heads share (q_a, kv_a and their norms)
    shared_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    gate: bool = False  # Qwen3.5, Qwen3-Next: W_Q's rows also hold each head's output gate (in per_query_head)


@dataclass
class ParamReport:
    """The full breakdown for one model; all numbers exact ints."""

    cfg: ModelConfig
    convention: str
    rows: dict[str, int]  # the category counts (both conventions are derived from these)
    total_3b1b: int
    total_full: int
    head: HeadCount
    block: dict[str, int]  # layer 0's kind: attention, mlp, norms, biases, total (weights + biases + norms)
    attention_per_block: int  # weights only (Q, K, V, O), as the video counts; layer 0's kind
    attention_total: int  # summed over the kinds × their layers
    mlp_per_block: int  # layer 0's kind
    mlp_total: int = 0  # summed over the kinds × their layers
    kinds: list[KindRow] = field(default_factory=list)  # each distinct layer kind, in first-seen order
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # buffers in a checkpoint, not counted
    stored_only: bool = False  # counted from a checkpoint's tensors
    quantization: dict[str, "QuantRow"] = field(default_factory=dict)  # a GGUF's bytes by ggml type
    # What one token uses: the totals less the routed experts it does not visit (equal to
    # the totals for a model without experts).
    active_3b1b: int = 0
    active_full: int = 0

    @property
    def total(self) -> int:
        return self.total_3b1b if self.convention == "3b1b" else self.total_full

    @property
    def active(self) -> int:
        return self.active_3b1b if self.convention == "3b1b" else self.active_full

    @property
    def other_total(self) -> tuple[str, int]:
        if self.convention == "3b1b":
            return "full", self.total_full
        return "3b1b", self.total_3b1b


def head_count(cfg: ModelConfig) -> HeadCount:
    """One head's share of the attention's declared weights: q and o split over the query
    heads, k and v over the key/value heads (TransformerLens's per-head shapes)."""
    # the first layer with keys of its own (a hybrid's linear layers have none to count per head)
    first = next((spec.attn for spec, _ in cfg.stack.kinds() if spec.attn.kind != "linear"), cfg.layer(0).attn)
    attn = attention_shapes(cfg, first)
    if first.latent is not None:
        return _latent_head_count(cfg, attn)
    d, dh = cfg.d_model, cfg.d_head
    shapes = {"W_Q": (d, dh), "W_K": (d, dh), "W_V↓": (d, dh), "W_V↑": (dh, d)}
    per_q = (prod(attn["q.weight"]) + prod(attn["o.weight"])) // cfg.n_heads
    per_kv = (prod(attn["k.weight"]) + prod(attn["v.weight"])) // cfg.n_kv_heads
    if first.out_gate:
        shapes["W_gate"] = (d, dh)
    return HeadCount(shapes, per_q, per_kv, per_q + per_kv if cfg.group_size == 1 else None, gate=first.out_gate)


def _latent_head_count(cfg: ModelConfig, attn: dict[str, tuple[int, ...]]) -> HeadCount:
    """Latent attention (MLA): each head owns its rows of the query up-projection (q_b,
    or q), of kv_b (its key part and its value) and its columns of o; the low-rank
    factors q_a and kv_a (with their norms and biases) serve every head: `shared`."""
    a = cfg.layer(0).attn
    m = a.latent
    assert m is not None  # internal invariant: asked of a latent layer
    d, H, qk = cfg.d_model, a.n_heads, a.d_head
    q_in = m.q_rank if m.q_rank is not None else d
    shapes = {"W_Q": (q_in, qk), "W_K": (m.kv_rank, m.nope_dim), "W_V↓": (m.kv_rank, m.v_dim), "W_V↑": (m.v_dim, d)}
    per_q = (prod(attn["q_b.weight" if m.q_rank is not None else "q.weight"]) + prod(attn["o.weight"])) // H
    per_kv = prod(attn["kv_b.weight"]) // H
    owned = ("q.", "q_b.", "kv_b.", "o.")
    shared = sum(prod(s) for name, s in attn.items() if not name.startswith(owned))
    shared_shapes = {"kv_a": (d, m.kv_rank + m.rope_dim)}
    if m.q_rank is not None:
        shared_shapes = {"q_a": (d, m.q_rank), **shared_shapes}
    return HeadCount(shapes, per_q, per_kv, per_q + per_kv, shared, shared_shapes)


def _totals(rows: dict[str, int], cfg: ModelConfig) -> tuple[int, int]:
    full = sum(rows.values())
    weights = sum(rows[r] for r in ROWS_3B1B)
    # The video counts the unembedding as its own matrix even where the model ties it.
    if cfg.lm_head and cfg.tied_embeddings and rows["unembedding"] == 0:
        weights += rows["embedding"]
    return weights, full


def report(cfg: ModelConfig, convention: str = "full", source: str = "") -> ParamReport:
    """The parameter breakdown of a config, by arithmetic alone."""
    return _report(cfg, convention, declared_counts(cfg), source)


def _report(cfg: ModelConfig, convention: str, rows: dict[str, int], source: str) -> ParamReport:
    total_3b1b, total_full = _totals(rows, cfg)
    unused_3b1b, unused_full = inactive(cfg)
    kinds = kind_rows(cfg)
    first = kinds[0]  # first-seen order: layer 0's kind leads
    return ParamReport(
        cfg=cfg,
        convention=convention,
        rows=rows,
        total_3b1b=total_3b1b,
        total_full=total_full,
        head=head_count(cfg),
        block=dict(first.block),
        attention_per_block=first.block["attention"],
        attention_total=sum(k.n_layers * k.block["attention"] for k in kinds),
        mlp_per_block=first.block["mlp"],
        mlp_total=sum(k.n_layers * k.block["mlp"] for k in kinds),
        kinds=kinds,
        source=source,
        active_3b1b=total_3b1b - unused_3b1b,
        active_full=total_full - unused_full,
    )


def report_dict(rep: ParamReport, ctx: ContextReport | None = None) -> dict:
    """The `--json` document: plain ints, never rounded strings."""
    cfg = rep.cfg
    out: dict = {
        "model": cfg.name or rep.source,
        "source": rep.source,
        "family": cfg.family,
        "convention": rep.convention,
        "total": rep.total,
        "totals": {"3b1b": rep.total_3b1b, "full": rep.total_full},
        "active": rep.active,  # what one token uses: the total less the routed experts it skips
        "active_totals": {"3b1b": rep.active_3b1b, "full": rep.active_full},
        "shape": {
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "d_head": cfg.d_head,
            "d_mlp": cfg.d_mlp,
            "vocab_size": cfg.vocab_size,
            "n_ctx": cfg.n_ctx,
            "attention_kind": cfg.attention_kind,
            "tied_embeddings": cfg.tied_embeddings,
            **({"decoder_layers": len(cfg.decoder), "decoder_heads": cfg.decoder.layer(0).attn.n_heads}
               if cfg.decoder is not None else {}),
        },
        "attention": {
            "per_query_head": rep.head.per_query_head,
            "per_kv_head": rep.head.per_kv_head,
            "per_block": rep.attention_per_block,
            "total": rep.attention_total,
        },
        "mlp": {"per_block": rep.mlp_per_block, "total": rep.mlp_total},
        "block": rep.block,
        "kinds": [{"kind": k.label, "layers": k.ranges, "n_layers": k.n_layers,
                   "block": k.block, "total": k.total} for k in rep.kinds],
        "rows": rep.rows,
    }
    if rep.head.per_head is not None:
        out["attention"]["per_head"] = rep.head.per_head
    if rep.head.shared_shapes:  # latent attention: the low-rank factors every head shares
        out["attention"]["shared_by_all_heads"] = rep.head.shared
    if cfg.extra.get("not_counted"):  # modules a checkpoint carries outside the model (DeepSeek-V3's MTP)
        out["not_counted"] = dict(cfg.extra["not_counted"])
    if rep.stored_only:
        out["skipped_buffers"] = rep.skipped
    if rep.quantization:
        out["quantization"] = {
            name: {"tensors": q.tensors, "parameters": q.parameters, "bytes": q.bytes,
                   "bits_per_weight": q.bits_per_weight}
            for name, q in rep.quantization.items()
        }
    if ctx is not None:
        out["context"] = {
            "n": ctx.n,
            "dtype": ctx.dtype,
            "pattern_entries": {"per_head": ctx.pattern_per_head, "per_block": ctx.pattern_per_block, "total": ctx.pattern_total},
            "pattern_bytes": ctx.pattern_bytes,
            "kv_cache": {"values_per_token": ctx.kv_cache_per_token, "values": ctx.kv_cache_total, "bytes": ctx.kv_cache_bytes,
                         "kinds": [{"kind": c.label, "layers": c.ranges, "n_layers": c.n_layers,
                                    "tokens": c.tokens, "values_per_token": c.values_per_token, "values": c.values,
                                    "bytes": c.bytes} for c in ctx.kv_kinds]},
            "flops_per_token": ctx.flops_per_token,
        }
    return out
