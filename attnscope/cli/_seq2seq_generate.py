"""`generate` on an encoder-decoder (T5, BART, Marian): `generate_pair` runs the source
through the encoder, decodes new target tokens one by one, and shows or saves each step's
attention (`outputs.pair.GenerationPage`). Moved out of `cli._seq2seq` unchanged to keep that
module short; `cli._seq2seq` re-exports `generate_pair`, so callers and patches still find it there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from attnscope.errors import InputError, UsageError


def generate_pair(src: Any, source: str, *, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  chat: bool, layer: str, head: Optional[str], save: Optional[Path], save_topk: Optional[Path],
                  html: Optional[Path], measure: str, pipeline: bool, stop: Optional[str], as_json: bool,
                  no_color: bool, device: Any, dtype: Any, ignore_eos: bool, k: int = 3, seed: Optional[int] = None,
                  force: bool = False, loaded: Any = None) -> None:
    """`generate SOURCE` on an encoder-decoder: decoding from the source (the encoder once,
    the decoder token by token through its cache), greedy or sampled as decoder-only generate
    samples (--temperature, --top-k, --top-p, --seed), ending at the model's end token, a
    --stop string or --max-new-tokens; for each new token the source tokens its
    cross-attention looked at most (under --measure weight or norm), averaged over the heads
    of the selected decoder layers (`seq2seq.decode`); --save / --save-topk from one
    teacher-forced pass over what the decoder read (`seq2seq.save_decoding`). The sampling
    options are checked by generate itself (`generate.check_sampling`) before this runs.
    `loaded`: the model, already loaded (rank 0's under --pipeline, where each layer's
    self-attention cache and cross-attention keys and values stay on the rank that owns it)."""
    again = {name: value for name, value in locals().items() if name not in ("src", "source", "loaded")}
    import time

    from rich.table import Table
    from rich.text import Text

    from attnscope import analysis
    from attnscope import chat as chat_mod
    from attnscope.cli._app import _console, _load, _note, _print_json
    from attnscope.cli._seq2seq import pipeline_measure
    from attnscope.generate import check_stop, stop_reached
    from attnscope.hooks import sites
    from attnscope.outputs.pair import GenerationPage
    from attnscope.render import distinct
    from attnscope.render.attend import weight_text
    from attnscope.seq2seq import decode, save_decoding
    from attnscope.tokenize import token_label
    from attnscope.units import plural

    check_stop(stop)
    for option, chosen in (("--save", save), ("--save-topk", save_topk)):
        if chosen is not None and Path(chosen).suffix != ".npz":
            raise UsageError(f"{option} of an encoder-decoder's generation writes FILE.npz",
                             hint="use a name ending in .npz")
    cfg = src.config
    if cfg.positions in ("learned", "sinusoidal") and max_new_tokens > cfg.n_ctx:  # BART, Marian: one per step
        raise InputError(f"{max_new_tokens:,} new tokens exceed the decoder's {cfg.n_ctx} positions",
                         hint=f"lower --max-new-tokens to {cfg.n_ctx} or less")
    cross = sites(cfg, "cross")
    layers = analysis.select(layer, len(cross), "layer")
    heads = analysis.select_heads(head, cross, layers)
    if pipeline:
        from attnscope.cli._app import _pipelined

        pipeline_measure(measure)
        return _pipelined(src.spec, device, dtype,
                          lambda m: generate_pair(src, source, **{**again, "pipeline": False}, loaded=m))
    m = loaded if loaded is not None else _load(src.spec, device, dtype)
    name = cfg.name or m.source
    if chat and not m.chat.template:
        raise UsageError(f"{name} has no chat template: an encoder-decoder reads its source as plain text",
                         hint="drop --chat and give the instruction as the source itself")
    tokens = m.tokenize(chat_mod.render(m.chat, source) if chat else source, add_special_tokens=not chat)
    eos = () if ignore_eos else set(m.chat.eos_ids)
    until = (lambda ids: stop_reached(m.tokenizer, ids, stop)) if stop is not None else None
    began = time.perf_counter()
    out = decode(m.model, m._ids(tokens.ids), max_new_tokens, layers, heads, eos, temperature=temperature,
                 top_k=top_k, top_p=top_p, seed=seed, until=until, measure=measure)
    seconds = time.perf_counter() - began
    steps, ids = out.steps, out.ids
    text = m.tokenizer.decode(ids, skip_special_tokens=True) if hasattr(m.tokenizer, "decode") else ""
    labels = distinct(tokens.labels)
    shown = [[(int(j), float(w)) for w, j in zip(*s.looked.topk(min(k, len(labels))))] for s in steps]
    pieces = [token_label(m.tokenizer, i) for i in ids]  # as decoder-only generate labels its tokens
    page = GenerationPage(m, name, tokens, ids, pieces, text, measure, html) if html is not None and ids else None
    saved, saved_topk = (save_decoding(m, tokens, out, pieces, save, save_topk, force, page.hook if page else None)
                         if save is not None or save_topk is not None or page is not None else (None, None))
    wrote_page = page.write(force) if page is not None else None
    if as_json:
        _print_json({"model": name, "source": {"ids": tokens.ids, "tokens": tokens.labels},
                     "decoder_start_token_id": cfg.extra.get("decoder_start_token_id", 0),
                     "generated": {"ids": ids, "tokens": pieces, "text": text}, "stopped": out.stopped,
                     "seconds": seconds, "measure": measure, "layers": layers, "heads": heads,
                     "steps": [{"id": s.token, "token": p, "probability": s.probability,
                                "source": [{"index": j, "token": tokens.labels[j], "weight": w} for j, w in top]}
                               for s, p, top in zip(steps, pieces, shown)],
                     **({"saved": str(saved)} if saved is not None else {}),
                     **({"saved_topk": str(saved_topk)} if saved_topk is not None else {}),
                     **({"saved_html": str(html)} if wrote_page is not None else {})})
    else:
        console = _console(no_color)
        color = not no_color and console.color_system is not None
        console.print(Text(text))
        which = f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"
        table = Table(title="Where each new token looked in the source", title_justify="left", show_edge=False,
                      box=None, padding=(0, 1), caption_justify="left",
                      caption=f"cross-attention of {which}, {len(heads)} heads averaged"
                              + (" (weight × value size, --measure norm)" if measure == "norm" else ""))
        for column in ("#", "token", "p", "source"):
            table.add_column(column)
        for i, (s, p, top) in enumerate(zip(steps, pieces, shown)):
            looked = Text()
            for j, w in top:
                looked.append_text(weight_text(labels[j], w, color))
                looked.append("  ")
            table.add_row(str(i), Text(p), f"{s.probability:.2f}", looked)
        console.print(table)
        if saved is not None:
            console.print(Text(f"saved the encoder's, decoder's and cross-attention of every layer and head, one "
                               f"decoder row per step, to {saved}", style="dim"))
        if saved_topk is not None:
            console.print(Text(f"saved each step's top-3 source tokens in every layer and head to {saved_topk}",
                               style="dim"))
        if wrote_page is not None:
            console.print(Text(wrote_page, style="dim"))
    rate = len(ids) / seconds if seconds > 0 else 0.0
    _note(f"{plural(len(ids), 'token')} in {seconds:.2f} s, {rate:.1f} tokens/s (ended: {out.stopped})")
