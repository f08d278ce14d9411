"""ModelConfig: the one description of a model's shape that everything downstream uses.

Follows gpt-fast's `ModelArgs`: a dataclass whose `__post_init__` derives what a config
leaves out (key/value heads default to the query heads, `d_head` to width / heads) and,
after TransformerLens, validates itself with messages that name the bad value.

Every number a config declares is checked against what can exist before anything is
sized from it (rule 10): the bounds and the checks of layer kinds and RoPE scalings are
in `config_checks`. Counting parameters is arithmetic on these sizes, so a config
declaring 10**15 layers is refused at once rather than enumerated.

Presets and config.json files become a `ModelConfig` through `config_io` (`preset`,
`load_config`, `from_hf_config`), one path for both; its names are re-exported here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

# The checks and the config sources live beside this module; their names are re-exported
# here (`config.MAX_SIZE`, `config.from_hf_config`, the families' `config._shown`, …).
from attnscope.config_checks import (  # noqa: F401
    ACTIVATIONS, MAX_LAYERS, MAX_SIZE, _check_optional_positive, _number, _positive_int, _positive_number, _shown,
    check_decoder, check_rope_scaling, check_stack, check_tensor_sizes, check_template,
)
from attnscope.config_io import (  # noqa: F401
    _HF_BOOLEANS, _check_booleans, from_hf_config, load_config, preset, preset_convention, read_config_json,
)
from attnscope.errors import ConfigError
from attnscope.kinds import AttnSpec, LayerSpec, MlpSpec, RopeSpec, Stack, freeze
from attnscope.presets import PRESETS  # noqa: F401  (re-exported: config.PRESETS)

NORMS = ("layernorm", "layernorm_no_bias", "rmsnorm")  # layernorm_no_bias: a scale, no shift (ModernBERT)
POSITIONS = ("learned", "rope", "none", "sinusoidal")  # sinusoidal: a fixed table (Marian), computed

# n_heads <= d_model (a head has at least one dimension of the width), and n_heads * d_head,
# the query projection's width, <= MAX_SIZE too.
_BOUNDED = ("d_model", "d_mlp", "vocab_size", "n_ctx")
# The only booleans a ModelConfig has: model-wide and generic (tests/test_config_fields.py
# holds each one's reason). A family's quirk is its layer kind (`layer_template`), not a flag.
_BOOLEANS = ("causal", "embed_norm", "final_norm", "lm_head", "tied_embeddings", "unembed_bias")
TASK_HEADS = ("pooler", "mlm", "nsp", "sequence_classifier", "mlm_no_dense_bias", "logits_bias")  # BertModel's pooler, BertForMaskedLM's MLM head, the NSP
# classifier, and a sequence classifier (parameters `classifier.*`: a dense layer, then `n_labels` outputs:
# RoBERTa's, DistilBERT's);
# mlm_no_dense_bias: the MLM head with no bias on its dense transform (ModernBERT's `classifier_bias` false)
# logits_bias: a bias added to the logits that transformers keeps as a buffer (BART's final_logits_bias)
# A layer kind with nothing of its own: pre-norm, dense MLP, no biases, no q/k norm. Sizes are
# placeholders (0), filled from the flat fields by `ModelConfig._derived_stack`.
PLAIN_LAYER = LayerSpec(AttnSpec(0, 0, 0), MlpSpec("dense", 0, ""))


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
    causal: bool = True  # a decoder (each token sees earlier ones) or an encoder (all see all)
    positions: str = "learned"  # learned | rope | none
    n_types: int = 0  # BERT's token-type table
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    embed_norm: bool = False  # a norm on the summed embeddings (BERT)
    final_norm: bool = True  # a norm after the last block
    act: str = "gelu"
    lm_head: bool = True  # has an unembedding
    tied_embeddings: bool = True  # the unembedding is the token embedding
    heads: tuple[str, ...] = ()  # task heads after the blocks (TASK_HEADS: BERT's pooler, mlm, nsp)
    n_labels: int = 0  # the outputs of a "sequence_classifier" head (config.json's num_labels / id2label)
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rotary_dim: int = 0  # 0: rotate the whole head; less for partial rotary (NeoX, Phi)
    sliding_window: int | None = None
    layer_windows: list[int | None] | None = None  # per-layer windows (Gemma 2); None: sliding_window everywhere
    pos_offset: int = 0  # OPT's learned positions start at 2
    d_embed: int = 0  # OPT's word_embed_proj_dim: embeddings narrower than the width, projected in
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight)
    attn_scale: float | None = None  # score scale; None: 1/sqrt(d_head)
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(scores / cap)
    unembed_bias: bool = False  # the unembedding has a bias (Phi)
    final_softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap) on the output logits
    embed_multiplier: float | None = None  # embeddings times this (Gemma's √d, Granite's), rounded to the activations' dtype
    logits_divisor: float | None = None  # logits divided by this (Granite's logits_scaling)
    dtype: str = "float32"  # the dtype the checkpoint was saved in
    extra: dict[str, Any] = field(default_factory=dict)
    # The family's layer kind as a template: its wiring, MLP kind, biases and q/k norm
    # (`architectures._common.layer_kind`). Its sizes are placeholders: the stack takes
    # heads, widths, mask, positions and scale from the flat fields above.
    layer_template: LayerSpec = PLAIN_LAYER
    # The layers, each of a declared kind (attnscope.kinds). A family whose layers differ
    # (Gemma 3's local and global RoPE bases, SmolLM3's layers without RoPE) passes them;
    # otherwise they are derived from the template and the fields above, one kind per
    # distinct window. Either way `self.stack` holds them (set in __post_init__, so
    # `replace()` re-derives).
    kinds: Stack | None = None
    # An encoder-decoder model (T5, BART): the fields above and `stack` describe the encoder
    # and everything model-wide (width, vocabulary, norms, positions, the shared token table
    # and the head); `decoder` is the second stack, whose layers carry their cross-attention
    # (`LayerSpec.cross`). None: a model of one stack.
    decoder: Stack | None = None
    stack: Stack = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = self._where()
        for attr in ("d_model", "n_layers", "n_heads", "d_mlp", "vocab_size", "n_ctx"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"{where}{attr} must be a positive integer, got {_shown(value)}",
                    hint="check the sizes in config.json",
                )
        if self.n_layers > MAX_LAYERS:
            raise ConfigError(f"{where}n_layers {_shown(self.n_layers)} exceeds the limit of {MAX_LAYERS:,} layers",
                              hint="check the layer count in config.json")
        for attr in _BOUNDED:
            value = getattr(self, attr)
            if value > MAX_SIZE:
                raise ConfigError(f"{where}{attr} {_shown(value)} exceeds the limit of 2**31",
                                  hint="check the sizes in config.json")
        if self.n_heads > self.d_model:
            raise ConfigError(f"{where}{_shown(self.n_heads)} heads exceed the width {self.d_model}",
                              hint="check num_attention_heads in config.json")
        for attr in _BOOLEANS:
            if not isinstance(getattr(self, attr), bool):
                raise ConfigError(f"{where}{attr} must be true or false, got {_shown(getattr(self, attr))}")
        if isinstance(self.heads, list):
            self.heads = tuple(self.heads)
        if not isinstance(self.heads, tuple) or any(h not in TASK_HEADS for h in self.heads):
            raise ConfigError(f"{where}heads must list task heads among {', '.join(TASK_HEADS)}, got {_shown(self.heads)}")
        check_template(self.layer_template, where)
        for attr in ("family", "name", "act", "norm", "positions", "dtype"):
            if not isinstance(getattr(self, attr), str):
                raise ConfigError(f"{where}{attr} must be a string, got {_shown(getattr(self, attr))}")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.d_head == 0:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"{where}{self.n_heads} heads do not divide the width "
                    f"{self.d_model}",
                    hint="set head_dim in config.json or fix num_attention_heads",
                )
            self.d_head = self.d_model // self.n_heads
        for attr in ("n_kv_heads", "d_head"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}{attr} must be a positive integer, got {_shown(value)}")
        if self.n_heads * self.d_head > MAX_SIZE:
            raise ConfigError(f"{where}{self.n_heads} heads of {_shown(self.d_head)} exceed the limit of 2**31",
                              hint="check head_dim in config.json")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{where}{_shown(self.n_kv_heads)} key/value heads do not divide "
                f"{self.n_heads} query heads"
            )
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"{where}unsupported activation {self.act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise ConfigError(f"{where}unsupported norm {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"{where}unsupported positions {self.positions!r}")
        if self.sliding_window is not None and not _positive_int(self.sliding_window):
            raise ConfigError(f"{where}sliding_window must be a positive integer up to 2**31, "
                              f"got {_shown(self.sliding_window)}")
        for attr in ("n_types", "n_labels", "pos_offset", "d_embed", "rotary_dim"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
                raise ConfigError(f"{where}{attr} must be a non-negative integer up to 2**31, got {_shown(value)}")
        if ("sequence_classifier" in self.heads) != (self.n_labels > 0):
            raise ConfigError(f"{where}a sequence classifier head needs its number of labels, and only it has one "
                              f"(heads {_shown(self.heads)}, n_labels {_shown(self.n_labels)})")
        if not _number(self.rope_theta) or self.rope_theta < 1:
            # below 1 the "slowest" frequency would be the fastest: no RoPE model has one
            raise ConfigError(f"{where}rope_theta must be a finite number of at least 1, got {_shown(self.rope_theta)}")
        if not _number(self.norm_eps) or self.norm_eps < 0:
            raise ConfigError(f"{where}norm_eps must be a finite non-negative number, got {_shown(self.norm_eps)}")
        if not _number(self.norm_offset):
            raise ConfigError(f"{where}norm_offset must be a finite number, got {_shown(self.norm_offset)}")
        _check_optional_positive(((a, getattr(self, a)) for a in ("attn_scale", "attn_softcap", "final_softcap")), where)
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ConfigError(f"{where}rope_scaling must be an object, got {_shown(self.rope_scaling)}")
            check_rope_scaling(self.rope_scaling, f"{where}rope_scaling", self.rope_theta, self.n_ctx,
                               self.rotary_dim or self.d_head)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"{where}extra must be an object")
        if self.rotary_dim == 0:
            self.rotary_dim = self.d_head
        if not 0 < self.rotary_dim <= self.d_head or self.rotary_dim % 2:
            raise ConfigError(f"{where}rotary dimension {self.rotary_dim} must be even and within the head size {self.d_head}")
        if self.d_embed == 0:
            self.d_embed = self.d_model
        _check_optional_positive(((a, getattr(self, a)) for a in ("embed_multiplier", "logits_divisor")), where)
        if self.layer_windows is not None:
            if not isinstance(self.layer_windows, list):
                raise ConfigError(f"{where}layer windows must be a list, got {_shown(self.layer_windows)}")
            if len(self.layer_windows) != self.n_layers:
                raise ConfigError(f"{where}{len(self.layer_windows)} layer types for {self.n_layers} layers")
            if not all(w is None or _positive_int(w) for w in self.layer_windows):
                raise ConfigError(f"{where}sliding windows must be positive integers up to 2**31, "
                                  f"got {_shown(self.layer_windows)}")

        if self.kinds is None:
            self.stack = self._derived_stack()
        else:
            self.stack = self.kinds
            check_stack(self.stack, self.n_layers, (self.n_heads, self.n_kv_heads, self.d_head), where)
        if self.decoder is not None:
            check_decoder(self.decoder, where)
        check_tensor_sizes(self, where)

    def _derived_stack(self) -> Stack:
        """The layers the flat fields describe, of the family's kind (`layer_template`):
        one kind per distinct window."""
        rope = (RopeSpec(float(self.rope_theta), self.rotary_dim, freeze(self.rope_scaling) if self.rope_scaling else None)
                if self.positions == "rope" else None)
        t = self.layer_template
        base = replace(t, mlp=replace(t.mlp, d_mlp=self.d_mlp, act=self.act),
                       attn=replace(t.attn, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, d_head=self.d_head,
                                    causal=self.causal, window=self.sliding_window, rope=rope,
                                    scale=self.attn_scale, softcap=self.attn_softcap))
        if self.layer_windows is None:
            return Stack(((base, self.n_layers),))
        specs = {w: base.with_attn(window=w) for w in set(self.layer_windows)}
        return Stack.of(specs[w] for w in self.layer_windows)

    def layer(self, i: int) -> LayerSpec:
        """Layer i's kind."""
        return self.stack.layer(i)

    def window(self, layer: int) -> int | None:
        """The sliding window of one layer (None: the layer sees every allowed key)."""
        return self.layer(layer).attn.window

    def _where(self) -> str:
        return f"{self.name}: " if self.name else ""

    # Compatibility: read-only names for what used to be model-wide booleans, derived from
    # the layer kinds (each family states its quirks there). New code reads `layer(i)`.

    def _any_kind(self, test: Callable[[LayerSpec], Any]) -> bool:
        return any(bool(test(spec)) for spec, _ in self.stack.kinds())

    @property
    def wiring(self) -> str:
        """How layer 0 joins attention and MLP to the residual stream (see parts.block)."""
        return self.layer(0).wiring

    @property
    def post_norm(self) -> bool:
        return self._any_kind(lambda s: s.wiring == "post")

    @property
    def parallel(self) -> bool:
        return self._any_kind(lambda s: s.wiring in ("parallel", "parallel_shared"))

    @property
    def shared_norm(self) -> bool:
        return self._any_kind(lambda s: s.wiring == "parallel_shared")

    @property
    def post_norms(self) -> bool:
        return self._any_kind(lambda s: s.wiring == "sandwich")

    @property
    def qk_norm(self) -> bool:
        return self._any_kind(lambda s: s.attn.qk_norm is not None)

    @property
    def gated_mlp(self) -> bool:
        return self._any_kind(lambda s: s.mlp.kind == "gated")

    @property
    def qkv_bias(self) -> bool:
        return self._any_kind(lambda s: s.attn.qkv_bias)

    @property
    def out_bias(self) -> bool:
        return self._any_kind(lambda s: s.attn.out_bias)

    @property
    def mlp_bias(self) -> bool:
        return self._any_kind(lambda s: s.mlp.bias)

    @property
    def embed_scale(self) -> bool:
        """Gemma's embeddings times √d_model (now `embed_multiplier`)."""
        return self.embed_multiplier == self.d_model ** 0.5

    @property
    def pooler(self) -> bool:
        return "pooler" in self.heads

    @property
    def mlm_head(self) -> bool:
        return "mlm" in self.heads

    @property
    def nsp_head(self) -> bool:
        return "nsp" in self.heads

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
        """The fields a config was built from (the derived `stack` left out)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "stack"}

