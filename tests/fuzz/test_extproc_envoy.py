"""Random and adversarial request bodies through the real Envoy to the ext_proc server.

Every answer is either served (2xx from the simulated vLLM) or a 4xx with our JSON error shape; the gateway
keeps answering a normal request afterwards; no process dies and the ext_proc server's memory stays bounded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.stack import Stack
from tests.fuzz.support import (
    assert_no_crashes,
    budget,
    completion_ok,
    is_json_error,
    note,
    parse_status,
    raw_http,
    raw_http_stream,
    rss_kib,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.e2e]
TARGET = "ext_proc via Envoy"
PATHS = ("/v1/completions", "/v1/chat/completions")
RSS_BOUND_KIB = 200 * 1024
# 2xx: served. 4xx: refused with a JSON error. 503 is documented only for an unknown cluster (not here).
SERVED = range(200, 300)
# Lets one body be valid on both paths (the simulator ignores the field the path does not use).
MSG = b'"messages": [{"role": "user", "content": "hi"}], '


def _ok(status: int, body: bytes) -> bool:
    if status in SERVED:
        return True
    return 400 <= status < 500 and is_json_error(body)


@pytest.fixture(scope="module")
def client(fuzz_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_stack.url, timeout=30) as c:
        yield c


def _deep(n: int, open_: str, close: str) -> bytes:
    return (open_ * n + close * n).encode()


def _adversarial() -> list[tuple[str, bytes, int | None]]:
    """(name, body, the status we expect or None when served-or-refused are both fine)."""
    meta = b'"workflow_metadata": {"workflow_id": "wf-adv", "agent_id": "a"}'
    cases: list[tuple[str, bytes, int | None]] = [
        ("empty", b"", 400),
        ("whitespace", b"   \n", 400),
        ("null", b"null", 400),
        ("array", b"[1, 2, 3]", 400),
        ("string", b'"prompt"', 400),
        ("number", b"42", 400),
        ("true", b"true", 400),
        ("truncated-object", b'{"prompt": "x"', 400),
        ("trailing-garbage", b'{"prompt": "x"} {}', 400),
        ("invalid-utf8-in-string", b'{"prompt": "\xff\xfe"}', 400),
        ("invalid-utf8-key", b'{"\xc3\x28": 1}', 400),
        ("lone-surrogate", b'{"prompt": "\xed\xa0\x80"}', 400),
        ("escaped-lone-surrogate", b'{"model": "m", "prompt": "\\ud800", "max_tokens": 2}', None),
        ("overlong-utf8", b'{"prompt": "\xc0\xaf"}', 400),
        ("nul-bytes", b'{"prompt": "a\x00b"}', 400),
        ("bom", b'\xef\xbb\xbf{"prompt": "x"}', 400),
        ("huge-float", b'{"prompt": "x", "temperature": 1e400}', 400),
        ("huge-float-in-metadata", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", '
                                   b'"workflow_priority": 1e400}}', 400),
        ("huge-int-5000-digits", b'{"prompt": "x", "seed": ' + b"1" + b"0" * 5000 + b"}", 400),
        ("huge-int-in-metadata", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", '
                                 b'"workflow_priority": 1' + b"0" * 5000 + b"}}", 400),
        ("nan", b'{"prompt": "x", "temperature": NaN}', 400),
        ("infinity", b'{"prompt": "x", "temperature": Infinity}', 400),
        ("neg-infinity-in-metadata", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", '
                                     b'"workflow_priority": -Infinity}}', 400),
        ("deep-arrays-10k", _deep(10_000, "[", "]"), 400),
        ("deep-objects-10k", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400),
        ("deep-inside-body", b'{"prompt": "x", "extra": ' + _deep(10_000, "[", "]") + b"}", 400),
        ("deep-inside-metadata", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", "x": '
                                 + _deep(10_000, "[", "]") + b"}}", 400),
        ("deep-metadata-value", b'{"prompt": "x", "workflow_metadata": ' + b'{"a":' * 5000 + b"1"
                                + b"}" * 5000 + b"}", 400),
        # orjson reads 1024 levels but writes only 254: stripping such a body once failed the whole stream.
        ("nested-300-with-metadata", b'{"model": "m", "prompt": "x", "max_tokens": 2, ' + MSG + meta + b', "x": '
                                     + _deep(300, "[", "]") + b"}", 200),
        ("nested-1000-with-metadata", b'{"model": "m", "prompt": "x", ' + meta + b', "x": '
                                      + _deep(1000, "[", "]") + b"}", 400),
        ("nested-1000-without-metadata", b'{"model": "m", "prompt": "x", "max_tokens": 2, ' + MSG + b'"x": '
                                         + _deep(1000, "[", "]") + b"}", None),
        ("int-beyond-64-bits-with-metadata", b'{"model": "m", "prompt": "x", "max_tokens": 2, ' + MSG + meta
                                             + b', "seed": 123456789012345678901234}', None),
        ("metadata-not-object", b'{"prompt": "x", "workflow_metadata": [1]}', 400),
        ("metadata-bad-id", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "a b"}}', 400),
        ("metadata-long-id", b'{"prompt": "x", "workflow_metadata": {"workflow_id": "' + b"x" * 100_000
                             + b'"}}', 400),
        # Duplicate keys: orjson keeps the last one, so the gateway routes on what a Python backend reads too.
        ("duplicate-metadata-last-valid", b'{"model": "m", "prompt": "x", "max_tokens": 2, ' + MSG +
                                          b'"workflow_metadata": {"workflow_id": "not valid!"}, ' + meta + b"}", 200),
        ("duplicate-metadata-last-invalid", b'{"model": "m", "prompt": "x", ' + meta
                                            + b', "workflow_metadata": {"workflow_id": "not valid!"}}', 400),
        ("duplicate-id-in-metadata", b'{"model": "m", "prompt": "x", "max_tokens": 2, ' + MSG + b'"workflow_metadata": '
                                     b'{"workflow_id": 7, "workflow_id": "wf-dup"}}', 200),
        ("valid", b'{"model": "m", "prompt": "hello", "max_tokens": 2, ' + MSG + meta + b"}", 200),
        ("long-prompt-1mb", orjson.dumps({"model": "m", "prompt": "word " * 200_000, "max_tokens": 2}), None),
        ("many-keys", orjson.dumps({"model": "m", "prompt": "p", "max_tokens": 2,
                                    **{f"k{i}": i for i in range(20_000)}}), None),
    ]
    return cases


def _stream_errors(stack: Stack) -> tuple[float, int]:
    """ext_proc streams that failed (server side), and requests Envoy let through unprocessed (failure mode)
    for another reason than a message timeout (a slow answer on this shared machine is no crash)."""
    metrics = httpx.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics", timeout=5).text
    errors = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("extproc_stream_errors_total"))
    wanted = r"ext_proc\.(failure_mode_allowed|message_timeouts)$"
    stats = httpx.get(f"{stack.admin_url}/stats", params={"filter": wanted}, timeout=5).text
    counts = {line.partition(":")[0].rpartition(".")[2]: int(line.rpartition(" ")[2])
              for line in stats.splitlines() if line.strip()}
    return errors, counts.get("failure_mode_allowed", 0) - counts.get("message_timeouts", 0)


def test_adversarial_bodies(fuzz_stack: Stack, client: httpx.Client) -> None:
    extproc = fuzz_stack.extprocs[0]
    rss_before = rss_kib(extproc.popen.pid)
    errors_before = _stream_errors(fuzz_stack)
    for (name, body, expected), path in itertools.product(_adversarial(), PATHS):
        for content_type in ("application/json",):
            r = client.post(path, content=body, headers={"content-type": content_type})
            ok = _ok(r.status_code, r.content) and (expected is None or r.status_code == expected)
            note(TARGET, ok, lambda r=r, name=name, path=path: f"{name} {path}: {r.status_code} {r.content[:200]!r}")
    _still_healthy(fuzz_stack, client, rss_before)
    # A refused or failed ext_proc stream would let Envoy pass the request on unprocessed (fail open): none did.
    assert _stream_errors(fuzz_stack) == errors_before
    assert_no_crashes(TARGET)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/json; charset=latin-1", None])
def test_wrong_content_types(client: httpx.Client, content_type: str | None) -> None:
    """The gateway parses by path, not by content type: a JSON body is routed, anything else refused (400)."""
    headers = {} if content_type is None else {"content-type": content_type}
    valid = b'{"model": "m", "prompt": "x", "max_tokens": 2, "workflow_metadata": {"workflow_id": "wf-ct"}}'
    for body, want_refused in ((valid, False), (b"prompt=x&model=m", True), (b"--b\r\n\r\nx\r\n--b--", True)):
        r = client.post("/v1/completions", content=body, headers=headers)
        ok = _ok(r.status_code, r.content) and (r.status_code == 400) == want_refused
        note(TARGET, ok, lambda r=r, body=body: f"{content_type} {body[:30]!r}: {r.status_code} {r.content[:200]!r}")
    assert_no_crashes(TARGET)


def test_chunked_bodies(client: httpx.Client) -> None:
    """Transfer-Encoding: chunked (no content-length): Envoy buffers the chunks into one body message."""
    def chunks(body: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i:i + size]

    valid = orjson.dumps({"model": "m", "prompt": "chunked " * 500, "max_tokens": 2,
                          "workflow_metadata": {"workflow_id": "wf-chunked"}})
    for body, size, expected in ((valid, 1, 200), (valid, 7, 200), (valid, 4096, 200), (b"[" * 5000, 13, 400),
                                 (b'{"prompt": "\xff"}', 3, 400), (b"", 1, None)):
        r = client.post("/v1/completions", content=chunks(body, size), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        ok = _ok(r.status_code, r.content) and (expected is None or r.status_code == expected)
        note(TARGET, ok, lambda r=r, size=size: f"chunked/{size}: {r.status_code} {r.content[:200]!r}")
    assert_no_crashes(TARGET)


def test_bodies_cut_short_and_raw_framing(fuzz_stack: Stack, client: httpx.Client) -> None:
    """Content-length larger than what is sent, then close: Envoy gives up on the request without an answer and
    nothing reaches the ext_proc server half-parsed. Broken HTTP/1 framing: Envoy's codec answers 400 itself,
    as JSON through the local-reply mapper for replies without a :path; a bad chunk size comes after the
    headers were parsed, so that one stays Envoy's plain-text "Bad Request" (docs/fuzzing.md). Either way the
    gateway keeps serving."""
    port = fuzz_stack.listen_port
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    cut_short = [
        head + b"content-length: 1000\r\n\r\n" + b'{"prompt": "cut',
        head + b"content-length: 10\r\n\r\n",
        head + b"transfer-encoding: chunked\r\n\r\n5\r\n{\"pro\r\n",  # the last chunk never comes
        head + b"content-length: 100\r\n\r\n" + b"\xff" * 50,
    ]
    for data in cut_short:
        status, body = parse_status(raw_http(port, data, half_close=True, timeout=3))
        note(TARGET, status == 0 or _ok(status, body),
             lambda data=data, status=status, body=body: f"cut {data[-40:]!r}: {status} {body[:200]!r}")
    status, _ = parse_status(raw_http(port, head + b"transfer-encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
                                      timeout=3))  # bad chunk size
    note(TARGET, status == 400, lambda status=status: f"bad chunk size: {status}")
    malformed = [
        head + b"content-length: -1\r\n\r\n{}",
        head + b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        head + b"content-length: 99999999999999999999\r\n\r\n{}",
        head + b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{}",
        b"GARBAGE\r\n\r\n",
    ]
    for data in malformed:
        status, body = parse_status(raw_http(port, data, timeout=3))
        note(TARGET, status == 400 and is_json_error(body),
             lambda data=data, status=status, body=body: f"{data[-40:]!r}: {status} {body!r}")
    r = completion_ok(client)
    assert r.status_code == 200, r.text
    assert_no_crashes(TARGET)


def test_body_over_the_buffer_limit_is_413_json(fuzz_stack: Stack) -> None:
    size = 50 * 1024 * 1024
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % size)
    status, answer = parse_status(raw_http_stream(fuzz_stack.listen_port, head + b'{"prompt": "', size - 12))
    note(TARGET, status == 413 and is_json_error(answer), lambda: f"50 MB: {status} {answer[:200]!r}")
    assert_no_crashes(TARGET)


# Generated JSON around a valid request: random extra fields, random metadata values, random prompt shapes.
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
            allow_infinity=False) | st.text(max_size=30))
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                     max_size=4), max_leaves=15)
_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,20}", fullmatch=True) | st.text(max_size=20) | _json
_metadata = st.fixed_dictionaries({"workflow_id": _ids}, optional={
    "agent_id": _ids, "parent_request_id": _ids, "workflow_priority": _json | st.floats(0, 10),
    "context_sharing_strategy": st.sampled_from(["auto", "broadcast", "selective", "none"]) | _json,
})
_requests = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": st.just(2)},
    optional={"prompt": st.text(max_size=200) | _json, "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]) | st.text(max_size=5), "content": st.text(max_size=50) | _json}),
        max_size=3) | _json, "workflow_metadata": _metadata | _json, "extra": _json},
)


@settings(max_examples=budget(40), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_requests, path=st.sampled_from(PATHS), headers=st.dictionaries(
    # Any value HTTP/1.1 can carry (h11 refuses leading or trailing whitespace on the client side).
    st.sampled_from(["x-workflow-id", "x-agent-id"]), st.from_regex(r"([!-~]([ -~]{0,18}[!-~])?)?", fullmatch=True),
    max_size=2))
def test_generated_requests(fuzz_stack: Stack, body: dict[str, Any], path: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=fuzz_stack.url, timeout=30) as c:
        r = c.post(path, content=orjson.dumps(body), headers={"content-type": "application/json", **headers})
    ok = _ok(r.status_code, r.content)
    note(TARGET, ok, lambda: f"{path} {body!r:.300}: {r.status_code} {r.content[:200]!r}")
    assert ok, (r.status_code, r.content[:300])


def _still_healthy(stack: Stack, client: httpx.Client, rss_before: int) -> None:
    for path in PATHS:
        r = completion_ok(client, path)
        assert r.status_code == 200, r.text
        assert r.headers.get("x-served-by") == "vllm-1"
    for process in (stack.envoy, *stack.extprocs, *stack.simulators.values()):
        assert process is not None and process.alive(), process
    grown = rss_kib(stack.extprocs[0].popen.pid) - rss_before
    assert grown < RSS_BOUND_KIB, f"ext_proc RSS grew by {grown} KiB"


def test_zz_still_serving_afterwards(fuzz_stack: Stack, client: httpx.Client) -> None:
    _still_healthy(fuzz_stack, client, rss_kib(fuzz_stack.extprocs[0].popen.pid))
    # Over the whole module: no request Envoy sent to the ext_proc server failed its stream.
    assert _stream_errors(fuzz_stack)[0] == 0
