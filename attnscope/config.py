"""ModelConfig: the one description of a model's shape that everything downstream uses.

Follows gpt-fast's `ModelArgs`: a dataclass whose `__post_init__` derives what a config
leaves out (key/value heads default to the query heads, `d_head` to width / heads) and,
after TransformerLens, validates itself with messages that name the bad value.

Presets are plain dicts in Hugging Face `config.json` form, looked up by exact name and
read through the same `from_hf_config()` path as a real checkpoint's config, so there is
one way to turn a description into a `ModelConfig`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnscope.errors import ConfigError, UnknownPresetError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "none")


@dataclass
class ModelConfig:
    """Shape and wiring of a transformer, in attnscope's own vocabulary."""

    family: str  # key in architectures.ARCHITECTURES, e.g. "gpt2", "bert", "llama"
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    vocab_size: int
    n_ctx: int  # positions the model was trained for
    name: str = ""
    n_kv_heads: int = 0  # 0: one key/value head per query head
    d_head: int = 0  # 0: d_model // n_heads
    causal: bool = True
    positions: str = "learned"  # learned | rope | none
    n_types: int = 0  # BERT's token-type table
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    post_norm: bool = False  # BERT: normalise after the residual add, not before
    embed_norm: bool = False  # BERT: a LayerNorm on the summed embeddings
    final_norm: bool = True
    act: str = "gelu"
    gated_mlp: bool = False  # SwiGLU/GeGLU: a gate projection beside the up-projection
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    lm_head: bool = True  # has an unembedding
    tied_embeddings: bool = True
    pooler: bool = False  # BertModel's pooler
    mlm_head: bool = False  # BertForMaskedLM's transform + decoder bias
    nsp_head: bool = False  # BertForPreTraining's next-sentence classifier
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rotary_dim: int = 0  # 0: rotate the whole head; less for partial rotary (NeoX, Phi)
    sliding_window: int | None = None
    layer_windows: list[int | None] | None = None  # per-layer windows (Gemma 2); None: sliding_window everywhere
    pos_offset: int = 0  # OPT's learned positions start at 2
    d_embed: int = 0  # OPT's word_embed_proj_dim: embeddings narrower than the width, projected in
    parallel: bool = False  # attention and MLP read the same input (NeoX, Phi)
    shared_norm: bool = False  # parallel blocks with one norm for both (Phi)
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight)
    embed_scale: bool = False  # Gemma: embeddings times sqrt(d_model)
    attn_scale: float | None = None  # score scale; None: 1/sqrt(d_head)
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(scores / cap)
    post_norms: bool = False  # Gemma 2: norms after attention and after the MLP too
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on queries and keys before RoPE
    unembed_bias: bool = False  # Phi's lm_head has a bias
    final_softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap) on the output logits
    dtype: str = "float32"  # the dtype the checkpoint was saved in
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("d_model", "n_layers", "n_heads", "d_mlp", "vocab_size", "n_ctx"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"{self._where()}{attr} must be a positive integer, got {value!r}",
                    hint="check the sizes in config.json",
                )
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.d_head == 0:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"{self._where()}{self.n_heads} heads do not divide the width "
                    f"{self.d_model}",
                    hint="set head_dim in config.json or fix num_attention_heads",
                )
            self.d_head = self.d_model // self.n_heads
        for attr in ("n_kv_heads", "d_head"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{self._where()}{attr} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{self._where()}{self.n_kv_heads} key/value heads do not divide "
                f"{self.n_heads} query heads"
            )
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"{self._where()}unsupported activation {self.act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise ConfigError(f"{self._where()}unsupported norm {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"{self._where()}unsupported positions {self.positions!r}")
        if self.sliding_window is not None and not _positive_int(self.sliding_window):
            raise ConfigError(f"{self._where()}sliding_window must be a positive integer, got {self.sliding_window!r}")
        for attr in ("n_types", "pos_offset", "d_embed", "rotary_dim"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{self._where()}{attr} must be a non-negative integer, got {value!r}")
        for attr in ("rope_theta", "norm_eps"):
            value = getattr(self, attr)
            if not _number(value) or value < 0 or (attr == "rope_theta" and value == 0):
                raise ConfigError(f"{self._where()}{attr} must be a positive number, got {value!r}")
        for attr in ("attn_scale", "attn_softcap", "final_softcap"):
            value = getattr(self, attr)
            if value is not None and (not _number(value) or value <= 0):
                raise ConfigError(f"{self._where()}{attr} must be a positive number, got {value!r}")
        if self.rope_scaling is not None:
            self._check_rope_scaling(self.rope_scaling)
        if self.rotary_dim == 0:
            self.rotary_dim = self.d_head
        if not 0 < self.rotary_dim <= self.d_head or self.rotary_dim % 2:
            raise ConfigError(f"{self._where()}rotary dimension {self.rotary_dim} must be even and within the head size {self.d_head}")
        if self.d_embed == 0:
            self.d_embed = self.d_model
        if self.layer_windows is not None:
            if len(self.layer_windows) != self.n_layers:
                raise ConfigError(f"{self._where()}{len(self.layer_windows)} layer types for {self.n_layers} layers")
            if not all(w is None or _positive_int(w) for w in self.layer_windows):
                raise ConfigError(f"{self._where()}sliding windows must be positive integers, got {self.layer_windows!r}")

    def _check_rope_scaling(self, scaling: dict[str, Any]) -> None:
        """llama3 scaling: every factor a positive number, high above low (they divide)."""
        where = f"{self._where()}rope_scaling"
        values = {}
        for key, default in (("factor", None), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                             ("original_max_position_embeddings", self.n_ctx)):
            value = scaling.get(key, default)
            if not _number(value) or value <= 0:
                raise ConfigError(f"{where} {key} must be a positive number, got {value!r}")
            values[key] = value
        if values["high_freq_factor"] <= values["low_freq_factor"]:
            raise ConfigError(f"{where} high_freq_factor must exceed low_freq_factor")

    def window(self, layer: int) -> int | None:
        """The sliding window of one layer (None: the layer sees every allowed key)."""
        if self.layer_windows is not None:
            return self.layer_windows[layer]
        return self.sliding_window

    def _where(self) -> str:
        return f"{self.name}: " if self.name else ""

    @property
    def wiring(self) -> str:
        """How a block joins attention and MLP to the residual stream (see parts.block)."""
        if self.post_norm:
            return "post"
        if self.parallel:
            return "parallel_shared" if self.shared_norm else "parallel"
        return "sandwich" if self.post_norms else "pre"

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head (1 = multi-head, n_heads = multi-query)."""
        return self.n_heads // self.n_kv_heads

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "multi-head"
        if self.n_kv_heads == 1:
            return "multi-query"
        return "grouped-query"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Presets: Hugging Face config.json dicts. GPT-3 sizes are from Table 2.1 of Brown et al.
# (2020), "Language Models are Few-Shot Learners": d_ff = 4 * d_model, context 2,048 and
# GPT-2's 50,257-token vocabulary. Two rows are inconsistent as printed; we read them as:
#   * XL: "24 heads of 128" cannot make d_model 2,048; we keep d_model 2,048 (which gives
#     the table's 1.3B) and use 16 heads of 128.
#   * 13B: d_model 5,140 is not divisible by 40 heads; 40 heads of 128 make 5,120, which
#     gives the table's 13B, so we read 5,120.
def _gpt3(d_model: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_embd": d_model,
        "n_layer": n_layers,
        "n_head": n_heads,
        "n_inner": 4 * d_model,
        "vocab_size": 50257,
        "n_positions": 2048,
        "activation_function": "gelu_new",
        "_convention": "3b1b",
    }


def _gpt2(d_model: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_embd": d_model,
        "n_layer": n_layers,
        "n_head": n_heads,
        "vocab_size": 50257,
        "n_positions": 1024,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    }


def _bert(d_model: int, n_layers: int, n_heads: int, d_mlp: int, vocab: int = 30522) -> dict[str, Any]:
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "intermediate_size": d_mlp,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }


def _llama(model_type: str = "llama", **kw: Any) -> dict[str, Any]:
    base = {"model_type": model_type, "hidden_act": "silu", "tie_word_embeddings": False}
    base.update(kw)
    return base


PRESETS: dict[str, dict[str, Any]] = {
    "gpt3": _gpt3(12288, 96, 96),
    "gpt3-small": _gpt3(768, 12, 12),
    "gpt3-medium": _gpt3(1024, 24, 16),
    "gpt3-large": _gpt3(1536, 24, 16),
    "gpt3-xl": _gpt3(2048, 24, 16),
    "gpt3-2.7b": _gpt3(2560, 32, 32),
    "gpt3-6.7b": _gpt3(4096, 32, 32),
    "gpt3-13b": _gpt3(5120, 40, 40),
    "gpt3-175b": _gpt3(12288, 96, 96),
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "bert-base": _bert(768, 12, 12, 3072),
    "bert-large": _bert(1024, 24, 16, 4096),
    "all-minilm-l6-v2": _bert(384, 6, 12, 1536),
    "llama2-7b": _llama(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    "llama3-8b": _llama(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0,
    ),
    "llama3.2-1b": _llama(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ),
    "mistral-7b": _llama(
        "mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
        max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
    ),
    "qwen2-0.5b": _llama(
        "qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "pythia-160m": {
        "model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "use_parallel_residual": True, "tie_word_embeddings": False,
    },
    "opt-125m": {
        "model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048, "do_layer_norm_before": True,
        "word_embed_proj_dim": 768, "activation_function": "relu",
    },
    "phi-2": {
        "model_type": "phi", "hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
        "intermediate_size": 10240, "vocab_size": 51200, "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "tie_word_embeddings": False,
    },
    "gemma-2b": {
        "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 16384, "vocab_size": 256000,
        "max_position_embeddings": 8192, "hidden_act": "gelu",
    },
}


def preset(name: str) -> ModelConfig:
    """The preset called exactly `name`; an unknown name suggests close ones."""
    key = name.strip().lower()
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `attnscope params --list`"
        raise UnknownPresetError(f"unknown preset {name!r}", hint=hint)
    raw = dict(PRESETS[key])
    raw.pop("_convention", None)
    return from_hf_config(raw, name=key)


def preset_convention(name: str) -> str:
    """The convention a preset headlines: the video's `3b1b` for GPT-3, else `full`."""
    return PRESETS.get(name.strip().lower(), {}).get("_convention", "full")


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a config.json into a dict, with errors that name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}", hint="pass a folder that holds config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def from_hf_config(raw: dict[str, Any], name: str = "") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict via its family's module."""
    from attnscope.architectures import family_for

    module = family_for(raw)
    try:
        return module.config_from_hf(raw, name=name)
    except ConfigError:
        raise
    except KeyError as exc:
        raise ConfigError(
            f"{name + ': ' if name else ''}config.json lacks the field {exc.args[0]!r}",
            hint="is this the model's own config.json?",
        ) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name + ': ' if name else ''}config.json has a bad value: {exc}") from None


def load_config(path: Path) -> ModelConfig:
    """A ModelConfig from a config.json file, or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"no such file: {path}", hint="pass a config.json or a model folder")
    return from_hf_config(read_config_json(path), name=path.parent.name or str(path))
