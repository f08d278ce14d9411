"""Checkpoint tensors checked against the parts' declared shapes and gathered for the model
(`model.build`) or one block (`block_tensors`); per-expert pieces stacked into 3-D parameters."""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import Tensor

from attnscope.config import ModelConfig
from attnscope.errors import CheckpointError
from attnscope.parts import model_shapes


def block_tensors(cfg: ModelConfig, layer: int, tensors: Iterable[tuple[str, Tensor]],
                  device: str | torch.device, dtype: torch.dtype, stack: str = "") -> dict[str, Tensor]:
    """One block's state dict (names relative to the block) from tensors in our names,
    with the same checks as `build`; `stack` "decoder." for an encoder-decoder's decoder block."""
    prefix = f"{stack}blocks.{layer}."
    need = [name for name in model_shapes(cfg) if name.startswith(prefix)]
    state = _collect(cfg, tensors, need, device, dtype, f"block {layer}")
    return {name[len(prefix):]: tensor for name, tensor in state.items()}


def _collect(cfg: ModelConfig, tensors: Iterable[tuple[str, Tensor]], need: Iterable[str],
             device: str | torch.device, dtype: torch.dtype, what: str,
             optional: Iterable[str] = ()) -> dict[str, Tensor]:
    """The tensors named in `need`, on `device` in `dtype`; every tensor's shape checked
    against the accounting, and every needed one present."""
    shapes = model_shapes(cfg)
    order = list(need)  # load order, for the message
    need = set(order)
    state: dict[str, Tensor] = {}
    stacks: dict[str, tuple[Tensor, set[int]]] = {}  # per-expert pieces, stacked as they come
    for name, tensor in tensors:
        want = shapes.get(name)
        piece = _EXPERT_PIECE.fullmatch(name) if want is None else None
        if piece is not None and piece.group(1) in need:
            _stack_piece(stacks, shapes[piece.group(1)], piece.group(1), int(piece.group(2)), tensor, device, dtype)
            continue
        if want is not None and tuple(tensor.shape) != want:
            raise CheckpointError(
                f"tensor {name} has shape {tuple(tensor.shape)} but config.json implies {want}",
                hint="the weights and config.json belong to different models",
            )
        if name in need:
            state[name] = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor.to(device)
    for name, (stacked, filled) in stacks.items():
        if len(filled) == stacked.shape[0]:
            state[name] = stacked
    skip = set(optional)
    missing = [name for name in order if name not in state and name not in skip]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors {what} needs: {shown}",
                              hint="is this checkpoint complete, and does config.json match it?")
    return state


# One expert's 2-D tensor as a family's table names it (`…experts.gate.weight.{expert}`):
# checkpoints that store experts one by one, stacked into our 3-D parameter here.
_EXPERT_PIECE = re.compile(r"(.+\.experts\.\w+\.(?:weight|bias))\.(\d+)")


def _stack_piece(stacks: dict[str, tuple[Tensor, set[int]]], want: tuple[int, ...], name: str, expert: int,
                 tensor: Tensor, device: str | torch.device, dtype: torch.dtype) -> None:
    """Put expert `expert`'s tensor into row `expert` of `name`'s stacked parameter."""
    if expert >= want[0] or tuple(tensor.shape) != want[1:]:
        raise CheckpointError(
            f"expert {expert}'s tensor for {name} has shape {tuple(tensor.shape)} but config.json implies "
            f"{want[0]} experts of {want[1:]}",
            hint="the weights and config.json belong to different models",
        )
    if name not in stacks:
        stacks[name] = (torch.empty(want, device=device, dtype=dtype), set())
    stacked, filled = stacks[name]
    stacked[expert] = tensor.to(device=device, dtype=dtype)
    filled.add(expert)
