"""`attend --view experts`: for each token, which experts each mixture-of-experts layer sent
it to and with what weights, on the terminal or as `--json`.

It needs no attention measure: its probe (`routing.RouteProbe`) rides the one pass as a
stream, and it is emitted after the run's files like the other views. `--layer` picks MoE
layers (default: the last one); a layer without experts, or a model without any, is one
line naming the layers that have them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from attnscope.outputs import Output, Run

if TYPE_CHECKING:
    from attnscope.analysis import AttendResult
    from attnscope.routing import RouteProbe


@dataclass
class ExpertsView(Output):
    layer: Optional[str] = None
    as_json: bool = False
    no_color: bool = False
    final = True
    _probe: Optional["RouteProbe"] = field(default=None, repr=False)

    def layers(self, run: Run, cfg: Any) -> list[int]:
        from attnscope.errors import UsageError
        from attnscope.routing import moe_layers

        moe = moe_layers(cfg)
        if not moe:
            raise UsageError(f"{run.model} has no mixture-of-experts layers, so no routes to show",
                             hint="--view experts needs a model with experts (Mixtral, Qwen2-MoE, Qwen3-MoE, …)")
        chosen = run.shape.layers(self.layer, str(moe[-1]))
        other = [layer for layer in chosen if layer not in moe]
        if other:
            shown = ", ".join(map(str, moe[:12])) + (" …" if len(moe) > 12 else "")
            raise UsageError(f"layer {other[0]} has no experts", hint=f"the layers with experts: {shown}")
        return chosen

    def stream(self, run: Run, stack: contextlib.ExitStack) -> Any:
        from attnscope.routing import RouteProbe, top_k

        cfg = run.config
        chosen = self.layers(run, cfg)
        self._probe = RouteProbe(chosen, len(run.tokens), top_k(cfg, chosen))
        return self._probe

    def emit(self, part: Optional["AttendResult"], run: Run) -> None:
        assert self._probe is not None  # internal invariant: streamed during the pass
        routes = self._probe.result()
        if self.as_json:
            from attnscope.cli._app import _print_json  # the one JSON printer (C1 controls escaped)

            doc = {"model": run.model, "tokens": run.tokens.labels, "ids": run.tokens.ids,
                   "moe_layers": routes.layers, "routes": routes.experts.tolist(),
                   "route_weights": routes.weights.tolist()}
            for emitted in run.emitted:
                doc[emitted.key] = str(emitted.path)
            _print_json(doc)
            return
        from rich.console import Console
        from rich.text import Text

        from attnscope.render.routes import routes_table

        console = Console(highlight=False, no_color=self.no_color or None)
        routes_table(console, run.model, run.tokens, routes)
        for emitted in run.emitted:
            console.print(Text(emitted.line, style="dim"))
