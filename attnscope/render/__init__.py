"""Rendering: rich tables and heatmaps, the only code that writes to the console.

One module per command (params, attend, masks, heads); each function takes results
(dataclasses from params/analysis) and a Console, and computes nothing a test would
want to check, so rendering can change freely. Shared formatting helpers live here.
"""

from __future__ import annotations

from attnscope.units import human_bytes, n  # noqa: F401  (re-exported for the renderers)


# Colour ramp for attention weights 0..1: dark to bright, readable on dark and light terminals.
RAMP = ("grey23", "grey39", "blue", "dodger_blue2", "deep_sky_blue1", "cyan", "green_yellow", "yellow", "orange1", "red")
SHADES = " ░▒▓█"  # the same ramp without colour (NO_COLOR / --no-color)


def ramp_style(value: float) -> str:
    i = min(len(RAMP) - 1, max(0, int(value * len(RAMP))))
    return RAMP[i]


# A diverging scale for signed values (a linear layer's hidden attention M): blue below 0,
# red above, brighter with |value| / scale; no colour at 0.
NEGATIVE = ("grey35", "navy_blue", "blue3", "blue1", "dodger_blue1", "deep_sky_blue1")
POSITIVE = ("grey35", "dark_red", "red3", "red1", "orange_red1", "orange1")


def diverging_style(value: float, scale: float) -> str:
    """The colour of a signed `value` on a scale of ±`scale` (its row's or matrix's largest |value|)."""
    if value == 0 or not scale > 0:
        return ""
    ramp = POSITIVE if value > 0 else NEGATIVE
    return ramp[min(len(ramp) - 1, max(1, int(abs(value) / scale * (len(ramp) - 1) + 0.5)))]


def shade(value: float) -> str:
    i = min(len(SHADES) - 1, max(0, int(round(value * (len(SHADES) - 1)))))
    return SHADES[i]


def clip(label: str, width: int) -> str:
    return label if len(label) <= width else label[: max(1, width - 1)] + "…"


def elide(total: int, fit: int) -> list[int]:
    """Indices to show when `total` do not fit: the first and last, with -1 for the gap."""
    if total <= fit:
        return list(range(total))
    head = (fit - 1) // 2
    tail = fit - 1 - head
    return list(range(head)) + [-1] + list(range(total - tail, total))


def distinct(labels: list[str]) -> list[str]:
    """Labels that tell repeated tokens apart: a label the text holds more than once
    carries its position (three different '.' become .@5, .@9, .@14)."""
    from collections import Counter

    counts = Counter(labels)
    return [f"{label}@{i}" if counts[label] > 1 else label for i, label in enumerate(labels)]
