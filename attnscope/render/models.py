"""The `models` listing: one table per source, fitting 80 columns, reasons as notes below.

Names, paths and reasons come from the file system and from files, so their control
characters are made visible (`tokenize.visible`) before printing, and everything is
printed as rich `Text`, never as markup (a `[` in a folder name stays a `[`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnscope.tokenize import visible
from attnscope.units import human_bytes

if TYPE_CHECKING:
    from attnscope.models import ModelEntry

# The other columns at their widest ("safetensors", "gemma2", "134.5M", "108.2 KiB",
# "no (12)") with rich's padding and rules between them.
NON_NAME_WIDTH = 11 + 10 + 6 + 10 + 7 + 5 * 3


def short_count(value: int | None) -> str:
    """A parameter count in four significant characters or so: 134.5M, 7.2B, 931K."""
    if value is None:
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return f"{value / div:.1f}{unit}"
    return str(value)


def models_listing(console: Console, entries: Sequence["ModelEntry"], cache: Path) -> None:
    notes: list[tuple[int, "ModelEntry"]] = []
    packaged = [e for e in entries if e.source == "package"]
    hub = [e for e in entries if e.source == "hub-cache"]
    width = max(16, console.width - NON_NAME_WIDTH)  # what the name column gets
    console.print(_table("Packaged models (pip)", packaged, notes, width))
    if hub:
        console.print(_table(f"Hugging Face cache: {visible(str(cache))}", hub, notes, width))
    else:
        console.print(Text(f"Hugging Face cache: no models in {visible(str(cache))}", style="dim"))
    for number, entry in notes:
        line = Text(f"({number}) ", style="bold") + Text(visible(entry.name), style="bold") + Text(": ")
        line += Text(visible(entry.reason or ""), style="red" if entry.install is None else "yellow")
        console.print(line)
        if entry.install:  # on a line of its own, to copy whole
            console.print(Text(f"    {entry.install}"), no_wrap=True, crop=False)
    ready = sum(e.supported for e in entries)
    console.print(Text(f"{ready} of {len(entries)} can be opened: --model NAME, or a cached GGUF's path "
                       "(--json)", style="dim"))


def _name(entry: "ModelEntry", width: int) -> Text:
    """The name cell: a cached GGUF as its repository, then the file indented below it; a
    repository id too long for the column broken after its organisation's '/', not
    mid-word."""
    repo = entry.repo if entry.repo and entry.name.startswith(entry.repo + "/") else entry.name
    shown = visible(repo)
    if len(shown) > width and "/" in shown:
        org, rest = shown.split("/", 1)
        shown = f"{org}/\n{rest}"
    text = Text(shown)
    if repo != entry.name:
        text += Text("\n  " + visible(entry.name[len(repo) + 1:]), style="cyan")
    return text


def _table(title: str, entries: Sequence["ModelEntry"], notes: list[tuple[int, "ModelEntry"]],
           width: int) -> Table:
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("Model", overflow="fold", ratio=1)
    table.add_column("Format", no_wrap=True)
    table.add_column("Family", overflow="fold", max_width=10)
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("OK", no_wrap=True)
    for entry in entries:
        fmt = "GGUF" if entry.format == "gguf" else "safetensors"
        if entry.quantization and entry.format == "gguf":
            fmt += f" {visible(entry.quantization)}"
        if entry.supported:
            status = Text("yes", style="green")
        else:
            notes.append((len(notes) + 1, entry))
            status = Text(f"no ({len(notes)})", style="red" if entry.install is None else "yellow")
        table.add_row(
            _name(entry, width),
            Text(fmt),
            Text(visible(entry.family or "?")),
            short_count(entry.parameters),
            human_bytes(entry.bytes) if entry.bytes is not None else "",
            status,
        )
    return table
