"""The model lists its sites (`hooks.SiteInfo`), and head selections read each selected
layer's own head count from them (issue 24).

Every current model has one head count; a stack whose layers differ is built by hand
here (ModelConfig still refuses one), torch-free, to prove the per-layer checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnscope.analysis import select, select_heads
from attnscope.config import preset
from attnscope.errors import SelectionError
from attnscope.hooks import SiteInfo, sites
from attnscope.kinds import AttnSpec, LayerSpec, MlpSpec, RopeSpec, Stack
from attnscope.measures import KINDS
from attnscope.outputs import Shape


def _layer(n_heads: int, window: int | None = None, sinks: bool = False) -> LayerSpec:
    return LayerSpec(AttnSpec(n_heads, n_heads, 8, window=window, rope=RopeSpec(10000.0, 8), sinks=sinks),
                     MlpSpec("gated", 32, "silu"))


def _mixed() -> list[SiteInfo]:
    """Layers 0–2: 16 heads, local; layer 3: 8 heads, global, with sinks."""
    cfg = SimpleNamespace(stack=Stack(((_layer(16, window=4), 3), (_layer(8, sinks=True), 1))), positions="rope")
    return sites(cfg)


def test_sites_follow_the_layer_kinds() -> None:
    cfg = preset("gemma-3-1b")
    got = sites(cfg)
    assert [s.layer for s in got] == list(range(cfg.n_layers))
    assert [s.name for s in got] == [f"blocks.{i}.attn" for i in range(cfg.n_layers)]
    assert {s.n_heads for s in got} == {cfg.n_heads}
    assert all(s.stochastic for s in got)
    assert [s.kind for s in got] == [cfg.layer(i).attn.words(rope_model=True) for i in range(cfg.n_layers)]
    assert got[0].kind.startswith("local, window") and got[5].kind == "global"


def test_sites_of_a_hand_built_stack() -> None:
    got = _mixed()
    assert got == [SiteInfo("blocks.0.attn", 0, "local, window 4", 16, True),
                   SiteInfo("blocks.1.attn", 1, "local, window 4", 16, True),
                   SiteInfo("blocks.2.attn", 2, "local, window 4", 16, True),
                   SiteInfo("blocks.3.attn", 3, "global", 8, False)]  # sinks: rows sum to less than 1


def test_sites_of_a_long_stack_are_one_per_layer() -> None:
    cfg = SimpleNamespace(stack=Stack(((_layer(4), 100_000),)), positions="learned")
    got = sites(cfg)
    assert len(got) == 100_000 and got[-1] == SiteInfo("blocks.99999.attn", 99_999, "global", 4, True)


def test_mixed_heads_name_the_layer_that_lacks_one() -> None:
    s = _mixed()
    assert select_heads("0-7", s, [0, 3]) == list(range(8))
    assert select_heads("9", s, [0, 1]) == [9]  # the selected layers all have 16
    assert select_heads("all", s, [3]) == list(range(8))
    with pytest.raises(SelectionError, match=r"^--head 9 is out of range: layer 3 has 8 heads \(0\.\.7"):
        select_heads("9", s, [0, 3])
    with pytest.raises(SelectionError, match="layer 3 has 8 heads"):
        select_heads([2, 12], s, [1, 3])
    with pytest.raises(SelectionError, match=r"means different heads .*layer 3 has 8, layer 0 has 16"):
        select_heads("all", s, [0, 3])
    with pytest.raises(SelectionError, match="means different heads"):
        select_heads("-1", s, [0, 3])


def test_outputs_and_measures_check_heads_per_selected_layer() -> None:
    s = tuple(_mixed())
    shape = Shape(4, 16, "weight", s)
    assert shape.heads("12", layers=[0, 2]) == [12]
    with pytest.raises(SelectionError, match="layer 3 has 8 heads"):
        shape.heads("12", layers=[1, 3])
    with pytest.raises(SelectionError, match="layer 3 has 8 heads"):
        shape.heads("12")  # no layers named: every layer
    assert Shape(4, 16, "rollout", s).heads("12", layers=[3]) == [0]
    assert KINDS["norm"].heads("0,1", 16, s, [3]) == [0, 1]


SPECS = st.one_of(
    st.none(), st.integers(-40, 40), st.lists(st.integers(-40, 40), max_size=4),
    st.sampled_from(["all", "*", ":", "0-3", "3-1", "2:", ":-1", "5:2", "", "x", ",", "1,,2", "99999999999999999999"]),
    st.text(alphabet="0123456789-:, ", max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(spec=SPECS, n_heads=st.integers(1, 20), layers=st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_uniform_heads_select_exactly_as_before(spec: object, n_heads: int, layers: list[int]) -> None:
    """One head count: the same heads, or the same error message, as `select` over it."""
    s = sites(SimpleNamespace(stack=Stack(((_layer(n_heads), 6),)), positions="rope"))
    try:
        want: object = select(spec, n_heads, "head")
    except SelectionError as e:
        want = str(e)
    try:
        got: object = select_heads(spec, s, layers)
    except SelectionError as e:
        got = str(e)
    assert got == want


def test_inspector_lists_its_sites(inspector) -> None:  # type: ignore[no-untyped-def]
    m = inspector("llama")
    assert m.sites == sites(m.config) and len(m.sites) == m.n_layers
    assert {s.n_heads for s in m.sites} == {m.n_heads}
    att = m.attention("The fluffy creature sat.", layers="-1", heads="0,-1")
    assert att.heads == [0, m.n_heads - 1]
    with pytest.raises(SelectionError, match=f"the model has {m.n_heads} heads"):
        m.attention("The fluffy creature sat.", heads=str(m.n_heads))

