"""Every A2A HTTP endpoint, with inputs generated from the service's own OpenAPI spec (/openapi.json), plus raw
adversarial bodies. Every answer is a 2xx or a 4xx with a JSON error body (503 only while a store is down, which
does not happen here); never a 500; the service keeps serving."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.stack import Stack
from tests.fuzz.support import assert_no_crashes, budget, is_json_error, note, parse_status, raw_http, rss_kib

pytestmark = pytest.mark.fuzz
TARGET = "A2A HTTP"
DOCUMENTED_5XX = {503}
RSS_BOUND_KIB = 200 * 1024


def _ok(r: httpx.Response) -> bool:
    if 200 <= r.status_code < 300:
        return True
    return (400 <= r.status_code < 500 or r.status_code in DOCUMENTED_5XX) and is_json_error(r.content)


@pytest.fixture(scope="module")
def a2a_url(fuzz_stack: Stack) -> str:
    assert fuzz_stack.a2a is not None
    return f"http://127.0.0.1:{fuzz_stack.a2a.ports['http']}"


@pytest.fixture(scope="module")
def spec(a2a_url: str) -> dict[str, Any]:
    return httpx.get(f"{a2a_url}/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def client(a2a_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=a2a_url, timeout=10) as c:
        yield c


_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
            allow_infinity=False) | st.text(max_size=30))
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                     max_size=4), max_leaves=12)
_ids = (st.from_regex(r"[A-Za-z0-9._:@-]{1,16}", fullmatch=True) | st.sampled_from(["*", ".", "..", "x" * 300])
        | st.text(min_size=1, max_size=20))


def _value(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A plausible value for ``schema`` half the time, any JSON the other half."""
    if "$ref" in schema:
        schema = defs.get(schema["$ref"].rpartition("/")[2], {})
    kind = schema.get("type")
    plausible: st.SearchStrategy[Any]
    if "anyOf" in schema:
        plausible = st.one_of([_value(s, defs) for s in schema["anyOf"]])
    elif kind == "string":
        plausible = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else _ids
    elif kind == "number":
        plausible = st.floats(-1e9, 1e9) | st.sampled_from([0.0, 1e-9, 1e308])
    elif kind == "integer":
        plausible = st.integers(-5, 10**6)
    elif kind == "boolean":
        plausible = st.booleans()
    elif kind == "array":
        plausible = st.lists(_value(schema.get("items", {}), defs), max_size=4)
    elif kind == "object" and "properties" in schema:
        plausible = _object(schema, defs)
    else:
        plausible = _json
    return plausible | _json


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    return st.fixed_dictionaries({}, optional={name: _value(s, defs) for name, s in props.items()})


@st.composite
def _operation(draw: st.DrawFn, spec: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes | None]:
    path, ops = draw(st.sampled_from(sorted(spec["paths"].items())))
    method, op = draw(st.sampled_from(sorted(ops.items())))
    query: dict[str, str] = {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = draw(_ids)
            path = path.replace("{" + param["name"] + "}", urllib.parse.quote(value, safe=""))
        elif param["in"] == "query" and draw(st.booleans()):
            raw = draw(_value(param.get("schema", {}), {}) | st.sampled_from(["nan", "inf", "-1", "1e999", ""]))
            if param["name"] == "timeout" and isinstance(raw, int | float) and raw > 0.05:
                raw = 0.05  # bounded long-polls (the stack caps them at 0.2 s anyway)
            query[param["name"]] = raw if isinstance(raw, str) else orjson.dumps(raw).decode()
    body: bytes | None = None
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        schema = content.get("schema", {})
        body = draw(st.one_of(
            _value(schema, schema.get("$defs", {})).map(orjson.dumps),
            st.binary(max_size=100),
            st.sampled_from([b"", b"{", b"[]", b'{"payload": NaN}', b'{"ttl": 1e400}', b"\xff\xfe",
                             b'{"payload": ' + b"[" * 2000 + b"]" * 2000 + b"}"]),
        ))
    return method.upper(), path, query, body


def test_generated_requests_from_the_openapi_spec(spec: dict[str, Any], client: httpx.Client,
                                                  fuzz_stack: Stack) -> None:
    assert fuzz_stack.a2a is not None
    rss_before = rss_kib(fuzz_stack.a2a.popen.pid)

    @settings(max_examples=budget(250), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_operation(spec))
    def one(op: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, query, body = op
        headers = {"content-type": "application/json"} if body is not None else {}
        r = client.request(method, path, params=query, content=body, headers=headers)
        note(TARGET, _ok(r), lambda: f"{method} {path} {query} {body!r:.200}: {r.status_code} {r.content[:200]!r}")

    one()
    assert fuzz_stack.a2a.alive()
    assert rss_kib(fuzz_stack.a2a.popen.pid) - rss_before < RSS_BOUND_KIB
    assert_no_crashes(TARGET)


def test_adversarial_requests(client: httpx.Client, fuzz_stack: Stack) -> None:
    send = "/v1/workflows/wf-fuzz/messages"
    valid = {"source_agent": "a", "target_agent": "b", "payload": {"x": 1}}
    # The last element: whether the request must be refused (False: lenient by design, documented).
    cases: list[tuple[str, str, bytes | None, dict[str, str]] | tuple[str, str, bytes | None, dict[str, str], bool]] = [
        ("POST", send, orjson.dumps({**valid, "payload": "x" * 70_000}), {}),  # over --max-message-size: 413
        ("POST", send, b"x" * 3_000_000, {}),  # over the body limit: refused from content-length
        ("POST", send, orjson.dumps(valid), {"content-type": "text/plain"}, False),  # parsed as JSON anyway
        ("POST", send, b'{"source_agent": "a", "source_agent": "\xff", "target_agent": "b"}', {}),
        ("POST", send, b'{"source_agent": "a", "target_agent": "b", "payload": ' + b"[" * 10_000 + b"]" * 10_000
         + b"}", {}),
        ("POST", send, b'{"source_agent": "a", "target_agent": "b", "payload": 1' + b"0" * 5000 + b"}", {}),
        ("POST", send, b'{"source_agent": "a", "target_agent": "b", "ttl": Infinity}', {}),
        ("POST", "/v1/workflows/records", b'{"records": [' + b"{}," * 20_000 + b"{}]}", {}),
        # Larger batches than the limit are refused (422, as upstream; docs/compatibility.md).
        ("GET", "/v1/workflows/wf-fuzz/agents/b/messages?max_messages=99999999999999999999", None, {}, True),
        ("GET", "/v1/workflows/wf-fuzz/agents/b/messages?timeout=nan&visibility_timeout=-inf&ack=maybe", None, {}),
        ("GET", "/v1/workflows/%ff%fe/status", None, {}),
        ("GET", "/v1/workflows/" + "x" * 10_000 + "/status", None, {}),
        ("DELETE", "/v1/workflows/..", None, {}),
        ("PUT", send, b"{}", {}),
        ("GET", "/v1/workflows/wf-fuzz/agents/b/messages/ack", None, {}),
        ("POST", "/v1/workflows/wf-fuzz/agents/b/messages/ack", b'{"message_ids": [' + b'"x",' * 5000 + b'"x"]}', {}),
        ("POST", "/v1/workflows/wf-fuzz/agents/b/messages/ack", b'{"message_ids": [1, null, ""]}', {}),
    ]
    for method, path, body, extra, *refused in cases:
        headers = {"content-type": "application/json", **extra}
        r = client.request(method, path, content=body, headers=headers)
        must_refuse = refused[0] if refused else True
        note(TARGET, _ok(r) and (r.status_code >= 400) == must_refuse,
             lambda r=r, body=body: f"{r.request.method} {r.request.url} {body!r:.80}: {r.status_code} "
                                    f"{r.content[:200]!r}")
    assert fuzz_stack.a2a is not None
    for bad_length in (b"abc", b"-1", b"99999999999999999999999"):
        raw = raw_http(fuzz_stack.a2a.ports["http"], b"POST " + send.encode() + b" HTTP/1.1\r\nhost: x\r\n"
                       b"content-type: application/json\r\ncontent-length: " + bad_length + b"\r\n\r\n{}",
                       half_close=True, timeout=3)
        status, _ = parse_status(raw)
        # uvicorn's HTTP parser refuses a malformed content-length itself (400, plain text) or drops the
        # connection; neither reaches our code.
        note(TARGET, status == 0 or 400 <= status < 500, lambda raw=raw: f"content-length: {raw[:200]!r}")
    r = client.post(send, json=valid)
    assert r.status_code == 200, r.text
    assert client.get("/v1/workflows/wf-fuzz/agents/b/messages", params={"timeout": 0}).json()["messages"]
    assert fuzz_stack.a2a is not None and fuzz_stack.a2a.alive()
    assert_no_crashes(TARGET)


def test_through_envoy(fuzz_stack: Stack) -> None:
    """The same service behind the gateway's /v1/workflows route (ext_proc disabled there)."""
    with httpx.Client(base_url=fuzz_stack.url, timeout=10) as c:
        for body in (b"", b"{", b"\xff", b'{"source_agent": "a"}', b"[" * 5000):
            r = c.post("/v1/workflows/wf-envoy/messages", content=body, headers={"content-type": "application/json"})
            note(TARGET, _ok(r) and 400 <= r.status_code < 500,
                 lambda r=r, body=body: f"envoy {body[:20]!r}: {r.status_code} {r.content[:200]!r}")
    assert_no_crashes(TARGET)
