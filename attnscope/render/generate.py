"""Views for `generate`: the text as it streams, then one row per new token.

The stream prints the prompt dim and each new token bright as it comes. The table that
follows fits 80 columns: the token, its probability, the alternatives the model weighed,
and the earlier tokens its query attended to most (generated ones marked with ›).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnscope.render import clip
from attnscope.tokenize import visible

if TYPE_CHECKING:
    from attnscope.generate import Generation, Step


def _visible(text: str) -> str:
    """Control characters made visible (a token can carry ESC); the stream keeps its lines."""
    return visible(text, keep="\n\t")


class Stream:
    """Prints the prompt, then each token as the model writes it."""

    def __init__(self, console: Console, tokenizer: object, prompt: str) -> None:
        self.console = console
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""
        console.print(Text(_visible(prompt), style="dim"), end="")

    def __call__(self, step: "Step") -> None:
        self.ids.append(step.token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)  # type: ignore[attr-defined]
        if text.startswith(self.shown):  # only whole characters: a byte-level piece may be half a glyph
            new, self.shown = text[len(self.shown):], text
            self.console.print(Text(_visible(new), style="bold"), end="")

    def close(self) -> None:
        self.console.print()


def steps_table(console: Console, g: "Generation", color: bool) -> None:
    n_prompt = len(g.prompt_ids)
    where = "layer " + (str(g.layers[0]) if len(g.layers) == 1 else f"{len(g.layers)} layers")
    heads = "all heads" if len(g.heads) > 1 else f"head {g.heads[0]}"
    table = Table(title=f"Each new token: probability, alternatives, where it looked ({where}, {heads})",
                  title_justify="left", box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    table.add_column("p", justify="right")
    table.add_column("instead")
    table.add_column("looked at")
    for i, s in enumerate(g.steps):
        alts = "  ".join(f"{clip(_visible(t), 8)} {p:.2f}" for _, t, p in s.alternatives[:2])
        keys = "  ".join(f"{'›' if j >= n_prompt else ''}{clip(_visible(t), 8)} {w:.2f}" for j, t, w in s.top_keys[:2])
        style = "bold" if s.prob >= 0.5 or not color else "yellow"
        table.add_row(str(i + 1), Text(clip(_visible(s.token), 10), style=style), f"{s.prob:.2f}", alts, keys)
    console.print(table)
    console.print(Text(f"stopped: {g.stopped}; › marks generated tokens", style="dim"))
