"""ALTI and Value Zeroing (`--measure alti`, `--measure value-zeroing`, attnscope.measures.mixing)
against test-only ports of the authors' computations (tests/mixing_reference.py), run on
transformers models, never on attnscope's own output.

Bounds, derived (u = 2^-24, half an ulp of 1 in float32; every result attnscope hands on
is float32, entries in [0, 1], so storing it moves an entry by at most u):

* float64 (ours on a float64 copy of the model against the port on transformers in
  float64, the port's pairwise-distance eps set to 0, i.e. the definition): both are
  exact to float64 rounding, so they agree to u plus that rounding; where a port divides
  1 − cos (absolute error at most 4 ulps of 1, 4·2^-53) by a row's sum of distances S_i,
  the row may differ by a further n·4·2^-53 / S_i.
* float32 (ours as the CLI runs it, float32 pass, float64 arithmetic after it, against
  the float64 port): the float32 pass is the only float32 step, and the authors' own code
  run in float32 carries the same pass plus float32 arithmetic after it. ε_auth, the
  port's own float32 error on this input (|port(float32 model) − port(float64 model)|,
  per layer for ALTI, per row for Value Zeroing, whose float32 1 − cos is a row's own
  matter) bounds what a float32 pass of these weights does to the result; ours runs the
  pass in another order (our parts, not transformers'), errors of the same size and
  unrelated sign: 2·ε_auth + u. ALTI's port keeps the authors' pairwise_distance eps of
  1e-6 (added to every component: the definition moved by up to d·1e-6 per entry before
  normalising); ours computes the definition, so its bound adds ε_eps = |port(eps) −
  port(eps = 0)|, both float64. The rolled-out matrices are products of row-stochastic
  ones, whose ∞-norm is 1: layer l's bound is the sum of the per-layer bounds up to l
  (plus its own ε_auth, computed on the rolled-out matrices as they are).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mixing_reference as mr
import numpy as np
import pytest
import tiny_models as tm
import torch
from cli_runs import run
from torch import Tensor

from attnscope.measures import mixing

U = 2.0 ** -24
ULP64 = 2.0 ** -53
TEXT = tm.LONG_TEXT  # 16-19 tokens


def _ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _saved(folder: Path, measure: str, tmp_path: Path, *extra: str) -> dict[str, np.ndarray]:
    """attend --measure M --save FILE.npz through the CLI (float32, CPU): its arrays."""
    out = tmp_path / f"{measure}.npz"
    _ok(run("attend", TEXT, "--model", folder, "--measure", measure, "--save", out, "--device", "cpu", *extra))
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _ours64(folder: Path, measure: str) -> tuple[Tensor, list[int]]:
    """Our measure on a float64 copy of the model: (L, n, n) float64 of the float32 results, ids."""
    from attnscope.api import load
    from attnscope.measures import AttendRequest, run_attend

    m = load(str(folder), device="cpu", dtype="float32")
    m.model.double()
    tokens = m.tokenize(TEXT)
    req = AttendRequest(list(range(m.n_layers)), [0], ["attention"], measure=measure)
    return run_attend(m, tokens, req).attention.probs[:, 0].double(), tokens.ids


def _reference(folder: Path, dtype: torch.dtype) -> Any:
    return tm.load_reference(folder).to(dtype)


def _minilm() -> Path:
    folder = tm.minilm_folder()
    if folder is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    return folder


def _bert_folder(name: str, build: Callable[[str], Path]) -> Path:
    return _minilm() if name == "minilm" else build(name)


BERTS = ["bert_bare", pytest.param("minilm", marks=pytest.mark.slow)]


# ----------------------------------------------------------------------- ALTI


def _rolled_bound(per_layer: np.ndarray) -> np.ndarray:
    return np.cumsum(per_layer)


@pytest.mark.parametrize("name", BERTS)
def test_alti_matches_the_authors_port(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    """Per layer (`alti_layer`) and rolled out (`alti`), float32 as the CLI runs it."""
    folder = _bert_folder(name, build)
    got = _saved(folder, "alti", tmp_path)
    ids = got["token_ids"].tolist()
    ref64 = _reference(folder, torch.float64)
    per64, agg64 = mr.alti_bert(ref64, ids)
    per0, agg0 = mr.alti_bert(ref64, ids, eps=0.0)
    per32, agg32 = mr.alti_bert(_reference(folder, torch.float32), ids)
    layer_axes = (1, 2)
    eps_auth = (per32.double() - per64).abs().amax(layer_axes).numpy()
    eps_eps = (per64 - per0).abs().amax(layer_axes).numpy()
    bound = 2 * eps_auth + eps_eps + U
    err = np.abs(got["alti_layer"] - per64.numpy()).max(axis=layer_axes)
    assert (err <= bound).all(), (err, bound)
    agg_auth = (agg32.double() - agg64).abs().amax(layer_axes).numpy()
    agg_bound = _rolled_bound(2 * eps_auth + eps_eps) + 2 * agg_auth + U
    agg_err = np.abs(got["alti"] - agg64.numpy()).max(axis=layer_axes)
    assert (agg_err <= agg_bound).all(), (agg_err, agg_bound)


@pytest.mark.parametrize("name", BERTS + ["gpt2"])
def test_alti_is_the_definition_in_float64(name: str, build: Callable[[str], Path]) -> None:
    """Ours on a float64 model equals the port's float64 definition (eps 0) to u: BERT's
    post-norm linearisation (transformer-contributions) and GPT-2's pre-norm affine
    decomposition (logit-explanations)."""
    folder = _bert_folder(name, build)
    got, ids = _ours64(folder, "alti")
    ref = _reference(folder, torch.float64)
    _per, agg = (mr.alti_gpt2 if name == "gpt2" else mr.alti_bert)(ref, ids, eps=0.0)
    err = float((got - agg).abs().max())
    assert err <= U + 64 * ULP64, err


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "bert_bare"])
def test_alti_decomposition_reproduces_the_block(name: str, build: Callable[[str], Path]) -> None:
    """Σ_j T_i(x_j) + the biases is the residual stream after the attention: GPT-2's and
    Llama's input to their second norm (pre-norm, x + attn(LN x)), BERT's attention-output
    LayerNorm (post-norm); every layer, float64 on both sides. Bound: a float64 sum of n
    vectors, each itself a sum of H·d_head products, is exact to (n + H·d_head + d)·2^-53
    of the sum of the magnitudes, which we take as n·max|T| + max|y| (Llama's softmax and
    RMSNorm in float64 too: `mr.llama_in_float64`)."""
    from attnscope.api import load
    from attnscope.hooks import Capture, attn_site, block_site

    folder = build(name)
    m = load(str(folder), device="cpu", dtype="float32")
    m.model.double()
    ids = m.tokenize(TEXT).ids
    n = len(ids)
    cap = Capture({**{block_site(i): ["resid_pre"] for i in range(m.n_layers)},
                   **{attn_site(i): ["v", "pattern"] for i in range(m.n_layers)}})
    m.run(ids, cap)
    ref = _reference(folder, torch.float64)
    real: dict[int, Tensor] = {}
    handles = []
    for i in range(m.n_layers):
        if name == "gpt2":
            mod, take = ref.transformer.h[i].ln_2, "in"
        elif name in ("llama", "mistral"):
            mod, take = ref.model.layers[i].post_attention_layernorm, "in"
        else:
            mod, take = mr._encoder_layers(ref)[i].attention.output.LayerNorm, "out"
        handles.append(mod.register_forward_hook(
            lambda _m, inp, out, i=i, take=take: real.__setitem__(i, (inp[0] if take == "in" else out)[0])))
    with torch.no_grad(), mr.llama_in_float64():
        ref(**mr._bert_inputs(ids)) if name == "bert_bare" else ref(torch.tensor([ids]))
    for h in handles:
        h.remove()
    for i in range(m.n_layers):
        layer = mixing._Layer(m.model.blocks[i], cap.get(block_site(i), "resid_pre"), cap.get(attn_site(i), "v"))
        t, bias = mixing.decompose(layer, cap.get(attn_site(i), "pattern").double(), 0)
        y = t.sum(1) + bias
        spec = m.config.layer(i).attn
        scale = n * float(t.abs().max()) + float(real[i].detach().abs().max())
        bound = (n + spec.n_heads * spec.d_head + m.config.d_model) * ULP64 * scale
        err = float((y - real[i].detach()).abs().max())
        assert err <= bound, (i, err, bound)


# --------------------------------------------------------------- Value Zeroing


@pytest.mark.parametrize("name", BERTS)
def test_value_zeroing_matches_the_authors_port(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    folder = _bert_folder(name, build)
    got = _saved(folder, "value-zeroing", tmp_path)["value_zeroing"]
    ids = _saved(folder, "alti", tmp_path, "--layer", "0")["token_ids"].tolist()
    want, _raw = mr.value_zeroing_bert(_reference(folder, torch.float64), ids)
    want32, _ = mr.value_zeroing_bert(_reference(folder, torch.float32), ids)
    eps_auth = (want32.double() - want).abs().amax(-1, keepdim=True).numpy()  # (L, n, 1): per row
    err = np.abs(got - want.numpy())
    assert (err <= 2 * eps_auth + U).all(), float((err - 2 * eps_auth - U).max())


@pytest.mark.slow
def test_value_zeroing_resolves_the_cls_rows() -> None:
    """all-MiniLM-L6-v2's [CLS] rows in layers 0-2 move by cosine distances down to a few
    1e-9, where float32's 1 − cos is all rounding (its quantum near 1 is 6e-8): ours on a
    float64 model against the float64 port, each entry relative to itself. Bound: u
    relative (the float32 result) plus the port's own 1 − cos error, 4·2^-53 absolute on
    each raw distance, relative to the row's smallest, twice (entry and row sum). The
    same outputs' distances in float32 miss that bound, so the test can fail."""
    folder = _minilm()
    got, ids = _ours64(folder, "value-zeroing")
    want, raw = mr.value_zeroing_bert(_reference(folder, torch.float64), ids)
    cls_raw = raw[:3, 0]  # (3, n)
    assert float(cls_raw.min()) < 1e-7  # the rows this test is about
    bound = U + 2 * 4 * ULP64 / cls_raw.min(-1, keepdim=True).values  # (3, 1)
    rel = (got[:3, 0] - want[:3, 0]).abs() / want[:3, 0]
    assert (rel <= bound).all(), (float(rel.max()), bound.flatten().tolist())
    # float32's 1 − cos of outputs exact to float32 cannot resolve them
    ref = _reference(folder, torch.float64)
    layers = mr._encoder_layers(ref)
    with torch.no_grad():
        hidden = torch.stack(ref(**mr._bert_inputs(ids), output_hidden_states=True).hidden_states).squeeze(1)
        rows = []
        for t in range(len(ids)):
            handle = layers[0].attention.self.value.register_forward_hook(
                lambda _m, _i, v, t=t: v.index_fill(1, torch.tensor([t]), 0.0))
            try:
                out = layers[0](hidden[0].unsqueeze(0), attention_mask=None)
            finally:
                handle.remove()
            out = (out[0] if isinstance(out, tuple) else out).squeeze(0)
            rows.append(mr._cosine_distances_diagonal(out[:1].float(), hidden[1][:1].float()).double())
    naive = torch.cat(rows)
    naive_rel = ((naive - cls_raw[0]).abs() / cls_raw[0]).max()
    assert naive_rel > bound[0, 0], float(naive_rel)


def _causal_parts(name: str, ref: Any) -> tuple[Any, Any]:
    if name == "gpt2":
        return ref.transformer.h, mr.zero_gpt2_value
    return ref.model.layers, mr.zero_llama_value


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral"])  # mistral: a window of 4, shorter than the text
def test_value_zeroing_equals_a_direct_recomputation(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    """Causal families: the whole transformers model re-run in float64 with token j's
    value rows zeroed at layer l, block l's output compared (1 − cos, float64; Llama's
    softmax and RMSNorm taken in float64 too, `mr.llama_in_float64`). Ours on a
    float64 model within u plus the port's 1 − cos error over each row's sum (rows i < j,
    unchanged, are exactly 0 in ours and 1 − cos of two equal vectors there); ours as the
    CLI runs it (float32) within 2·ε_auth + u."""
    folder = build(name)
    got64, ids = _ours64(folder, "value-zeroing")
    ref = _reference(folder, torch.float64)
    with mr.llama_in_float64():
        want, raw = mr.value_zeroing_direct(ref, ids, *_causal_parts(name, ref))
    n = len(ids)
    bound = U + n * 4 * ULP64 / raw.sum(-1, keepdim=True)
    assert ((got64 - want).abs() <= bound).all(), float((got64 - want).abs().max())
    got32 = _saved(folder, "value-zeroing", tmp_path)["value_zeroing"]
    ref32 = _reference(folder, torch.float32)
    with mr.llama_in_float64():  # in float32 it changes nothing: the dtype stays
        want32, _ = mr.value_zeroing_direct(ref32, ids, *_causal_parts(name, ref32))
    eps_auth = (want32.double() - want).abs().amax(-1, keepdim=True).numpy()
    assert (np.abs(got32 - want.numpy()) <= 2 * eps_auth + U).all()


# ------------------------------------------------------------ shape of the results


@pytest.mark.parametrize("name", ["bert_bare", "gpt2"])
def test_rows_sum_to_one_and_nothing_is_negative(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    folder = build(name)
    alti = _saved(folder, "alti", tmp_path)
    vz = _saved(folder, "value-zeroing", tmp_path)
    n = len(alti["token_ids"])
    for key, arr in (("alti", alti["alti"]), ("alti_layer", alti["alti_layer"]), ("value_zeroing", vz["value_zeroing"])):
        assert arr.shape == (len(alti["layers"]), n, n), key
        assert arr.min() >= 0, key
        # n float32 terms summed in float64 after rounding each: within n·u of 1
        np.testing.assert_allclose(arr.astype(np.float64).sum(-1), 1.0, rtol=0, atol=n * U, err_msg=key)
        if name == "gpt2":  # causal: no token draws on a later one
            assert not np.triu(arr, 1).any(), key


def test_cosine_distance_has_no_cancellation() -> None:
    """Two float32 vectors 1e-5 apart in angle: 1 − cos ≈ 5e-11, far below float32's
    quantum of 6e-8 near 1. Ours, from those float32 inputs, against the same in exact
    rational arithmetic (fractions), to 1e-6 relative."""
    import math
    from fractions import Fraction

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, generator=gen)
    b = (a + 1e-5 * torch.randn(64, generator=gen) * a.norm() / 8).float()
    got = float(mixing.cosine_distance(a[None], b[None])[0])
    fa, fb = [Fraction(float(x)) for x in a], [Fraction(float(x)) for x in b]
    dot, na, nb = sum(x * y for x, y in zip(fa, fb)), sum(x * x for x in fa), sum(y * y for y in fb)
    cos2 = dot * dot / (na * nb)  # exact cos² (dot > 0 here)
    one_minus_cos = (1 - cos2) / (1 + Fraction(math.sqrt(cos2)))  # 1 − cos = (1 − cos²)/(1 + cos)
    want = float(one_minus_cos)
    assert want < 1e-8
    assert abs(got - want) <= 1e-6 * want, (got, want)
    naive = float(1 - torch.nn.functional.cosine_similarity(a[None], b[None])[0])
    assert abs(naive - want) > 1e-6 * want  # float32's own 1 − cos misses it


# ------------------------------------------------------------------- the CLI around


def test_heads_refuses_the_per_layer_measures_in_one_line(build: Callable[[str], Path]) -> None:
    for measure in ("alti", "value-zeroing"):
        r = run("heads", "--model", build("bert_bare"), "--measure", measure)
        assert r.exit_code != 0
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "per layer, not per head" in lines[0], r.stderr
        assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("view", ["focus", "topk", "heatmap", "overview"])
@pytest.mark.parametrize("measure", ["alti", "value-zeroing"])
def test_every_view_and_json_run_under_the_mixing_measures(view: str, measure: str, build: Callable[[str], Path]) -> None:
    folder = build("gpt2")
    r = _ok(run("attend", TEXT, "--model", folder, "--measure", measure, "--view", view, "--device", "cpu"))
    assert "measure: " in r.stdout
    _ok(run("attend", TEXT, "--model", folder, "--measure", measure, "--view", view, "--json", "--device", "cpu"))


def test_page_and_figure_under_alti(build: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    page, fig = tmp_path / "p.html", tmp_path / "f.png"
    _ok(run("attend", TEXT, "--model", build("bert_bare"), "--measure", "alti", "--html", page, "--plot", fig,
            "--device", "cpu"))
    assert page.stat().st_size > 0 and fig.stat().st_size > 0
    assert "alti: one matrix per layer" in page.read_text(encoding="utf-8")


def test_safetensors_save_holds_both_alti_arrays(build: Callable[[str], Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "a.safetensors"
    _ok(run("attend", TEXT, "--model", build("bert_bare"), "--measure", "alti", "--save", out, "--device", "cpu"))
    npz = _saved(build("bert_bare"), "alti", tmp_path)
    st = load_file(str(out))
    for key in ("alti", "alti_layer"):
        np.testing.assert_array_equal(st[key], npz[key])


def test_dry_run_counts_the_n_squared_matrices(build: Callable[[str], Path]) -> None:
    import json

    def kept(measure: str, text: str) -> int:
        r = _ok(run("attend", text, "--model", build("gpt2"), "--measure", measure, "--dry-run", "--json"))
        return json.loads(r.stdout)["kept_results_bytes"]

    short, long = "the cat " * 4, "the cat " * 12  # under the tiny model's 64 positions
    for measure in ("alti", "value-zeroing"):
        grown = kept(measure, long) - kept(measure, short)
        weight = kept("weight", long) - kept("weight", short)
        assert grown - weight >= 8 * (24 ** 2 - 8 ** 2), (measure, grown)  # at least one float64 n × n, n ≥ 24


def test_a_text_too_long_for_memory_is_refused_before_the_pass(build: Callable[[str], Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import attnscope.api

    monkeypatch.setattr(attnscope.api, "available_memory", lambda: 4096)
    called: list[int] = []
    original = attnscope.api.Inspector.run
    monkeypatch.setattr(attnscope.api.Inspector, "run", lambda *a, **k: called.append(1) or original(*a, **k))
    out = tmp_path / "x.npz"
    for measure in ("alti", "value-zeroing"):
        r = run("attend", TEXT, "--model", build("gpt2"), "--measure", measure, "--save", out, "--device", "cpu")
        assert r.exit_code != 0
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "memory available" in lines[0], r.stderr
    assert not called and not out.exists()


def test_explore_offers_the_mixing_measures() -> None:
    from attnscope.explore.session import MEASURES

    assert {"alti", "value-zeroing"} <= set(MEASURES)


def test_explore_shows_the_mixing_measures_as_attend_does(build: Callable[[str], Path], inspector: Any) -> None:
    """`M` steps to alti, then value-zeroing, each view equal to attend --json's; `m` goes
    back to the quick cycle (weight, norm, rollout)."""
    pytest.importorskip("textual")
    from test_explore import check_against_attend, drive, header, make_app, settle

    folder, model = build("llama"), inspector("llama")
    app = make_app(model)

    async def script(app: Any, pilot: Any) -> None:
        for measure in ("alti", "value-zeroing"):
            await pilot.press("M")
            await settle(app, pilot)
            assert app.measure == measure and header(app) == (model.n_layers - 1, None)
            check_against_attend(app, folder)
        await pilot.press("m")
        await settle(app, pilot)
        assert app.measure == "weight"

    drive(app, script)


def test_a_layer_the_measures_cannot_read_is_refused_before_the_pass(build: Callable[[str], Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A wiring ALTI has no decomposition for, or an attention that is not softmax over
    per-head values: one UsageError naming the layer, before any hook sees a value."""
    import dataclasses

    from attnscope.api import load
    from attnscope.errors import UsageError
    from attnscope.measures import AttendRequest, run_attend

    m = load(str(build("gpt2")), device="cpu", dtype="float32")
    tokens = m.tokenize(TEXT)
    monkeypatch.setattr(m.model.blocks[1], "wiring", "unknown")
    with pytest.raises(UsageError, match="no decomposition for layer 1's unknown wiring"):
        run_attend(m, tokens, AttendRequest([1], [0], ["attention"], measure="alti"))
    monkeypatch.setattr(m.model.blocks[0].attn, "spec", dataclasses.replace(m.model.blocks[0].attn.spec, kind="linear"))
    monkeypatch.setattr(m, "run", lambda *a, **k: pytest.fail("the pass ran"))
    with pytest.raises(UsageError, match="layer 0 is linear"):
        run_attend(m, tokens, AttendRequest([1], [0], ["attention"], measure="value-zeroing"))
