"""`attnscope params`: parameter breakdowns from a preset, a config or checkpoint headers
(safetensors, or a GGUF's tensor table with its bytes per quantization type)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

import os

from attnscope.cli._app import Convention, Dtype, JsonOpt, _console, _print_json, app
from attnscope.errors import UsageError
from attnscope.sources.packaged import names_for_help

# params reads headers only and has no default model: one of --config or --model is needed.
_MODEL_HELP = (f"Count a checkpoint's stored tensors: a packaged model by name ({names_for_help(mark_default=False)}), "
               "a checkpoint folder, a .safetensors or .gguf file, or a hub id from the local cache.")






@app.command(
    epilog="Examples:\n\n  attnscope params --config gpt3\n\n  attnscope params --config llama3-8b --context 8192\n\n"
    "  attnscope params --model ./my-checkpoint --json\n\n  attnscope params --model smollm2-135m-instruct\n\n"
    "  attnscope params --model ./model.Q4_K_M.gguf --context 4096\n\n  attnscope params --list",
)
def params(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="A preset name, or a config.json (or a folder with one).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="MODEL", help=_MODEL_HELP)] = None,
    convention: Annotated[
        Optional[Convention],
        typer.Option(help="3b1b: weight matrices only, as the video counts; full: every stored parameter, tied once."),
    ] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=1, help="Show pattern size, KV cache and FLOPs at N tokens.")] = None,
    dtype: Annotated[Dtype, typer.Option(help="Bytes per value for --context memory figures.")] = Dtype.float32,
    as_json: JsonOpt = False,
    list_presets: Annotated[bool, typer.Option("--list", help="List the presets with their shapes.")] = False,
) -> None:
    """Count parameters per head, per block and per model.

    The gpt3 presets headline the [bold]3b1b[/] convention (the video's: weight matrices
    only); configs and checkpoints headline [bold]full[/] (every stored parameter).
    """
    from attnscope import config as cfgmod
    from attnscope import params as pm
    from attnscope.params import stored
    from attnscope.render import params as render

    if list_presets:
        rows = []
        for name in cfgmod.PRESETS:
            conv = cfgmod.preset_convention(name)
            rep = pm.report(cfgmod.preset(name), conv)
            rows.append((name, rep.cfg, rep.total, conv))
        from attnscope.architectures import ARCHITECTURES

        families = {name: module.DESCRIPTION for name, module in sorted(ARCHITECTURES.items())}
        if as_json:
            _print_json({"presets": [{"name": r[0], "family": r[1].family, "total": r[2], "convention": r[3],
                                      "shape": pm.report_dict(pm.report(r[1]))["shape"]} for r in rows],
                         "families": families})
        else:
            console = _console()
            render.preset_list(console, rows)
            render.family_list(console, families)
        return
    if (config is None) == (model is None):
        raise UsageError("give exactly one of --config or --model", hint="e.g. attnscope params --config gpt3")
    if config is not None:
        cfg, default_conv, source = _config_source(config)
        rep = pm.report(cfg, (convention.value if convention else default_conv), source)
    else:
        from attnscope.errors import ModelNotFoundError
        from attnscope.sources import packaged

        try:
            rep = _checkpoint_report(model, convention.value if convention else "full")
        except ModelNotFoundError as exc:
            raise packaged.with_suggestion(model, exc) from None
    if isinstance(rep, stored.UnknownReport):  # a family attnscope does not know: the headers' counts only
        if as_json:
            _print_json(stored.unknown_dict(rep))
        else:
            render.unknown_report(_console(), rep, context=bool(context))
        return
    ctx = pm.context_report(rep.cfg, context, dtype.value) if context else None
    if as_json:
        _print_json(pm.report_dict(rep, ctx))
    else:
        render.params_report(_console(), rep, ctx)


def _config_source(spec: str) -> tuple[Any, str, str]:
    from attnscope import config as cfgmod
    from attnscope.errors import ConfigError

    if spec.strip().lower() in cfgmod.PRESETS:
        return cfgmod.preset(spec), cfgmod.preset_convention(spec), spec
    path = Path(spec).expanduser()
    if path.exists():
        return cfgmod.load_config(path), "full", str(path)
    if "/" in spec or os.sep in spec or spec.endswith(".json"):
        raise ConfigError(f"no such file or folder: {spec}", hint="pass a config.json, a folder holding one, or a preset name")
    return cfgmod.preset(spec), "full", spec  # raises UnknownPresetError with suggestions


def _checkpoint_report(spec: str, convention: str) -> Any:
    """A checkpoint's stored tensors from headers only: a packaged model by name, a GGUF
    (its tensor table, with bytes per ggml type), or safetensors with their config.json.
    A family attnscope does not know (no family module for its config.json's model_type,
    or none named; no family for a GGUF's architecture) still gets every tensor counted,
    grouped by name (`params.stored.UnknownReport`)."""
    from attnscope import checkpoint as ck
    from attnscope import config as cfgmod
    from attnscope import params as pm
    from attnscope.errors import ConfigError
    from attnscope.params import stored
    from attnscope.sources import gguf_path
    from attnscope.sources import packaged

    where, name = spec, spec
    if spec in packaged.PACKAGED:
        where, name = str(packaged.resolve(spec)), packaged.PACKAGED[spec].title
    gguf = gguf_path(where)
    if gguf is not None:
        from attnscope.sources.gguf import read_gguf

        f = read_gguf(gguf)
        if not stored.gguf_family_known(f):
            return stored.unknown_from_gguf(f, str(gguf), name)
        return pm.report_from_gguf(f, convention, str(gguf), name)
    ckpt = ck.locate(where)
    from attnscope.architectures import ARCHITECTURES

    if ckpt.config_path is None:
        raise ConfigError(
            f"{ckpt.root} has no config.json, so the stored tensors cannot be broken down",
            hint="put the model's config.json beside the weights",
        )
    shapes = ((tensor, info.shape) for tensor, info in ckpt.tensors.items())
    raw = cfgmod.read_config_json(ckpt.config_path)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        shown = cfgmod._shown(model_type)
        family = None if model_type is None else model_type[:100] if isinstance(model_type, str) else shown
        reason = ("config.json names no model_type" if model_type is None
                  else f"model_type {shown} is not one attnscope knows")
        return stored.report_unknown(shapes, where, name, family, reason)
    cfg = cfgmod.from_hf_config(raw, name=ckpt.config_path.parent.name or str(ckpt.config_path))  # as load_config
    cfg.name = name  # what the user named: a hub id, not its snapshot's hash

    family = ARCHITECTURES.get(cfg.family)
    if family is not None:  # a weight that is not a float: the same line as loading gives
        ck.check_weight_dtypes(ckpt, family)
    stored, skipped = pm.stored_shapes(ckpt, cfg)
    return pm.report_from_stored(cfg, stored, convention, where, skipped)
