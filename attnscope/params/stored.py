"""Counts from the tensors a checkpoint stores, read from headers alone: safetensors
names mapped to ours through the family's weight table, a GGUF's tensor table through its
`GGUF_WEIGHTS`, fused tensors cut by the family's `stored_parts`, and a GGUF's bytes by
ggml type (`quantization_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from attnscope.config import ModelConfig
from attnscope.params.counting import ParamReport, _report, count_by_category

if TYPE_CHECKING:
    from attnscope.checkpoint import Checkpoint
    from attnscope.sources.gguf import GGUFFile, GGUFTensor


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
