"""Hostile files where a model folder, the Hugging Face cache or a GGUF folder should hold
model files (issue 22: "every file a command reads", "walking folders").

Every file is read through `attnscope.safe_io` (a regular file, inside its root,
size-capped, depth-checked JSON), so each class below is one line on stderr and a
non-zero exit, answered in seconds:

1. generation_config.json and tokenizer_config.json: a FIFO, a link to /dev/zero, a
   link out of the folder, a sparse file past the cap, JSON nested 100,000 deep, JSON
   that is not an object (a missing file is still fine);
2. the hub cache: `refs/main` as a FIFO, `../../..`, a link out of the repository, not a
   hash; a snapshot or repository folder linked from outside the cache; a cached GGUF
   linked from outside; the same through `REPO:QUANT`;
3. folders: `attnscope models` over a tree 1,100 levels deep and a folder linked into
   itself; listings past the entry bound; a GGUF folder whose .gguf links elsewhere;
4. a bounded fuzzing run over each reader (config.json, generation_config.json,
   tokenizer_config.json, the shard index, refs/main): random bytes and random JSON
   either work or raise an `AttnscopeError`, never anything else.

Anything that could hang or allocate runs in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_gguf
from attnscope import checkpoint, safe_io
from attnscope.chat import read_chat_info
from attnscope.config import read_config_json
from attnscope.errors import AttnscopeError, ModelNotFoundError
from attnscope.models import hub_entries
from attnscope.sources import gguf_path, hub
from test_hostile import assert_error, assert_process_error, cli_process, one_error_line, run

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXT = "a blue cat sat on the mat"
DEEP = "[" * 100_000 + "]" * 100_000
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@pytest.fixture()
def llama(build: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of the tiny causal llama (it can generate), to spoil."""
    folder = tmp_path / "llama"
    shutil.copytree(build("llama"), folder)
    return folder


def generate(folder: Path, cwd: Path) -> Any:
    return cli_process(["generate", "hi", "-m", folder, "--chat", "-n", "2"], cwd, timeout=60)


# ------------------------------------------- 1. generation_config.json, tokenizer_config.json

CHAT_FILES = ["generation_config.json", "tokenizer_config.json"]


@pytest.mark.parametrize("name", CHAT_FILES)
def test_fifo_chat_file_is_one_line(name: str, llama: Path, tmp_path: Path) -> None:
    (llama / name).unlink(missing_ok=True)
    os.mkfifo(llama / name)
    start = time.monotonic()
    assert_process_error(generate(llama, tmp_path), 1, "not a regular file", name)
    assert time.monotonic() - start < 60
    # attend loads the same files: it must not wait either
    assert_process_error(cli_process(["attend", TEXT, "-m", llama], tmp_path, timeout=60), 1, "not a regular file")


@pytest.mark.parametrize("name", CHAT_FILES)
def test_link_to_dev_zero_is_one_line(name: str, llama: Path, tmp_path: Path) -> None:
    (llama / name).unlink(missing_ok=True)
    (llama / name).symlink_to("/dev/zero")
    assert_process_error(generate(llama, tmp_path), 1, "not a regular file", name)


@pytest.mark.parametrize("name", CHAT_FILES)
def test_chat_file_linked_from_outside_is_refused(name: str, llama: Path, tmp_path: Path) -> None:
    """A tokenizer_config.json from elsewhere would supply the chat template: refused."""
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"chat_template": "{{ 'planted' }}", "eos_token_id": 1}))
    (llama / name).unlink(missing_ok=True)
    (llama / name).symlink_to(outside)
    assert_process_error(generate(llama, tmp_path), 1, "outside the model folder", name)


@pytest.mark.parametrize("name", CHAT_FILES)
def test_chat_file_linked_inside_is_fine(name: str, llama: Path) -> None:
    (llama / "sub").mkdir()
    (llama / "sub" / name).write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    (llama / name).unlink(missing_ok=True)
    (llama / name).symlink_to(Path("sub") / name)
    read_chat_info(llama, {})


@pytest.mark.parametrize("name", CHAT_FILES)
@pytest.mark.parametrize(("text", "words"), [
    (DEEP, "nests deeper than"),
    ('{"eos_token_id": ' + "9" * 5000 + "}", "number longer than"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"a": ', "not valid JSON"),
    ("\udcff", "not UTF-8"),
])
def test_hostile_json_in_chat_file(name: str, text: str, words: str, llama: Path) -> None:
    (llama / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    line = assert_error(run("generate", "hi", "-m", llama, "--chat", "-n", "2"), 1, words, name)
    assert len(line) < 400
    with pytest.raises(AttnscopeError):
        read_chat_info(llama, {})


def test_chat_file_past_the_cap(llama: Path) -> None:
    with open(llama / "generation_config.json", "wb") as f:
        f.truncate(safe_io.MAX_SMALL_JSON + 1)  # sparse: costs no disk
    with pytest.raises(AttnscopeError, match="exceeds the 16 MiB limit"):
        read_chat_info(llama, {})


def test_missing_chat_files_are_fine(llama: Path) -> None:
    for name in CHAT_FILES:
        (llama / name).unlink(missing_ok=True)
    info = read_chat_info(llama, {"eos_token_id": 7})
    assert info.eos_ids == [7] and info.template is None


def test_named_templates_with_odd_names(llama: Path) -> None:
    (llama / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": ["unhashable"], "template": "x"}, {"name": "default", "template": "{{ 'ok' }}"}, "junk"]}))
    assert read_chat_info(llama, {}).template == "{{ 'ok' }}"


# ------------------------------------------------------------------------- 2. the hub cache


def make_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT) -> Path:
    """`source`'s files as `repo_id` in huggingface_hub's layout (blobs and links)."""
    repo = hub.repo_folder(repo_id, cache)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for i, src in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"{i:064x}"
        shutil.copyfile(src, blob)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def hub_params(cache: Path, repo_id: str, cwd: Path) -> Any:
    return cli_process(["params", "-m", repo_id, "--json"], cwd, timeout=60,
                       script=_with_env(HF_HUB_CACHE=str(cache)))


def _with_env(**env: str) -> str:
    return ("import os, sys; os.environ.update(" + repr(env) + "); sys.argv[0] = 'attnscope'; "
            "from attnscope.cli import main; main()")


@pytest.fixture()
def cache(build: Callable[[str], Path], tmp_path: Path) -> Path:
    cache = tmp_path / "hub"
    make_cache(cache, "org/model", build("bert_bare"))
    return cache


def test_a_sound_cache_still_works(cache: Path, tmp_path: Path) -> None:
    proc = hub_params(cache, "org/model", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert hub.cached_snapshot("org/model", cache) == cache / "models--org--model" / "snapshots" / COMMIT


def ref(cache: Path) -> Path:
    return cache / "models--org--model" / "refs" / "main"


@pytest.mark.parametrize(("how", "words"), [
    ("fifo", "not a regular file"),
    ("dev-zero", "outside its repository's folder"),
    ("dotdot", "does not hold a commit hash"),
    ("garbage", "does not hold a commit hash"),
    ("huge", "exceeds"),
    ("link-out", "outside its repository's folder"),
])
def test_hostile_refs_main(how: str, words: str, cache: Path, tmp_path: Path) -> None:
    path = ref(cache)
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "dotdot":
        path.write_text("../../..")
    elif how == "garbage":
        path.write_bytes(b"\x1b[31m" + os.urandom(64))
    elif how == "huge":
        with open(path, "wb") as f:
            f.truncate(1 << 30)  # sparse
    else:
        (tmp_path / "planted").write_text(COMMIT)
        path.symlink_to(tmp_path / "planted")
    with pytest.raises(ModelNotFoundError) as err:
        hub.cached_snapshot("org/model", cache)
    assert words in err.value.message
    assert_process_error(hub_params(cache, "org/model", tmp_path), 1, words)
    # the listing goes on: the snapshot is listed by its hash
    names = {e.name for e in hub_entries(cache)}
    assert "org/model" in names


def test_refs_main_dotdot_never_leaves_the_cache(cache: Path, tmp_path: Path) -> None:
    """With refs/main = ../../.., huggingface_hub would return the folder holding the cache."""
    (tmp_path / "config.json").write_text("{}")  # what it would have found there
    ref(cache).write_text("../../..")
    line = assert_process_error(hub_params(cache, "org/model", tmp_path), 1, "refs/main")
    assert "config.json" not in line


def test_snapshot_linked_from_outside_the_repo(cache: Path, build: Callable[[str], Path], tmp_path: Path) -> None:
    snapshot = cache / "models--org--model" / "snapshots" / COMMIT
    shutil.rmtree(snapshot)
    shutil.copytree(build("bert_bare"), tmp_path / "elsewhere")
    snapshot.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_process_error(hub_params(cache, "org/model", tmp_path), 1, "outside its repository's folder")
    [entry] = [e for e in hub_entries(cache) if e.name == "org/model"]
    assert not entry.supported and "outside" in entry.reason


def test_repo_folder_linked_from_outside_the_cache(build: Callable[[str], Path], tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    make_cache(tmp_path / "other", "org/model", build("bert_bare"))
    cache.mkdir()
    (cache / "models--org--model").symlink_to(tmp_path / "other" / "models--org--model", target_is_directory=True)
    assert_process_error(hub_params(cache, "org/model", tmp_path), 1, "outside the hub cache")
    [entry] = hub_entries(cache)
    assert not entry.supported and "outside the hub cache" in entry.reason


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gguf.llama(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")


def gguf_cache(cache: Path, gguf: Path, outside: Path | None = None) -> Path:
    source = cache.parent / "gguf-source"
    source.mkdir(exist_ok=True)
    shutil.copy(gguf, source / gguf.name)
    snapshot = make_cache(cache, "org/tiny-GGUF", source)
    if outside is not None:  # the snapshot's link points at a file outside the cache instead
        shutil.copy(gguf, outside)
        (snapshot / gguf.name).unlink()
        (snapshot / gguf.name).symlink_to(outside)
    return snapshot


def test_cached_gguf_linked_from_outside(gguf_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    gguf_cache(cache, gguf_file, outside=tmp_path / "planted.gguf")
    with pytest.raises(ModelNotFoundError, match="outside the cache folder"):
        hub.snapshot_ggufs(cache / "models--org--tiny-GGUF" / "snapshots" / COMMIT)
    proc = cli_process(["attend", TEXT, "-m", "org/tiny-GGUF:Q8_0"], tmp_path, timeout=60,
                       script=_with_env(HF_HUB_CACHE=str(cache)))
    assert_process_error(proc, 1, "outside the cache folder")
    [entry] = [e for e in hub_entries(cache) if e.format == "gguf"]
    assert not entry.supported and "outside the cache folder" in entry.reason


def test_gguf_repo_with_fifo_ref(gguf_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    gguf_cache(cache, gguf_file)
    proc = cli_process(["attend", TEXT, "-m", "org/tiny-GGUF:Q8_0"], tmp_path, timeout=60,
                       script=_with_env(HF_HUB_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr  # sound, first
    path = cache / "models--org--tiny-GGUF" / "refs" / "main"
    path.unlink()
    os.mkfifo(path)
    proc = cli_process(["attend", TEXT, "-m", "org/tiny-GGUF:Q8_0"], tmp_path, timeout=60,
                       script=_with_env(HF_HUB_CACHE=str(cache)))
    assert_process_error(proc, 1, "not a regular file", "refs")


# ------------------------------------------------------------------------------- 3. folders


@pytest.fixture()
def deep_tree() -> Any:
    """`make(root, depth)`: `depth` nested folders `d/` under `root` with a file at the
    bottom, made and removed relative to stay under PATH_MAX (shutil.rmtree, which
    pytest's clean-up uses, recurses and would fail on them)."""
    made: list[tuple[Path, int]] = []

    def make(root: Path, depth: int) -> Path:
        cwd = os.getcwd()
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)
        try:
            for _ in range(depth):
                os.mkdir("d")
                os.chdir("d")
            Path("deep.gguf").write_bytes(b"GGUF")
        finally:
            os.chdir(cwd)
        made.append((root, depth))
        return root

    yield make
    cwd = os.getcwd()
    try:
        for root, depth in made:
            os.chdir(root)
            for _ in range(depth):
                os.chdir("d")
            os.unlink("deep.gguf")
            for _ in range(depth):
                os.chdir("..")
                os.rmdir("d")
    finally:
        os.chdir(cwd)


def test_models_over_a_1100_deep_tree(cache: Path, tmp_path: Path, deep_tree: Any) -> None:
    snapshot = cache / "models--org--model" / "snapshots" / COMMIT
    deep_tree(snapshot / "nested", 1100)
    deep_tree(cache / "models--org--interrupted", 1100)  # no snapshot: its size is walked
    (snapshot / "loop").symlink_to(snapshot, target_is_directory=True)  # a folder linked into itself
    start = time.monotonic()
    proc = cli_process(["models", "--json"], tmp_path, timeout=60, script=_with_env(HF_HUB_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert models["org/model"]["supported"], models["org/model"]
    assert "no snapshot" in models["org/interrupted"]["reason"]


def test_hub_gguf_over_a_deep_tree(gguf_file: Path, tmp_path: Path, deep_tree: Any) -> None:
    cache = tmp_path / "hub"
    snapshot = gguf_cache(cache, gguf_file)
    deep_tree(snapshot / "nested", 1100)
    (snapshot / "loop").symlink_to(snapshot, target_is_directory=True)
    assert hub.snapshot_ggufs(snapshot) == [snapshot / gguf_file.name]


def test_walk_is_bounded(tmp_path: Path, deep_tree: Any) -> None:
    for i in range(30):
        (tmp_path / f"f{i}").write_text("")
    with pytest.raises(ModelNotFoundError, match="more than 20 entries"):
        list(safe_io.walk_files(tmp_path, 3, ModelNotFoundError, limit=20))
    with pytest.raises(AttnscopeError, match="more than 20 entries"):
        safe_io.list_dir(tmp_path, limit=20)
    assert len(list(safe_io.walk_files(tmp_path, 3))) == 30
    deep_tree(tmp_path / "tree", 50)
    found = list(safe_io.walk_files(tmp_path / "tree", 10))
    assert found == [] and len(list(safe_io.walk_files(tmp_path / "tree", 50))) == 1


def test_gguf_folder_whose_file_links_elsewhere(gguf_file: Path, tmp_path: Path) -> None:
    """A GGUF is the whole model in one file (weights, tokenizer, template): a link to it
    that the user put in a folder names it as surely as its path does (issue 12's tests
    load such a folder), so it is followed; it must still be a regular file."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gguf_file)
    assert gguf_path(str(folder)) == folder / "model.gguf"
    (folder / "model.gguf").unlink()
    os.mkfifo(folder / "model.gguf")
    assert gguf_path(str(folder)) is None  # a FIFO is no GGUF: never opened
    (folder / "model.gguf").unlink()
    shutil.copy(gguf_file, folder / "model.gguf")
    assert gguf_path(str(folder)) == folder / "model.gguf"


def test_extensionless_fifo_is_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "blob")
    assert gguf_path(str(tmp_path / "blob")) is None


# ------------------------------------------------------------------- 4. fuzzing every reader

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# A JSON object with the keys the readers look at, holding anything.
keyed = st.fixed_dictionaries({}, optional={
    k: json_values for k in ("eos_token_id", "chat_template", "bos_token", "eos_token", "weight_map",
                             "model_type", "metadata")})
documents = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | keyed.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([DEEP.encode(), b'{"eos_token_id": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"",
                       b'{"weight_map": {"a": "../x.safetensors"}}', b'{"weight_map": {"a": "/etc/passwd"}}',
                       COMMIT.encode(), b"../../..", b"\0" * 40])
)


def _only_our_errors(call: Callable[[], Any]) -> None:
    try:
        call()
    except AttnscopeError as exc:
        assert "\n" not in exc.message and len(exc.message) < 2000, exc.message


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory, build: Callable[[str], Path]) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(build("bert_bare"), root / "model")
    make_cache(root / "hub", "org/model", build("bert_bare"))
    return root


@FUZZ
@given(data=documents)
def test_fuzz_config_json(fuzz_root: Path, data: bytes) -> None:
    path = fuzz_root / "config.json"
    path.write_bytes(data)
    _only_our_errors(lambda: read_config_json(path))


@FUZZ
@given(name=st.sampled_from(CHAT_FILES), data=documents)
def test_fuzz_chat_files(fuzz_root: Path, name: str, data: bytes) -> None:
    folder = fuzz_root / "model"
    (folder / name).write_bytes(data)
    try:
        _only_our_errors(lambda: read_chat_info(folder, {}))
    finally:
        (folder / name).unlink()


@FUZZ
@given(data=documents)
def test_fuzz_shard_index(fuzz_root: Path, data: bytes) -> None:
    folder = fuzz_root / "model"
    (folder / "model.safetensors.index.json").write_bytes(data)
    try:
        _only_our_errors(lambda: checkpoint.locate(str(folder)))
    finally:
        (folder / "model.safetensors.index.json").unlink()


@FUZZ
@given(data=documents)
def test_fuzz_refs_main(fuzz_root: Path, data: bytes) -> None:
    cache = fuzz_root / "hub"
    (cache / "models--org--model" / "refs" / "main").write_bytes(data)
    _only_our_errors(lambda: hub.cached_snapshot("org/model", cache))
    entries = hub_entries(cache)
    assert [e.name for e in entries if e.name.startswith("org/model")]

