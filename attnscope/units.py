"""Number and size formatting shared by results and renderers (no dependencies)."""

from __future__ import annotations


def n(value: int) -> str:
    """An exact integer with thousands separators."""
    return f"{value:,}"


def human_bytes(value: float) -> str:
    """Bytes in binary units: '1.5 KiB', '16.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value} B"


def plural(count: int, word: str) -> str:
    """'1 layer', '12 layers': every count a message shows goes through here."""
    return f"{count:,} {noun(count, word)}"


def noun(count: int, word: str) -> str:
    """The word alone, plural unless `count` is 1: 'layer 3' but 'layers 0–5'."""
    return word if count == 1 else f"{word}s"
