"""Tiny random-weight mixtures of experts (issue 25): Mixtral, Qwen2-MoE and Qwen3-MoE,
built offline with tests/tiny_models.py's recipe (`_build`: eager attention, float32,
weights redrawn at std 0.25, saved by transformers itself with a trained tokenizer).

transformers saves experts one 2-D tensor per expert (the published layout); `fused`
rewrites a folder's safetensors into transformers 5's in-memory layout (3-D
`mlp.experts.gate_up_proj` / `down_proj`, router `mlp.gate`), so both layouts are read.

Settings chosen to show what a naive port gets wrong:
- 4 or 6 experts with top-2, so routing chooses and the weights matter;
- Qwen2-MoE: `norm_topk_prob` false (weights not renormalised), a shared expert wider
  than the routed ones with its sigmoid gate, `decoder_sparse_step` 2 and
  `mlp_only_layers` [3], so layers 0 and 2 are dense, 1 MoE, 3 dense again; q/k/v biases;
- Qwen3-MoE: `norm_topk_prob` true, per-head q/k RMSNorm, `mlp_only_layers` [0];
- Mixtral: a sliding window of 16, shorter than `MOE_TEXT` (90+ tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from tiny_models import SEED, SENTENCES, _build, _vocab_size, gpt2_tokenizer, mistral_tokenizer

MOE_TEXT = " ".join(SENTENCES)
MIXTRAL_WINDOW = 16


def mixtral(folder: Path, seed: int = SEED, window: int | None = MIXTRAL_WINDOW) -> Path:
    """Mixtral: width 32, 3 layers, 4 query heads of 8 on 2 key/value heads, 4 experts of
    width 24, top 2, window 16 (`window`; llama.cpp keeps none), untied."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = mistral_tokenizer()
    config = MixtralConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=3000.0,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=window, tie_word_embeddings=False,
        pad_token_id=tok.token_to_id("<unk>"), bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
    )
    return _build(config, MixtralForCausalLM, Path(folder), tok, seed)


def qwen2_moe(folder: Path, seed: int = SEED) -> Path:
    """Qwen2-MoE: width 32, 4 layers (MoE on layer 1 only: sparse step 2, layer 3 dense by
    `mlp_only_layers`), 4 heads of 8 on 2 key/value heads, q/k/v biases, 6 experts of
    width 16, top 2, not renormalised, a shared expert of width 40 behind its sigmoid gate,
    dense MLP width 48."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    tok = gpt2_tokenizer()
    config = Qwen2MoeConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        shared_expert_intermediate_size=40, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=5000.0, num_experts=6, num_experts_per_tok=2,
        norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[3], tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0,
    )
    return _build(config, Qwen2MoeForCausalLM, Path(folder), tok, seed)


def qwen3_moe(folder: Path, seed: int = SEED, mlp_only_layers: tuple[int, ...] = (0,)) -> Path:
    """Qwen3-MoE: width 32, 3 layers (layer 0 dense by `mlp_only_layers`; llama.cpp's
    qwen3moe has no dense layers, so its GGUF test passes none), 4 heads of 16 (head_dim ≠
    width / heads) on 2 key/value heads, per-head q/k RMSNorm, 4 experts of width 16,
    top 2, renormalised; dense MLP width 40; tied embeddings."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tok = gpt2_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=40, moe_intermediate_size=16,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=256, rope_theta=7000.0, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=list(mlp_only_layers), tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0,
    )
    return _build(config, Qwen3MoeForCausalLM, Path(folder), tok, seed)


def fused(folder: Path, out: Path) -> Path:
    """A copy of a tiny MoE folder whose experts are stored as transformers 5 holds them:
    per layer `mlp.gate.weight` (the router), `mlp.experts.gate_up_proj` [E, 2w, d] (gate
    rows first) and `mlp.experts.down_proj` [E, d, w], from the per-expert tensors."""
    import re
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    names = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
    pieces: dict[tuple[str, str], dict[int, Any]] = {}
    kept: dict[str, Any] = {}
    for name, t in tensors.items():
        m = re.fullmatch(r"(model\.layers\.\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight", name)
        if m:
            pieces.setdefault((m.group(1), names[m.group(3)]), {})[int(m.group(2))] = t
            continue
        m = re.fullmatch(r"(model\.layers\.\d+)\.(?:block_sparse_moe|mlp)\.gate\.weight", name)
        kept[f"{m.group(1)}.mlp.gate.weight" if m else name] = t
    for layer in sorted({layer for layer, _ in pieces}):
        stack = {part: torch.stack([pieces[(layer, part)][e] for e in sorted(pieces[(layer, part)])])
                 for part in ("gate", "up", "down")}
        kept[f"{layer}.mlp.experts.gate_up_proj"] = torch.cat([stack["gate"], stack["up"]], dim=1).contiguous()
        kept[f"{layer}.mlp.experts.down_proj"] = stack["down"].contiguous()
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


MOE_BUILDERS: dict[str, Callable[..., Path]] = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe}


def experts_of(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


# --------------------------------------------------------------------------- GGUF


def gguf_file(path: Path, model: Any, arch: str) -> Path:
    """A GGUF of a tiny MoE model (transformers, in memory) as llama.cpp's converter writes
    it: `arch` "llama" for Mixtral (q/k permuted, `expert_count`/`expert_used_count`),
    "qwen3moe" for Qwen3-MoE (also `expert_feed_forward_length`); the router as
    `ffn_gate_inp`, the experts merged into `ffn_{gate,up,down}_exps` ([E, out, in] in
    torch order), everything F32 so the weights are exactly the checkpoint's. A byte-level
    vocabulary of the model's size (the tests feed token ids)."""
    import gguf
    import torch

    import tiny_gguf as tg

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    tensors: list[tuple[str, Any]] = []
    for name, t in model.state_dict().items():
        t = t.detach().float().clone()
        if name.startswith("lm_head.") and cfg.tie_word_embeddings:
            continue
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if name.endswith("mlp.experts.gate_up_proj"):
            w = t.shape[1] // 2
            tensors += [(f"blk.{layer}.ffn_gate_exps.weight", t[:, :w]), (f"blk.{layer}.ffn_up_exps.weight", t[:, w:])]
            continue
        if name.endswith("mlp.experts.down_proj"):
            tensors.append((f"blk.{layer}.ffn_down_exps.weight", t))
            continue
        if name.endswith("mlp.gate.weight"):
            tensors.append((f"blk.{layer}.ffn_gate_inp.weight", t))
            continue
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = tg.permute(t, cfg.num_attention_heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            t = tg.permute(t, cfg.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, f"no GGUF name for {name}"  # internal invariant
        tensors.append((gguf_name, t.contiguous()))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    vocab = tg.byte_level_vocab(gpt2_tokenizer(cfg.vocab_size), "gpt-2", ["<|endoftext|>"], None, "<|endoftext|>",
                                add_bos=False).pad(cfg.vocab_size)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_expert_count(getattr(cfg, "num_local_experts", None) or cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch == "qwen3moe":
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    for name, t in tensors:
        w.add_tensor(name, t.to(torch.float32).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
