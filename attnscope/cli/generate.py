"""`attnscope generate`: watch attention while the model writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from attnscope.cli._app import (
    Device, DeviceOpt, HeadOpt, JsonOpt, LoadDtype, LoadDtypeOpt, ModelOpt, NoColorOpt, PerHeadMeasure, PerHeadMeasureOpt,
    PipelineOpt, _console, _load, _note, _pipelined,
    _print_json, app,
)
from attnscope.errors import UsageError
from attnscope.sources import packaged as _packaged


@app.command(
    epilog='Examples:\n\n  attnscope generate "The capital of France is"\n\n'
    '  attnscope generate "What is attention?" --chat -n 48\n\n'
    '  attnscope generate "Once upon a time" --temperature 0.8 --top-p 0.9 --seed 1 --json',
)
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The text to continue (or, with --chat, the question to answer).")],
    model: ModelOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="At most this many new tokens.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 for greedy (the default); higher samples more freely.")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample among the k most likely tokens only (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="Sample among the most likely tokens holding this much probability.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling: the same seed gives the same text.")] = None,
    stop: Annotated[Optional[str], typer.Option(help="Stop once the new text contains this.")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Go on past the end-of-sequence token.")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's own chat template.")] = False,
    alternatives: Annotated[int, typer.Option("--alternatives", help="Alternatives to show per token.")] = 3,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layers whose attention to average: -1 (last), 0,2, all.")] = "-1",
    head: HeadOpt = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the final sequence's patterns (.npz or .safetensors).")] = None,
    save_topk: Annotated[Optional[Path], typer.Option("--save-topk", help="Write the final sequence's top-k (.npz).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one offline page with the final sequence's attention (every layer and head) to FILE.html; on an encoder-decoder, the source and the generated tokens as two rows with each step's cross-attention between them.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing --save/--html files.")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto,
    dtype: LoadDtypeOpt = LoadDtype.auto,
    no_color: NoColorOpt = False,
    measure: PerHeadMeasureOpt = PerHeadMeasure.weight,
    pipeline: PipelineOpt = False,
) -> None:
    """Write after a prompt with our own KV cache, and show where each new token looked.

    Greedy by default. For each new token: its probability, the alternatives the model
    weighed, and the earlier tokens it attended to most, averaged over the heads of the
    selected layers. Without --model the default model, {default_model}, writes (see
    `attnscope models`). Tokens/s go to stderr.

    On an encoder-decoder (T5, BART, Marian) PROMPT is the source: the decoder writes from
    its start token, sampled as above, and each new token shows the source tokens its
    cross-attention looked at (the decoder layers --layer names). --save FILE.npz holds the
    encoder's, decoder's and cross-attention, one decoder row per step, and the generated ids.
    """
    from attnscope import api, export
    from attnscope.generate import check_request, check_sampling, generation_dict
    from attnscope.units import plural

    check_sampling(temperature, top_k, top_p, seed, max_new_tokens)
    if alternatives < 0:
        raise UsageError(f"--alternatives must be >= 0, got {alternatives}")
    if save is not None:
        export.check_target(save, force)
    if save_topk is not None:
        export.check_target(save_topk, force, (".npz",))
    if html is not None:
        export.check_target(html, force, (".html", ".htm"))
    if save is not None and save_topk is not None and save.expanduser().resolve() == save_topk.expanduser().resolve():
        raise UsageError("--save and --save-topk name the same file", hint="give them different names")
    # What the config can judge is judged before any weight is read (an encoder, rollout,
    # a layer or head the model lacks), and nothing reaches stdout before the first token.
    src = api.open_source(model)
    if src.config.decoder is not None:  # an encoder-decoder decodes from the prompt as its source
        from attnscope.cli._seq2seq import generate_pair

        return generate_pair(src, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, chat=chat, layer=layer, head=head, save=save, save_topk=save_topk,
                             html=html, measure=measure.value, pipeline=pipeline, stop=stop, as_json=as_json,
                             no_color=no_color, device=device, dtype=dtype, ignore_eos=ignore_eos,
                             k=max(1, alternatives), seed=seed, force=force)
    check_request(src.config, src.config.name or src.spec, measure=measure.value, stop=stop, layers=layer, heads=head)

    def run(m: Any) -> None:  # rank 0's part under --pipeline
        name = m.config.name or m.source
        console = _console(no_color)
        stream = _LazyStream(console, m.tokenizer, prompt + ("\n" if chat else "")) if not as_json else None
        g = m.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, stop=stop, ignore_eos=ignore_eos, chat=chat, layers=layer, heads=head,
                       alternatives=alternatives, on_token=stream, measure=measure.value)
        rate = len(g.token_ids) / g.seconds if g.seconds > 0 else 0.0
        wrote: list[str] = []
        if save is not None or save_topk is not None or html is not None:
            wrote = _save_sequence(m, g, save, save_topk, force, html, name)
        if as_json:
            doc = generation_dict(g, name)
            doc["prompt_length"] = len(g.prompt_ids)
            for key, path in (("saved", save), ("saved_topk", save_topk), ("saved_html", html)):
                if path is not None:
                    doc[key] = str(path)
            _print_json(doc)
        else:
            assert stream is not None
            stream.close()
            from rich.text import Text

            from attnscope.render.generate import steps_table

            steps_table(console, g, color=not no_color and console.color_system is not None)
            for line in wrote:
                console.print(Text(line, style="dim"))  # a Text: a path's brackets are not markup
        _note(f"{plural(len(g.token_ids), 'token')} in {g.seconds:.2f} s, {rate:.1f} tokens/s")

    if pipeline:
        _pipelined(model, device, dtype, run)
    else:
        run(_load(model, device, dtype))


generate.__doc__ = _packaged.fill_default(generate.__doc__)


class _LazyStream:
    """The stream, opened at the first new token: a generation refused after the model
    loaded (a prompt too long for its positions, say) leaves stdout empty."""

    def __init__(self, console, tokenizer, prompt: str) -> None:  # type: ignore[no-untyped-def]
        self.args = (console, tokenizer, prompt)
        self.stream = None

    def __call__(self, step) -> None:  # type: ignore[no-untyped-def]
        if self.stream is None:
            from attnscope.render.generate import Stream

            self.stream = Stream(*self.args)
        self.stream(step)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _save_sequence(m, g, save: Optional[Path], save_topk: Optional[Path], force: bool,  # type: ignore[no-untyped-def]
                   html: Optional[Path] = None, name: str = "") -> list[str]:
    """Patterns of the whole final sequence (prompt rows included), from one full pass:
    the --save files and the --html page read the same pass. Returns what it wrote, a
    line each."""
    from attnscope import outputs
    from attnscope.outputs.files import PageOutput, PatternSave, TopKSave
    from attnscope.tokenize import Tokens

    ids = g.ids
    tokens = Tokens(g.text, ids, g.labels, [(0, 0)] * len(ids), [False] * len(ids))
    extra = {"prompt_length": len(g.prompt_ids)}
    # the page opens on the last layer, head 0, at the query that wrote the last token
    files = [PatternSave(save, force=force, extra=extra) if save is not None else None,
             TopKSave(save_topk, force=force, extra=extra) if save_topk is not None else None,
             PageOutput(html, force=force, focus=(m.n_layers - 1, 0, len(ids) - 2)) if html is not None else None]
    return [e.line for e in outputs.run(m, tokens, [f for f in files if f is not None]).emitted]
