"""LMCacheIndex (extproc.kv_index.lmcache) against a real local HTTP server that replays controller answers.

``tests/fixtures/lmcache/lookup_response.json`` (and ``lookup_response_empty.json``, ``lookup_error_422.json``)
were RECORDED from a real LMCache controller, lmcache 0.5.6 (``python -m lmcache.v1.api_server``), with two
simulated workers (``benchmarks/simulator/lmcache_worker.py``) registered as ``lmc-a`` and ``lmc-b``: ``lmc-a``
held a 2090-token prompt (8 full chunks), ``lmc-b`` a 4690-token prompt extending it (18 full chunks), and the
lookup asked for the longer prompt plus 50 tokens. No lmcache is needed here; httpx is not mocked: a
``ThreadingHTTPServer`` on port 0 serves the recorded bytes. The index tokenizes with the approximate tokenizer,
the simulator's (``--tokenizer approx``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from extproc.config import Settings
from extproc.kv_index import (
    LMCacheIndex,
    LookupResponseError,
    best_match,
    build_kv_index,
    parse_instance_map,
    parse_lookup_response,
)
from extproc.tokenization import ApproxTokenizer, Messages, VLLMTokenizer
from extproc.tokenization.approx import apply_chat_template, encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmcache"
RECORDED = (FIXTURES / "lookup_response.json").read_bytes()
RECORDED_EMPTY = (FIXTURES / "lookup_response_empty.json").read_bytes()
RECORDED_422 = (FIXTURES / "lookup_error_422.json").read_bytes()
INSTANCE_MAP = {"lmc-a": "vllm-1", "lmc-b": "vllm-2"}
PROMPT = "You are a careful analyst. " * 40
CHAT = [{"role": "system", "content": PROMPT}, {"role": "user", "content": "Summarise."}]


@dataclass
class FakeController:
    """A real HTTP server answering ``POST /lookup`` with ``status``/``body`` after ``delay_s``."""

    url: str = ""
    status: int = 200
    body: bytes = RECORDED
    delay_s: float = 0.0
    received: list[Any] = field(default_factory=list)


@pytest.fixture
def controller() -> Iterator[FakeController]:
    state = FakeController()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            state.received.append((self.path, json.loads(self.rfile.read(length) or b"null")))
            if state.delay_s:
                time.sleep(state.delay_s)
            try:
                self.send_response(state.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _index(url: str, **kwargs: Any) -> LMCacheIndex:
    # A generous timeout except where the timeout is the subject: the machine may be busy.
    kwargs.setdefault("timeout_s", 2.0)
    return LMCacheIndex(url, INSTANCE_MAP, ApproxTokenizer(), **kwargs)


# --- the pure parser ---------------------------------------------------------------------------------------


def test_parse_recorded_response() -> None:
    assert parse_lookup_response(json.loads(RECORDED)) == {"lmc-a": 2048, "lmc-b": 4608}
    assert parse_lookup_response(json.loads(RECORDED_EMPTY)) == {}


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "layout_info",
        {},
        {"event_id": "e"},
        {"event_id": 3, "layout_info": {}},
        {"event_id": "e", "layout_info": []},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend"]}},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend", 256, 1]}},
        {"event_id": "e", "layout_info": {"a": "LocalCPUBackend"}},
        {"event_id": "e", "layout_info": {"a": [1, 256]}},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend", "256"]}},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend", -1]}},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend", True]}},
        {"event_id": "e", "layout_info": {"a": ["LocalCPUBackend", 2.5]}},
    ],
)
def test_parse_rejects_malformed(payload: Any) -> None:
    with pytest.raises(LookupResponseError):
        parse_lookup_response(payload)


def test_parse_ignores_extra_fields() -> None:
    data = {"event_id": "e", "layout_info": {"a": ("LocalCPUBackend", 512)}, "extra": 1}
    assert parse_lookup_response(data) == {"a": 512}


def test_best_match() -> None:
    assert best_match({"vllm-1": 2048, "vllm-2": 4608}) == ("vllm-2", 4608)
    assert best_match({"b": 256, "a": 256}) == ("a", 256)
    assert best_match({}) is None
    assert best_match({"a": 0}) is None


# --- the client over HTTP ----------------------------------------------------------------------------------


async def test_lookup_maps_the_recorded_answer_to_clusters(controller: FakeController) -> None:
    async with _index(controller.url) as index:
        assert await index.lookup(PROMPT) == {"vllm-1": 2048, "vllm-2": 4608}
        assert (index.lookups, index.hits, index.errors) == (1, 1, 0)
    # The prompt was tokenized with the simulator's tokenizer, the one the backends use.
    assert controller.received == [("/lookup", {"tokens": encode(PROMPT)})]


async def test_unknown_instances_are_ignored_and_counted(controller: FakeController) -> None:
    async with LMCacheIndex(controller.url, {"lmc-b": "vllm-2"}, ApproxTokenizer(), 2.0) as index:
        assert await index.lookup(PROMPT) == {"vllm-2": 4608}
        assert index.unknown_instances == 1


async def test_two_instance_ids_on_one_cluster_keep_the_longest(controller: FakeController) -> None:
    both_on_one = {"lmc-a": "vllm-1", "lmc-b": "vllm-1"}
    async with LMCacheIndex(controller.url, both_on_one, ApproxTokenizer(), 2.0) as index:
        assert await index.lookup(PROMPT) == {"vllm-1": 4608}


async def test_empty_layout_is_a_miss_not_an_error(controller: FakeController) -> None:
    controller.body = RECORDED_EMPTY
    async with _index(controller.url) as index:
        assert await index.lookup(PROMPT) == {}
        assert (index.lookups, index.hits, index.errors) == (1, 0, 0)


async def test_empty_prompt_sends_nothing(controller: FakeController) -> None:
    async with _index(controller.url) as index:
        assert await index.lookup("") == {}
    assert controller.received == []


async def test_long_prompts_are_truncated_to_max_tokens(controller: FakeController) -> None:
    async with _index(controller.url, max_tokens=100) as index:
        await index.lookup(PROMPT * 10)
    assert len(controller.received[0][1]["tokens"]) == 100


@pytest.mark.parametrize(
    ("status", "body", "counter"),
    [
        (422, RECORDED_422, "errors_http"),
        (500, b'{"detail": "boom"}', "errors_http"),
        (200, b"not json", "errors_parse"),
        (200, b'{"event_id": "e", "layout_info": {"a": ["LocalCPUBackend"]}}', "errors_parse"),
        (200, b"[]", "errors_parse"),
    ],
)
async def test_bad_answers_give_empty_and_count(
    controller: FakeController, status: int, body: bytes, counter: str
) -> None:
    controller.status, controller.body = status, body
    async with _index(controller.url) as index:
        assert await index.lookup(PROMPT) == {}
        assert getattr(index, counter) == 1 and index.errors == 1 and index.hits == 0


async def test_slow_controller_times_out_fast(controller: FakeController) -> None:
    controller.delay_s = 1.0
    async with _index(controller.url, timeout_s=0.05) as index:
        started = time.perf_counter()
        assert await index.lookup(PROMPT) == {}
        elapsed = time.perf_counter() - started
        assert index.errors_timeout == 1 and index.errors == 1
    assert elapsed < 0.5, elapsed
    controller.delay_s = 0.0
    # The client stays usable after a timeout.
    async with _index(controller.url, timeout_s=2.0) as index:
        assert await index.lookup(PROMPT) == {"vllm-1": 2048, "vllm-2": 4608}


async def test_connection_refused_counts_as_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    async with _index(f"http://127.0.0.1:{port}", timeout_s=1.0) as index:
        assert await index.lookup(PROMPT) == {}
        assert index.errors_connect == 1


class _BrokenTokenizer:
    """Breaks the Tokenizer contract (it raises) or keeps it (``None``); counts its ``aclose`` calls."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises
        self.closed = 0

    async def prompt_ids(self, prompt: str) -> list[int] | None:
        if self.raises:
            raise RuntimeError("no tokenizer")
        return None

    async def chat_ids(self, messages: Messages) -> list[int] | None:
        return await self.prompt_ids("")

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("raises", [True, False])
async def test_tokenizer_failure_counts(controller: FakeController, raises: bool) -> None:
    async with LMCacheIndex(controller.url, INSTANCE_MAP, _BrokenTokenizer(raises), 2.0) as index:
        assert await index.lookup(PROMPT) == {}
        assert await index.cached_fractions(PROMPT, None) is None
        assert await index.cached_fractions(PROMPT, CHAT) is None
        assert index.errors_tokenize == 3 and index.lookups == 3
    assert controller.received == []


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        LMCacheIndex("http://x", {}, ApproxTokenizer(), timeout_s=0)
    with pytest.raises(ValueError):
        LMCacheIndex("http://x", {}, ApproxTokenizer(), max_tokens=0)


# --- cached_fractions: what the servicer asks ----------------------------------------------------------------
LONG = PROMPT * 15  # more tokens than the 4608 the recorded answer matches
LONG_CHAT = [{"role": "system", "content": LONG}, {"role": "user", "content": "Summarise."}]


@pytest.mark.parametrize(
    ("prompt", "messages", "sent_text"),
    [
        # Completion prompts: the prompt's own ids.
        (PROMPT, None, PROMPT),
        (LONG, None, LONG),
        # Chat: the ids of the chat template applied to the messages (what the backend tokenizes), not the
        # prompt text the metadata parser joined.
        ("system\nignored", CHAT, apply_chat_template(CHAT)),
        ("system\nignored", LONG_CHAT, apply_chat_template(LONG_CHAT)),
    ],
)
async def test_cached_fractions(
    controller: FakeController, prompt: str, messages: list[Any] | None, sent_text: str
) -> None:
    async with _index(controller.url) as index:
        fractions = await index.cached_fractions(prompt, messages)
        assert (index.lookups, index.hits, index.errors) == (1, 1, 0)
    tokens = encode(sent_text)
    assert controller.received == [("/lookup", {"tokens": tokens})]
    # Each share = matched / prompt tokens, capped at 1 (the recorded answer: 2048 on vllm-1, 4608 on vllm-2).
    n = len(tokens)
    assert fractions == pytest.approx({"vllm-1": min(1.0, 2048 / n), "vllm-2": min(1.0, 4608 / n)})
    assert (n > 4608) == (fractions is not None and fractions["vllm-2"] < 1.0)


@pytest.mark.parametrize(
    ("status", "body", "prompt", "messages"),
    [
        (200, RECORDED_EMPTY, PROMPT, None),  # no instance holds it
        (500, b"{}", PROMPT, None),  # an error (counted)
        (200, RECORDED, "", None),  # no tokens: nothing is asked
        (200, RECORDED, "", [{"role": 3}]),  # messages the template cannot render (counted)
    ],
)
async def test_cached_fractions_none(
    controller: FakeController, status: int, body: bytes, prompt: str, messages: list[Any] | None
) -> None:
    controller.status, controller.body = status, body
    async with _index(controller.url) as index:
        assert await index.cached_fractions(prompt, messages) is None


async def test_cached_fractions_through_vllm_tokenize(controller: FakeController) -> None:
    """``--tokenizer vllm:URL``: the chat is sent to the instance's /tokenize as messages (here the simulator)."""
    from benchmarks.simulator import SimConfig, SimServer

    server = SimServer(SimConfig(name="vllm-1", port=0, time_scale=0.0, log_level="warning"))
    await server.start()
    try:
        async with LMCacheIndex(controller.url, INSTANCE_MAP, VLLMTokenizer(server.url, timeout_s=2.0), 2.0) as index:
            fractions = await index.cached_fractions("", CHAT)
    finally:
        await server.stop()
    assert fractions is not None and fractions["vllm-2"] == 1.0
    assert controller.received == [("/lookup", {"tokens": encode(apply_chat_template(CHAT))})]


# --- metrics and shutdown ---------------------------------------------------------------------------------------
async def test_collector_exports_the_counters(controller: FakeController) -> None:
    registry = CollectorRegistry()
    async with _index(controller.url) as index:
        registry.register(index.collector())
        await index.lookup(PROMPT)
        controller.status = 500
        await index.lookup(PROMPT)
        await index.cached_fractions("", [{"role": 3}])
    assert registry.get_sample_value("extproc_kv_index_lookups_total") == 3
    assert registry.get_sample_value("extproc_kv_index_hits_total") == 1
    assert registry.get_sample_value("extproc_kv_index_errors_total", {"reason": "http"}) == 1
    assert registry.get_sample_value("extproc_kv_index_errors_total", {"reason": "tokenize"}) == 1
    assert registry.get_sample_value("extproc_kv_index_errors_total", {"reason": "timeout"}) == 0
    assert registry.get_sample_value("extproc_kv_index_unknown_instances_total") == 0


async def test_aclose_closes_the_tokenizer_is_idempotent_and_the_index_stays_usable(
    controller: FakeController,
) -> None:
    tokenizer = _BrokenTokenizer(False)
    index = LMCacheIndex(controller.url, INSTANCE_MAP, tokenizer, 2.0)
    await index.aclose()  # nothing opened yet
    await index.lookup_tokens([1, 2, 3])
    await index.aclose()
    await index.aclose()
    assert tokenizer.closed == 3
    assert await index.lookup_tokens(encode(PROMPT)) == {"vllm-1": 2048, "vllm-2": 4608}  # a new connection
    await index.aclose()


# --- build_kv_index: what the server calls -----------------------------------------------------------------------
def test_build_kv_index() -> None:
    assert build_kv_index(Settings(), ["vllm-1"]) is None  # --kv-index local
    settings = Settings(kv_index="lmcache", lmcache_url="http://ctl:9311/", lmcache_timeout=0.2).validate()
    index = build_kv_index(settings, ["vllm-1", "vllm-2"])
    assert index is not None and isinstance(index.tokenizer, ApproxTokenizer)  # --tokenizer approx (default)
    assert (index.url, index.timeout_s, index.instance_map) == ("http://ctl:9311", 0.2, {"vllm-1": "vllm-1",
                                                                                          "vllm-2": "vllm-2"})
    settings = Settings(kv_index="lmcache", lmcache_url="http://ctl", lmcache_instance_map="a=vllm-1, b=vllm-2",
                        tokenizer="vllm:http://10.0.0.5:8000,model=m,timeout=0.3").validate()
    index = build_kv_index(settings, ["vllm-1", "vllm-2"])
    assert index is not None and index.instance_map == {"a": "vllm-1", "b": "vllm-2"}
    assert isinstance(index.tokenizer, VLLMTokenizer)
    assert (index.tokenizer.base_url, index.tokenizer.model, index.tokenizer.timeout_s) == (
        "http://10.0.0.5:8000", "m", 0.3)


def test_build_kv_index_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tokenizer 'bpe'"):
        Settings(kv_index="lmcache", lmcache_url="http://ctl", tokenizer="bpe").validate()
    settings = Settings(kv_index="lmcache", lmcache_url="http://ctl", tokenizer=f"hf:{tmp_path}").validate()
    with pytest.raises(ValueError, match=r"tokenizer\.json' does not exist"):
        build_kv_index(settings, ["vllm-1"])


def test_tokenizer_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from extproc.config import settings_from_args

    assert settings_from_args([]).tokenizer == "approx"
    assert settings_from_args(["--tokenizer", "vllm:http://h:8000"]).tokenizer == "vllm:http://h:8000"
    monkeypatch.setenv("EXTPROC_TOKENIZER", "hf:/models/llama")
    assert settings_from_args([]).tokenizer == "hf:/models/llama"
    with pytest.raises(ValueError, match="unknown kind"):
        settings_from_args(["--tokenizer", "sentencepiece"])


def test_parse_instance_map() -> None:
    assert parse_instance_map("") == {}
    assert parse_instance_map("a=x, b=y,junk") == {"a": "x", "b": "y"}


# --- importability and the worker's chunk keys (no lmcache) ------------------------------------------------


def test_importable_without_lmcache_and_worker_imports_nothing_heavy() -> None:
    code = (
        "import sys, extproc.kv_index, benchmarks.simulator.lmcache_worker\n"
        "print(sorted(m for m in ('lmcache', 'zmq', 'msgspec', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_loads_the_approximate_tokenizer_standalone(tmp_path: Path) -> None:
    """In LMCache's virtualenv ``extproc`` cannot be imported: the worker loads ``extproc/tokenization/approx.py``
    by path (stdlib only). ``python -S`` (no site-packages) from outside the repository plays that virtualenv."""
    worker = Path(__file__).resolve().parents[2] / "benchmarks" / "simulator" / "lmcache_worker.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('w', {str(worker)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "tok = m.load_tokenizer()\n"
        "print(tok.__name__, 'extproc' in sys.modules)\n"
        "print(m.body_prompt_tokens('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'Hi'}]}))\n"
        "print(m.body_prompt_tokens('/v1/completions', {'prompt': 'Hello world'}))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert lines[0] == "_approx_tokenizer False"
    assert lines[1] == str(encode(apply_chat_template([{"role": "user", "content": "Hi"}])))
    assert lines[2] == str(encode("Hello world"))


def test_chunk_hashes_are_chained_full_chunks_and_seed_independent() -> None:
    from benchmarks.simulator.lmcache_worker import chunk_hashes

    a = list(range(1000))
    b = list(range(600)) + [7] * 400
    ha, hb = chunk_hashes(a), chunk_hashes(b)
    assert [(s, e) for s, e, _ in ha] == [(0, 256), (256, 512), (512, 768)]  # the 232-token tail is not stored
    assert ha[:2] == hb[:2] and ha[2] != hb[2]
    assert len(chunk_hashes(a, save_unfull_chunk=True)) == 4
    # Python's hash of a tuple of ints does not depend on PYTHONHASHSEED: every process computes the same keys.
    code = "from benchmarks.simulator.lmcache_worker import chunk_hashes; print(chunk_hashes(list(range(1000))))"
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=Path(__file__).resolve().parents[2])
        assert out.stdout.strip() == str(ha)
