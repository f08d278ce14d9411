"""Parameter accounting: pure arithmetic on a ModelConfig, and counts from stored tensors
(safetensors headers, or a GGUF's tensor table with its bytes per ggml type).

`param_shapes()` is the single list of every parameter our model holds, by our names;
the model builds itself from it and the loader checks checkpoints against it, so the
count and the model cannot drift apart. Per-head shapes follow TransformerLens
((n_heads, d_model, d_head)), which makes per-head counts fall out of a product.

Two conventions:
  * `3b1b`: weight matrices only, as in 3Blue1Brown's "Attention in transformers"
    (embedding, key, query, value, output, up, down, unembedding; the unembedding is
    counted even when it is tied to the embedding);
  * `full`: every parameter the model stores, tied weights once (transformers'
    `num_parameters()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from attnscope.config import ModelConfig
from attnscope.kinds import LayerSpec
from attnscope.parts import attention_shapes, block_shapes, embedding_shapes, head_shapes, model_shapes

if TYPE_CHECKING:
    from attnscope.checkpoint import Checkpoint
    from attnscope.sources.gguf import GGUFFile, GGUFTensor

CONVENTIONS = ("3b1b", "full")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model by our name, in load order (the parts' declarations,
    `parts.model_shapes`). Tied unembeddings are absent."""
    return model_shapes(cfg)


def declared_counts(cfg: ModelConfig) -> dict[str, int]:
    """Counts by category of every declared parameter, by arithmetic: each layer kind's
    block times the layers of that kind, so no depth is ever enumerated."""
    counts = count_by_category(list(embedding_shapes(cfg).items()) + list(head_shapes(cfg).items()))
    for spec, count in cfg.stack.kinds():
        block = _block_rows(cfg, spec)
        for row in counts:
            counts[row] += count * block[row]
    return counts


def _block_rows(cfg: ModelConfig, spec: LayerSpec) -> dict[str, int]:
    """One block of kind `spec`, counted by category."""
    return count_by_category((f"blocks.0.{name}", shape) for name, shape in block_shapes(cfg, spec).items())


_last_ranges: list[Any] = [None, None]  # (stack, ranges): report and context_report read one stack twice


def layer_ranges(cfg: ModelConfig) -> dict[LayerSpec, list[list[int]]]:
    """Each kind's layers as [first, last] ranges, adjacent runs merged, in order; read off
    the run-length list (each run's kind found by object first: a spec's hash is not cached),
    never enumerating layers."""
    if _last_ranges[0] is cfg.stack:
        return _last_ranges[1]
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
    out = dict(zip(kinds, ranges))
    _last_ranges[:] = [cfg.stack, out]
    return out


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
    labels: dict[LayerSpec, str] = {}
    for spec in kinds:
        words = [spec.attn.words(rope_model)]
        if len(thetas) > 1 and spec.attn.rope is not None:
            theta = spec.attn.rope.theta
            words.append(f"RoPE base {int(theta):,}" if theta == int(theta) else f"RoPE base {theta:g}")
        if len(widths) > 1:
            words.append(f"MLP {spec.mlp.d_mlp:,}")
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
    return [KindRow(spec, labels[spec], count, ranges[spec], _block_summary(_block_rows(cfg, spec)))
            for spec, count in cfg.stack.kinds()]


def _block_summary(per_block: dict[str, int]) -> dict[str, int]:
    attn = sum(per_block[r] for r in ("query", "key", "value", "output"))
    mlp = sum(per_block[r] for r in ("gate", "up", "down"))
    biases, norms = per_block["biases"], per_block["norms"]
    return {"attention": attn, "mlp": mlp, "biases": biases, "norms": norms, "total": attn + mlp + biases + norms}


# The video's rows, then what its counting leaves out. Order is display order.
ROWS_3B1B = ("embedding", "key", "query", "value", "output", "gate", "up", "down", "unembedding")
ROWS_OTHER = ("positions", "projections", "biases", "norms", "pooler", "heads", "other")


def category(name: str) -> str:
    """The breakdown row one of our parameter names belongs to."""
    if name.startswith("other:"):
        return "other"
    if name == "embed.tok.weight":
        return "embedding"
    if name == "unembed.weight":
        return "unembedding"
    if name in ("embed.pos.weight", "embed.types.weight"):
        return "positions"
    if name.startswith("pooler."):
        return "pooler"
    if name.startswith(("mlm.", "nsp.")):
        return "heads"
    if name in ("embed.proj_in.weight", "proj_out.weight"):
        return "projections"
    if "norm." in name:
        return "norms"
    if name.endswith(".bias"):
        return "biases"
    part = name.split(".")[-2]
    return {"q": "query", "k": "key", "v": "value", "o": "output", "gate": "gate", "up": "up", "down": "down"}.get(part, "other")


def count_by_category(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, int]:
    counts = {row: 0 for row in ROWS_3B1B + ROWS_OTHER}
    for name, shape in shapes:
        counts[category(name)] += prod(shape)
    return counts


@dataclass
class HeadCount:
    """Per attention head, after the video: W_Q, W_K, W_V↓ (value down), W_V↑ (value up)."""

    shapes: dict[str, tuple[int, int]]
    per_query_head: int  # W_Q + W_V↑ (the output share)
    per_kv_head: int  # W_K + W_V↓
    per_head: int | None  # all four, where every query head has its own K and V


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

    @property
    def total(self) -> int:
        return self.total_3b1b if self.convention == "3b1b" else self.total_full

    @property
    def other_total(self) -> tuple[str, int]:
        if self.convention == "3b1b":
            return "full", self.total_full
        return "3b1b", self.total_3b1b


def head_count(cfg: ModelConfig) -> HeadCount:
    """One head's share of the attention's declared weights: q and o split over the query
    heads, k and v over the key/value heads (TransformerLens's per-head shapes)."""
    attn = attention_shapes(cfg)
    d, dh = cfg.d_model, cfg.d_head
    shapes = {"W_Q": (d, dh), "W_K": (d, dh), "W_V↓": (d, dh), "W_V↑": (dh, d)}
    per_q = (prod(attn["q.weight"]) + prod(attn["o.weight"])) // cfg.n_heads
    per_kv = (prod(attn["k.weight"]) + prod(attn["v.weight"])) // cfg.n_kv_heads
    return HeadCount(shapes, per_q, per_kv, per_q + per_kv if cfg.group_size == 1 else None)


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


def stored_shapes(ckpt: "Checkpoint", cfg: ModelConfig | None) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """The parameters a checkpoint stores, by our names where its family is known, from
    the headers alone; non-parameter buffers are returned separately as skipped."""
    from attnscope import architectures

    module = architectures.ARCHITECTURES.get(cfg.family) if cfg is not None else None
    stored, skipped = _stored(((name, info.shape) for name, info in ckpt.tensors.items()), module)
    return split_fused(stored, module, cfg), skipped


def split_fused(stored: dict[str, tuple[int, ...]], module: Any, cfg: ModelConfig | None) -> dict[str, tuple[int, ...]]:
    """Fused tensors a family stores (Phi-3's qkv_proj and gate_up_proj) cut into our
    parameters by the family's own `stored_parts`, which its loader's `split` also uses,
    so that each part is counted where it belongs; unchanged for other families."""
    parts = getattr(module, "stored_parts", None)
    if parts is None or cfg is None:
        return stored
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in stored.items():
        out.update(parts(name, shape, cfg))
    return out


def gguf_stored_shapes(f: "GGUFFile", family: ModuleType) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """`stored_shapes` for a GGUF's tensor table, named through the family's `GGUF_WEIGHTS`
    (GPT-2's fused qkv split in thirds the same way); skipped are the file's tensors that
    are not parameters (Llama 3's RoPE divisors, read into the config)."""
    table = SimpleNamespace(PREFIXES=(), WEIGHTS=family.GGUF_WEIGHTS)  # our_name's lookup, GGUF's table
    return _stored(((name, t.shape) for name, t in f.tensors.items()), table)


def _stored(items: Iterable[tuple[str, tuple[int, ...]]], module: Any) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    from attnscope import architectures

    stored: dict[str, tuple[int, ...]] = {}
    skipped: list[str] = []
    for name, shape in items:
        if module is None:
            if architectures.is_buffer(name):
                skipped.append(name)
            else:
                stored[f"other:{name}"] = shape
            continue
        try:
            ours = architectures.our_name(module, name)
        except KeyError:
            stored[f"other:{name}"] = shape
            continue
        if ours is None:
            skipped.append(name)
        elif ".attn.qkv." in ours:  # fused q, k, v (GPT-2): three equal parts
            numel = prod(shape) // 3
            for part in "qkv":
                stored[ours.replace(".qkv.", f".{part}.")] = (numel,)
        else:
            stored[ours] = shape
    return stored, skipped


@dataclass(frozen=True)
class QuantRow:
    """One storage type of a GGUF: how many tensors, parameters and bytes it holds."""

    tensors: int
    parameters: int
    bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.parameters if self.parameters else 0.0


def quantization_table(tensors: Iterable["GGUFTensor"]) -> dict[str, QuantRow]:
    """Tensors, parameters and bytes by ggml type ("Q4_1", "F32", ...), most bytes first.
    Bytes are what the header declares each tensor to occupy: its blocks, no padding."""
    rows: dict[str, list[int]] = {}
    for t in tensors:
        row = rows.setdefault(t.type_name, [0, 0, 0])
        row[0] += 1
        row[1] += t.numel
        row[2] += t.nbytes
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1][2], kv[0]))
    return {name: QuantRow(*row) for name, row in ordered}


def gguf_header_config(f: "GGUFFile", family: ModuleType, skipped: Iterable[str] = ()) -> dict[str, Any]:
    """`sources.gguf.gguf_config` from the header alone: the non-parameter tensors
    (`skipped`) are left out of the table it sees, so Llama 3's `rope_freqs` is not read
    and the config has no RoPE scaling, which no count depends on."""
    from attnscope.sources.gguf import gguf_config

    drop = set(skipped)
    return gguf_config(replace(f, tensors={n: t for n, t in f.tensors.items() if n not in drop}))


def report_from_gguf(f: "GGUFFile", convention: str, source: str, name: str = "") -> ParamReport:
    """The breakdown of a GGUF's tensors and the bytes each storage type takes, from its
    header alone (`read_gguf` reads no tensor data, and neither does this)."""
    from attnscope.config import from_hf_config
    from attnscope.sources.gguf import gguf_family

    family = gguf_family(f)
    stored, skipped = gguf_stored_shapes(f, family)
    cfg = from_hf_config(gguf_header_config(f, family, skipped), name=name or source)
    stored = split_fused(stored, family, cfg)
    rep = report_from_stored(cfg, stored, convention, source, skipped)
    drop = set(skipped)
    rep.quantization = quantization_table(t for n, t in f.tensors.items() if n not in drop)
    return rep


def report_from_stored(
    cfg: ModelConfig, stored: dict[str, tuple[int, ...]], convention: str, source: str, skipped: list[str]
) -> ParamReport:
    """The breakdown of the tensors a checkpoint actually stores (already in our names)."""
    rep = _report(cfg, convention, count_by_category(stored.items()), source)
    rep.skipped = skipped
    rep.stored_only = True
    return rep


def _report(cfg: ModelConfig, convention: str, rows: dict[str, int], source: str) -> ParamReport:
    total_3b1b, total_full = _totals(rows, cfg)
    kinds = kind_rows(cfg)
    first = next(k for k in kinds if k.spec == cfg.layer(0))
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
    )


@dataclass(frozen=True)
class KindCache:
    """One layer kind's KV cache at a context: each layer keeps `tokens` positions
    (`AttnSpec.cache_tokens`: a window caps it) of `bytes_per_token` each."""

    label: str
    ranges: list[list[int]]
    n_layers: int
    tokens: int  # positions one layer of this kind keeps
    values_per_token: int  # K and V values one position costs, all layers of this kind
    values: int  # all layers of this kind, at their cached positions
    bytes: int


@dataclass
class ContextReport:
    """What a context of n tokens costs: pattern entries, KV cache, forward FLOPs."""

    n: int
    dtype: str
    bytes_per_value: int
    pattern_per_head: int  # n² entries
    pattern_per_block: int
    pattern_total: int
    kv_cache_per_token: int  # values (K and V, every layer and kv head) one position costs where it is kept
    kv_cache_total: int  # values held at n tokens: each kind's layers keep at most their window
    kv_cache_bytes: int
    pattern_bytes: int
    flops_per_token: int  # forward FLOPs per token at context n (2 per multiply-add)
    kv_kinds: list[KindCache] = field(default_factory=list)  # the cache per layer kind, summing to the totals


def context_report(cfg: ModelConfig, n: int, dtype: str = "float32") -> ContextReport:
    width = DTYPE_BYTES[dtype]
    per_head = n * n
    per_block = per_head * cfg.layer(0).attn.n_heads
    pattern_total = 0
    labels, ranges = kind_labels(cfg), layer_ranges(cfg)
    caches = []
    attn_flops = 0
    for spec, count in cfg.stack.kinds():
        a = spec.attn
        tokens = a.cache_tokens(n)
        per_token = count * a.bytes_per_token(1)  # values: bytes at one byte a value
        caches.append(KindCache(labels[spec], ranges[spec], count, tokens, per_token,
                                per_token * tokens, per_token * tokens * width))
        # QK^T and pattern·V for the token at position n: 2 * 2 * keys * d_head per head,
        # over the keys its layer sees (a window caps them).
        attn_flops += count * a.n_heads * 4 * tokens * a.d_head
        pattern_total += count * a.n_heads * per_head  # the kernel scores every key, then masks
    weights = declared_counts(cfg)
    matmul_params = sum(weights[r] for r in ("key", "query", "value", "output", "gate", "up", "down"))
    if cfg.lm_head:
        matmul_params += weights["embedding"]  # the unembedding matmul, tied or not
    kv_values = sum(c.values for c in caches)
    return ContextReport(
        n=n,
        dtype=dtype,
        bytes_per_value=width,
        pattern_per_head=per_head,
        pattern_per_block=per_block,
        pattern_total=pattern_total,
        kv_cache_per_token=sum(c.values_per_token for c in caches),
        kv_cache_total=kv_values,
        kv_cache_bytes=kv_values * width,
        pattern_bytes=pattern_total * width,
        flops_per_token=2 * matmul_params + attn_flops,  # 2 FLOPs per weight, plus attention's
        kv_kinds=caches,
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
