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
    console.print(_table("Packaged models (pip)", packaged, notes, console.width))
    if hub:
        console.print(_table(f"Hugging Face cache: {visible(str(cache))}", hub, notes, console.width))
    else:
        console.print(Text(f"Hugging Face cache: no models in {visible(str(cache))}", style="dim"))
    for number, entry in notes:
        name = wrap_name(visible(entry.name), console.width - 4, "    ")  # a GGUF's path: broken at separators
        line = Text(f"({number}) ", style="bold") + Text(name, style="bold") + Text(": ")
        line += Text(visible(entry.reason or ""), style="red" if entry.install is None else "yellow")
        console.print(line)
        if entry.install:  # on a line of its own, to copy whole
            console.print(Text(f"    {entry.install}"), no_wrap=True, crop=False)
    ready = sum(e.supported for e in entries)
    console.print(Text(f"{ready} of {len(entries)} can be opened: --model NAME, or a cached GGUF's path "
                       "(--json)", style="dim"))


def wrap_name(name: str, width: int, indent: str = "") -> str:
    """`name` in lines of at most `width` cells, broken only after a '/', '-', '_' or '.'
    (a hub id or a GGUF file name never breaks mid-word where such a break exists),
    each line after the first indented by `indent`."""
    import re

    lines = [""]
    for part in re.split(r"(?<=[-_./])", name):
        if lines[-1] and len(indent) * (len(lines) > 1) + len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return ("\n" + indent).join(lines)


def _name(entry: "ModelEntry", width: int) -> Text:
    """The name cell: a cached GGUF as its repository, then the file indented below it;
    both broken at separators where the column is too narrow (`wrap_name`)."""
    repo = entry.repo if entry.repo and entry.name.startswith(entry.repo + "/") else entry.name
    text = Text(wrap_name(visible(repo), width))
    if repo != entry.name:
        text += Text("\n  " + wrap_name(visible(entry.name[len(repo) + 1:]), width - 2, "  "), style="cyan")
    return text


def _table(title: str, entries: Sequence["ModelEntry"], notes: list[tuple[int, "ModelEntry"]],
           console_width: int) -> Table:
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("Model", overflow="fold", ratio=1)
    table.add_column("Format", no_wrap=True)
    table.add_column("Family", overflow="fold", max_width=10)
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("OK", no_wrap=True)
    rows = []
    for entry in entries:
        fmt = "GGUF" if entry.format == "gguf" else "safetensors"
        if entry.quantization and entry.format == "gguf":
            fmt += f" {visible(entry.quantization)}"
        if entry.supported:
            status = Text("yes", style="green")
        else:
            notes.append((len(notes) + 1, entry))
            status = Text(f"no ({len(notes)})", style="red" if entry.install is None else "yellow")
        rows.append((entry, [Text(fmt), Text(visible(entry.family or "?")), Text(short_count(entry.parameters)),
                             Text(human_bytes(entry.bytes) if entry.bytes is not None else ""), status]))
    # The name column gets what the other columns, as filled, leave of the line.
    heads = ("Format", "Family", "Params", "Size", "OK")
    others = sum(max([len(h)] + [cells[i].cell_len for _, cells in rows]) for i, h in enumerate(heads))
    width = max(16, console_width - min(others, NON_NAME_WIDTH - 5 * 3) - 5 * 3 - 1)
    for entry, cells in rows:
        table.add_row(_name(entry, width), *cells)
    return table
