"""The options and choices the commands share, defined once (after Typer's docs and the
`hf` CLI): `str` Enums for choices and `Annotated` aliases (`ModelOpt`, `LayerOpt`, …)
that each command names in its signature. Names only: importing this reads no model and
no torch, so `params` and `--help` stay fast.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from attnscope.sources import packaged as _packaged  # names only: no torch, no model read


class Convention(str, Enum):
    b3b1 = "3b1b"
    full = "full"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", metavar="MODEL", help=f"A packaged model by name ({_packaged.names_for_help()}), a checkpoint folder, a .safetensors or .gguf file, or a hub id (REPO[:QUANT] for GGUF) from the local cache: attnscope models lists them."),
]


class View(str, Enum):
    focus = "focus"
    topk = "topk"
    heatmap = "heatmap"
    overview = "overview"
    experts = "experts"
    align = "align"  # an encoder-decoder's cross-attention as an alignment table (--target)


class Part(str, Enum):
    """Which attention of an encoder-decoder `attend --target` shows (hooks.PARTS)."""

    cross = "cross"
    encoder = "encoder"
    decoder = "decoder"


TargetOpt = Annotated[Optional[str], typer.Option("--target", metavar="TEXT", help="An encoder-decoder (T5, BART): the output text; the source goes through the encoder, the decoder reads its start token then TEXT (teacher forcing).")]
PartOpt = Annotated[Optional[Part], typer.Option("--part", help="With --target: cross (default; rows target tokens, columns source tokens), encoder or decoder self-attention.")]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoadDtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class MeasureName(str, Enum):
    weight = "weight"
    norm = "norm"
    rollout = "rollout"
    alti = "alti"
    value_zeroing = "value-zeroing"


MeasureOpt = Annotated[MeasureName, typer.Option(
    "--measure", help="weight: attention α; norm: ‖α·f(x)‖, what each key actually moves; rollout: flow through the layers; "
    "alti: each token's share of the layer's output (Ferrando et al. 2022), rolled out; value-zeroing: how far zeroing a "
    "token's values moves each output (Mohebbi et al. 2023).")]


class PerHeadMeasure(str, Enum):
    """The measures that keep each head apart (rollout mixes a layer's heads into one
    matrix): what `heads` and `generate` offer."""

    weight = "weight"
    norm = "norm"


# Asked of a command that keeps heads apart, these are answered in one line: they are per
# layer, not per head (cli._group reads this when the parser refuses the value).
PER_LAYER_MEASURES = tuple(m.value for m in MeasureName if m.value not in PerHeadMeasure._value2member_map_)

PerHeadMeasureOpt = Annotated[PerHeadMeasure, typer.Option(
    "--measure", help="weight: attention α; norm: ‖α·f(x)‖, what each key actually moves. (Rollout, alti and value-zeroing are per layer, not per head: attnscope attend --measure alti.)")]
LayerOpt = Annotated[Optional[str], typer.Option("--layer", "-l", help="Layers: 3, -1 (last), 0,2,5, 1-3, 2: or all.")]
HeadOpt = Annotated[Optional[str], typer.Option("--head", "-H", help="Heads: same forms as --layer.")]
class DeviceList(str):
    """`--device cuda:1`, or a list `cuda:0,cuda:1` whose devices share the blocks
    (`attnscope.pipeline.placement`); read like a `Device` member (`.value`)."""

    @property
    def value(self) -> str:
        return str(self)


def _device(text: "str | Device") -> "Device | DeviceList":
    """A --device value: auto, cpu, cuda, cuda:N, or a comma-separated list of cuda:N."""
    word = str(text.value if isinstance(text, Device) else text).strip()
    try:
        return Device(word)
    except ValueError:
        pass
    if word.startswith("cuda:"):
        return DeviceList(word)
    raise typer.BadParameter(f"{word!r} is not a device: use auto, cpu, cuda, cuda:N or a list such as cuda:0,cuda:1")


DeviceOpt = Annotated[Device, typer.Option(parser=_device, metavar="DEVICE", help="Where to run: auto, cpu, cuda, cuda:N, or several GPUs sharing the layers, cuda:0,cuda:1 (auto with several GPUs uses them all).")]
LoadDtypeOpt = Annotated[LoadDtype, typer.Option("--dtype", metavar="DTYPE", help="Weights' dtype: auto, float32, bfloat16 or float16 (auto: float32 on CPU, the checkpoint's on GPU). Softmax is always float32.")]
PipelineOpt = Annotated[bool, typer.Option("--pipeline", help="Under torchrun: split the model's layers across the processes, each loading only its share (rank 0 prints and writes). With --dry-run: each rank's weights and memory.")]
RanksOpt = Annotated[Optional[int], typer.Option("--ranks", min=2, max=4096, help="With --dry-run --pipeline: how many processes the run would have (default: WORLD_SIZE).", show_default=False)]
NoColorOpt = Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Cut a text longer than the model's positions instead of failing.")]


