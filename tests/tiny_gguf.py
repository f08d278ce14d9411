"""Tiny GGUF files for tests/test_gguf.py, written as llama.cpp's convert_hf_to_gguf.py writes them.

A tiny random-weight transformers model (weights redrawn by `tiny_models.reinit`) is
renamed with gguf-py's own name map (`gguf.get_tensor_name_map`, the converter's), changed
as the converter changes each architecture (Llama's q/k row permutation, Gemma 2's norm
+ 1, GPT-2's transposed Conv1D weights, Llama 3's `rope_freqs` divisors), quantized with
`gguf.quants.quantize` (Q4_0, Q4_1, Q8_0, F16 and F32, by tensor) and written with
`gguf.GGUFWriter`, with the metadata the converter writes and a small vocabulary: one of
`tiny_models`' trained tokenizers laid out as llama.cpp stores it (byte-level BPE with
merges, or SentencePiece-style pieces with scores and byte tokens), padded with
`[PAD{i}]` entries to the model's vocabulary size as the converter pads.

`raw_gguf` writes a GGUF byte by byte, so the malformed-file tests can lie in any field.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import tiny_models as tm

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Quantization by GGUF tensor kind: every block type the tests exercise, on weights whose
# rows (GGUF ne[0], the input width) are whole blocks of 32; 1-D tensors stay F32, as the
# converter keeps them.
QUANT = {
    "token_embd": "Q8_0", "position_embd": "F32", "output": "F32",
    "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "F16", "attn_output": "Q8_0", "attn_qkv": "Q4_0",
    "ffn_gate": "Q4_0", "ffn_up": "Q8_0", "ffn_down": "Q4_1",
}

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 256}


@dataclass
class Vocab:
    """A tokenizer as GGUF metadata holds it."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    merges: list[str] | None = None
    scores: list[float] | None = None
    ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    flags: dict[str, bool] = field(default_factory=dict)  # add_bos, add_eos

    def pad(self, size: int) -> Vocab:
        for i in range(len(self.tokens), size):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)
        return self


def _trained(tok: Any) -> tuple[list[str], list[str]]:
    data = json.loads(tok.to_str())["model"]
    vocab = data["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))  # internal invariant
    merges = [m if isinstance(m, str) else " ".join(m) for m in data.get("merges", [])]
    return tokens, merges


def byte_level_vocab(tok: Any, pre: str, specials: list[str], bos: str | None, eos: str,
                     add_bos: bool, user_defined: tuple[str, ...] = ()) -> Vocab:
    tokens, merges = _trained(tok)
    tokens += list(user_defined)
    types = [CONTROL if t in specials else USER_DEFINED if t in user_defined else NORMAL for t in tokens]
    ids = {"eos": tokens.index(eos), "pad": tokens.index(eos)}
    if bos is not None:
        ids["bos"] = tokens.index(bos)
    return Vocab("gpt2", tokens, types, pre=pre, merges=merges, ids=ids, flags={"add_bos": add_bos})


def sentencepiece_vocab(specials: list[tuple[str, int]], bos: str, eos: str, unk: str) -> Vocab:
    """SentencePiece-style pieces from `tiny_models.mistral_tokenizer` (trained with '▁'
    for spaces), after the given special pieces and the 256 byte pieces; scores fall with
    the pieces' training rank, as SentencePiece's BPE scores do."""
    trained, _ = _trained(tm.mistral_tokenizer())
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)]
    types = [kind for _, kind in specials] + [BYTE] * 256
    pieces = [t for t in trained if t not in tokens and t not in tm.MISTRAL_SPECIALS]
    tokens += pieces
    types += [NORMAL] * len(pieces)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
    ids = {"bos": tokens.index(bos), "eos": tokens.index(eos), "unk": tokens.index(unk)}
    return Vocab("llama", tokens, types, scores=scores, ids=ids, flags={"add_bos": True})


# ------------------------------------------------------------------ the converter's changes


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate_half halves -> adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(scaling: dict[str, Any], theta: float, dim: int) -> torch.Tensor:
    """LlamaModel.generate_extra_tensors: the rope_freqs divisors for llama3 scaling."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _tensors(model: Any, arch: str) -> list[tuple[str, torch.Tensor]]:
    """The GGUF (name, tensor) pairs the converter writes for `model`."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    out = []
    for name, t in model.state_dict().items():
        t = t.detach().float().clone()
        if name.startswith("lm_head.") and cfg.tie_word_embeddings:
            continue  # a tied head is not in the checkpoint the converter reads
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute(t, cfg.num_attention_heads)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute(t, cfg.num_key_value_heads)
        if arch == "gemma2" and name.endswith("norm.weight"):
            t = t + 1
        if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            t = t.transpose(1, 0)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, f"no GGUF name for {name}"  # internal invariant
        out.append((gguf_name, t))
    return out


def write(path: Path, arch: str, model: Any, vocab: Vocab, meta: Callable[[Any], None],
          extra: tuple[tuple[str, torch.Tensor], ...] = ()) -> Path:
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    meta(w)
    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        w.add_token_merges(vocab.merges)
    for key, value in vocab.ids.items():
        getattr(w, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                    "pad": "add_pad_token_id"}[key])(value)
    for key, value in vocab.flags.items():
        getattr(w, f"add_{key}_token")(value)
    for name, t in [*extra, *_tensors(model, arch)]:
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        qtype = gguf.GGMLQuantizationType[QUANT.get(kind, "F32") if t.ndim == 2 else "F32"]
        w.add_tensor(name, gguf.quants.quantize(t.numpy(), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _padded(n: int) -> int:
    return -(-n // 8) * 8  # the vocabulary rounded up, as tiny_models pads its models'


def _model(config: Any, cls: Any, seed: int = tm.SEED) -> Any:
    model = cls(config)
    tm.reinit(model, seed)
    return model.eval()


def _llama_meta(cfg: Any, head_dim: int | None = None) -> Callable[[Any], None]:
    def meta(w: Any) -> None:  # TextModel.set_gguf_parameters + LlamaModel's
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        if "rope_theta" in (cfg.rope_parameters or {}):
            w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim or cfg.hidden_size // cfg.num_attention_heads)
        if head_dim:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
    return meta


# ----------------------------------------------------------------------------- builders


def llama(path: Path) -> Path:
    """Llama 2 / Mistral style: SentencePiece vocabulary, q/k permuted, untied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = sentencepiece_vocab([("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL)], "<s>", "</s>", "<unk>")
    cfg = LlamaConfig(vocab_size=_padded(len(vocab.tokens)),
                      hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False)
    return write(path, "llama", _model(cfg, LlamaForCausalLM), vocab.pad(cfg.vocab_size), _llama_meta(cfg))


def llama3(path: Path) -> Path:
    """Llama 3 style: byte-level BPE ("llama-bpe"), head size 64 given apart from the
    width, RoPE with llama3 scaling carried only by the rope_freqs tensor."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = byte_level_vocab(tm.llama3_tokenizer(), "llama-bpe", tm.LLAMA3_SPECIALS, *tm.LLAMA3_SPECIALS, add_bos=True)
    cfg = LlamaConfig(vocab_size=_padded(len(vocab.tokens)), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                      max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_parameters={**LLAMA3_SCALING, "rope_theta": 10000.0})
    freqs = llama3_factors(LLAMA3_SCALING, 10000.0, 64)
    return write(path, "llama", _model(cfg, LlamaForCausalLM), vocab.pad(cfg.vocab_size), _llama_meta(cfg, 64),
                 extra=(("rope_freqs.weight", freqs),))


def qwen2(path: Path) -> Path:
    """Qwen2: q/k/v biases, tied, byte-level BPE ("qwen2") with a user-defined `<think>`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = byte_level_vocab(tm.qwen2_tokenizer(), "qwen2", tm.QWEN2_SPECIALS, None, "<|endoftext|>",
                             add_bos=False, user_defined=("<think>",))
    cfg = Qwen2Config(vocab_size=_padded(len(vocab.tokens)), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    return write(path, "qwen2", _model(cfg, Qwen2ForCausalLM), vocab.pad(cfg.vocab_size), _llama_meta(cfg))


def qwen3(path: Path) -> Path:
    """Qwen3: per-head q/k norms, head size 128 (transformers' GGUF reader cannot take
    another: it reads no head size for qwen3 and falls back to Qwen3Config's 128)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab = byte_level_vocab(tm.qwen2_tokenizer(), "qwen2", tm.QWEN2_SPECIALS, None, "<|endoftext|>", add_bos=False)
    cfg = Qwen3Config(vocab_size=_padded(len(vocab.tokens)), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                      max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    return write(path, "qwen3", _model(cfg, Qwen3ForCausalLM), vocab.pad(cfg.vocab_size), _llama_meta(cfg, 128))


def gemma_vocab() -> Vocab:
    """Gemma's SentencePiece vocabulary: pad, eos, bos, unk and the two turn markers."""
    specials = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN),
                ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL)]
    vocab = sentencepiece_vocab(specials, "<bos>", "<eos>", "<unk>")
    vocab.ids["pad"] = 0
    return vocab


def gemma_meta(w: Any, cfg: Any) -> None:
    """The sizes Gemma2Model.set_gguf_parameters (and Gemma3Model's) write first."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)


def gemma2(path: Path) -> Path:
    """Gemma 2: norms stored + 1, window 4 on even layers, soft-caps, head size 256 (the
    query_pre_attn_scalar llama.cpp and transformers' GGUF reader then agree on)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    vocab = gemma_vocab()
    cfg = Gemma2Config(vocab_size=_padded(len(vocab.tokens)), hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                       max_position_embeddings=128, rms_norm_eps=1e-6, sliding_window=4,
                       query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)

    def meta(w: Any) -> None:  # Gemma2Model.set_gguf_parameters
        gemma_meta(w, cfg)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
        w.add_add_space_prefix(False)

    return write(path, "gemma2", _model(cfg, Gemma2ForCausalLM), vocab.pad(cfg.vocab_size), meta)


def gpt2(path: Path) -> Path:
    """GPT-2: fused qkv, Conv1D weights transposed, learned positions (1,024: transformers'
    GGUF reader leaves GPT2Config's n_positions at its default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = byte_level_vocab(tm.gpt2_tokenizer(), "gpt-2", ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>",
                             add_bos=False)
    cfg = GPT2Config(vocab_size=_padded(len(vocab.tokens)), n_positions=1024, n_embd=64, n_layer=2,
                     n_head=4, activation_function="gelu_new", tie_word_embeddings=True,
                     bos_token_id=vocab.ids["eos"], eos_token_id=vocab.ids["eos"])

    def meta(w: Any) -> None:  # GPT2Model.set_gguf_parameters
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)

    return write(path, "gpt2", _model(cfg, GPT2LMHeadModel), vocab.pad(cfg.vocab_size), meta)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "llama": llama, "llama3": llama3, "qwen2": qwen2, "qwen3": qwen3, "gemma2": gemma2, "gpt2": gpt2,
}


# ------------------------------------------------------------------- hand-written files


def _string(s: str | bytes, length: int | None = None) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def raw_gguf(meta: list[tuple[str, int, bytes]], tensors: list[tuple[str, tuple[int, ...], int, int]],
             data: bytes, *, magic: bytes = b"GGUF", version: int = 3, alignment: int = 32) -> bytes:
    """A GGUF byte by byte: `meta` as (key, value type, encoded value), `tensors` as (name,
    GGUF dims (ne[0] first), ggml type id, offset), then `data` after aligned padding."""
    out = bytearray(magic + struct.pack("<IQQ", version, len(tensors), len(meta)))
    for key, vtype, value in meta:
        out += _string(key) + struct.pack("<I", vtype) + value
    for name, dims, type_id, offset in tensors:
        out += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", type_id, offset)
    out += b"\0" * (-len(out) % alignment)
    return bytes(out + data)


def kv_string(key: str, value: str, length: int | None = None) -> tuple[str, int, bytes]:
    return key, 8, _string(value, length)


def kv_u32(key: str, value: int) -> tuple[str, int, bytes]:
    return key, 4, struct.pack("<I", value)
