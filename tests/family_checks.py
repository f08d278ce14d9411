"""What the family tests (tests/test_family_*.py) share: a getter that builds or loads each
checkpoint once, transformers' reference run, our cached decoding's patterns put back
together, and the comparisons with their messages. Each test module keeps its own
tolerances and fixtures; these are the bodies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch


def cached(make: Callable[..., Any]) -> Callable[..., Any]:
    """`make(*key)`, called at most once per key."""
    made: dict[Any, Any] = {}

    def get(*key: Any) -> Any:
        if key not in made:
            made[key] = make(*key)
        return made[key]

    return get


def eager_reference(folder: Path, text_config: bool = False) -> Any:
    """transformers' model on the folder (`tiny_models.load_reference`: every tensor used,
    none missing), its experts run by the plain loop (the grouped-mm kernel takes no
    float64); with `text_config`, a multimodal wrapper's text model's experts too."""
    import tiny_models

    model = tiny_models.load_reference(folder)
    model.config._experts_implementation = "eager"
    if text_config and hasattr(model.config, "text_config"):
        model.config.text_config._experts_implementation = "eager"
    return model


def references(folder: Callable[[str], Path], text_config: bool = False) -> Callable[..., Any]:
    """`get(name, double=False)`: `eager_reference` on `folder(name)` in float32, or a float64
    copy of a fresh load with `double`; each made once."""
    made: dict[tuple[str, bool], Any] = {}

    def get(name: str, double: bool = False) -> Any:
        if (name, double) not in made:
            model = eager_reference(folder(name), text_config)
            made[(name, double)] = copy.deepcopy(model).double().eval() if double else model
        return made[(name, double)]

    return get


@torch.no_grad()
def reference_run(model: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' logits (T, vocab) and attention (L, H, T, T) of one sequence."""
    out = model(torch.tensor([ids]), output_attentions=True)
    return out.logits[0], torch.stack([a[0] for a in out.attentions])


def run_hooked(model: Any, ids: list[int], handles: list[Any]) -> None:
    """One pass of transformers' model over `ids` (no grad) for the forward hooks `handles`
    to catch what they want, the hooks removed after it whatever happens."""
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()


class Patterns:
    """A hook putting the pattern chunks of cached steps back into (L, H, T, T) rows."""

    def __init__(self, n_layers: int, n_heads: int, n: int) -> None:
        self.full = torch.zeros(n_layers, n_heads, n, n)

    def wants(self, site: str, what: str) -> bool:
        return what == "pattern" and site.startswith("blocks.") and site.endswith(".attn")

    def report(self, site: str, what: str, value: torch.Tensor, q_start: int, k_start: int) -> None:
        layer = int(site.split(".")[1])
        _, rows, keys = value.shape
        self.full[layer, :, q_start:q_start + rows, k_start:k_start + keys] = value


def assert_close(ours_: torch.Tensor, ref: torch.Tensor, atol: float, what: str,
                 widest: Optional[dict[str, float]] = None) -> float:
    """Equal to `atol` everywhere; returns the largest difference (also kept in `widest`,
    under `what` up to its first colon, where given: the figures for a report)."""
    assert ours_.shape == ref.shape, f"{what}: shape {tuple(ours_.shape)} != {tuple(ref.shape)}"
    diff = (ours_.double() - ref.double()).abs()
    worst = float(diff.max())
    if worst > atol:
        where = tuple(int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        pytest.fail(f"{what}: differs by {worst:.3g} > {atol:g} at {where}")
    if widest is not None:
        widest[what.split(":")[0]] = max(widest.get(what.split(":")[0], 0.0), worst)
    return worst


def assert_logits_close(ours_: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    """Within `rtol` of each entry and `rtol` × the logits' largest magnitude."""
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours_.double(), ref.double(), rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def worst(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest absolute difference of two tensors of one shape, in float64."""
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    return float((got.double() - want.double()).abs().max())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())
