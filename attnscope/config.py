"""ModelConfig: the one description of a model's shape that everything downstream uses.

Follows gpt-fast's `ModelArgs`: a dataclass whose `__post_init__` derives what a config
leaves out (key/value heads default to the query heads, `d_head` to width / heads) and,
after TransformerLens, validates itself with messages that name the bad value.

Presets (`attnscope.presets`) are plain dicts in Hugging Face `config.json` form, looked
up by exact name and read through the same `from_hf_config()` path as a real checkpoint's
config, so there is one way to turn a description into a `ModelConfig`.

Every number a config declares is checked against what can exist before anything is
sized from it (rule 10): see the bounds below. Counting parameters is arithmetic on
these sizes, so a config declaring 10**15 layers is refused at once rather than
enumerated.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from attnscope.errors import ConfigError, UnknownPresetError
from attnscope.kinds import ATTENTION_KINDS, MLP_KINDS, QK_NORMS, WIRINGS, AttnSpec, LayerSpec, MlpSpec, RopeSpec, Stack, freeze
from attnscope.presets import PRESETS  # noqa: F401  (re-exported: config.PRESETS)

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "none")

# Bounds on what a config may declare: far above any real model, low enough that nothing
# sized from them (a list per layer, an index into a tensor) can run away.
MAX_LAYERS = 100_000  # the deepest published models have a few hundred; per-layer lists stay small
MAX_SIZE = 2**31  # widths, vocabulary, positions, windows: int32 indexing; real ones are below 2**18..2**24
# n_heads <= d_model (a head has at least one dimension of the width), and n_heads * d_head,
# the query projection's width, <= MAX_SIZE too.
_BOUNDED = ("d_model", "d_mlp", "vocab_size", "n_ctx")
# The only booleans a ModelConfig has: model-wide and generic (tests/test_config_fields.py
# holds each one's reason). A family's quirk is its layer kind (`layer_template`), not a flag.
_BOOLEANS = ("causal", "embed_norm", "final_norm", "lm_head", "tied_embeddings", "unembed_bias")
TASK_HEADS = ("pooler", "mlm", "nsp")  # BertModel's pooler, BertForMaskedLM's MLM head, the NSP classifier
# A layer kind with nothing of its own: pre-norm, dense MLP, no biases, no q/k norm. Sizes are
# placeholders (0), filled from the flat fields by `ModelConfig._derived_stack`.
PLAIN_LAYER = LayerSpec(AttnSpec(0, 0, 0), MlpSpec("dense", 0, ""))
# config.json keys the family readers pass through bool(): the string "false" would read as True.
_HF_BOOLEANS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_parallel_residual",
                "do_layer_norm_before", "enable_bias", "is_decoder", "qkv_bias", "use_bias")


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN, not ±inf: json.loads('1e400') is inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


def _positive_int(value: Any, limit: int = MAX_SIZE) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def _shown(value: Any, limit: int = 60) -> str:
    """A declared value for an error message, cut short (a 10**4000 or a 1e6-long list)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond str()'s digit limit
        text = f"an integer of about {value.bit_length() * 3 // 10:,} digits" if isinstance(value, int) else "?"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        self._check_template()
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
        for attr in ("n_types", "pos_offset", "d_embed", "rotary_dim"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
                raise ConfigError(f"{where}{attr} must be a non-negative integer up to 2**31, got {_shown(value)}")
        if not _number(self.rope_theta) or self.rope_theta < 1:
            # below 1 the "slowest" frequency would be the fastest: no RoPE model has one
            raise ConfigError(f"{where}rope_theta must be a finite number of at least 1, got {_shown(self.rope_theta)}")
        if not _number(self.norm_eps) or self.norm_eps < 0:
            raise ConfigError(f"{where}norm_eps must be a finite non-negative number, got {_shown(self.norm_eps)}")
        if not _number(self.norm_offset):
            raise ConfigError(f"{where}norm_offset must be a finite number, got {_shown(self.norm_offset)}")
        for attr in ("attn_scale", "attn_softcap", "final_softcap"):
            value = getattr(self, attr)
            if value is not None and (not _number(value) or value <= 0):
                raise ConfigError(f"{where}{attr} must be a finite positive number, got {_shown(value)}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ConfigError(f"{where}rope_scaling must be an object, got {_shown(self.rope_scaling)}")
            self._check_rope_scaling(self.rope_scaling)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"{where}extra must be an object")
        if self.rotary_dim == 0:
            self.rotary_dim = self.d_head
        if not 0 < self.rotary_dim <= self.d_head or self.rotary_dim % 2:
            raise ConfigError(f"{where}rotary dimension {self.rotary_dim} must be even and within the head size {self.d_head}")
        if self.d_embed == 0:
            self.d_embed = self.d_model
        for attr in ("embed_multiplier", "logits_divisor"):
            value = getattr(self, attr)
            if value is not None and (not _number(value) or value <= 0):
                raise ConfigError(f"{where}{attr} must be a finite positive number, got {_shown(value)}")
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
            self._check_stack()

    def _check_template(self) -> None:
        """The family's layer kind: a LayerSpec of known kinds, wiring and q/k norm, its
        flags true or false (a template's sizes are placeholders, checked once filled)."""
        where, t = self._where(), self.layer_template
        if not isinstance(t, LayerSpec) or not isinstance(t.attn, AttnSpec) or not isinstance(t.mlp, MlpSpec):
            raise ConfigError(f"{where}layer_template must be a LayerSpec, got {_shown(t)}")
        if t.attn.kind not in ATTENTION_KINDS or t.mlp.kind not in MLP_KINDS or t.wiring not in WIRINGS:
            raise ConfigError(f"{where}unsupported layer kind {t.attn.kind}/{t.mlp.kind}/{t.wiring}")
        if t.attn.qk_norm is not None and t.attn.qk_norm not in QK_NORMS:
            raise ConfigError(f"{where}unknown q/k norm {t.attn.qk_norm!r}")
        for name, value in (("qkv_bias", t.attn.qkv_bias), ("out_bias", t.attn.out_bias), ("mlp bias", t.mlp.bias)):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}the layer's {name} must be true or false, got {_shown(value)}")
        if not _number(t.residual_scale) or t.residual_scale <= 0:
            raise ConfigError(f"{where}a layer's residual scale must be a finite positive number, got {_shown(t.residual_scale)}")

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

    def _check_stack(self) -> None:
        """A family's own layer kinds: every number bounded, every name known, and the
        sizes every consumer still reads model-wide (heads, head size) shared by all."""
        where = self._where()
        if not isinstance(self.stack, Stack) or len(self.stack) != self.n_layers:
            raise ConfigError(f"{where}the layer kinds do not cover the {self.n_layers} layers")
        for spec, _ in self.stack.kinds():
            a, m = spec.attn, spec.mlp
            if a.kind not in ATTENTION_KINDS or m.kind not in MLP_KINDS or spec.wiring not in WIRINGS:
                raise ConfigError(f"{where}unsupported layer kind {a.kind}/{m.kind}/{spec.wiring}")
            if (a.n_heads, a.n_kv_heads, a.d_head) != (self.n_heads, self.n_kv_heads, self.d_head):
                raise ConfigError(f"{where}layers with different head counts or sizes are not supported yet")
            if not _positive_int(m.d_mlp) or m.act not in ACTIVATIONS:
                raise ConfigError(f"{where}a layer's MLP has a bad size or activation: {_shown(m)}")
            if a.window is not None and not _positive_int(a.window):
                raise ConfigError(f"{where}sliding windows must be positive integers up to 2**31, got {_shown(a.window)}")
            if a.qk_norm is not None and a.qk_norm not in QK_NORMS:
                raise ConfigError(f"{where}unknown q/k norm {a.qk_norm!r}")
            for name, value in (("scale", a.scale), ("softcap", a.softcap), ("residual scale", spec.residual_scale)):
                if value is not None and (not _number(value) or value <= 0):
                    raise ConfigError(f"{where}a layer's {name} must be a finite positive number, got {_shown(value)}")
            if a.rope is not None:
                if not _number(a.rope.theta) or a.rope.theta < 1:
                    raise ConfigError(f"{where}rope_theta must be a finite number of at least 1, got {_shown(a.rope.theta)}")
                if a.rope.scaling_type == "yarn":  # a layer kind's own YaRN (OLMo 3's full layers)
                    self._check_yarn(a.rope.scaling_dict or {}, f"{where}rope_scaling", a.rope.theta)
                if not isinstance(a.rope.rotary_dim, int) or not 0 < a.rope.rotary_dim <= a.d_head or a.rope.rotary_dim % 2:
                    raise ConfigError(f"{where}rotary dimension {_shown(a.rope.rotary_dim)} must be even and within the head size {a.d_head}")

    def layer(self, i: int) -> LayerSpec:
        """Layer i's kind."""
        return self.stack.layer(i)

    def _check_rope_scaling(self, scaling: dict[str, Any]) -> None:
        """llama3 scaling: every factor a positive number, high above low (they divide);
        longrope (Phi-3): see `_check_longrope`."""
        where = f"{self._where()}rope_scaling"
        if scaling.get("rope_type", scaling.get("type")) == "longrope":
            self._check_longrope(scaling, where)
            return
        if scaling.get("rope_type", scaling.get("type")) == "yarn":
            self._check_yarn(scaling, where, self.rope_theta)
            return
        values = {}
        for key, default in (("factor", None), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                             ("original_max_position_embeddings", self.n_ctx)):
            value = scaling.get(key, default)
            if not _number(value) or value <= 0:
                raise ConfigError(f"{where} {key} must be a finite positive number, got {_shown(value)}")
            values[key] = value
        if values["high_freq_factor"] <= values["low_freq_factor"]:
            raise ConfigError(f"{where} high_freq_factor must exceed low_freq_factor")

    def _check_yarn(self, scaling: dict[str, Any], where: str, theta: float) -> None:
        """YaRN (OLMo 3): a positive original context, the optional numbers positive, and a
        base above 1 (its ramp divides by ln base)."""
        if not _positive_int(scaling.get("original_max_position_embeddings")):
            raise ConfigError(f"{where} original_max_position_embeddings must be a positive integer up to 2**31, "
                              f"got {_shown(scaling.get('original_max_position_embeddings'))}")
        for key in ("factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            value = scaling.get(key)
            if value is not None and (not _number(value) or value <= 0):
                raise ConfigError(f"{where} {key} must be a finite positive number, got {_shown(value)}")
        if not isinstance(scaling.get("truncate", True), bool):
            raise ConfigError(f"{where} truncate must be true or false, got {_shown(scaling.get('truncate'))}")
        if theta <= 1:
            raise ConfigError(f"{where}: YaRN needs a rope_theta above 1, got {_shown(theta)}")

    def _check_longrope(self, scaling: dict[str, Any], where: str) -> None:
        """longrope (Phi-3): one short and one long factor per rotated frequency, each a
        finite positive number (they divide the frequencies); a positive original context
        (the switch between the sets); factor and attention_factor, if given, positive."""
        rotary = self.rotary_dim or self.d_head
        for key in ("short_factor", "long_factor"):
            value = scaling.get(key)
            if not isinstance(value, (list, tuple)) or len(value) != rotary // 2:
                raise ConfigError(f"{where} {key} must list {rotary // 2} numbers (one per rotated frequency), "
                                  f"got {_shown(value)}")
            if not all(_number(v) and v > 0 for v in value):
                raise ConfigError(f"{where} {key} must hold finite positive numbers, got {_shown(value)}")
        value = scaling.get("original_max_position_embeddings")
        if not _positive_int(value):
            raise ConfigError(f"{where} original_max_position_embeddings must be a positive integer up to 2**31, "
                              f"got {_shown(value)}")
        for key in ("factor", "attention_factor"):
            value = scaling.get(key)
            if value is not None and (not _number(value) or value <= 0):
                raise ConfigError(f"{where} {key} must be a finite positive number, got {_shown(value)}")

    def window(self, layer: int) -> int | None:
        """The sliding window of one layer (None: the layer sees every allowed key)."""
        return self.layer(layer).attn.window

    def _where(self) -> str:
        return f"{self.name}: " if self.name else ""

    # Compatibility: read-only names for what used to be model-wide booleans, derived from
    # the layer kinds (each family states its quirks there). New code reads `layer(i)`.

    def _any_kind(self, test: Any) -> bool:
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
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "stack"}
        return out


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
    """Parse a config.json into a dict, with errors that name the file. Only a regular
    file of at most 100 MiB is read (a FIFO would block, a huge file fill the memory), and
    parsed as depth-checked JSON (`safe_io.loads_json`)."""
    from attnscope.safe_io import MAX_JSON, loads_json, read_regular

    try:
        data = read_regular(path, "config.json", MAX_JSON, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}", hint="pass a folder that holds config.json") from None
    raw = loads_json(data, str(path), ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _check_booleans(raw: dict[str, Any], name: str) -> None:
    for key in _HF_BOOLEANS:
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            where = f"{name}: " if name else ""
            raise ConfigError(f"{where}config.json's {key} must be true or false, got {_shown(value)}")


def from_hf_config(raw: dict[str, Any], name: str = "") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict via its family's module."""
    from attnscope.architectures import family_for

    if not isinstance(raw, dict):
        raise ConfigError(f"{name + ': ' if name else ''}config.json must hold a JSON object, not {type(raw).__name__}")
    module = family_for(raw)
    _check_booleans(raw, name)
    try:
        return module.config_from_hf(raw, name=name)
    except ConfigError:
        raise
    except KeyError as exc:
        raise ConfigError(
            f"{name + ': ' if name else ''}config.json lacks the field {_shown(exc.args[0])}",
            hint="is this the model's own config.json?",
        ) from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError) as exc:
        # ArithmeticError: int(inf), 1 // 0 in a reader; the value is checked in ModelConfig after
        raise ConfigError(f"{name + ': ' if name else ''}config.json has a bad value: {_shown(str(exc), 200)}") from None


def load_config(path: Path) -> ModelConfig:
    """A ModelConfig from a config.json file, or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"no such file: {path}", hint="pass a config.json or a model folder")
    return from_hf_config(read_config_json(path), name=path.parent.name or str(path))
