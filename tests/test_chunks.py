"""Attention runs in query chunks, and a causal chunk carries only the keys up to its
last query. Every consumer must see the same patterns however the rows are chunked."""

from __future__ import annotations

import pytest
import torch

import attnscope.parts as model_module
from attnscope import analysis

TEXT = "a fluffy blue creature roamed the verdant forest and the fluffy creature slept"


def _everything(m):
    tokens = m.tokenize(TEXT)
    n = len(tokens)
    ls, hs = list(range(m.n_layers)), list(range(m.n_heads))
    full = analysis.FullPatterns(ls, hs, n)
    topk = analysis.TopKProbe(ls, hs, n, 5)
    summary = analysis.SummaryProbe(ls, hs, m.config, n)
    focus = analysis.FocusProbe(ls, hs, n, n // 2)
    layers_seen = {}
    stream = analysis.LayerStream(ls, hs, n, lambda layer, buf: layers_seen.__setitem__(layer, buf.clone()))
    m.run(tokens.ids, analysis.Probes(full, topk, summary, focus, stream))
    s = summary.result()
    return full.probs, topk.weights, topk.indices, s.entropy, s.first_token, focus.rows, torch.stack([layers_seen[i] for i in ls])


@pytest.mark.parametrize("name", ["gpt2", "bert", "mistral", "llama"])
@pytest.mark.parametrize("rows_per_chunk", [1, 3])
def test_chunking_changes_nothing(inspector, monkeypatch, name, rows_per_chunk):
    m = inspector(name)
    whole = _everything(m)
    H = m.config.n_heads
    n = len(m.tokenize(TEXT))
    monkeypatch.setattr(model_module, "CHUNK_BYTES", 4 * H * n * rows_per_chunk)
    monkeypatch.setattr(model_module, "MIN_CHUNK_ROWS", 1)
    chunked = _everything(m)
    for i, (a, b) in enumerate(zip(whole, chunked)):
        if i == 2:  # top-k indices: only where the weight is positive (zeros tie arbitrarily)
            nonzero = whole[1] > 0
            assert torch.equal(a[nonzero], b[nonzero])
            assert int(b.max()) < n and int(b.min()) >= 0
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # matmul shapes differ: float32 rounding only
    probs = whole[0]
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    if m.config.causal:  # above the diagonal: exactly zero
        assert torch.all(probs.triu(1) == 0)
    assert torch.equal(whole[-1], probs)  # the streamed layers are the full patterns
