"""extproc.tokenization: each implementation against what the backend computes, and the --tokenizer specs.

* approximate: the ids the simulator computes (its tokenizer delegates to it), and its chat template as data
  (``DEFAULT_TOKENIZER_CONFIG``) renders exactly like the Python template;
* Hugging Face: a real ``tokenizer.json`` trained here with the ``tokenizers`` library (nothing is downloaded)
  and ``tests/fixtures/tokenizers/llama3_tokenizer_config.json`` (Llama-3's chat template); vLLM encodes a
  completion prompt with special tokens and a rendered chat without (``vllm/entrypoints/openai/protocol.py``:
  ``add_special_tokens`` defaults True for ``CompletionRequest``, False for ``ChatCompletionRequest``);
* vLLM ``/tokenize``: the real simulator on port 0 (its ``/tokenize`` follows
  ``vllm/entrypoints/openai/protocol.py`` ``TokenizeCompletionRequest``/``TokenizeChatRequest``/
  ``TokenizeResponse``) and a misbehaving HTTP server on port 0 (timeouts, errors, malformed answers).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import extproc.tokenization as tokenization
from extproc.tokenization import (
    DEFAULT_TOKENIZER_CONFIG,
    ApproxTokenizer,
    HFTokenizer,
    JinjaChatTemplate,
    Tokenizer,
    TokenizerConfigError,
    TokenizerSpec,
    VLLMTokenizer,
    approx,
    build_tokenizer,
    parse_tokenize_response,
    parse_tokenizer_spec,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers"
LLAMA3_CONFIG = FIXTURES / "llama3_tokenizer_config.json"
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
CHAT = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi there"}]


def test_public_names() -> None:
    assert sorted(tokenization.__all__) == sorted([
        "DEFAULT_TOKENIZER", "DEFAULT_TOKENIZER_CONFIG", "DEFAULT_TOKENIZE_TIMEOUT_S", "ApproxTokenizer",
        "ChatTemplate", "HFTokenizer", "JinjaChatTemplate", "LocalTokenizer", "Messages", "TextTokenizer",
        "TokenizeResponseError", "Tokenizer", "TokenizerConfigError", "TokenizerSpec", "VLLMTokenizer",
        "build_tokenizer", "load_tokenizer_config", "parse_tokenize_response", "parse_tokenizer_spec",
    ])  # fmt: skip


# --- approximate --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_kind", "payload", "expected_pieces"),
    [
        ("prompt", "Hello world", ["Hell", "o", " wor", "ld"]),
        ("prompt", "", []),
        ("prompt", "<|eot_id|>x", ["<|eot_id|>", "x"]),
        ("chat", [{"role": "user", "content": "Hi"}],
         ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n", "Hi", "<|eot_id|>",
          "<|start_header_id|>", "assi", "stan", "t", "<|end_header_id|>", "\n\n"]),
        ("chat", [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                                               {"type": "text", "text": "b"}]}],
         ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n", "ab", "<|eot_id|>",
          "<|start_header_id|>", "assi", "stan", "t", "<|end_header_id|>", "\n\n"]),
    ],
)  # fmt: skip
async def test_approx_ids(request_kind: str, payload: Any, expected_pieces: list[str]) -> None:
    tok = ApproxTokenizer()
    ids = await (tok.prompt_ids(payload) if request_kind == "prompt" else tok.chat_ids(payload))
    assert ids == [zlib.crc32(p.encode()) for p in expected_pieces]


async def test_approx_matches_the_simulator() -> None:
    from benchmarks.simulator import tokenizer as sim

    tok = ApproxTokenizer()
    text = "You are a helpful assistant.\n\nSummarise:  the  report"
    assert await tok.prompt_ids(text) == sim.encode(text)
    assert await tok.chat_ids(CHAT) == sim.encode(sim.apply_chat_template(CHAT))
    assert await sim.TOKENIZER.chat_ids(CHAT) == await tok.chat_ids(CHAT)


@pytest.mark.parametrize(
    ("messages", "valid"),
    [([{"role": "user"}], True), ([{"role": "user", "content": None}], True), ([{"content": "x"}], False),
     ([{"role": 3, "content": "x"}], False), ([5], False), ([{"role": "u", "content": 5}], False),
     ([{"role": "u", "content": [{"type": "text", "text": 1}]}], False)],
)  # fmt: skip
async def test_approx_malformed_messages_give_none_and_count(messages: Any, valid: bool) -> None:
    tok = ApproxTokenizer()
    assert isinstance(tok, Tokenizer)
    ids = await tok.chat_ids(messages)
    assert (ids is not None) == valid
    assert tok.errors == (0 if valid else 1)


_messages = st.lists(
    st.fixed_dictionaries({
        "role": st.sampled_from(["system", "user", "assistant", "tool"]),
        "content": st.one_of(
            st.none(), st.text(max_size=40),
            st.lists(st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}),
                               st.fixed_dictionaries({"type": st.just("image_url")})), max_size=3),
        ),
    }),
    max_size=4,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(_messages, st.booleans())
def test_default_config_template_renders_like_the_python_template(messages: Any, generation: bool) -> None:
    template = JinjaChatTemplate.from_config(DEFAULT_TOKENIZER_CONFIG)
    assert template.content_format == "openai"  # it walks the content parts itself, like the Python one
    rendered = template.render(messages, add_generation_prompt=generation)
    assert rendered == approx.apply_chat_template(messages, generation)


def test_default_config_template_on_a_fixed_chat() -> None:
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief. <|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert JinjaChatTemplate.from_config(DEFAULT_TOKENIZER_CONFIG).render(CHAT) == expected
    assert approx.apply_chat_template(CHAT) == expected


async def test_approx_with_a_config_uses_its_template() -> None:
    tok = build_tokenizer(f"approx,config={LLAMA3_CONFIG}")
    assert isinstance(tok, ApproxTokenizer)
    # Llama-3's template trims the content ("Be brief. " -> "Be brief."): the ids differ from the built-in one.
    assert await tok.chat_ids(CHAT) == approx.encode(approx.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]))


# --- Hugging Face -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Llama-3-like ``tokenizer.json`` (byte-level BPE, the four header/BOS specials, a BOS added by
    the post-processor) trained on a few sentences, beside the Llama-3 ``tokenizer_config.json``."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["You are a helpful assistant. Be brief.", "Hi there, summarise the report for me please.",
              "system user assistant tool"] * 20
    raw.train_from_iterator(corpus, trainer)
    bos = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    directory = tmp_path_factory.mktemp("llama3-like")
    raw.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(LLAMA3_CONFIG.read_text())
    return directory


def _raw(hf_dir: Path) -> Any:
    from tokenizers import Tokenizer as RawTokenizer

    return RawTokenizer.from_file(str(hf_dir / "tokenizer.json"))


LLAMA3_RENDERED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.mark.parametrize("spec", ["hf:{dir}", "hf:{dir}/tokenizer.json", "hf:{dir}/tokenizer.json,config={cfg}"])
async def test_hf_tokenizes_like_vllm(hf_dir: Path, spec: str) -> None:
    tok = build_tokenizer(spec.format(dir=hf_dir, cfg=LLAMA3_CONFIG))
    assert isinstance(tok, HFTokenizer)
    raw = _raw(hf_dir)
    bos = raw.token_to_id("<|begin_of_text|>")
    # A completion prompt: special tokens added (one BOS), as /v1/completions does.
    prompt_ids = await tok.prompt_ids("Hi there, summarise the report.")
    assert prompt_ids == raw.encode("Hi there, summarise the report.", add_special_tokens=True).ids
    assert prompt_ids is not None and prompt_ids[0] == bos and bos not in prompt_ids[1:]
    # A chat: the template renders the BOS itself, and the text is encoded without special tokens (one BOS).
    assert tok.template.render(CHAT) == LLAMA3_RENDERED
    chat_ids = await tok.chat_ids(CHAT)
    assert chat_ids == raw.encode(LLAMA3_RENDERED, add_special_tokens=False).ids
    assert chat_ids is not None and chat_ids[0] == bos and chat_ids.count(bos) == 1
    # The special tokens are single tokens, not spelled out.
    assert raw.token_to_id("<|eot_id|>") in chat_ids


async def test_hf_string_content_format_joins_text_parts_with_newlines(hf_dir: Path) -> None:
    tok = build_tokenizer(f"hf:{hf_dir}")
    assert isinstance(tok, HFTokenizer)
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "\n\na\nb<|eot_id|>" in tok.template.render(parts)  # vLLM's "string" content format


async def test_hf_template_exceptions_give_none(tmp_path: Path, hf_dir: Path) -> None:
    config = {"chat_template": "{{ raise_exception('no system role') }}", "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = build_tokenizer(f"hf:{hf_dir}/tokenizer.json,config={tmp_path / 'tokenizer_config.json'}")
    assert isinstance(tok, HFTokenizer)
    assert await tok.chat_ids(CHAT) is None and tok.errors == 1


def test_jinja_template_helpers() -> None:
    template = JinjaChatTemplate(
        "{% for m in messages %}{{ m['content'] | tojson }}{% if loop.last %}{% break %}{% endif %}{% endfor %}"
        "{{ eos_token }}",
        {"eos_token": "</s>"},
    )
    assert template.render([{"role": "user", "content": "é"}]) == '"é"</s>'


# --- factory --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("approx", TokenizerSpec("approx")),
        (" APPROX ", TokenizerSpec("approx")),
        ("approx,config=/m/tokenizer_config.json", TokenizerSpec("approx", config="/m/tokenizer_config.json")),
        ("hf:/models/llama", TokenizerSpec("hf", "/models/llama")),
        ("hf:/m/tokenizer.json,config=/m/c.json", TokenizerSpec("hf", "/m/tokenizer.json", config="/m/c.json")),
        ("vllm:http://10.0.0.5:8000", TokenizerSpec("vllm", "http://10.0.0.5:8000")),
        ("vllm:https://h/,model=meta-llama/Llama-3.1-8B-Instruct,timeout=0.2",
         TokenizerSpec("vllm", "https://h/", model="meta-llama/Llama-3.1-8B-Instruct", timeout_s=0.2)),
    ],
)  # fmt: skip
def test_parse_tokenizer_spec(text: str, expected: TokenizerSpec) -> None:
    assert parse_tokenizer_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown kind ''"),
        ("bpe:/x", "unknown kind 'bpe'"),
        ("approx:/x", "'approx' takes no ':TARGET'"),
        ("hf", "'hf:' needs a tokenizer.json or its directory"),
        ("hf:", "'hf:' needs a tokenizer.json or its directory"),
        ("vllm:", "'vllm:' needs the instance's URL"),
        ("vllm:localhost:8000", "must start with http:// or https://"),
        ("vllm:http://h,timeout=0", "timeout must be a number of seconds > 0"),
        ("vllm:http://h,timeout=soon", "timeout must be a number of seconds > 0"),
        ("vllm:http://h,timeout=inf", "timeout must be a number of seconds > 0"),
        ("vllm:http://h,config=/x", "'vllm' has no option 'config' (options: model, timeout)"),
        ("hf:/x,model=m", "'hf' has no option 'model' (options: config)"),
        ("hf:/x,config", "option 'config' is not key=value"),
        ("hf:/x,config=", "option 'config=' is not key=value"),
        ("vllm:http://h,model=a,model=b", "option 'model' given twice"),
    ],
)
def test_parse_tokenizer_spec_errors(text: str, message: str) -> None:
    with pytest.raises(TokenizerConfigError, match="--tokenizer") as info:
        parse_tokenizer_spec(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_build_errors_name_the_file(tmp_path: Path, hf_dir: Path) -> None:
    cases = [
        (f"hf:{tmp_path}/missing.json", f"tokenizer file '{tmp_path}/missing.json' does not exist"),
        (f"hf:{tmp_path}", f"tokenizer file '{tmp_path}/tokenizer.json' does not exist"),
    ]
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    cases.append((f"hf:{tmp_path}/lonely", "tokenizer_config.json' does not exist (the chat template comes from it"))
    (tmp_path / "bad.json").write_text("{not json")
    cases.append((f"hf:{tmp_path}/bad.json,config={LLAMA3_CONFIG}", "bad.json' cannot be loaded"))
    (tmp_path / "nochat.json").write_text(json.dumps({"bos_token": "<s>"}))
    cases.append((f"hf:{hf_dir},config={tmp_path}/nochat.json", "nochat.json' has no 'chat_template'"))
    (tmp_path / "list.json").write_text("[]")
    cases.append((f"approx,config={tmp_path}/list.json", "list.json' must be a JSON object"))
    cases.append((f"approx,config={tmp_path}/bad.json", "bad.json' is not valid JSON"))
    cases.append((f"approx,config={tmp_path}/none.json", "cannot read tokenizer config"))
    (tmp_path / "broken.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    cases.append((f"approx,config={tmp_path}/broken.json", "chat template does not compile"))
    for spec, message in cases:
        with pytest.raises(TokenizerConfigError) as info:
            build_tokenizer(spec)
        assert message in str(info.value), spec


# --- vLLM /tokenize -------------------------------------------------------------------------------------------
@pytest.fixture
async def simulator() -> AsyncIterator[Any]:
    from benchmarks.simulator import SimConfig, SimServer

    server = SimServer(SimConfig(name="tok", port=0, time_scale=0.0, log_level="warning"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_vllm_tokenize_against_the_simulator(simulator: Any) -> None:
    tok = build_tokenizer(f"vllm:{simulator.url},timeout=2")
    assert isinstance(tok, VLLMTokenizer) and isinstance(tok, Tokenizer)
    try:
        assert await tok.prompt_ids("Hello world") == approx.encode("Hello world")
        assert tok.model == simulator.config.model_name  # the first model of /v1/models
        assert await tok.chat_ids(CHAT) == await ApproxTokenizer().chat_ids(CHAT)
        assert tok.requests == 2 and tok.errors == 0
        assert await tok.chat_ids([{"role": 3}]) is None and tok.errors_http == 1  # the simulator answers 400
    finally:
        await tok.aclose()
        await tok.aclose()  # idempotent


class _Misbehaving(BaseHTTPRequestHandler):
    mode = "ok"
    last_body: Any = None

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        type(self).last_body = json.loads(self.rfile.read(length))
        mode = type(self).mode
        if mode == "slow":
            time.sleep(1.0)
        status, body = {
            "ok": (200, b'{"count": 2, "max_model_len": 8192, "tokens": [7, 9]}'),
            "slow": (200, b'{"count": 0, "max_model_len": 8192, "tokens": []}'),
            "500": (500, b'{"error": {"message": "boom"}}'),
            "notjson": (200, b"<html>"),
            "badshape": (200, b'{"tokens": "7 9"}'),
            "badcount": (200, b'{"count": 3, "tokens": [7, 9]}'),
        }[mode]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the slow answer's client has gone (timed out): a broken pipe is expected


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, type[_Misbehaving]]]:
    handler = type("Handler", (_Misbehaving,), {"mode": "ok"})
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


async def test_vllm_request_bodies(misbehaving: tuple[str, type[_Misbehaving]]) -> None:
    url, handler = misbehaving
    tok = VLLMTokenizer(url, model="m", timeout_s=2.0)
    try:
        assert await tok.prompt_ids("hi") == [7, 9]
        assert handler.last_body == {"model": "m", "prompt": "hi", "add_special_tokens": True}
        assert await tok.chat_ids(CHAT) == [7, 9]
        assert handler.last_body == {"model": "m", "messages": CHAT, "add_generation_prompt": True}
    finally:
        await tok.aclose()


@pytest.mark.parametrize(
    ("mode", "counter"),
    [("500", "errors_http"), ("notjson", "errors_parse"), ("badshape", "errors_parse"),
     ("badcount", "errors_parse"), ("slow", "errors_timeout")],
)  # fmt: skip
async def test_vllm_failures_give_none_and_count(
    misbehaving: tuple[str, type[_Misbehaving]], mode: str, counter: str
) -> None:
    url, handler = misbehaving
    handler.mode = mode
    tok = VLLMTokenizer(url, model="m", timeout_s=0.1)
    try:
        started = time.monotonic()
        assert await tok.prompt_ids("hi") is None
        assert time.monotonic() - started < 0.6  # bounded by the timeout, not by the server
        assert getattr(tok, counter) == 1 and tok.errors == 1
        handler.mode = "ok"
        assert await tok.prompt_ids("hi") == [7, 9]  # and it still works afterwards
    finally:
        await tok.aclose()


async def test_vllm_refused_connection_counts() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    tok = VLLMTokenizer(f"http://127.0.0.1:{port}", model="m", timeout_s=1.0)
    assert await tok.prompt_ids("hi") is None and tok.errors_connect == 1
    await tok.aclose()


@pytest.mark.parametrize(
    ("data", "ok"),
    [({"count": 1, "max_model_len": 9, "tokens": [1]}, True), ({"tokens": []}, True),
     ({"tokens": [1, True]}, False), ({"tokens": [-1]}, False), ([1, 2], False), ({}, False)],
)  # fmt: skip
def test_parse_tokenize_response(data: Any, ok: bool) -> None:
    if ok:
        assert parse_tokenize_response(data) == data["tokens"]
    else:
        with pytest.raises(ValueError):
            parse_tokenize_response(data)
