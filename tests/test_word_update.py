"""The update of one word (`attend --measure norm`, focus view and --json `update`): what
each earlier word wrote into the chosen token's embedding in one layer, computed
independently from transformers' float64 weights, inputs and attentions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from typer.testing import CliRunner

from attnscope.cli import app
from test_measures import attention_parts, reference64

TEXT = "a fluffy blue creature roamed the verdant forest"


@torch.no_grad()
def reference_update(folder: Path, ids: list[int], layer: int, query: int) -> tuple[torch.Tensor, float, float]:
    model = reference64(folder)
    H = model.config.num_attention_heads
    part = attention_parts(model, layer)
    seen: dict[str, torch.Tensor] = {}
    handle = part.module.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.__setitem__("x", (args[0] if args else kwargs["hidden_states"])[0]),
        with_kwargs=True)
    try:
        out = model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    finally:
        handle.remove()
    alpha = out.attentions[layer][0].double()  # (H, n, n)
    v = part.value(seen["x"])  # (H_kv, n, dh)
    v = v.repeat_interleave(H // v.shape[0], dim=0)  # (H, n, dh)
    f = torch.einsum("hne,hed->hnd", v, part.out)  # (H, n, d)
    moved = (alpha[:, query, :, None] * f).sum(0)  # (n, d): Σ_h α_hij f_h(x_j)
    embedding = float(out.hidden_states[layer][0, query].norm())
    return moved.norm(dim=-1), float(moved.sum(0).norm()), embedding


@pytest.mark.parametrize("name, layer", [("gpt2", 1), ("llama", 0), ("llama", 1), ("mistral", 1)])
def test_update_matches_transformers(build: Callable[[str], Path], name: str, layer: int) -> None:
    folder = build(name)
    res = CliRunner().invoke(app, ["attend", TEXT, "-m", str(folder), "--measure", "norm", "--layer", str(layer),
                                   "--json"], env={"ATTNSCOPE_MODEL": None})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    u = doc["update"]
    ids = [t["id"] for t in doc["tokens"]]
    moved, update, embedding = reference_update(folder, ids, layer, u["query"])
    scale = float(moved.max())
    got = torch.tensor(u["moved"], dtype=torch.float64)
    assert (got - moved[: got.shape[0]]).abs().max() <= 1e-5 * scale
    assert u["update_norm"] == pytest.approx(update, rel=1e-5)
    assert u["embedding_norm"] == pytest.approx(embedding, rel=1e-5)
    assert len(u["moved_per_head"]) == doc["heads"].__len__()


def test_update_view_reads_as_the_lesson(build: Callable[[str], Path]) -> None:
    res = CliRunner().invoke(app, ["attend", TEXT, "-m", str(build("llama")), "--measure", "norm"],
                             env={"COLUMNS": "80", "NO_COLOR": "1", "ATTNSCOPE_MODEL": None})
    assert res.exit_code == 0, res.output
    assert "What each word wrote into" in res.stdout and "whole update ‖Δ‖" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
