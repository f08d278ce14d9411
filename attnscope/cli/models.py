"""`attnscope models`: what can be opened offline, from packaged models and the hub cache."""

from __future__ import annotations

from attnscope.cli._app import JsonOpt, _console, _print_json, app


@app.command(epilog="Examples:\n\n  attnscope models\n\n  attnscope models --json")
def models(as_json: JsonOpt = False) -> None:
    """List the models attnscope can open offline: packaged ones and the Hugging Face cache.

    Each is read from its headers only (no weights are loaded): family, parameters, size on disk, and whether attnscope supports it, or why not. HF_HUB_CACHE and HF_HOME choose the cache, as for huggingface_hub.
    """
    from attnscope import models as lib
    from attnscope.checkpoint import hub_cache_dir
    from attnscope.render import models as render

    cache = hub_cache_dir()
    entries = lib.discover(cache)
    if as_json:
        _print_json({"models": [lib.entry_dict(e) for e in entries]})
    else:
        render.models_listing(_console(), entries, cache)
