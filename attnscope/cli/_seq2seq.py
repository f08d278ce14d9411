"""`attend SOURCE --target TARGET` on an encoder-decoder (T5, BART, Marian): the source
through the encoder, the decoder reading its start token and the target (teacher forcing),
one part shown (`--part cross|encoder|decoder`, cross by default) in a terminal view or
as --json (`seq2seq.PairView`, `render.seq2seq`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from attnscope.cli._seq2seq_generate import generate_pair  # noqa: F401  (moved; re-exported)
from attnscope.errors import UsageError


def refuse(target: Optional[str], part: Any, view: str, files: dict[str, Optional[Path]], measure: str,
           dry_run: bool, pipeline: bool, offload: bool) -> None:
    """What the pair path needs, or has no meaning for, refused before anything loads."""
    if target is None:
        if part is not None:
            raise UsageError("--part picks the attention of an encoder-decoder run with --target",
                             hint='e.g. attend "a house" --target "ein Haus" --part decoder')
        raise UsageError("--view align is the cross-attention's alignment table: it needs --target",
                         hint='e.g. attend "a house" --target "ein Haus" --view align')
    if view == "experts":
        raise UsageError("--view experts shows a mixture of experts' routes, not an encoder-decoder's parts")
    save = files.get("--save")
    for option in ("--save", "--save-topk"):
        chosen = files.pop(option, None)
        if chosen is not None and Path(chosen).suffix != ".npz":
            raise UsageError(f"{option} of a --target run writes FILE.npz", hint="use a name ending in .npz")
    from attnscope.seq2seq_measures import check

    check(measure, part.value if part is not None else None, save)  # a measure the part has no meaning for
    if pipeline:
        pipeline_measure(measure)
        if offload:
            raise UsageError("--offload and --pipeline are two ways to hold less: pick one",
                             hint="--pipeline loads only each rank's share of the layers")


def pipeline_measure(measure: str) -> None:
    """Under --pipeline rank 0 holds only its own layers' weights: a measure that reads
    every layer's weights on one process is refused with that reason."""
    if measure in ("alti", "value-zeroing"):
        raise UsageError(f"--measure {measure} reads every layer's weights on one process, which --pipeline splits",
                         hint="leave out --pipeline, or pick another --measure")


def encoder_noted(m: Any) -> Any:
    """`m`, after a note on stderr where it is an encoder-decoder shown without --target."""
    if m.config.decoder is not None:
        from attnscope.cli._app import _note

        _note("an encoder-decoder: this is its encoder; add --target TEXT for the cross-attention (--part)")
    return m


def attend_pair(source: str, *, model: Optional[str], target: Optional[str], part: Any, view: Any,
                layer: Optional[str], head: Optional[str], top_k: int, token: Optional[str], truncate: bool,
                as_json: bool, no_color: bool, device: Any, dtype: Any, measure: Any, dry_run: bool, pipeline: bool,
                offload: bool, save: Optional[Path], save_topk: Optional[Path], html: Optional[Path],
                plot: Optional[Path], force: bool, html_topk: Optional[int] = None, figsize: Optional[str] = None,
                ranks: Optional[int] = None, **_: Any) -> None:
    """attend's path for two texts (attend's own options, by name; the rest ignored)."""
    from attnscope.outputs.pair import PairFiles

    refuse(target, part, view.value, {"--save": save, "--save-topk": save_topk}, measure.value, dry_run, pipeline,
           offload)
    files = PairFiles(html, html_topk, plot, figsize, layer, head, force)
    files.check()  # --html, --plot: before the model loads
    from attnscope.cli._app import _load

    assert target is not None  # refuse() holds it
    if ranks is not None and not (dry_run and pipeline):
        raise UsageError("--ranks goes with --dry-run --pipeline", hint="add --dry-run --pipeline")
    if dry_run:
        return dry_run_pair(model, source, target, part.value if part is not None else "cross", view.value, layer, head,
                            top_k, truncate, as_json, measure.value, save is not None, save_topk is not None, dtype,
                            pipeline, ranks)
    from attnscope.atomic import check_target

    for chosen in (save, save_topk):  # before the model loads
        if chosen is not None:
            check_target(chosen, force, (".npz",))
    if save_topk is not None:
        if save is not None and Path(save).expanduser().resolve() == Path(save_topk).expanduser().resolve():
            raise UsageError("--save and --save-topk name the same file", hint="give each its own name")
    args = (source, target, part.value if part is not None else "cross", view.value, layer, head, top_k, token,
            truncate, as_json, no_color, save, force, save_topk, measure.value, files)
    if pipeline:  # rank 0 shows and writes; the others serve their layers
        from attnscope.cli._app import _pipelined

        return _pipelined(model, device, dtype, lambda m: show(m, *args))
    show(_load(model, device, dtype, True if offload else None), *args)


def dry_run_pair(model: Optional[str], source: str, target: str, part: str, view: str, layer: Optional[str],
                 head: Optional[str], top_k: int, truncate: bool, as_json: bool, measure: str, save: bool,
                 save_topk: bool, dtype: Any, pipeline: bool = False, ranks: Optional[int] = None) -> None:
    """`attend SOURCE --target TARGET --dry-run`: the memory and disk the pair run would
    need (`estimate.plan_pair`), from config.json, the checkpoint's headers and the
    tokenizer alone, for both stacks. With `pipeline`: each rank's layers of both stacks,
    weights and peak memory (`layer_split.plan_ranks`, the pass's working set on every
    rank, what it keeps on rank 0)."""
    from attnscope import estimate
    from attnscope.cli._app import _console, _print_json
    from attnscope.cli.attend import checkpoint_facts
    from attnscope.seq2seq import pair_selection, pair_tokens
    from attnscope.units import human_bytes

    src, tokenizer, stored, file_bytes = checkpoint_facts(model, dtype)
    cfg = src.config
    if cfg.decoder is None:
        raise UsageError(f"{cfg.name or src.spec} is not an encoder-decoder: --target has nothing to decode",
                         hint="--target is for encoder-decoder models (T5, FLAN-T5, BART, mBART, Marian)")
    if view == "align" and part != "cross":
        raise UsageError("--view align is the cross-attention's alignment table", hint="use --part cross")
    source_tokens, target_tokens = pair_tokens(tokenizer, cfg, source, target, truncate)
    ls, hs = pair_selection(cfg, part, view, layer, head, measure)
    dt = "float32" if dtype.value == "auto" else dtype.value
    p = estimate.plan_pair(cfg, stored, len(source_tokens), len(target_tokens) + 1, dt, part, view, as_json, len(ls),
                           len(hs), top_k, save, save_topk, measure, file_bytes, estimate.runtime_bytes())
    if pipeline:
        from types import SimpleNamespace

        from attnscope.cli.attend import _dry_run_pipeline

        base = SimpleNamespace(n_tokens=max(p.n_source, p.n_decoder), runtime=p.runtime, weights=p.weights,
                               activations=max(p.encoder_activations, p.decoder_activations),
                               attention_chunk=max(p.attention_chunk, p.cross_pattern), kept=p.shown + p.kept,
                               peak_memory=p.peak_memory)
        return _dry_run_pipeline(cfg, src.spec, dt, base, ranks, as_json)
    rows = {"source_tokens": p.n_source, "decoder_tokens": p.n_decoder, "runtime_bytes": p.runtime,
            "weights_bytes": p.weights, "mapped_file_bytes": p.mapped,
            "encoder_activations_bytes": p.encoder_activations, "decoder_activations_bytes": p.decoder_activations,
            "attention_chunk_bytes": p.attention_chunk, "cross_pattern_bytes": p.cross_pattern,
            "shown_patterns_bytes": p.shown, "kept_results_bytes": p.kept, "peak_memory_bytes": p.peak_memory,
            "output_file_bytes": p.output_file}
    if as_json:
        _print_json({"dry_run": True, "model": src.spec, "dtype": dt, "part": part, **rows})
        return
    console = _console()
    console.print(f"[bold]Dry run[/] · {cfg.name} · source {p.n_source} tokens, decoder {p.n_decoder} tokens · "
                  f"{dt} weights")
    heads = cfg.decoder.layer(0).cross.n_heads  # type: ignore[union-attr]
    for label, value in (("interpreter and libraries (measured)", p.runtime), ("weights (both stacks)", p.weights),
                         ("checkpoint pages read through the map", p.mapped),
                         ("encoder activations (one block)", p.encoder_activations),
                         ("decoder activations (one block, its cross K/V)", p.decoder_activations),
                         ("attention scores, one query chunk", p.attention_chunk),
                         (f"cross-attention pattern ({heads} × {p.n_decoder} × {p.n_source})", p.cross_pattern),
                         (f"{part} patterns kept for the view", p.shown),
                         ("results kept (streamed layer, top-k, measure)", p.kept),
                         ("peak memory, about", p.peak_memory), ("output files", p.output_file)):
        console.print(f"  {label:<48}{human_bytes(value):>14}")


def show(m: Any, source: str, target: str, part: str, view: str, layer: Optional[str], head: Optional[str],
         k: int, token: Optional[str], truncate: bool, as_json: bool, no_color: bool, save: Optional[Path] = None,
         force: bool = False, save_topk: Optional[Path] = None, measure: str = "weight", files: Any = None) -> None:
    """Run both texts through a loaded encoder-decoder and print the part's view or --json;
    `save`: all three parts to FILE.npz, streamed (`seq2seq.PairWriter`); `files`: the page
    and the figure of the part (`outputs.pair.PairFiles`), from the same pass."""
    from functools import partial

    from rich.console import Console

    from attnscope.cli._app import _print_json
    from attnscope.render.seq2seq import render_pair
    from attnscope.seq2seq import pair_view

    if m.config.decoder is None:
        raise UsageError(f"{m.config.name or 'this model'} is not an encoder-decoder: --target has nothing to decode",
                         hint="--target is for encoder-decoder models (T5, FLAN-T5, BART, mBART)")
    from rich.text import Text

    from attnscope.seq2seq import save_pair_topk

    name = m.config.name or m.source
    pv = pair_view(m, source, target, part, view, layer, head, k, token, truncate, save, force, measure,
                   also=partial(files.plan, m, name, part, measure) if files else None)
    saved = pv.saved
    saved_topk = save_pair_topk(save_topk, pv, force) if save_topk is not None else None
    written = files.emit() if files else []
    if as_json:
        _print_json({**pv.document(name), **({"saved": str(saved)} if saved is not None else {}),
                     **({"saved_topk": str(saved_topk)} if saved_topk is not None else {}),
                     **{key: str(path) for key, path, _line in written}})
        return
    console = Console(highlight=False, no_color=no_color or None)
    render_pair(console, pv, name, color=not no_color and console.color_system is not None)
    if saved is not None:
        console.print(Text(f"saved the encoder's, decoder's and cross-attention of every layer and head to {saved}",
                           style="dim"))
    if saved_topk is not None:
        console.print(Text(f"saved the {part} part's top-{min(k, pv.patterns.shape[-1])} of the shown layers and heads "
                           f"to {saved_topk}", style="dim"))
    for _key, _path, line in written:
        console.print(Text(line, style="dim"))


def heads_pair(model: Optional[str], text: Optional[str], target: str, layer: Optional[str], head: Optional[str],
               top: int, truncate: bool, as_json: bool, no_color: bool, device: Any, dtype: Any,
               part: str = "cross", names: Optional[list[str]] = None, pipeline: bool = False,
               loaded: Any = None) -> None:
    """`heads SOURCE --target TARGET` on an encoder-decoder: with `--part cross` (the
    default) the cross-attention score `diagonal` of every decoder layer and head
    (`seq2seq.diagonal_scores`), a grid and the strongest heads, or --json {layers, heads,
    scores: {diagonal: [layer][head]}}; with `--part encoder|decoder` the text scores of
    that stack's self-attention on its own tokens (`seq2seq.self_scores`), shown and
    --json'd as `heads` shows a one-stack model's, plus "part". `pipeline`: rank 0 of a
    --pipeline run scores (`loaded`: its model), the other ranks serve their layers."""
    from rich.table import Table
    from rich.text import Text

    from attnscope import analysis
    from attnscope.cli._app import _console, _load, _print_json
    from attnscope.hooks import sites
    from attnscope.render import ramp_style
    from attnscope.seq2seq import decoder_input, decoder_tokens, diagonal_scores, patterns
    from attnscope.tokenize import tokenize

    if not text:
        raise UsageError("heads --target scores the cross-attention between a source and a target: give the source",
                         hint='e.g. heads "The house is small." --target "Das Haus ist klein."')
    if pipeline:
        from attnscope.cli._app import _pipelined

        return _pipelined(model, device, dtype, lambda m: heads_pair(model, text, target, layer, head, top, truncate,
                                                                     as_json, no_color, device, dtype, part, names,
                                                                     loaded=m))
    m = loaded if loaded is not None else _load(model, device, dtype)
    cfg = m.config
    if cfg.decoder is None:
        raise UsageError(f"{cfg.name or m.source} is not an encoder-decoder: --target has nothing to decode",
                         hint="--target is for encoder-decoder models (T5, FLAN-T5, BART, mBART, Marian)")
    if part != "cross" and names is not None and "diagonal" in names:
        raise UsageError("diagonal scores the cross-attention", hint="use --part cross")
    part_sites = sites(cfg, part)
    layers = analysis.select(layer if layer is not None else "all", len(part_sites), "layer")
    heads = analysis.select_heads(head if head is not None else "all", part_sites, layers)
    src = m.tokenize(text, truncate)
    tgt = tokenize(m.tokenizer, target, cfg.n_ctx - 1, truncate, add_special_tokens=False)
    if not tgt.ids:
        raise UsageError("the target has no tokens", hint="give --target some text")
    got = patterns(m.model, m._ids(src.ids), m._ids(decoder_input(cfg, tgt.ids)), (part,))
    if part != "cross":
        _heads_self(m, got, part, src if part == "encoder" else decoder_tokens(m, tgt), layers, heads, names, top,
                    as_json, no_color)
        return
    assert got.cross is not None
    scores = diagonal_scores(got.cross[layers][:, heads])  # (L_sel, H_sel)
    if as_json:
        _print_json({"model": cfg.name or m.source, "layers": layers, "heads": heads,
                     "scores": {"diagonal": scores.tolist()}})
        return
    console = _console(no_color)
    color = not no_color and console.color_system is not None
    console.print(Text("Cross-attention heads  diagonal", style="bold"))
    console.print(Text("target row i of n_t reads source j* = round(i·(n_s−1)/(n_t−1)); mean weight on j*−1 … j*+1",
                       style="dim"))
    table = Table(show_edge=False, box=None, padding=(0, 0, 0, 1))
    table.add_column("")
    for h in heads:
        table.add_column(f"H{h}", justify="right")
    for li, layer_i in enumerate(layers):
        table.add_row(f"L{layer_i}", *[Text(f"{v:.2f}", style=ramp_style(v) if color else "")
                                       for v in scores[li].tolist()])
    console.print(table)
    flat = [(float(scores[li, hi]), layers[li], heads[hi]) for li in range(len(layers)) for hi in range(len(heads))]
    for value, layer_i, h in sorted(flat, reverse=True)[:top]:
        console.print(f"  L{layer_i}H{h}    reads the source in order: {value:.2f} of its weight near the diagonal")


def _heads_self(m: Any, got: Any, part: str, tokens: Any, layers: list[int], heads: list[int],
                names: Optional[list[str]], top: int, as_json: bool, no_color: bool) -> None:
    """`heads --target --part encoder|decoder`: one stack's self-attention scored on its own
    `tokens` (the source; the decoder's start token and the target), printed as `heads` prints."""
    from attnscope import heads as hd
    from attnscope.cli._app import _console, _print_json
    from attnscope.render.heads import head_scores as render_heads
    from attnscope.seq2seq import self_scores

    cfg = m.config
    causal, pattern = (cfg.causal, got.encoder) if part == "encoder" else (True, got.decoder)
    assert pattern is not None  # patterns() kept the part
    res = self_scores(cfg, pattern[layers][:, heads], tokens, causal, layers, heads, names)
    name = cfg.name or m.source
    if as_json:
        _print_json({"model": name, "part": part, **hd.scores_dict(res)})
        return
    console = _console(no_color)
    render_heads(console, res, f"{name}  ({part} self-attention)", len(pattern), pattern.shape[1], top,
                 color=not no_color and console.color_system is not None)
