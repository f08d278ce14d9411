"""`attend --plot`: a figure for a paper, with matplotlib (an optional extra).

One head's pattern as a heatmap with token labels, or a grid of the selected heads
(rows = layers, columns = heads), a colour bar, and the model, layer, head and measure
in the title. Cells are vector where the format allows (SVG, PDF) and the figure is
small enough to stay light (`VECTOR_CELLS`); beyond that they are one embedded image
while labels and text stay vector. Text is kept as text (SVG `svg.fonttype: none`, PDF
Type 42 fonts) so that a journal's editor can restyle it. A signed layer's panels (a linear
layer's hidden attention, rows not summing to 1) take a diverging map (RdBu_r, symmetric
about 0 at ± their largest |weight|) and a colour bar of their own. A cross-attention (an
encoder-decoder's, `attend --target --plot`) is not square: rows are the target's tokens,
columns the source's, each axis labelled with its own. Built on `matplotlib.figure.Figure`
directly, never pyplot: no global state, no GUI backend, safe inside any process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from attnscope.errors import ExportError, UsageError
from attnscope.units import noun, plural

FORMATS = (".png", ".svg", ".pdf")
INSTALL = "pip install 'attnscope[plot]'"
VECTOR_CELLS = 65_536  # cells drawn as vector rectangles at most; above, one image per head
MIN_INCHES = 2.0  # per side: below it the panels and labels leave no room (0.5 in: a division by zero)
MAX_INCHES = 60.0  # per side: 60 in at the 200 dpi of a PNG is 12,000 px, below Agg's 2^16 limit
MAX_PANELS = 400
PNG_DPI = 200
MEASURE_LABELS = {
    "weight": "attention weight",
    "norm": "‖α·f(x)‖, row-normalised",
    "rollout": "attention rollout",
    "alti": "ALTI, rolled out",
    "value-zeroing": "value zeroing",
}
PER_LAYER = {"rollout": "rollout", "alti": "ALTI", "value-zeroing": "value zeroing"}  # one matrix a layer, no heads


def require_matplotlib() -> None:
    """Fail early, in one line, where matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExportError("--plot needs matplotlib, which is not installed", hint=INSTALL) from None


def check_panels(n_layers: int, n_heads: int) -> None:
    """Refuse a grid too big for one figure (before the run, from the selection alone)."""
    if n_layers * n_heads > MAX_PANELS:
        raise UsageError(f"{plural(n_layers, 'layer')} × {plural(n_heads, 'head')} is {n_layers * n_heads} panels, more than one figure "
                         f"can show ({MAX_PANELS})", hint="select fewer with --layer/--head")


def parse_figsize(text: str) -> tuple[float, float]:
    """'W,H' in inches, each in [MIN_INCHES, MAX_INCHES]."""
    parts = text.replace("x", ",").split(",")
    try:
        w, h = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"cannot read --figsize {text!r}", hint="give width and height in inches, e.g. --figsize 6,5") from None
    if not (MIN_INCHES <= w <= MAX_INCHES and MIN_INCHES <= h <= MAX_INCHES):  # NaN fails too
        raise UsageError(f"--figsize {text} is out of range", hint=f"each side from {MIN_INCHES:g} to {MAX_INCHES:g} inches")
    return w, h


def grid_shape(n_layers: int, n_heads: int) -> tuple[int, int]:
    """Rows and columns of panels: layers × heads where both vary; one layer's heads (or
    one head's layers) wrap into a near-square grid rather than a strip of 4,000 pixels."""
    if n_layers > 1 and n_heads > 1:
        return n_layers, n_heads
    panels = n_layers * n_heads
    cols = math.ceil(math.sqrt(panels))
    return math.ceil(panels / cols), cols


def _label(text: str) -> str:
    # Matplotlib reads $…$ as mathematics; a token is text.
    return text.replace("$", r"\$")


def _stride(n: int, length_in: float, min_pt: float = 6.0) -> int:
    """Label every `stride`-th token so that labels are at least `min_pt` apart."""
    per = length_in * 72 / max(n, 1)
    return 1 if per >= min_pt else math.ceil(min_pt / per)


def write_figure(path: Path, values: Any, layers: list[int], heads: list[int], labels: list[str], model: str,
                 measure: str = "weight", figsize: Optional[tuple[float, float]] = None, force: bool = False,
                 signed: Optional[dict[int, str]] = None, columns: Optional[list[str]] = None,
                 axes_names: tuple[str, str] = ("query", "key")) -> Path:
    """Write `values` (L, H, n, n_keys), the patterns of `layers` × `heads`, as a figure at
    `path` (.png, .svg or .pdf), atomically. `labels` name the rows, `columns` the columns
    (default: `labels`, a square pattern), `axes_names` the two axes. `signed`: the layers
    whose values are signed, each with its kind in words (drawn on a diverging scale)."""
    require_matplotlib()
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    data = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float32)
    n_l, n_h, n, nk = data.shape[0], data.shape[1], data.shape[-2], data.shape[-1]
    columns = labels if columns is None else columns
    assert data.shape == (len(layers), len(heads), len(labels), len(columns)), data.shape  # internal invariant
    check_panels(n_l, n_h)
    fmt = path.suffix.lower().lstrip(".")
    vector = fmt in ("svg", "pdf") and n_l * n_h * n * nk <= VECTOR_CELLS
    single = n_l * n_h == 1
    rows, cols = grid_shape(n_l, n_h)
    if figsize is None:
        side = min(12.0, max(4.0, 2.5 + 0.16 * n))
        width = min(12.0, max(4.0, 2.5 + 0.16 * nk))
        figsize = (width + 1.3, side) if single else (min(MAX_INCHES, 1.6 + 2.1 * cols), min(MAX_INCHES, 0.9 + 2.1 * rows))
    signed = {layer: words for layer, words in (signed or {}).items() if layer in layers}
    plain = [li for li, layer in enumerate(layers) if layer not in signed]
    vmax = float(data[plain].max()) if plain and data[plain].size and float(data[plain].max()) > 0 else 1.0
    ranged = [li for li, layer in enumerate(layers) if layer in signed]
    smax = float(np.abs(data[ranged]).max()) if ranged and data[ranged].size else 0.0
    smax = smax if smax > 0 else 1.0
    names, column_names = [_label(t) for t in labels], [_label(t) for t in columns]
    measure_label = MEASURE_LABELS.get(measure, measure)
    rollout = measure in PER_LAYER

    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "font.size": 9,
                                "svg.hashsalt": "attnscope", "axes.titlesize": 9}):
        fig = Figure(figsize=figsize, layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        for ax in grid.ravel()[n_l * n_h:]:  # the last row of a wrapped grid may be short
            ax.set_visible(False)
        axes = grid.ravel()[: n_l * n_h].reshape(n_l, n_h)  # (L, H): each panel in layer, head order
        mappable = None
        signed_mappable = None
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                ax = axes[li][hi]
                m = data[li, hi]
                cmap, lo, hi_v = ("RdBu_r", -smax, smax) if layer in signed else ("viridis", 0.0, vmax)
                if vector:
                    drawn = ax.pcolormesh(np.arange(nk + 1) - 0.5, np.arange(n + 1) - 0.5, m, cmap=cmap, vmin=lo,
                                          vmax=hi_v, shading="flat", edgecolors="none", antialiased=False)
                    ax.set_xlim(-0.5, nk - 0.5)
                    ax.set_ylim(n - 0.5, -0.5)  # query 0 on top, as in the terminal heatmap
                    ax.set_aspect("equal")
                else:
                    drawn = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi_v, interpolation="nearest" if max(n, nk) <= 512 else "antialiased",
                                      aspect="equal")
                if layer in signed:
                    signed_mappable = drawn
                else:
                    mappable = drawn
                if not single:
                    ax.set_title((f"L{layer}" if rollout else f"L{layer} H{head}") + (" ±" if layer in signed else ""),
                                 pad=2)
                ax.tick_params(length=2, pad=1)
        # Token labels where they fit: every panel's axes are shared, so the outer ones carry them.
        w_in, h_in = figsize
        panel_w = (w_in - (1.3 if single else 1.0)) / cols
        panel_h = (h_in - (0.8 if single else 0.6)) / rows
        sx, sy = _stride(nk, panel_w), _stride(n, panel_h)
        fs = max(4.0, min(9.0, 0.8 * min(panel_w * 72 / nk, panel_h * 72 / n))) if max(sx, sy) == 1 else 6.0
        ax0 = axes[0][0]
        xs, ys = list(range(0, nk, sx)), list(range(0, n, sy))
        ax0.set_xticks(xs)
        ax0.set_yticks(ys)
        ax0.set_xticklabels([column_names[i] if sx == 1 else f"{i} {column_names[i]}" for i in xs])
        ax0.set_yticklabels([names[i] if sy == 1 else f"{i} {names[i]}" for i in ys])
        for row in axes:
            for ax in row:  # shared ticks, but each axis styles its own labels
                ax.tick_params(axis="x", labelrotation=90, labelsize=fs)
                ax.tick_params(axis="y", labelsize=fs)
                ax.label_outer()
        for p in range(max(0, n_l * n_h - cols), (rows - 1) * cols):  # above an empty cell: the lowest in its column
            grid.ravel()[p].xaxis.set_tick_params(labelbottom=True)
        if single:
            ax0.set_xlabel(axes_names[1])
            ax0.set_ylabel(axes_names[0])
            what = f"layer {layers[0]} · {PER_LAYER[measure]}" if rollout else f"layer {layers[0]} · head {heads[0]}"
            if layers[0] in signed:
                what += f" · {signed[layers[0]]}: signed, rows do not sum to 1"
            fig.suptitle(f"{model} · {what}" + ("" if measure == "weight" or rollout else f" · {measure}"), fontsize=10)
        else:
            fig.supxlabel(axes_names[1], fontsize=9)
            fig.supylabel(axes_names[0], fontsize=9)
            span = f"{noun(len(layers), 'layer')} {_span(layers)}" + ("" if rollout else f", {noun(len(heads), 'head')} {_span(heads)}")
            kinds = "; ".join(sorted(set(signed.values())))
            fig.suptitle(f"{model} · {span}" + ("" if measure == "weight" else f" · {measure}")
                         + (f" · ± = {kinds}, signed" if signed else ""), fontsize=10)
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8 if single else 0.6, pad=0.02)
            bar.set_label(measure_label)
        if signed_mappable is not None:
            bar = fig.colorbar(signed_mappable, ax=axes.ravel().tolist(), shrink=0.8 if single else 0.6, pad=0.02)
            bar.set_label("hidden attention M (signed, rows not summing to 1)")
        _save(fig, path, fmt, force)
    return path


def write_atlas(path: Path, scores: dict[str, Any], layers: list[int], heads: list[int], model: str,
                measure: str = "weight", figsize: Optional[tuple[float, float]] = None, force: bool = False) -> Path:
    """The `heads` atlas as a figure: one panel per score, a layer × head grid each, on a
    shared 0..1 colour scale (every score is a mean weight or a normalised entropy)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fmt = path.suffix.lower().lstrip(".")
    names = [name for name, grid in scores.items() if grid is not None]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    size = figsize or (3.2 * cols, 0.14 * len(layers) * rows + 1.6 * rows)
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, constrained_layout=True)
        mappable = None
        for ax, name in zip(axes.ravel(), names):
            grid = np.asarray(scores[name], dtype=np.float32)  # (L_sel, H_sel)
            mappable = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks(range(len(heads)), [f"H{h}" for h in heads], fontsize=6, rotation=90)
            step = max(1, len(layers) // 16)
            ax.set_yticks(range(0, len(layers), step), [f"L{layers[i]}" for i in range(0, len(layers), step)],
                          fontsize=6)
        for ax in axes.ravel()[len(names):]:
            ax.set_axis_off()
        fig.suptitle(f"{model} · head scores" + ("" if measure == "weight" else f" · {measure}"), fontsize=10)
        if mappable is not None:
            fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6, pad=0.02).set_label("score (0..1)")
        _save(fig, path, fmt, force)
        plt.close(fig)
    return path


def _span(items: list[int]) -> str:
    """'0–5' for a run, '0, 2, 5' otherwise."""
    if len(items) > 2 and items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}–{items[-1]}"
    return ", ".join(str(i) for i in items)


def _save(fig: Any, path: Path, fmt: str, force: bool) -> None:
    """Write `fig` to `path` atomically (`export.atomic_path`), its metadata dateless."""
    from attnscope import export

    with export.atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format=fmt, dpi=PNG_DPI, metadata=_metadata(fmt))


def _metadata(fmt: str) -> dict[str, Any]:
    # No creation date, so the same run writes the same SVG/PDF bytes.
    if fmt == "svg":
        return {"Date": None, "Creator": "attnscope"}
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "attnscope"}
    return {"Software": "attnscope"}
