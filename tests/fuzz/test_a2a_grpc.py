"""The A2A gRPC API with generated fields: bad ids, huge strings, garbage payload bytes, odd numbers, and raw
bytes that are no protobuf at all. Every call ends OK or with a proper status code and a message (never UNKNOWN
or INTERNAL), and the service keeps serving."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from a2a_service.v1 import a2a_pb2 as pb
from a2a_service.v1 import a2a_pb2_grpc as pb_grpc
from benchmarks.stack import Stack
from tests.fuzz.support import assert_no_crashes, budget, note, rss_kib

pytestmark = pytest.mark.fuzz
TARGET = "A2A gRPC"
ACCEPTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
RSS_BOUND_KIB = 200 * 1024
SERVICE = "/a2a_service.v1.A2AService/"


@pytest.fixture(scope="module")
def channel(fuzz_stack: Stack) -> Iterator[grpc.Channel]:
    assert fuzz_stack.a2a is not None
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_stack.a2a.ports['grpc']}", options=options) as ch:
        yield ch


_ids = (st.from_regex(r"[A-Za-z0-9._:@-]{1,16}", fullmatch=True)
        | st.sampled_from(["", "*", ".", "..", "a b", "x" * 257, "x" * 100_000, "\u00e9", "\x00"])
        | st.text(max_size=20))
_floats = st.floats() | st.sampled_from([0.0, -1.0, math.inf, -math.inf, math.nan, 1e308, 5e-324, 0.01])
_payloads = (st.binary(max_size=100) | st.sampled_from([b"", b"{}", b'{"a": 1}', b"[" * 5000, b"1e400", b"NaN",
                                                        b"\xff", b'"' + b"x" * 70_000 + b'"']))


def _timeout() -> st.SearchStrategy[float]:
    # The stack caps receive waits at 0.2 s, so even "wait forever" answers quickly.
    return _floats


_requests = st.one_of(
    st.builds(lambda w, s, t, m, p, ttl: ("SendMessage", pb.SendMessageRequest(
        workflow_id=w, source_agent=s, target_agent=t, message_type=m, payload=p, **({} if ttl is None else
                                                                                     {"ttl_seconds": ttl}))),
              _ids, _ids, _ids | st.just("*"), _ids, _payloads, st.none() | _floats),
    st.builds(lambda w, a, t, n, ack, v: ("ReceiveMessages", pb.ReceiveMessagesRequest(
        workflow_id=w, agent_id=a, timeout_seconds=t, max_messages=n, ack=ack, visibility_timeout_seconds=v)),
              _ids, _ids, _timeout(), st.integers(-(2**31), 2**31 - 1), st.booleans(), _floats),
    st.builds(lambda w, a, ids: ("AckMessages", pb.AckMessagesRequest(workflow_id=w, agent_id=a, message_ids=ids)),
              _ids, _ids, st.lists(_ids, max_size=5) | st.just(["x"] * 2000)),
    st.builds(lambda w: ("GetWorkflowStatus", pb.GetWorkflowStatusRequest(workflow_id=w)), _ids),
    st.builds(lambda w: ("DeleteWorkflow", pb.DeleteWorkflowRequest(workflow_id=w)), _ids),
    st.just(("GetStats", pb.GetStatsRequest())),
    st.builds(lambda recs: ("RecordRequests", pb.RecordRequestsRequest(records=recs)), st.lists(st.builds(
        pb.RequestRecord, kind=st.integers(-3, 5), workflow_id=_ids, request_id=_ids, agent_id=_ids, instance=_ids,
        affinity_hit=st.booleans(), failover=st.booleans(), routing_latency_seconds=_floats,
        prompt_tokens=st.integers(-(2**63), 2**63 - 1), cached_tokens=st.integers(-(2**63), 2**63 - 1),
        status_code=st.integers(-(2**31), 2**31 - 1)), max_size=4)),
)


def _call(channel: grpc.Channel, method: str, request: object) -> tuple[grpc.StatusCode, str]:
    stub = pb_grpc.A2AServiceStub(channel)
    try:
        getattr(stub, method)(request, timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _ok(code: grpc.StatusCode, details: str) -> bool:
    return code in ACCEPTED and (code is grpc.StatusCode.OK or bool(details))


@settings(max_examples=budget(200), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(_requests)
def test_generated_calls(channel: grpc.Channel, call: tuple[str, object]) -> None:
    method, request = call
    code, details = _call(channel, method, request)
    note(TARGET, _ok(code, details), lambda: f"{method} {request!s:.300}: {code} {details!r}")
    assert_no_crashes(TARGET)


def test_subscribe_with_bad_input_and_cancel(channel: grpc.Channel) -> None:
    stub = pb_grpc.A2AServiceStub(channel)
    for wid, aid, n in (("", "a", 1), ("ok", "a b", 1), ("ok", "a", -5), ("x" * 300, "a", 1), ("ok", "a", 10)):
        stream = stub.Subscribe(pb.SubscribeRequest(workflow_id=wid, agent_id=aid, max_messages=n), timeout=0.5)
        try:
            next(stream)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        # A valid subscription waits for messages: its deadline ends it.
        ok = _ok(code, details) or (code is grpc.StatusCode.DEADLINE_EXCEEDED and wid == "ok" and aid == "a" and n > 0)
        note(TARGET, ok, lambda wid=wid, code=code, details=details: f"Subscribe {wid[:20]}: {code} {details!r}")
        stream.cancel()
    assert_no_crashes(TARGET)


def test_garbage_bytes_and_huge_messages(fuzz_stack: Stack, channel: grpc.Channel) -> None:
    assert fuzz_stack.a2a is not None
    rss_before = rss_kib(fuzz_stack.a2a.popen.pid)
    for method in ("SendMessage", "ReceiveMessages", "AckMessages", "RecordRequests", "GetStats", "Subscribe"):
        # No serializers: raw bytes on the wire.
        raw = (channel.unary_stream if method == "Subscribe" else channel.unary_unary)(SERVICE + method)
        for garbage in (b"\xff" * 20, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)), b"\x2a\x05ab"):
            try:
                answer = raw(garbage, timeout=1)
                if method == "Subscribe":
                    next(answer)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
            # Some garbage decodes as a valid (if odd) message and gets a normal answer; the rest must be refused
            # with INVALID_ARGUMENT (grpc.aio alone answers UNKNOWN, before any handler runs).
            ok = _ok(code, details) and code is not grpc.StatusCode.INTERNAL
            note(TARGET, ok, lambda method=method, garbage=garbage, code=code, details=details:
                 f"{method} raw {garbage[:10]!r}: {code} {details!r}")
    for made_up in ("NoSuchMethod", "SendMessage/extra", "\u00e9"):
        try:
            channel.unary_unary(SERVICE + made_up)(b"", timeout=5)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        note(TARGET, code is grpc.StatusCode.UNIMPLEMENTED, lambda made_up=made_up, code=code: f"{made_up}: {code}")
    huge = pb.SendMessageRequest(workflow_id="wf-huge", source_agent="a", target_agent="b", message_type="t",
                                 payload=b'"' + b"x" * (20 * 1024 * 1024) + b'"')
    code, details = _call(channel, "SendMessage", huge)
    note(TARGET, code is grpc.StatusCode.RESOURCE_EXHAUSTED and bool(details), lambda: f"20 MB: {code} {details!r}")
    ok_code, _ = _call(channel, "SendMessage", pb.SendMessageRequest(
        workflow_id="wf-grpc-ok", source_agent="a", target_agent="b", message_type="t", payload=b"{}"))
    assert ok_code is grpc.StatusCode.OK
    assert fuzz_stack.a2a.alive()
    assert rss_kib(fuzz_stack.a2a.popen.pid) - rss_before < RSS_BOUND_KIB
    assert_no_crashes(TARGET)
