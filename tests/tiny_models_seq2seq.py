"""Tiny random-weight encoder-decoder checkpoints (T5 v1.0 tied, T5 v1.1 / FLAN-T5 untied
and gated), built offline by transformers itself like tests/tiny_models.py's.

Chosen so that a naive port shows:
- the encoder (2 layers) and decoder (3 layers) differ in depth, so a stack read for the
  other fails;
- `SOURCE_TEXT` is 90+ tokens and `TARGET_TEXT` 60+, past `max_distance` 24 of the
  relative buckets both ways (exact, log-spaced and clamped buckets all used), in the
  encoder (bidirectional) and in the decoder (causal);
- weights are redrawn at std `STD` (`tiny_models.reinit`) and each stack's bias table then
  scaled ×`BIAS_SCALE`, so the relative bias moves every head's pattern by more than the
  tolerance (a port that drops it, shares one table between stacks or buckets the decoder
  bidirectionally fails);
- v1.1's head is untied from the shared table (transformers 5 ties it whatever the config
  says: the untied checkpoint is written by hand from the model's state dict, with its own
  `lm_head.weight`, and its reference is that model with the head untied), and v1.0's tied
  head rescales by d_model^-0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from tiny_models import SEED, SENTENCES, _vocab_size, gpt2_tokenizer, reinit

STD = 0.15  # T5 does not scale its scores: a smaller draw keeps the patterns spread
BIAS_SCALE = 10.0  # the relative tables' std: 0.15 × 10 = 1.5
SOURCE_TEXT = " ".join(SENTENCES[:6])
TARGET_TEXT = " ".join(SENTENCES[4:8])
MAX_DISTANCE = 24


def seq2seq_tokenizer() -> Any:
    """GPT-2's byte-level BPE with `<pad>` (0), `</s>` (1) added: T5's special ids."""
    tok = gpt2_tokenizer(400)
    return tok


def _t5_config(tok: Any, mt5: bool = False, **kw: Any) -> Any:
    from transformers import MT5Config, T5Config

    base: dict[str, Any] = dict(
        vocab_size=_vocab_size(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=16, relative_attention_max_distance=MAX_DISTANCE, layer_norm_epsilon=1e-6,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
    )
    base.update(kw)
    return (MT5Config if mt5 else T5Config)(**base)


def _t5(folder: Path, seed: int, tied: bool, mt5: bool = False, **kw: Any) -> Path:
    from safetensors.torch import save_file
    from transformers import MT5ForConditionalGeneration, T5ForConditionalGeneration

    tok = seq2seq_tokenizer()
    config = _t5_config(tok, mt5, **kw)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (MT5ForConditionalGeneration if mt5 else T5ForConditionalGeneration)(config).to(torch.float32).eval()
    if not tied:  # transformers 5 ties the head whatever the config says: untie it by hand
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    reinit(model, seed=seed, std=STD)
    with torch.no_grad():
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(BIAS_SCALE)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: t.contiguous() for name, t in model.state_dict().items()
             if name not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
             and (name != "lm_head.weight" or not tied)}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    raw = config.to_dict()
    raw["tie_word_embeddings"] = tied
    raw.pop("scale_decoder_outputs", None)  # as published: derived from tie_word_embeddings on load
    raw["architectures"] = ["MT5ForConditionalGeneration" if mt5 else "T5ForConditionalGeneration"]
    raw["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    tok.save(str(folder / "tokenizer.json"))
    return folder


def t5(folder: Path, seed: int = SEED) -> Path:
    """T5 v1.0: relu MLP, the head tied to the shared table (rescaled by d_model^-0.5)."""
    return _t5(folder, seed, tied=True)


def t5_v11(folder: Path, seed: int = SEED + 1) -> Path:
    """T5 v1.1 / FLAN-T5: gated-gelu MLP (gelu_new), an untied head, no rescale."""
    return _t5(folder, seed, tied=False, feed_forward_proj="gated-gelu")


def t5_reference(folder: Path) -> Any:
    """transformers' T5ForConditionalGeneration (MT5ForConditionalGeneration for mT5) on the
    folder (eager, float32), the head untied and loaded where the checkpoint has its own."""
    from safetensors.torch import load_file
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration

    raw = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    mt5 = raw["model_type"] == "mt5"
    config = (MT5Config if mt5 else T5Config).from_dict(
        {k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = "eager"
    model = (MT5ForConditionalGeneration if mt5 else T5ForConditionalGeneration)(config).to(torch.float32).eval()
    if "lm_head.weight" in state:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}, missing
    assert mt5 or config.scale_decoder_outputs == raw["tie_word_embeddings"]  # v1.0 rescales, v1.1 does not
    return model


def _bart(folder: Path, seed: int, model_type: str, **kw: Any) -> Path:
    """A BART-like ForConditionalGeneration: encoder 2 layers × 4 heads, decoder 3 layers ×
    2 heads with a narrower MLP (so a stack read with the other's sizes fails), 128
    positions, a random final_logits_bias (so a port that drops it fails)."""
    import transformers

    from tiny_models import INIT_STD, _save

    tok = seq2seq_tokenizer()
    cls = {"bart": "Bart", "mbart": "MBart", "marian": "Marian"}[model_type]
    config = getattr(transformers, f"{cls}Config")(**{**dict(
        vocab_size=_vocab_size(tok), d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=128,
        activation_function="gelu", pad_token_id=0, bos_token_id=0, eos_token_id=1, decoder_start_token_id=1,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=INIT_STD), **kw})
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, "MarianMTModel" if cls == "Marian" else f"{cls}ForConditionalGeneration")(
            config).to(torch.float32).eval()
    fixed = {n: p.detach().clone() for n, p in model.named_parameters() if "embed_positions" in n}  # Marian's sinusoids
    reinit(model, seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in fixed:
                p.copy_(fixed[n])
        model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=torch.Generator().manual_seed(seed)))
    model.tie_weights()
    return _save(model, folder, tok)


def bart(folder: Path, seed: int = SEED + 2) -> Path:
    """BART: post-norm, no final norms, unscaled embeddings."""
    return _bart(folder, seed, "bart")


def mbart(folder: Path, seed: int = SEED + 3) -> Path:
    """mBART: pre-norm, a final LayerNorm per stack, embeddings × √d_model."""
    return _bart(folder, seed, "mbart", scale_embedding=True)


def marian(folder: Path, seed: int = SEED + 4) -> Path:
    """Marian (OPUS-MT): post-norm, sinusoidal positions, embeddings × √d_model, swish."""
    return _bart(folder, seed, "marian", scale_embedding=True, activation_function="swish")


def reference(folder: Path) -> Any:
    """transformers' own model for any tiny folder here (eager, float32)."""
    raw = json.loads((folder / "config.json").read_text())
    if raw["model_type"] in ("t5", "mt5"):
        return t5_reference(folder)
    from tiny_models import load_reference

    return load_reference(folder)


def mt5(folder: Path, seed: int = SEED + 5) -> Path:
    """mT5: T5 v1.1's architecture (gated-gelu, untied head) under model_type mt5."""
    return _t5(folder, seed, tied=False, mt5=True, feed_forward_proj="gated-gelu")


SEQ2SEQ_BUILDERS: dict[str, Callable[[Path], Path]] = {"t5": t5, "t5_v11": t5_v11, "mt5": mt5, "bart": bart, "mbart": mbart,
                                                   "marian": marian}


# ----------------------------------------------------------------------------- the tests' getters
# What the encoder-decoder test modules share: each keeps its own module-scoped fixtures
# (`built`, `ours`, `reference`/`theirs`), whose bodies are these getters.


def _once(make: Callable[[str], Any]) -> Callable[[str], Any]:
    """`make(name)`, called at most once per name."""
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = make(name)
        return made[name]

    return get


def builds(tmp_path_factory: Any) -> Callable[[str], Path]:
    """`get(name) -> Path`: `SEQ2SEQ_BUILDERS[name]` built once, into its own temporary folder."""
    return _once(lambda name: SEQ2SEQ_BUILDERS[name](tmp_path_factory.mktemp(name)))


def loads(built: Callable[[str], Path]) -> Callable[[str], Any]:
    """`get(name) -> Inspector`: attnscope's model on `built(name)`, float32 on the CPU, loaded once."""

    def load(name: str) -> Any:
        from attnscope.api import load

        return load(str(built(name)), device="cpu", dtype="float32")

    return _once(load)


def references(built: Callable[[str], Path]) -> Callable[[str], Any]:
    """`get(name)`: transformers' own model on `built(name)` (`reference`), loaded once."""
    return _once(lambda name: reference(built(name)))


def source_target_ids(folder: Path) -> tuple[list[int], list[int]]:
    """SOURCE_TEXT's and TARGET_TEXT's ids under the folder's tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return tok.encode(SOURCE_TEXT).ids, tok.encode(TARGET_TEXT).ids


def teacher_forced(built: Callable[[str], Path]) -> Callable[[str], Any]:
    """`get(name) -> (model, src, dec, out)`: transformers' model on `built(name)` and its
    output (attentions included) reading SOURCE_TEXT in the encoder and the decoder start
    token + TARGET_TEXT in the decoder (`dec`), computed once."""

    def run(name: str) -> Any:
        folder = built(name)
        model = reference(folder)
        src, tgt = source_target_ids(folder)
        dec = [model.config.decoder_start_token_id] + tgt
        with torch.no_grad():
            out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
        return model, src, dec, out

    return _once(run)


def max_diff(ours: torch.Tensor, theirs: tuple[torch.Tensor, ...]) -> float:
    """The largest difference between our (layers, heads, …) pattern and transformers' per-layer tuple."""
    return (ours - torch.stack([a[0] for a in theirs])).abs().max().item()
