"""The experts view's table: one row per token, one column per selected MoE layer, each
cell the token's experts with their weights, largest first ("e5 .61 e2 .39")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from attnscope.routing import Routes
    from attnscope.tokenize import Tokens


def routes_table(console: Console, model: str, tokens: "Tokens", routes: "Routes") -> None:
    k = routes.experts.shape[-1]
    table = Table(title=f"{model} · experts per token (top {k}, weights)", title_justify="left", show_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    for layer in routes.layers:
        table.add_column(f"layer {layer}")
    for i, label in enumerate(tokens.labels):
        cells = []
        for row in range(len(routes.layers)):
            pairs = sorted(zip(routes.weights[row, i].tolist(), routes.experts[row, i].tolist()), reverse=True)
            cells.append(" ".join(f"e{e} {w:.2f}".replace(" 0.", " .") for w, e in pairs))
        table.add_row(str(i), Text(label), *cells)  # a label's brackets are not markup
    console.print(table)
