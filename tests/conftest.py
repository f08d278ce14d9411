"""Shared fixtures: tiny checkpoints built once per session, our Inspector on them, and
the transformers reference model for the same folder.

Every checkpoint is built offline by `tiny_models` into a session temporary folder; every
fixture here is a cached getter taking the builder's name, so a test asks for exactly the
models it needs and each is built, loaded and referenced at most once per session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

import tiny_models
from family_checks import cached as _cached

# Nothing in the tests may reach the network: every checkpoint is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`build(name) -> Path`: the folder of the tiny checkpoint `tiny_models.BUILDERS[name]`,
    or of `tiny_models_kinds.KIND_BUILDERS[name]` (the families whose layers differ), or of
    `tiny_models_qwen3_5.QWEN3_5_BUILDERS[name]` (the hybrids with linear layers)."""
    import tiny_models_kinds
    import tiny_models_qwen3_5

    builders = {**tiny_models.BUILDERS, **tiny_models_kinds.KIND_BUILDERS, **tiny_models_qwen3_5.QWEN3_5_BUILDERS}
    return _cached(lambda name: builders[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="session")
def inspector(build: Callable[[str], Path]) -> Callable[..., Any]:
    """`inspector(name, device="cpu") -> attnscope Inspector` on that checkpoint, float32."""

    def make(name: str, device: str = "cpu") -> Any:
        from attnscope.api import load

        return load(str(build(name)), device=device, dtype="float32")

    return _cached(make)


@pytest.fixture()
def bert(build: Callable[[str], Path]) -> Path:
    """The tiny BertModel checkpoint (`bert_bare`: 2 layers, 4 heads, 64 positions)."""
    return build("bert_bare")


@pytest.fixture(scope="session")
def folder(build: Callable[[str], Path]) -> Callable[[str], Path]:
    """`folder(name) -> Path`: `build` under the name the family tests use."""
    return build


@pytest.fixture(scope="session")
def ours(inspector: Callable[..., Any]) -> Callable[..., Any]:
    """`ours(name, device="cpu") -> Inspector`: `inspector` under the name the family tests use."""
    return inspector


@pytest.fixture(scope="session")
def reference(build: Callable[[str], Path]) -> Callable[[str], Any]:
    """`reference(name) -> transformers model`: the class named in config.json's
    `architectures`, eager attention, float32 on the CPU, in eval mode. Loading must use
    every tensor in the file and miss none, or the reference would be partly random."""

    return _cached(lambda name: tiny_models.load_reference(build(name)))


@pytest.fixture(scope="session")
def raw_tokenizer(build: Callable[[str], Path]) -> Callable[[str], Any]:
    """`raw_tokenizer(name)`: the `tokenizers.Tokenizer` from that folder's tokenizer.json
    with its saved padding and truncation switched off: the ids our code must produce."""
    return _cached(lambda name: tiny_models.plain_tokenizer(build(name)))


# The new families' checkpoints (`tiny_models.FAMILY_BUILDERS`), kept apart from
# BUILDERS so that tests/test_parity.py's parametrization is unchanged; same getters.


@pytest.fixture(scope="session")
def family_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`family_build(name) -> Path`: the folder of `tiny_models.FAMILY_BUILDERS[name]`."""
    return _cached(lambda name: tiny_models.FAMILY_BUILDERS[name](tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="session")
def family_inspector(family_build: Callable[[str], Path]) -> Callable[..., Any]:
    """`family_inspector(name, device="cpu") -> attnscope Inspector`, float32."""

    def make(name: str, device: str = "cpu") -> Any:
        from attnscope.api import load

        return load(str(family_build(name)), device=device, dtype="float32")

    return _cached(make)


@pytest.fixture(scope="session")
def family_reference(family_build: Callable[[str], Path]) -> Callable[[str], Any]:
    """`family_reference(name) -> transformers model`, loaded as `reference` loads one."""
    return _cached(lambda name: tiny_models.load_reference(family_build(name)))


@pytest.fixture(scope="session")
def family_tokenizer(family_build: Callable[[str], Path]) -> Callable[[str], Any]:
    """`family_tokenizer(name)`: that folder's tokenizer.json, padding and truncation off."""
    return _cached(lambda name: tiny_models.plain_tokenizer(family_build(name)))
