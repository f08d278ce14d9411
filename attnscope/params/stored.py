"""Counts from the tensors a checkpoint stores, read from headers alone: safetensors
names mapped to ours through the family's weight table, a GGUF's tensor table through its
`GGUF_WEIGHTS`, fused tensors cut by the family's `stored_parts`, and a GGUF's bytes by
ggml type (`quantization_table`). A checkpoint of a family attnscope does not know is
still counted from its headers, tensor by tensor, grouped by name (`UnknownReport`).
"""

from __future__ import annotations

import re
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
    from attnscope.sources.gguf import gguf_mtp_tensors

    table = SimpleNamespace(PREFIXES=(), WEIGHTS=family.GGUF_WEIGHTS,  # our_name's lookup, GGUF's table
                            LINEAR_QKV=getattr(family, "LINEAR_QKV", False))
    mtp = gguf_mtp_tensors(f)  # next-token-prediction layers: not the model's (shown apart from the config)
    return _stored(((name, t.shape) for name, t in f.tensors.items() if name not in mtp), table)


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
        elif ".attn.qkv." in ours and not getattr(module, "LINEAR_QKV", False):  # fused q, k, v (GPT-2): three
            # equal parts; a family whose `qkv` is a parameter of its own (Qwen3.5's linear
            # layers: q, k and v of different widths) says LINEAR_QKV and keeps it whole
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
    from attnscope.sources.gguf import gguf_family, gguf_mtp_tensors

    family = gguf_family(f)
    stored, skipped = gguf_stored_shapes(f, family)
    cfg = from_hf_config(gguf_header_config(f, family, skipped), name=name or source)
    stored = split_fused(stored, family, cfg)
    rep = report_from_stored(cfg, stored, convention, source, skipped)
    drop = set(skipped) | gguf_mtp_tensors(f)  # the bytes of the tensors counted
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


# ------------------------------------------------------------- families attnscope does not know
#
# A checkpoint of a family with no module in `architectures/` still has headers: every
# tensor's name and shape. They are counted whole and grouped by what their names say,
# the way the common layouts spell them (Hugging Face's and llama.cpp's), so the total is
# exact and the groups are a reading of the names, never a declaration.

GROUPS = ("embeddings", "attention", "mlp", "norms", "other")
_NORM = re.compile(r"norm|^ln(_\w*)?$|^ln\d*$")
_EMBED = re.compile(r"emb|^(wte|wpe|shared|lm_head|unembed|embed_out|output)$")
_ATTN = re.compile(r"attn|attention|^(q|k|v|o|wq|wk|wv|wo|wqkv|qkv|query|key|value|query_key_value|"
                   r"[qkvo]_proj|qkv_proj|out_proj|c_attn)$")
_MLP = re.compile(r"mlp|ffn|feed_?forward|densereludense|intermediate|experts?|moe|^(fc\d|c_fc|lin\d|"
                  r"gate|up|down|w[123]|wi(_\d)?|gate_proj|up_proj|down_proj|gate_up_proj|dense_h_to_4h|dense_4h_to_h)$")


def name_group(name: str) -> str:
    """The group a stored tensor's name puts it in (`GROUPS`): a norm wherever its name
    says so (`attn_norm` is a norm), else the first part of the name that names
    embeddings, attention or an MLP (`h.0.mlp.c_proj` is the MLP's, `attn.c_proj` the
    attention's), else other. The unembedding (`lm_head`, GGUF's `output`) counts with
    the embeddings."""
    parts = [p for p in name.lower().split(".") if p not in ("weight", "bias", "scale")]
    if any(_NORM.search(p) for p in parts):
        return "norms"
    for p in parts:
        if _EMBED.search(p) and not (p == "output" and len(parts) > 1):
            return "embeddings"
        if _ATTN.search(p):
            return "attention"
        if _MLP.search(p):
            return "mlp"
    return "other"


@dataclass
class UnknownReport:
    """What the headers of a checkpoint of an unknown family say: every tensor counted,
    grouped by name. `family` is what the file calls its family (None: it names none),
    `reason` why attnscope cannot read it as a model."""

    source: str
    name: str
    family: str | None
    reason: str
    total: int
    tensors: int
    groups: dict[str, int]
    skipped: list[str]
    quantization: "dict[str, QuantRow] | None" = None


def report_unknown(items: Iterable[tuple[str, tuple[int, ...]]], source: str, name: str, family: str | None,
                   reason: str) -> UnknownReport:
    """Count every tensor (names, shapes) by group; non-parameter buffers (`is_buffer`) apart."""
    from attnscope import architectures

    groups = dict.fromkeys(GROUPS, 0)
    skipped: list[str] = []
    tensors = 0
    for tensor, shape in items:
        if architectures.is_buffer(tensor):
            skipped.append(tensor)
            continue
        groups[name_group(tensor)] += prod(shape)
        tensors += 1
    return UnknownReport(source, name, family, reason, sum(groups.values()), tensors, groups, skipped)


def gguf_family_known(f: "GGUFFile") -> bool:
    """Whether a family module reads this GGUF's architecture."""
    from attnscope.errors import CheckpointError
    from attnscope.sources.gguf import gguf_family

    try:
        gguf_family(f)
    except CheckpointError:
        return False
    return True


def unknown_from_gguf(f: "GGUFFile", source: str, name: str = "") -> UnknownReport:
    """`report_unknown` for a GGUF of an architecture no family reads, with its bytes by ggml type."""
    rep = report_unknown(((n, t.shape) for n, t in f.tensors.items()), source, name or source, f.arch,
                         f"GGUF architecture {f.arch!r} is not one attnscope knows")
    drop = set(rep.skipped)
    rep.quantization = quantization_table(t for n, t in f.tensors.items() if n not in drop)
    return rep


def unknown_dict(rep: UnknownReport) -> dict[str, Any]:
    """The `--json` document for an unknown family: plain ints."""
    out: dict[str, Any] = {
        "model": rep.name or rep.source,
        "source": rep.source,
        "family": rep.family,
        "family_known": False,
        "note": rep.reason + "; every stored tensor is counted, grouped by its name",
        "convention": "full",
        "total": rep.total,
        "tensors": rep.tensors,
        "groups": rep.groups,
        "skipped_buffers": rep.skipped,
    }
    if rep.quantization:
        out["quantization"] = {
            name: {"tensors": q.tensors, "parameters": q.parameters, "bytes": q.bytes,
                   "bits_per_weight": q.bits_per_weight}
            for name, q in rep.quantization.items()
        }
    return out
