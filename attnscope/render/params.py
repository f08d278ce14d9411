"""Rich tables for `params`: per head, per block, per model, a GGUF's storage by
quantization type, and the context costs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnscope.units import human_bytes, n, noun, plural

if TYPE_CHECKING:
    from attnscope.config import ModelConfig
    from attnscope.params import ContextReport, ParamReport
    from attnscope.params.stored import UnknownReport

ROW_LABELS = {
    "embedding": "Embedding",
    "key": "Key",
    "query": "Query",
    "value": "Value (W_V↓)",
    "output": "Output (W_V↑)",
    "latent": "Key/value latent (MLA: kv_a, kv_b)",
    "linear": "Linear attention (DeltaNet: qkv, z, b, a, conv, decay)",
    "gate": "Gate (gated MLP)",
    "up": "Up-projection",
    "down": "Down-projection",
    "unembedding": "Unembedding",
    "positions": "Position / type tables",
    "projections": "Embedding projections (in, out)",
    "per_layer": "Per-layer inputs (table, projection, gates)",
    "biases": "Biases",
    "norms": "Norms",
    "router": "Routers (MoE gates)",
    "pooler": "Pooler",
    "heads": "Output heads (MLM, NSP, classifier)",
    "other": "Other stored tensors",
}


def linear_head_shares(d: int, lin: Any) -> tuple[int, int]:
    """A Gated DeltaNet layer's weights per value head and per q/k head (`kinds.LinearSpec`):
    H_v · per value head + H_k · per q/k head = its attention weights (the gated norm's
    scale, shared by all value heads, is a norm)."""
    per_v = 3 * d * lin.d_v + 2 * d + lin.d_v * lin.conv_kernel + 2  # v, z rows; o columns; b, a; conv; dt_bias, A_log
    per_k = 2 * d * lin.d_k + 2 * lin.d_k * lin.conv_kernel  # q, k rows and their conv taps
    return per_v, per_k


def shape_line(cfg: "ModelConfig") -> str:
    kv = "" if cfg.n_kv_heads == cfg.n_heads else f" ({plural(cfg.n_kv_heads, 'key/value head')}, {cfg.attention_kind})"
    moe = next((spec.mlp for spec, _ in cfg.stack.kinds() if spec.mlp.experts is not None), None)
    if moe is not None and moe.experts is not None:  # a mixture of experts: what one MoE layer holds
        e = moe.experts
        mlp = f"{e.n_experts} experts of {n(moe.d_mlp)}, top {e.top_k}" + (f" + shared {n(e.d_shared)}" if e.d_shared else "")
        mlp += f" + dense MLP {n(e.d_dense)}" if e.d_dense else ""
    else:
        mlp = f"MLP {n(cfg.d_mlp)}{' (gated)' if cfg.layer(0).mlp.kind == 'gated' else ''}"
    layers = f"{plural(cfg.n_layers, 'layer')} × {plural(cfg.n_heads, 'head')} of {cfg.d_head}{kv}"
    if cfg.decoder is not None:  # an encoder-decoder: each stack's depth and heads
        dec = cfg.decoder.layer(0).attn
        if (dec.n_heads, dec.d_head) == (cfg.n_heads, cfg.d_head):
            layers = (f"{cfg.n_layers} + {plural(len(cfg.decoder), 'layer')} (encoder + decoder) × "
                      f"{plural(cfg.n_heads, 'head')} of {cfg.d_head}")
        else:
            layers = (f"encoder {cfg.n_layers} × {plural(cfg.n_heads, 'head')} of {cfg.d_head}, decoder "
                      f"{len(cfg.decoder)} × {plural(dec.n_heads, 'head')} of {dec.d_head}")
    return (
        f"d_model {n(cfg.d_model)} · {layers}\n"
        f"{mlp} · vocab {n(cfg.vocab_size)} · context {n(cfg.n_ctx)}"
    )


def params_report(console: Console, rep: "ParamReport", ctx: "ContextReport | None" = None) -> None:
    from attnscope.params import ROWS_3B1B, ROWS_OTHER

    cfg = rep.cfg
    title = cfg.name or rep.source
    console.print(Text(f"{title}", style="bold") + Text(f"  ({cfg.family} family)", style="dim"))
    console.print(Text(shape_line(cfg), style="dim"))
    if rep.stored_only:
        console.print(Text(f"counted from the tensors stored in {rep.source}", style="dim"))

    head = Table(title="Per attention head", title_justify="left", show_edge=False)
    head.add_column("Matrix")
    head.add_column("Shape", justify="right")
    head.add_column("Parameters", justify="right")
    d, dh = cfg.d_model, cfg.d_head
    if rep.head.shared_shapes:
        _latent_head_rows(head, rep)
    for label, shape, per in () if rep.head.shared_shapes else (
        ("W_Q (query)", f"{n(d)} × {n(dh)}", "query head"),
        ("W_K (key)", f"{n(d)} × {n(dh)}", "key/value head"),
        ("W_V↓ (value down)", f"{n(d)} × {n(dh)}", "key/value head"),
        ("W_V↑ (value up, output share)", f"{n(dh)} × {n(d)}", "query head"),
        *((("W_gate (output gate)", f"{n(d)} × {n(dh)}", "query head"),) if rep.head.gate else ()),
    ):
        head.add_row(label + (f"  [dim]per {per}[/]" if cfg.group_size > 1 else ""), shape, n(d * dh))
    if rep.head.per_head is not None:
        head.add_row(Text("per head", style="bold"), "", Text(n(rep.head.per_head), style="bold"))
    else:
        gate = " + W_gate" if rep.head.gate else ""
        head.add_row(Text(f"per query head (W_Q + W_V↑{gate})", style="bold"), "", n(rep.head.per_query_head))
        head.add_row(
            Text(f"per key/value head (W_K + W_V↓), shared by {cfg.group_size}", style="bold"), "", n(rep.head.per_kv_head)
        )
    console.print(head)

    block_table(console, rep)

    blocks = cfg.n_layers + (len(cfg.decoder) if cfg.decoder is not None else 0)
    model = Table(title=f"Whole model ({plural(blocks, 'block')})", title_justify="left", show_edge=False)
    model.add_column("Row")
    model.add_column("Parameters", justify="right")
    model.add_column("Share", justify="right")
    total = rep.total
    full = rep.convention == "full"

    def share(value: int, counted: bool) -> str:
        # a share of the headline total, for exactly the rows that total counts: they sum to 100%
        return f"{100 * value / total:.1f}%" if counted and total else ""

    for row in ROWS_3B1B:
        value = rep.rows[row]
        note, again = "", False
        if row == "unembedding" and value == 0 and cfg.lm_head and cfg.tied_embeddings:
            value, again = rep.rows["embedding"], True
            note = " (tied: counted again in 3b1b only)" if full else " (tied: counted again, as 3b1b does)"
        if value == 0 and (row in ("gate", "unembedding", "latent", "linear")
                           or row in ("key", "value") and rep.rows["latent"]):
            continue
        model.add_row(ROW_LABELS[row] + note, n(value), share(value, not (full and again)))
    model.add_section()
    for row in ROWS_OTHER:
        if rep.rows[row]:
            model.add_row(
                Text(ROW_LABELS[row] + ("" if full else " (not in 3b1b)"), style="dim"),
                n(rep.rows[row]),
                share(rep.rows[row], full),
            )
    model.add_section()
    model.add_row(Text("All attention weights", style="bold"), n(rep.attention_total), f"{100 * rep.attention_total / total:.1f}%")
    model.add_row(Text("Active per token", style="bold"), n(rep.active),
                  f"{100 * rep.active / total:.1f}%" if total else "")
    console.print(model)

    other_name, other_value = rep.other_total
    console.print(
        Text.assemble(
            ("Total ", "bold"),
            (f"({rep.convention} convention): ", "bold"),
            (n(rep.total), "bold green"),
            (f"   {other_name} convention: {n(other_value)}", "dim"),
        )
    )
    experts = [k.spec.mlp.experts for k in rep.kinds if k.spec.mlp.experts is not None]
    routed = f" (each MoE layer's {experts[0].top_k} of {experts[0].n_experts} routed experts)" if experts else ""
    console.print(Text.assemble(("Active per token", "bold"), (f"{routed}: ", "bold"), (n(rep.active), "bold green")))
    for label, count in cfg.extra.get("not_counted", {}).items():  # DeepSeek-V3's next-token-prediction module
        console.print(Text(f"not counted above: the {label}, {n(count)} parameters; not part of the model, "
                           "never loaded", style="dim"))
    if rep.skipped:
        console.print(Text(f"skipped {len(rep.skipped)} non-parameter buffers: {', '.join(rep.skipped[:4])}"
                           + (" …" if len(rep.skipped) > 4 else ""), style="dim"))
    if rep.quantization:
        quantization_table(console, rep)
    if ctx is not None:
        context_table(console, cfg, ctx)


def _latent_head_rows(head: Table, rep: "ParamReport") -> None:
    """Latent attention (MLA): what each head owns (its rows of the query up-projection
    and of kv_b, its columns of o), then the low-rank factors all heads share."""
    h = rep.head
    labels = {"W_Q": "W_Q (query up, q_b rows)", "W_K": "W_K (key up, kv_b key rows)",
              "W_V↓": "W_V↓ (value up, kv_b value rows)", "W_V↑": "W_V↑ (output share)"}
    for name, (rows, cols) in h.shapes.items():
        head.add_row(labels[name], f"{n(rows)} × {n(cols)}", n(rows * cols))
    for name, (rows, cols) in h.shared_shapes.items():
        head.add_row(Text(f"{name} (low rank, shared by all heads)", style="dim"), f"{n(rows)} × {n(cols)}",
                     n(rows * cols))
    head.add_row(Text("shared by all heads (q_a, kv_a, their norms)", style="bold"), "", n(h.shared))


def block_table(console: Console, rep: "ParamReport") -> None:
    """One block's breakdown; where the layers are of several kinds, one section per kind,
    headed by its layers and its kind in words ("layers 0-4, 6-10 …: local, window 512")."""
    from attnscope.params import ranges_text

    several = len(rep.kinds) > 1
    block = Table(title="Per block, by layer kind" if several else "Per block", title_justify="left", show_edge=False)
    block.add_column("Part")
    block.add_column("Parameters", justify="right")
    for i, kind in enumerate(rep.kinds):
        a, m = kind.spec.attn, kind.spec.mlp
        if several:
            if i:
                block.add_section()
            layers = f"{noun(kind.n_layers, 'layer')} {ranges_text(kind.ranges)} ({kind.n_layers:,})"
            block.add_row(Text(f"{layers}: {kind.label}", style="bold cyan"), "")
        parts = "Q, O; shared latent q_a, kv_a; K, V from kv_b" if a.latent is not None else "Q, O; {kv} × K, V"
        if a.kv_source is not None:  # Gemma 4's KV-shared layers: no keys or values of their own
            parts = f"Q, O; K, V read from layer {a.kv_source}"
        elif a.k_eq_v:  # Gemma 4's global layers: the values are the keys' projection
            parts = "Q, O; {kv} × K, values = keys' projection"
        if a.out_gate:  # Qwen3.5, Qwen3-Next: q_proj also holds each head's output gate
            parts = parts.replace("Q, O", "Q, output gate, O", 1)
        what = f"{a.n_heads} × {parts.format(kv=a.n_kv_heads)}"
        if a.linear is not None:  # Gated DeltaNet: its own projections, conv and decay (parts.deltanet)
            lin = a.linear
            what = (f"DeltaNet: {lin.n_k_heads} q/k heads of {lin.d_k}, {lin.n_v_heads} value heads of {lin.d_v}; "
                    f"qkv, z, b, a, conv ({lin.conv_kernel} taps), decay, O")
        block.add_row(f"Attention weights ({what})", n(kind.block["attention"]))
        if a.linear is not None:  # one head's share: they sum, × heads, to the attention weights
            per_v, per_k = linear_head_shares(rep.cfg.d_model, a.linear)
            block.add_row(Text("  per value head (v, z, b, a rows; o columns; v's conv taps; dt_bias, A_log)",
                               style="dim"), n(per_v))
            block.add_row(Text("  per q/k head (q, k rows; their conv taps)", style="dim"), n(per_k))
        e = m.experts
        if e is not None:  # a mixture of experts: router, routed experts (one, all), shared experts
            block.add_row(f"Router ({e.n_experts} experts{', shared-expert gate' if e.shared_gate else ''})",
                          n(kind.block["router"]))
            block.add_row(f"One routed expert (gate, up, down; width {n(m.d_mlp)})", n(kind.block["expert"]))
            block.add_row(f"All {e.n_experts} routed experts", n(kind.block["experts"]))
            if e.d_shared:
                block.add_row(f"Shared expert{'s' if e.n_shared > 1 else ''} (width {n(e.d_shared)})",
                              n(kind.block["shared"]))
            if e.d_dense:  # Gemma 4: a dense MLP beside the experts, every token through it
                block.add_row(f"Dense MLP beside the experts (gate, up, down; width {n(e.d_dense)})",
                              n(kind.block["dense"]))
        else:
            block.add_row("MLP weights" + (" (gate, up, down)" if m.kind == "gated" else " (up, down)"),
                          n(kind.block["mlp"]))
        if kind.spec.per_layer is not None:  # Gemma 4: the layer's own input, gated in after the MLP
            block.add_row(f"Per-layer input gate ({n(kind.spec.per_layer.width)} wide: gate, projection)",
                          n(kind.block["per_layer"]))
        block.add_row("Biases", n(kind.block["biases"]))
        block.add_row("Norms", n(kind.block["norms"]))
        block.add_row(Text("Block total", style="bold"), Text(n(kind.block["total"]), style="bold"))
        block.add_row(Text(f"Active per token ({e.top_k} of {e.n_experts} routed)" if e is not None
                           else "Active per token", style="dim"),
                      Text(n(kind.block.get("active", kind.block["total"])), style="dim"))
        if several:
            block.add_row(Text(f"× {plural(kind.n_layers, 'layer')}", style="dim"), Text(n(kind.total), style="dim"))
    console.print(block)


def quantization_table(console: Console, rep: "ParamReport") -> None:
    """A GGUF's storage: tensors, parameters and bytes per ggml type, and bits per weight."""
    table = Table(title="Storage by quantization type", title_justify="left", show_edge=False)
    for col, justify in (("Type", "left"), ("Tensors", "right"), ("Parameters", "right"), ("Bytes", "right"),
                         ("Bits/weight", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, q in rep.quantization.items():
        table.add_row(name, n(q.tensors), n(q.parameters), human_bytes(q.bytes), f"{q.bits_per_weight:.2f}")
    tensors = sum(q.tensors for q in rep.quantization.values())
    params = sum(q.parameters for q in rep.quantization.values())
    size = sum(q.bytes for q in rep.quantization.values())
    table.add_section()
    table.add_row(Text("All", style="bold"), n(tensors), n(params), human_bytes(size),
                  f"{8 * size / params:.2f}" if params else "")
    console.print(table)


def context_table(console: Console, cfg: "ModelConfig", ctx: "ContextReport") -> None:
    table = Table(title=f"At a context of {plural(ctx.n, 'token')} ({ctx.dtype})", title_justify="left", show_edge=False)
    table.add_column("What")
    table.add_column("Values", justify="right")
    table.add_column("Memory", justify="right")
    b = ctx.bytes_per_value
    table.add_row(f"Attention pattern per head ({n(ctx.n)}²)", n(ctx.pattern_per_head), human_bytes(ctx.pattern_per_head * b))
    table.add_row(f"Patterns per block ({plural(cfg.n_heads, 'head')})", n(ctx.pattern_per_block), human_bytes(ctx.pattern_per_block * b))
    table.add_row(f"Patterns, whole model ({plural(cfg.n_layers, 'block')})", n(ctx.pattern_total), human_bytes(ctx.pattern_bytes))
    table.add_row("KV cache per token", n(ctx.kv_cache_per_token), human_bytes(ctx.kv_cache_per_token * b))
    if len(ctx.kv_kinds) > 1:  # each kind's layers keep their own positions (a window caps them)
        for kind in ctx.kv_kinds:
            kept = (f"a fixed state of {n(kind.state_values // kind.n_layers)} values each, whatever the context"
                    if kind.state_values else f"{n(kind.tokens)} kept")  # a linear kind: its recurrent state and conv tail
            table.add_row(Text(f"  {plural(kind.n_layers, 'layer')}, {kind.label}: {kept}", style="dim"),
                          n(kind.values), human_bytes(kind.bytes))
    table.add_row(f"KV cache at {plural(ctx.n, 'token')}", n(ctx.kv_cache_total), human_bytes(ctx.kv_cache_bytes))
    table.add_row("Forward FLOPs per token", n(ctx.flops_per_token), "")
    console.print(table)


def _short(count: int) -> str:
    """175,181,291,520 -> 175.2B: the whole number is in `params --config NAME`."""
    for scale, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def _active(cfg: "ModelConfig", total: int, convention: str) -> int:
    """What one token uses of a preset's `total` (less the routed experts it skips)."""
    from attnscope.params import inactive

    unused_3b1b, unused_full = inactive(cfg)
    return total - (unused_3b1b if convention == "3b1b" else unused_full)


def preset_list(console: Console, rows: Sequence[tuple[str, "ModelConfig", int, str]]) -> None:
    wide = _wide_presets(rows)
    if wide.__rich_measure__(console, console.options).maximum > console.width:
        # the compact layout (names whole, shapes in one column) where the wide one would not fit whole
        table = Table(title="Presets (every number exactly: attnscope params --config NAME)",
                      title_justify="left", show_edge=False, box=None, padding=(0, 1))
        table.add_column("Name", no_wrap=True, min_width=max(len(row[0]) for row in rows))
        table.add_column("Family", no_wrap=True)
        table.add_column("Layers × heads (kv) × d_head")
        table.add_column("Width", justify="right", no_wrap=True)
        table.add_column("Total", justify="right", no_wrap=True)
        table.add_column("Active", justify="right", no_wrap=True)
        for name, cfg, total, convention in rows:
            heads = str(cfg.n_heads) if cfg.n_kv_heads == cfg.n_heads else f"{cfg.n_heads} ({cfg.n_kv_heads})"
            table.add_row(name, cfg.family, f"{cfg.n_layers} × {heads} × {cfg.d_head}", n(cfg.d_model),
                          f"{_short(total)} [dim]{convention}[/]", _short(_active(cfg, total, convention)))
        console.print(table)
        return
    console.print(wide)


def _wide_presets(rows: Sequence[tuple[str, "ModelConfig", int, str]]) -> Table:
    """Every shape number in a column of its own (a terminal wide enough for it)."""
    table = Table(title="Presets", title_justify="left", show_edge=False)
    for col, justify in (("Name", "left"), ("Family", "left"), ("d_model", "right"), ("Layers", "right"),
                         ("Heads (kv)", "right"), ("d_head", "right"), ("MLP", "right"), ("Vocab", "right"),
                         ("Context", "right"), ("Total", "right"), ("Active", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, cfg, total, convention in rows:
        heads = str(cfg.n_heads) if cfg.n_kv_heads == cfg.n_heads else f"{cfg.n_heads} ({cfg.n_kv_heads})"
        table.add_row(name, cfg.family, n(cfg.d_model), str(cfg.n_layers), heads, str(cfg.d_head), n(cfg.d_mlp),
                      n(cfg.vocab_size), n(cfg.n_ctx), f"{n(total)} [dim]{convention}[/]",
                      n(_active(cfg, total, convention)))
    return table


def family_list(console: Console, families: dict[str, str]) -> None:
    table = Table(title="Supported families (config.json model_type)", title_justify="left", show_edge=False)
    table.add_column("model_type")
    table.add_column("What attnscope implements")
    for name, description in families.items():
        table.add_row(name, description)
    console.print(table)


GROUP_LABELS = {
    "embeddings": "Embeddings (and unembedding)",
    "attention": "Attention",
    "mlp": "MLP",
    "norms": "Norms",
    "other": "Other",
}


def unknown_report(console: Console, rep: "UnknownReport", context: bool = False) -> None:
    """A checkpoint of a family attnscope does not know: its stored tensors, counted from
    the headers and grouped by name, and why no more can be said."""
    from attnscope.tokenize import visible

    console.print(Text(visible(rep.name or rep.source), style="bold")
                  + Text(f"  (family unknown: {visible(rep.family)})" if rep.family else "  (family unknown)",
                         style="dim"))
    console.print(Text(f"{visible(rep.reason)}: every stored tensor is counted from the headers of "
                       f"{visible(rep.source)}, grouped by its name", style="dim"))
    table = Table(title="Stored tensors by name", title_justify="left", show_edge=False)
    table.add_column("Group")
    table.add_column("Parameters", justify="right")
    table.add_column("Share", justify="right")
    for group, value in rep.groups.items():
        if value:
            table.add_row(GROUP_LABELS[group], n(value), f"{100 * value / rep.total:.1f}%" if rep.total else "")
    console.print(table)
    console.print(Text.assemble(("Total (every stored parameter): ", "bold"), (n(rep.total), "bold green"),
                                (f"   in {plural(rep.tensors, 'tensor')}", "dim")))
    if rep.skipped:
        console.print(Text(f"skipped {len(rep.skipped)} non-parameter buffers: "
                           + visible(", ".join(rep.skipped[:4])) + (" …" if len(rep.skipped) > 4 else ""), style="dim"))
    if rep.quantization:
        quantization_table(console, rep)  # type: ignore[arg-type]
    if context:
        console.print(Text("--context needs the model's shape, which only a known family gives", style="dim"))
