"""`attend SOURCE --target TARGET` beyond the attention weight, on the encoder-decoders
(T5, BART; tests/tiny_models_seq2seq.py), and the mBART / Marian presets.

1. the mBART and Marian presets count what transformers counts for their published
   configs (tests/data/real_configs/, `_num_parameters` computed by transformers on the
   meta device, recomputed by tests/test_kinds_groundwork.py), through `params --config`.
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from attnscope.config import from_hf_config, preset
from attnscope.params import param_shapes

REAL_CONFIGS = Path(__file__).parent / "data" / "real_configs"
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": "", "ATTNSCOPE_DEBUG": "", "ATTNSCOPE_MODEL": ""}


def _cli(*args: Any) -> Any:
    from attnscope.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _one_error(result: Any) -> str:
    assert result.exit_code != 0 and result.stdout == "", (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name, family, published", [("mbart-large-cc25", "mbart", 610_851_840),
                                                     ("opus-mt-en-de", "marian", 74_410_496)])
def test_seq2seq_presets_count_their_published_configs(name: str, family: str, published: int) -> None:
    raw = json.loads((REAL_CONFIGS / f"{name}.json").read_text())
    expected = raw.pop("_num_parameters")
    assert expected == published
    assert sum(prod(s) for s in param_shapes(from_hf_config(raw, name)).values()) == expected
    cfg = preset(name)
    assert cfg.decoder is not None and sum(prod(s) for s in param_shapes(cfg).values()) == expected
    result = _cli("params", "--config", name, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == expected and doc["family"] == family
    # the preset is the published file's model, field for field where attnscope reads it
    published_cfg = from_hf_config(raw, name)
    for field in ("d_model", "n_heads", "n_layers", "vocab_size", "n_ctx", "positions", "norm", "tied_embeddings",
                  "final_norm", "embed_norm"):
        assert getattr(cfg, field, None) == getattr(published_cfg, field, None), field
    assert cfg.decoder == published_cfg.decoder
    assert cfg.extra.get("decoder_start_token_id") == published_cfg.extra.get("decoder_start_token_id")
