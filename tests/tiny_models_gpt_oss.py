"""A tiny random-weight gpt-oss (issue 25), built offline with tests/tiny_models.py's
recipe (`_build`: eager attention, float32, weights redrawn at std 0.25, saved by
transformers itself with a trained tokenizer).

Settings chosen to show what a naive port gets wrong:
- sinks redrawn at std 2.5, so each head's sink takes a visible share of every row;
- `layer_types` sliding, full, full, sliding (not the default alternation), with a window
  of 12, shorter than `GPT_OSS_TEXT` (90+ tokens);
- YaRN with factor 4 over 32 original positions (128 in all, `truncate` false), a base of 5000;
- 4 experts as wide as the model (32, as gpt-oss-20b's 2,880 are: the transposed
  layouts must be read by name, shapes cannot tell them apart), top 2 over biased router
  logits; expert biases nonzero (every bias is redrawn); `swiglu_limit` 1.5, below the
  gate and up values' spread, so the clamp acts on many of them;
- for GGUF (`gpt_oss_gguf`): the same model with llama.cpp's own layer pattern, its
  experts quantized to MXFP4 by gguf-py, and a safetensors copy holding exactly the
  values those blocks decode to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny_models import SEED, SENTENCES, _build, _vocab_size, gpt2_tokenizer

GPT_OSS_TEXT = " ".join(SENTENCES)
GPT_OSS_WINDOW = 12
GPT_OSS_LAYER_TYPES = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]
GGUF_LAYER_TYPES = ["sliding_attention", "full_attention"] * 2  # what llama.cpp assumes for gpt-oss
GPT_OSS_LIMIT = 1.5
GPT_OSS_ROPE = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 32}
SINK_STD = 2.5


def gpt_oss(folder: Path, seed: int = SEED, layer_types: list[str] | None = None) -> Path:
    """gpt-oss: width 32, 4 layers, 4 query heads of 16 (head_dim ≠ width / heads) on 2
    key/value heads, q/k/v/o biases, sinks, 4 experts of width 32 (every row one whole MXFP4
    block of 32), top 2, untied. `layer_types` default: GPT_OSS_LAYER_TYPES (GGUF_LAYER_TYPES for a GGUF, which
    records none: llama.cpp slides on the even layers)."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    tok = gpt2_tokenizer()
    config = GptOssConfig(
        vocab_size=_vocab_size(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=GPT_OSS_WINDOW,
        layer_types=list(layer_types or GPT_OSS_LAYER_TYPES),
        rope_parameters=dict(GPT_OSS_ROPE), swiglu_limit=GPT_OSS_LIMIT, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    folder = _build(config, GptOssForCausalLM, Path(folder), tok, seed)
    # sinks of a few units: rows then sum visibly below 1 (reinit drew them at std 0.25)
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed + 1)
    for name in sorted(tensors):
        if name.endswith(".self_attn.sinks"):
            tensors[name] = torch.randn(tensors[name].shape, generator=gen) * SINK_STD
    save_file(tensors, str(path), metadata={"format": "pt"})
    return folder


def gpt_oss_gguf(folder: Path, path: Path, out: Path, experts: str = "MXFP4") -> tuple[Path, Path]:
    """The checkpoint in `folder` as llama.cpp's GptOssModel converter writes it (arch
    "gpt-oss", byte-level vocabulary), its expert matrices quantized to `experts` by
    gguf-py (other matrices F32), at `path`; and at `out`, a copy of the folder whose
    expert tensors hold exactly the values those blocks decode to (gguf-py's dequantize),
    in transformers' layout: the same weights from safetensors."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    import tiny_gguf as tgg

    raw = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    qtype = gguf.GGMLQuantizationType[experts]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT_OSS, raw["num_hidden_layers"])
    written: list[tuple[str, torch.Tensor, Any]] = []  # (GGUF name, float32 tensor, type)
    copy = dict(tensors)

    def quantized(t: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        q = gguf.quants.quantize(t.float().contiguous().numpy(), qtype)
        return q, torch.from_numpy(np.asarray(gguf.quants.dequantize(q, qtype), dtype=np.float32).reshape(t.shape))

    for name in sorted(tensors):
        t = tensors[name].float()
        stem = name[len("model."):] if name.startswith("model.") else name
        layer = stem.split(".")[1] if stem.startswith("layers.") else None
        if stem.endswith("mlp.experts.gate_up_proj"):  # (E, d, 2w) interleaved -> gate, up (E, w, d)
            both = t.transpose(-1, -2)  # (E, 2w, d)
            parts = {}
            for part, rows in (("gate", both[:, ::2]), ("up", both[:, 1::2])):
                q, back = quantized(rows)
                written.append((f"blk.{layer}.ffn_{part}_exps.weight", q, qtype))
                parts[part] = back
            fused = torch.stack([parts["gate"], parts["up"]], dim=2).reshape(both.shape)  # rows re-interleaved
            copy[name] = fused.transpose(-1, -2).contiguous()
        elif stem.endswith("mlp.experts.down_proj"):  # (E, w, d) -> (E, d, w)
            q, back = quantized(t.transpose(-1, -2))
            written.append((f"blk.{layer}.ffn_down_exps.weight", q, qtype))
            copy[name] = back.transpose(-1, -2).contiguous()
        elif stem.endswith("mlp.experts.gate_up_proj_bias"):
            written.append((f"blk.{layer}.ffn_gate_exps.bias", t[..., ::2].contiguous().numpy(), None))
            written.append((f"blk.{layer}.ffn_up_exps.bias", t[..., 1::2].contiguous().numpy(), None))
        elif stem.endswith("mlp.experts.down_proj_bias"):
            written.append((f"blk.{layer}.ffn_down_exps.bias", t.numpy(), None))
        else:
            key = name + ".weight" if name.endswith("sinks") else name
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            assert gguf_name is not None, name
            written.append((gguf_name, t.numpy(), None))

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = tgg.byte_level_vocab(tok, "gpt-2", ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", add_bos=False)
    rope = raw["rope_parameters"]
    w = gguf.GGUFWriter(path, "gpt-oss")
    w.add_name("tiny-gpt-oss")
    w.add_block_count(raw["num_hidden_layers"])  # TextModel.set_gguf_parameters
    w.add_context_length(raw["max_position_embeddings"])
    w.add_embedding_length(raw["hidden_size"])
    w.add_feed_forward_length(raw["intermediate_size"])
    w.add_head_count(raw["num_attention_heads"])
    w.add_head_count_kv(raw["num_key_value_heads"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(raw["rms_norm_eps"])
    w.add_expert_count(raw["num_local_experts"])
    w.add_expert_used_count(raw["num_experts_per_tok"])
    w.add_key_length(raw["head_dim"])
    w.add_value_length(raw["head_dim"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_sliding_window(raw["sliding_window"])  # GptOssModel's own
    w.add_expert_feed_forward_length(raw["intermediate_size"])
    w.add_swiglu_clamp_exp([raw["swiglu_limit"]] * raw["num_hidden_layers"])
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    vocab.pad(raw["vocab_size"])
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.ids["eos"])
    w.add_add_bos_token(False)
    for name, data, raw_type in written:
        if raw_type is None:
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            w.add_tensor(name, data, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    import shutil as _shutil

    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            _shutil.copy(f, out / f.name)
    save_file(copy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return path, out


def mxfp4_checkpoint(folder: Path, out: Path, decoded: Path) -> tuple[Path, Path]:
    """The checkpoint in `folder` as openai/gpt-oss-* publish theirs: each expert matrix
    in MXFP4 (`…_proj_blocks` [E, out, in/32, 16] uint8, low nibble first, and
    `…_proj_scales` [E, out, in/32] uint8, 2^(s − 127)), `quantization_config` mxfp4, at
    `out`; and at `decoded` a plain float32 copy holding what transformers' own decoder
    (`integrations.mxfp4.convert_moe_packed_tensors`) makes of those blocks."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    tensors = load_file(str(folder / "model.safetensors"))
    packed, plain = {}, dict(tensors)
    for name, t in tensors.items():
        if not name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            continue
        rows = t.transpose(1, 2).float()  # (E, out, in): the packed layout is out-major
        E, R, C = rows.shape
        x = rows.reshape(E, R, C // 32, 32)  # (E, out, blocks, 32)
        amax = x.abs().amax(-1)  # (E, out, blocks)
        exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(1e-30))) - 2, torch.zeros_like(amax))
        scale = torch.ldexp(torch.ones_like(exp), exp.int())  # 2^(e), so |x| / scale <= 8 > 6: the top clips to 6
        idx = ((x / scale[..., None])[..., None] - lut).abs().argmin(-1).to(torch.uint8)  # (E, out, blocks, 32)
        blocks = idx[..., 0::2] | (idx[..., 1::2] << 4)  # (E, out, blocks, 16)
        scales = (exp + 127).to(torch.uint8)
        packed[name + "_blocks"], packed[name + "_scales"] = blocks.contiguous(), scales.contiguous()
        del plain[name]
        plain[name] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).contiguous()
    for target, weights in ((out, {**{k: v for k, v in plain.items() if not k.endswith(("gate_up_proj", "down_proj"))},
                                   **packed}), (decoded, plain)):
        target.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, target / f.name)
        save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((out / "config.json").read_text())
    raw["quantization_config"] = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                             "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"}
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return out, decoded
