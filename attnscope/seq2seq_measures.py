"""`--measure` on an encoder-decoder's parts (`attend SOURCE --target TARGET --measure M`).

* norm (Kobayashi et al. 2020, `measures.transforms.NormMeasure`) on every part:
  ‖α_hij f_h(x_j)‖ with f_h(x) = (x W_V^h + b_V^h) W_O^h the head's value-and-output map;
  for the cross-attention x_j are the encoder's final states (after its final norm), the
  vectors its keys and values are projected from (`parts.cross`). Views get each row
  normalised to sum 1, `--save` the raw values (`encoder_norms`, `decoder_norms`,
  `cross_norms`).
* rollout, alti, value-zeroing read one stack's residual stream, layer after layer: on
  the encoder part (an ordinary bidirectional stack, its sites `blocks.N.attn`) they run
  as on an encoder alone; the decoder and cross parts are refused with the reason
  (`check`).
"""

from __future__ import annotations

from typing import Any, Optional

from attnscope.errors import UsageError

PER_STACK = ("rollout", "alti", "value-zeroing")  # measures read along one stack's residual stream

# Why a per-stack measure has no meaning on a part other than the encoder.
_WHY = {
    ("rollout", "cross"): "rollout composes a stack's self-attention layers along its residual stream; the "
                          "cross-attention mixes two sequences (rows: target, columns: source), with no flow to compose",
    ("rollout", "decoder"): "rollout composes a stack's self-attention layers along its residual stream; each decoder "
                            "layer also adds the source through its cross-attention, which the decoder's "
                            "self-attention alone does not account for",
    ("alti", "cross"): "ALTI splits a layer's output into its own input tokens; a cross-attention's output "
                       "is made of source tokens added to the target's stream",
    ("alti", "decoder"): "ALTI splits a layer's output into its own input tokens; a decoder layer's output also "
                         "holds the source, added by its cross-attention",
    ("value-zeroing", "cross"): "value zeroing compares a token's output with a token's values removed from its "
                                "own stack; a cross-attention's values are the source's, its rows the target's",
    ("value-zeroing", "decoder"): "value zeroing replays a layer without one token's values; a decoder layer's "
                                  "output also holds the source, added by its cross-attention",
}


def check(measure: str, part: Optional[str], save: Any = None) -> None:
    """Refuse, before anything loads, a measure that has no meaning on `part` (default
    cross), and a `--save` of every part under a measure of the encoder alone."""
    part = part or "cross"
    if measure not in PER_STACK:
        return
    if part != "encoder":
        raise UsageError(f"--measure {measure} on --part {part}: {_WHY[(measure, part)]}",
                         hint=f"use --part encoder for {measure}, or --measure weight or norm on the {part} part")
    if save is not None:
        raise UsageError(f"--save of a --target run writes all three parts; --measure {measure} is the encoder's alone",
                         hint="use --json (the encoder's matrices), --save-topk, or attend SOURCE without --target "
                              "--save FILE")


def check_model(m: Any, measure: str, n_source: int) -> None:
    """After loading: the encoder's layers the mixing measures cannot read, or n × n
    matrices that would not fit, refused in one line (`measures.mixing.check`)."""
    if measure in ("alti", "value-zeroing"):
        from attnscope.measures import mixing

        mixing.check(m, measure, n_source, 0)


def heads(measure: str, selected: list[int]) -> list[int]:
    """The heads a view keeps under `measure`: rollout and the mixing measures have one
    matrix a layer, handed on as head 0."""
    from attnscope.measures import KINDS

    return selected if KINDS[measure].per_head else [0]


def hooks(model: Any, measure: str, n_source: int, layers: list[int], views: Any, raw: Any = None) -> Any:
    """The hook a pair pass runs: the probes themselves under weight, else the measure's
    wrapper (`measures.transforms.wrap`) handing its values on as patterns. A per-stack
    measure reads the encoder's sites only (`blocks.N.attn`, `hooks.site_layer`), up to
    the last selected layer."""
    from attnscope.hooks import sites
    from attnscope.measures import transforms

    return transforms.wrap(measure, n_source, max(layers, default=0), views, raw, model,
                           sites(model.cfg, "encoder"))
