"""The MLP slot of a block: dense (up, act, down), gated (act(gate) * up, down), or a
mixture of experts (`parts.experts`, gpt-fast's `mixtral-moe` shape)."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.kinds import MlpSpec

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class DenseMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: MlpSpec) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, spec.d_mlp, bias=spec.bias)
        self.down = nn.Linear(spec.d_mlp, cfg.d_model, bias=spec.bias)
        self.act = ACTIVATIONS[spec.act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class GatedMLP(nn.Module):
    """SwiGLU / GeGLU."""

    def __init__(self, cfg: ModelConfig, spec: MlpSpec) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, spec.d_mlp, bias=spec.bias)
        self.up = nn.Linear(cfg.d_model, spec.d_mlp, bias=spec.bias)
        self.down = nn.Linear(spec.d_mlp, cfg.d_model, bias=spec.bias)
        self.act = ACTIVATIONS[spec.act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def make_mlp(cfg: ModelConfig, spec: MlpSpec) -> nn.Module:
    """The MLP of a layer of kind `spec` (its shapes: `parts.mlp_shapes`)."""
    if spec.kind == "experts":
        from attnscope.parts.experts import Experts  # it builds on this module's GatedMLP

        return Experts(cfg, spec)
    return GatedMLP(cfg, spec) if spec.kind == "gated" else DenseMLP(cfg, spec)
