"""The ext_proc gRPC port directly (no Envoy): streams out of order, generated messages, garbage bytes and
HTTP/2 frames cut short. The server answers each well-formed message (or ends the stream with a status and a
message), never dies, and routes a normal stream correctly afterwards."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import grpc
import httpx
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.stack import Stack
from tests.fuzz.support import assert_no_crashes, budget, note, rss_kib

pytestmark = pytest.mark.fuzz
TARGET = "ext_proc gRPC direct"
METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
# A stream the server refuses ends with one of these (with a message); anything else is a crash.
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT}
# grpcio answers bytes that do not decode as a ProcessingRequest itself, before our code runs.
UNDECODABLE = {grpc.StatusCode.INTERNAL}
RSS_BOUND_KIB = 200 * 1024


@pytest.fixture(scope="module")
def channel(fuzz_stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_stack.extprocs[0].ports['grpc']}") as ch:
        yield ch


def headers(path: str = "/v1/completions", end_of_stream: bool = False, **extra: bytes) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.request_headers.end_of_stream = end_of_stream
    for key, value in {":path": path.encode(), ":method": b"POST", **extra}.items():
        header = message.request_headers.headers.headers.add()
        header.key = key
        header.raw_value = value
    return message


def body(raw: bytes, end_of_stream: bool = True) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.request_body.body = raw
    message.request_body.end_of_stream = end_of_stream
    return message


def run(channel: grpc.Channel, messages: list[pb.ProcessingRequest]) -> tuple[list[pb.ProcessingResponse],
                                                                             grpc.StatusCode, str]:
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process(iter(messages), timeout=10)
    answers: list[pb.ProcessingResponse] = []
    try:
        answers.extend(call)
    except grpc.RpcError as error:
        return answers, error.code(), error.details() or ""
    return answers, grpc.StatusCode.OK, ""


def _answers_ok(messages: list[pb.ProcessingRequest], answers: list[pb.ProcessingResponse]) -> bool:
    """One answer per non-observer message, of the matching kind or an immediate 400 with a JSON body."""
    asked = [m for m in messages if not m.observability_mode]
    if len(answers) > len(asked):
        return False
    for message, answer in zip(asked, answers, strict=False):
        kind = answer.WhichOneof("response")
        if kind == "immediate_response":
            immediate = answer.immediate_response
            if immediate.status.code != 400 or "error" not in orjson.loads(immediate.body):
                return False
        elif kind != message.WhichOneof("request"):
            return False
    return True


def check(channel: grpc.Channel, name: str, messages: list[pb.ProcessingRequest]) -> None:
    answers, code, details = run(channel, messages)
    ok = ((code is grpc.StatusCode.OK and len(answers) == sum(not m.observability_mode for m in messages))
          or (code in REFUSED and bool(details))) and _answers_ok(messages, answers)
    note(TARGET, ok, lambda: f"{name}: {code} {details!r} {answers!r:.300}")


def test_streams_out_of_order(fuzz_stack: Stack, channel: grpc.Channel) -> None:
    rss_before = rss_kib(fuzz_stack.extprocs[0].popen.pid)
    valid = b'{"model": "m", "prompt": "x", "workflow_metadata": {"workflow_id": "wf-grpc"}}'
    trailers = pb.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    response_headers = pb.ProcessingRequest()
    response_headers.response_headers.SetInParent()
    response_body = pb.ProcessingRequest()
    response_body.response_body.body = b"garbage"
    observer = pb.ProcessingRequest(observability_mode=True)
    observer.response_body.body = b"data: {not json"
    cases = {
        "body-before-headers": [body(valid), headers()],
        "two-header-messages": [headers(), headers(path="/v1/chat/completions")],
        "headers-end-of-stream-then-body": [headers(end_of_stream=True), body(valid)],
        "two-bodies": [headers(), body(valid), body(b"[")],
        "trailers-only": [trailers],
        "response-messages-on-router-stream": [response_headers, response_body],
        "empty-message": [pb.ProcessingRequest()],
        "headers-then-empty-message": [headers(), pb.ProcessingRequest()],
        "observer-only-garbage": [observer, observer],
        "no-messages": [],
        "bad-header-id": [headers(**{"x-workflow-id": b"\xff\xfe bad"})],
        "huge-header": [headers(**{"x-workflow-id": b"w" * 100_000}), body(valid)],
        "invalid-body": [headers(), body(b"\xff" * 100)],
        "deep-body": [headers(), body(b"[" * 100_000)],
        "body-chunks-not-at-end": [headers(), body(valid[:10], end_of_stream=False), body(valid[10:])],
    }
    for name, messages in cases.items():
        check(channel, name, messages)
    ok_answers, code, _ = run(channel, [headers(), body(valid)])
    assert code is grpc.StatusCode.OK and ok_answers[1].request_body.response.clear_route_cache
    assert fuzz_stack.extprocs[0].alive()
    assert rss_kib(fuzz_stack.extprocs[0].popen.pid) - rss_before < RSS_BOUND_KIB
    assert_no_crashes(TARGET)


_header_values = st.binary(max_size=40) | st.sampled_from([b"/v1/completions", b"/v1/chat/completions", b"wf-1"])
_header_keys = st.sampled_from([":path", ":method", "x-workflow-id", "x-agent-id", "x-request-id",
                                "x-workflow-route-id", "x-upstream-cluster", ":status", "content-length"]) | st.text(
    max_size=10)


@st.composite
def _message(draw: st.DrawFn) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest(observability_mode=draw(st.booleans()))
    kind = draw(st.sampled_from(["request_headers", "request_body", "request_trailers", "response_headers",
                                 "response_body", "response_trailers", None]))
    if kind in ("request_headers", "response_headers"):
        part = getattr(message, kind)
        part.end_of_stream = draw(st.booleans())
        for key, value in draw(st.lists(st.tuples(_header_keys, _header_values), max_size=5)):
            header = part.headers.headers.add()
            header.key = key
            header.raw_value = value
    elif kind in ("request_body", "response_body"):
        part = getattr(message, kind)
        part.body = draw(st.binary(max_size=200) | st.sampled_from([
            b'{"prompt": "p", "workflow_metadata": {"workflow_id": "w"}}', b'data: {"usage": {"prompt_tokens": 1}}\n\n',
            b'{"usage": {"prompt_tokens": -1, "prompt_tokens_details": {"cached_tokens": 1e400}}}']))
        part.end_of_stream = draw(st.booleans())
    elif kind is not None:
        getattr(message, kind).SetInParent()
    return message


@settings(max_examples=budget(120), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(_message(), max_size=6))
def test_generated_streams(channel: grpc.Channel, messages: list[pb.ProcessingRequest]) -> None:
    check(channel, "generated", messages)
    assert_no_crashes(TARGET)


def test_garbage_bytes_as_messages(fuzz_stack: Stack, channel: grpc.Channel) -> None:
    call = channel.stream_stream(METHOD)  # no serializers: raw bytes on the wire
    for garbage in (b"\xff" * 20, b"\x0a\xff\xff\xff\xff\x0f", b"\x08", bytes(range(256)), b"\x12\x05abc"):
        try:
            list(call(iter([garbage]), timeout=10))
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        # Some garbage decodes as a valid (if odd) message and is answered; the rest is refused by grpcio.
        ok = code is grpc.StatusCode.OK or (code in UNDECODABLE | REFUSED and bool(details))
        note(TARGET, ok, lambda garbage=garbage, code=code, details=details: f"{garbage[:20]!r}: {code} {details}")
    assert fuzz_stack.extprocs[0].alive()
    assert_no_crashes(TARGET)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    # HPACK "literal header field without indexing, new name", no Huffman (RFC 7541 6.2.2); lengths < 127.
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _grpc_request_start() -> bytes:
    block = b"".join(_literal(k, v) for k, v in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", METHOD.encode()), (b":authority", b"fuzz"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    return preface + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x4, 1, block)  # SETTINGS, HEADERS(END_HEADERS)


def test_frames_cut_short(fuzz_stack: Stack, channel: grpc.Channel) -> None:
    """A raw HTTP/2 connection that stops mid-message: the server drops it and keeps serving others."""
    port = fuzz_stack.extprocs[0].ports["grpc"]
    message = headers().SerializeToString()
    cuts = [
        # gRPC length prefix announces 1000 bytes; 10 arrive.
        _frame(0x0, 0, 1, b"\x00" + struct.pack(">I", 1000) + message[:10]),
        # HTTP/2 DATA frame header announces 16 KiB; 5 bytes arrive.
        struct.pack(">I", 16_384)[1:] + b"\x00\x00" + struct.pack(">I", 1) + b"\x00\x00\x00",
        # A whole, valid message, then the connection closes without END_STREAM.
        _frame(0x0, 0, 1, b"\x00" + struct.pack(">I", len(message)) + message),
        # Compressed flag set without a negotiated encoding.
        _frame(0x0, 0x1, 1, b"\x01" + struct.pack(">I", len(message)) + message),
        b"",
    ]
    for cut in cuts:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(_grpc_request_start() + cut)
            sock.settimeout(0.5)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        note(TARGET, fuzz_stack.extprocs[0].alive(), lambda cut=cut: f"cut {cut[:20]!r}: ext_proc died")
    answers, code, _ = run(channel, [headers(), body(b'{"model": "m", "prompt": "x"}')])
    assert code is grpc.StatusCode.OK and answers[1].request_body.response.header_mutation.set_headers
    assert_no_crashes(TARGET)


def test_zz_no_stream_failed_unexpectedly(fuzz_stack: Stack) -> None:
    """Refused streams end with INVALID_ARGUMENT on purpose; none may end in an unexpected exception."""
    metrics = httpx.get(f"http://127.0.0.1:{fuzz_stack.extprocs[0].ports['metrics']}/metrics", timeout=5).text
    errors = [line for line in metrics.splitlines() if line.startswith("extproc_stream_errors_total")]
    assert errors and all(float(line.rsplit(" ", 1)[1]) == 0 for line in errors), errors
    assert fuzz_stack.extprocs[0].alive()
