"""Offloading (one block's weights resident at a time) gives the same patterns as a
model held whole, and the same as transformers."""

from __future__ import annotations

import pytest
import torch

from attnscope.api import load

TEXT = "a fluffy blue creature roamed the verdant forest"


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "mistral", "qwen2"])
def test_offloaded_patterns_equal_resident_and_reference(build, reference, name):
    folder = build(name)
    whole = load(str(folder), device="cpu", dtype="float32", offload=False)
    streamed = load(str(folder), device="cpu", dtype="float32", offload=True)
    assert streamed.model.block_source is not None
    # the blocks are not resident between runs: only the embeddings are loaded
    assert all(p.is_meta for p in streamed.model.blocks.parameters())
    ours = streamed.attention(TEXT)
    assert torch.equal(ours.probs, whole.attention(TEXT).probs)
    ref = reference(name)
    with torch.no_grad():
        out = ref(torch.tensor([ours.tokens.ids]), output_attentions=True)
    for layer in range(len(out.attentions)):
        torch.testing.assert_close(ours.probs[layer], out.attentions[layer][0], atol=1e-5, rtol=0)
    assert all(p.is_meta for p in streamed.model.blocks.parameters())


def test_offload_is_chosen_when_weights_do_not_fit(build, monkeypatch):
    import attnscope.api as api

    monkeypatch.setattr(api, "available_memory", lambda: 1024)  # 1 KiB free: nothing fits
    m = load(str(build("gpt2")), device="cpu", dtype="float32")
    assert m.model.block_source is not None
    monkeypatch.setattr(api, "available_memory", lambda: 1 << 40)
    assert load(str(build("gpt2")), device="cpu", dtype="float32").model.block_source is None
