"""Measures beyond the weight: value-weighted norms and attention rollout, against
references computed here from transformers, never from attnscope's own output.

* norm (Kobayashi et al., "Attention is Not Only a Weight", EMNLP 2020): for layer l,
  head h, query i and key j, ‖α_hij f_h(x_j)‖₂ with f_h(x) = (x W_V^h + b_V^h) W_O^h, x
  the input the attention module reads, W_O^h the output projection's columns fed by
  head h (no output bias), the key/value head serving h under GQA/MQA. The reference is
  the transformers model in float64: a forward pre-hook on each attention module keeps
  x, v and f are computed here from that model's own weights (GPT-2's fused, transposed
  Conv1D `c_attn`; GPT-NeoX's fused `query_key_value`, interleaved per head as
  [h0 q k v, h1 q k v, ...]), and α is its `output_attentions`.
* rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  Ā_l = 0.5 · mean_h A_l + 0.5 · I, rows renormalised; R_0 = Ā_0, R_l = Ā_l R_{l−1}, from
  the reference's float64 attentions.

Tolerances: attnscope runs in float32 against a float64 reference whose softmax is
itself float32, so each entry differs by a few float32 ulps of the row's largest term;
1e-5 relative to the largest value leaves an order of magnitude over that.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models as tm
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from attnscope.cli import app

RTOL = 1e-5  # relative to the largest value compared (see the module docstring)
ATOL = 1e-5  # for quantities bounded by 1 (rollout, row-normalised norms)
TEXT = tm.SHORT_TEXT  # 9-10 tokens: beyond Mistral's and Gemma 2's window of 4
ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80", "LINES": "24", "NO_COLOR": "1",
    "ATTNSCOPE_DEBUG": None, "ATTNSCOPE_MODEL": None, "FORCE_COLOR": None,
}

CORE = ["gpt2", "bert", "llama", "mistral", "qwen2", "llama_mqa"]
FAMILIES = ["gpt_neox", "opt", "opt_post_ln", "phi", "gemma", "gemma2", "qwen3"]


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV, terminal_width=80)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout[-2000:], result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def folder(build: Callable[[str], Path], family_build: Callable[[str], Path]) -> Callable[[str], Path]:
    """`folder(name)`: a tiny checkpoint from either builder table."""
    return lambda name: build(name) if name in tm.BUILDERS else family_build(name)


# ------------------------------------------------------------------ the reference


@dataclass
class AttnParts:
    """Where one layer's attention reads its input, and its value and output weights."""

    module: nn.Module  # its forward's first argument is x
    value: Callable[[Tensor], Tensor]  # x (n, d) -> v (H_kv, n, dh), bias included
    out: Tensor  # (H, dh, d): W_O^h, output bias left out


def _linear_value(lin: nn.Linear, n_kv: int) -> Callable[[Tensor], Tensor]:
    def value(x: Tensor) -> Tensor:
        v = x @ lin.weight.T  # (n, H_kv * dh)
        if lin.bias is not None:
            v = v + lin.bias
        return v.view(x.shape[0], n_kv, -1).transpose(0, 1)  # (H_kv, n, dh)

    return value


def _linear_out(lin: nn.Linear, n_heads: int) -> Tensor:
    # y = z W^T: input column h*dh + e is fed by head h's dimension e
    return lin.weight.T.reshape(n_heads, -1, lin.weight.shape[0])  # (H*dh, d) -> (H, dh, d)


def attention_parts(model: Any, layer: int) -> AttnParts:
    """The attention of `layer` in a transformers model, per family, from its own weights."""
    cfg = model.config
    kind = cfg.model_type
    H = cfg.num_attention_heads
    base = model.base_model
    if kind == "gpt2":
        attn = base.h[layer].attn
        d = cfg.hidden_size
        # Conv1D stores (in, out): y = x W + b; columns [2d, 3d) are the values, head-major
        w, b = attn.c_attn.weight[:, 2 * d:], attn.c_attn.bias[2 * d:]  # (d, H*dh), (H*dh,)
        value = lambda x: (x @ w + b).view(x.shape[0], H, -1).transpose(0, 1)  # (H, n, dh)
        out = attn.c_proj.weight.reshape(H, -1, d)  # Conv1D (H*dh, d) -> (H, dh, d)
        return AttnParts(attn, value, out)
    if kind == "bert":
        att = base.encoder.layer[layer].attention
        return AttnParts(att.self, _linear_value(att.self.value, H), _linear_out(att.output.dense, H))
    if kind == "gpt_neox":
        attn = base.layers[layer].attention
        d = cfg.hidden_size
        # rows interleaved per head: [h0 q, h0 k, h0 v, h1 q, ...], each dh rows
        w = attn.query_key_value.weight.view(H, 3, -1, d)[:, 2]  # (H, dh, d)
        b = attn.query_key_value.bias.view(H, 3, -1)[:, 2]  # (H, dh)
        value = lambda x: torch.einsum("nd,hed->hne", x, w) + b[:, None, :]  # (H, n, dh)
        return AttnParts(attn, value, _linear_out(attn.dense, H))
    if kind == "opt":
        attn = base.decoder.layers[layer].self_attn
        return AttnParts(attn, _linear_value(attn.v_proj, H), _linear_out(attn.out_proj, H))
    attn = base.layers[layer].self_attn
    n_kv = getattr(cfg, "num_key_value_heads", None) or H
    o = attn.dense if kind == "phi" else attn.o_proj
    return AttnParts(attn, _linear_value(attn.v_proj, n_kv), _linear_out(o, H))


_REFERENCES: dict[str, Any] = {}


def reference64(folder: Path) -> Any:
    """Our own float64 copy of the transformers model (the shared fixture stays float32)."""
    key = str(folder)
    if key not in _REFERENCES:
        _REFERENCES[key] = tm.load_reference(folder).double()
    return _REFERENCES[key]


@torch.no_grad()
def reference_measures(folder: Path, ids: list[int]) -> tuple[Tensor, Tensor]:
    """(α, norms), both (L, H, n, n) float64: the reference's attention and
    α_hij ‖f_h(x_j)‖₂ computed from the input each attention module received."""
    model = reference64(folder)
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    parts = [attention_parts(model, layer) for layer in range(L)]
    seen: dict[int, Tensor] = {}

    def grab(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            seen[layer] = x[0]  # (n, d)

        return hook

    handles = [p.module.register_forward_pre_hook(grab(layer), with_kwargs=True) for layer, p in enumerate(parts)]
    try:
        x = torch.tensor([ids])  # (1, n)
        kwargs: dict[str, Any] = {}
        if cfg.model_type == "bert":
            kwargs = {"token_type_ids": torch.zeros_like(x), "attention_mask": torch.ones_like(x)}
        result = model(x, output_attentions=True, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    alpha = torch.stack([a[0] for a in result.attentions]).double()  # (L, H, n, n)
    norms = torch.empty_like(alpha)
    for layer, p in enumerate(parts):
        v = p.value(seen[layer])  # (H_kv, n, dh)
        v = v.repeat_interleave(H // v.shape[0], dim=0)  # query head h reads key/value head h // group
        f = torch.einsum("hne,hed->hnd", v, p.out)  # (H, n, d): f_h(x_j)
        norms[layer] = alpha[layer] * f.norm(dim=-1)[:, None, :]  # (H, n, n)
    return alpha, norms


def reference_rollout(alpha: Tensor) -> Tensor:
    """(L, n, n): R_l = Ā_l R_{l−1} with Ā = rows of (0.5 mean_h A + 0.5 I) renormalised."""
    n = alpha.shape[-1]
    eye = torch.eye(n, dtype=alpha.dtype)
    out, rolled = [], None
    for A in alpha:
        mixed = 0.5 * A.mean(0) + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rolled = mixed if rolled is None else mixed @ rolled
        out.append(rolled)
    return torch.stack(out)


def row_normalised(norms: Tensor) -> Tensor:
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-300)


def text_ids(folder: Path, text: str = TEXT) -> list[int]:
    return list(tm.plain_tokenizer(folder).encode(text).ids)


def saved(path: Path, name: str) -> tuple[np.ndarray, list[int]]:
    with np.load(path) as f:
        assert f[name].dtype == np.float32
        return f[name], f["token_ids"].tolist()


def assert_close_to_largest(got: np.ndarray, want: Tensor, what: str) -> None:
    want_np = want.numpy()
    assert got.shape == want_np.shape, (what, got.shape, want_np.shape)
    scale = float(np.abs(want_np).max())
    err = float(np.abs(got - want_np).max())
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} vs largest value {scale:.3g}"


# -------------------------------------------------------------- norms and rollout


@pytest.mark.parametrize("name", CORE + FAMILIES)
def test_norms_match_transformers(name: str, folder: Callable[[str], Path], tmp_path: Path) -> None:
    path = folder(name)
    out = tmp_path / "norms.npz"
    result = ok(run("attend", TEXT, "--model", path, "--measure", "norm", "--save", out, "--json", "--device", "cpu"))
    got, ids = saved(out, "norms")
    assert ids == text_ids(path)
    alpha, want = reference_measures(path, ids)
    assert_close_to_largest(got, want, f"{name} norms")
    assert (got >= 0).all()

    # The views see each row of the last layer normalised to sum 1.
    doc = json.loads(result.stdout)
    assert doc["measure"] == "norm"
    shown = row_normalised(want[-1])  # (H, n, n)
    for block in doc["topk"]:
        assert block["layer"] == alpha.shape[0] - 1
        for row in block["rows"]:
            keys = [t["key"] for t in row["top"]]
            weights = torch.tensor([t["weight"] for t in row["top"]], dtype=torch.float64)
            ref_row = shown[block["head"], row["query"]]
            torch.testing.assert_close(weights, ref_row[keys], rtol=0, atol=ATOL)
            assert float(weights[-1]) >= float(ref_row.topk(len(keys)).values[-1]) - ATOL


@pytest.mark.parametrize("name", CORE + FAMILIES)
def test_rollout_matches_transformers(name: str, folder: Callable[[str], Path], tmp_path: Path) -> None:
    path = folder(name)
    out = tmp_path / "rollout.npz"
    ok(run("attend", TEXT, "--model", path, "--measure", "rollout", "--save", out, "--device", "cpu"))
    got, ids = saved(out, "rollout")
    assert ids == text_ids(path)
    alpha, _ = reference_measures(path, ids)
    want = reference_rollout(alpha)
    assert got.shape == tuple(want.shape)  # (L, n, n): no head axis
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=0, atol=ATOL)  # rows stay distributions
    assert (got >= 0).all()
    if name != "bert":  # causal: no flow from a later token, exactly
        assert (np.triu(got, 1) == 0).all()
    else:
        assert (np.triu(got, 1) > 0).any()


@pytest.mark.parametrize("layer", [0, 1])
def test_rollout_of_one_layer_still_rolls_through_the_earlier_ones(
    layer: int, build: Callable[[str], Path], tmp_path: Path
) -> None:
    """`--layer 1` saves R_1 = Ā_1 Ā_0, not Ā_1 alone; `--layer 0` saves R_0 = Ā_0."""
    path = build("llama")
    out = tmp_path / "rollout.npz"
    ok(run("attend", TEXT, "--model", path, "--measure", "rollout", "--layer", layer, "--save", out,
           "--device", "cpu"))
    got, ids = saved(out, "rollout")
    alpha, _ = reference_measures(path, ids)
    np.testing.assert_allclose(got, reference_rollout(alpha)[layer:layer + 1].numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["bert", "mistral"])
def test_measures_under_small_query_chunks(name: str, build: Callable[[str], Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two query rows per attention chunk (causal chunks then carry only the keys up to
    their last query, sliding-window ones are masked by the rule): the same values."""
    from attnscope import parts

    monkeypatch.setattr(parts, "CHUNK_BYTES", 1)
    monkeypatch.setattr(parts, "MIN_CHUNK_ROWS", 2)
    path = build(name)
    norms_file, rollout_file = tmp_path / "norms.npz", tmp_path / "rollout.npz"
    ok(run("attend", TEXT, "--model", path, "--measure", "norm", "--save", norms_file, "--device", "cpu"))
    ok(run("attend", TEXT, "--model", path, "--measure", "rollout", "--save", rollout_file, "--device", "cpu"))
    norms, ids = saved(norms_file, "norms")
    alpha, want = reference_measures(path, ids)
    assert len(ids) > 4  # several chunks
    assert_close_to_largest(norms, want, f"{name} chunked norms")
    rollout, _ = saved(rollout_file, "rollout")
    np.testing.assert_allclose(rollout, reference_rollout(alpha).numpy(), rtol=0, atol=ATOL)


# ------------------------------------------------------------ hand-checked cases


def _zero_value_head(src: Path, dst: Path, name: str) -> list[int]:
    """Copy `src` with one key/value head's value weights (and bias) set to 0; returns
    the query heads that head serves."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    config = json.loads((dst / "config.json").read_text())
    if name == "gpt2":
        d = config["n_embd"]
        dh = d // config["n_head"]
        head = 1
        cols = slice(2 * d + head * dh, 2 * d + (head + 1) * dh)
        w = next(k for k in tensors if k.endswith("h.0.attn.c_attn.weight"))
        tensors[w][:, cols] = 0.0  # Conv1D: (in, out)
        tensors[w.replace("weight", "bias")][cols] = 0.0
        served = [head]
    else:  # llama: 4 query heads on 2 key/value heads, no biases
        dh = config["hidden_size"] // config["num_attention_heads"]
        kv = 1
        w = next(k for k in tensors if k.endswith("layers.0.self_attn.v_proj.weight"))
        tensors[w][kv * dh:(kv + 1) * dh] = 0.0
        group = config["num_attention_heads"] // config["num_key_value_heads"]
        served = list(range(kv * group, (kv + 1) * group))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return served


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_head_with_zero_values_has_zero_norm(name: str, build: Callable[[str], Path], tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    served = _zero_value_head(build(name), path, name)
    out = tmp_path / "norms.npz"
    result = ok(run("attend", TEXT, "--model", path, "--measure", "norm", "--layer", "0", "--save", out,
                    "--json", "--device", "cpu"))
    got, ids = saved(out, "norms")
    alpha, want = reference_measures(path, ids)
    assert (alpha[0, served] > 0.01).any()  # the head does attend ...
    assert (got[0, served] == 0).all()  # ... yet moves nothing
    others = [h for h in range(got.shape[1]) if h not in served]
    assert (got[0, others] > 0).any()
    assert_close_to_largest(got, want[:1], f"{name} with zero values")
    # the views' normalised rows of an all-zero head stay 0, never NaN
    for block in json.loads(result.stdout)["topk"]:
        weights = [t["weight"] for row in block["rows"] for t in row["top"]]
        assert all(math.isfinite(w) for w in weights)
        if block["head"] in served:
            assert all(w == 0 for w in weights)


def test_identity_attention_gives_identity_rollout(build: Callable[[str], Path], tmp_path: Path) -> None:
    """Mistral with a sliding window of 1: each query sees only itself, so every head's
    pattern is exactly I, Ā = I and R = I; each norm row keeps only ‖f_h(x_i)‖ at i."""
    path = Path(shutil.copytree(build("mistral"), tmp_path / "ckpt"))
    tm.rewrite_config(path, lambda raw: raw.update(sliding_window=1))
    out = tmp_path / "rollout.npz"
    ok(run("attend", TEXT, "--model", path, "--measure", "rollout", "--save", out, "--device", "cpu"))
    got, ids = saved(out, "rollout")
    n = len(ids)
    alpha, want_norms = reference_measures(path, ids)
    assert torch.equal(alpha, torch.eye(n, dtype=alpha.dtype).expand_as(alpha))  # the reference agrees it is I
    np.testing.assert_array_equal(got, np.broadcast_to(np.eye(n, dtype=np.float32), got.shape))

    out = tmp_path / "norms.npz"
    ok(run("attend", TEXT, "--model", path, "--measure", "norm", "--save", out, "--device", "cpu"))
    norms, _ = saved(out, "norms")
    assert (norms * (1 - np.eye(n, dtype=np.float32)) == 0).all()
    assert_close_to_largest(norms, want_norms, "identity norms")


# ---------------------------------------------------------------- other commands


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_heads_first_token_under_norm(name: str, build: Callable[[str], Path]) -> None:
    path = build(name)
    result = ok(run("heads", TEXT, "--model", path, "--measure", "norm", "--score", "first_token", "--json",
                    "--device", "cpu"))
    doc = json.loads(result.stdout)
    assert doc["measure"] == "norm"
    ids = doc["text"]["ids"]
    assert ids == text_ids(path)
    _, norms = reference_measures(path, ids)
    want = row_normalised(norms)[:, :, 1:, 0].mean(-1)  # (L, H): mean over i >= 1 of key 0
    got = torch.tensor(doc["scores"]["first_token"], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def test_heads_rejects_rollout(build: Callable[[str], Path]) -> None:
    result = run("heads", TEXT, "--model", build("gpt2"), "--measure", "rollout", "--device", "cpu")
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "rollout" in lines[0] and "internal error" not in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_generate_top_keys_under_norm(name: str, build: Callable[[str], Path]) -> None:
    """Each step's top keys are the producing query's row of row-normalised norms,
    averaged over the last layer's heads (Mistral: the window-4 cache drops old keys)."""
    path = build(name)
    result = ok(run("generate", TEXT, "--model", path, "--measure", "norm", "-n", "4", "--ignore-eos",
                    "--json", "--device", "cpu"))
    doc = json.loads(result.stdout)
    assert doc["measure"] == "norm"
    prompt, new = doc["prompt_token_ids"], doc["token_ids"]
    assert prompt == text_ids(path)
    _, norms = reference_measures(path, prompt + new)
    rows = row_normalised(norms[-1]).mean(0)  # (n, n): last layer, mean over heads
    for t, step in enumerate(doc["steps"]):
        query = len(prompt) + t - 1  # the position whose output chose this token
        keys = [k[0] for k in step["top_keys"]]
        weights = torch.tensor([k[2] for k in step["top_keys"]], dtype=torch.float64)
        torch.testing.assert_close(weights, rows[query, keys], rtol=0, atol=ATOL)
        top = rows[query].topk(len(keys)).values
        torch.testing.assert_close(weights, top, rtol=0, atol=ATOL)


@pytest.mark.parametrize("view", ["focus", "topk"])
def test_views_name_the_measure(view: str, build: Callable[[str], Path]) -> None:
    path = build("llama")
    for measure in ("norm", "rollout"):
        result = ok(run("attend", TEXT, "--model", path, "--view", view, "--measure", measure, "--device", "cpu"))
        lines = [line.strip() for line in result.stdout.splitlines()]
        assert any(re.match(r"measure: ", line) for line in lines), (measure, result.stdout)
    plain = ok(run("attend", TEXT, "--model", path, "--view", view, "--device", "cpu"))
    assert "measure:" not in plain.stdout
