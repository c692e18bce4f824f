"""Pure parsing and validation: ids, JSON depth/size, HTTP bodies and query strings, errors."""

from __future__ import annotations

import orjson
import pytest

from a2a_service import _validation as v
from a2a_service._transports import _wire
from a2a_service.config import Settings
from a2a_service.errors import (
    A2AError,
    InvalidRequestError,
    MalformedJSONError,
    MessageTooLargeError,
    NotFoundError,
    QueueFullError,
    ResourceExhaustedError,
    UnavailableError,
    error_from_wire,
)

S = Settings()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("agent-1.b_c:d@e", True),
        ("x" * 256, True),
        ("x" * 257, False),
        ("", False),
        (".", False),
        ("..", False),
        ("...", True),
        ("a/b", False),
        ("a b", False),
        ("é", False),
        ("*", False),
        ("a\n", False),
        (5, False),
        (None, False),
    ],
)
def test_check_id(value, ok):
    if ok:
        assert v.check_id(value, "agent_id") == value
    else:
        with pytest.raises(InvalidRequestError) as err:
            v.check_id(value, "agent_id")
        assert err.value.param == "agent_id"


def test_broadcast_target_only_where_allowed():
    assert v.check_id("*", "target_agent", allow_broadcast=True) == "*"
    with pytest.raises(InvalidRequestError):
        v.check_id("*", "source_agent")


def nested(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("depth", "too_deep"), [(0, False), (1, False), (32, False), (33, True), (500, True)])
def test_json_depth(depth, too_deep):
    assert v.json_depth_exceeds(nested(depth), 32) is too_deep


def test_json_depth_counts_the_deepest_branch():
    value = {"a": [1, 2, {"b": []}], "c": "x"}  # dict > list > dict > list: depth 4
    assert not v.json_depth_exceeds(value, 4)
    assert v.json_depth_exceeds(value, 3)


def test_encode_payload_limits():
    assert v.encode_payload({"a": 1}, max_depth=32, max_size=100) == b'{"a":1}'
    with pytest.raises(MessageTooLargeError):
        v.encode_payload("x" * 200, max_depth=32, max_size=100)
    with pytest.raises(InvalidRequestError) as err:
        v.encode_payload(nested(40), max_depth=32, max_size=10_000)
    assert err.value.code == "json_too_deep" and err.value.param == "payload"


@pytest.mark.parametrize(
    ("raw", "expected", "code"),
    [
        (b"", b"{}", None),
        (b'{"n": 9007199254740993}', b'{"n": 9007199254740993}', None),  # bytes are kept as sent
        (b"null", b"null", None),
        (b"{bad", None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        (orjson.dumps(nested(40)), None, "json_too_deep"),
        (b'"' + b"x" * 2000 + b'"', None, "message_too_large"),
    ],
)
def test_check_payload_bytes(raw, expected, code):
    if code is None:
        assert v.check_payload_bytes(raw, max_depth=32, max_size=1000) == expected
    else:
        with pytest.raises(InvalidRequestError) as err:
            v.check_payload_bytes(raw, max_depth=32, max_size=1000)
        assert err.value.code == code and err.value.param == "payload"


def test_sanitize_for_log():
    assert v.sanitize_for_log("wf-1") == "wf-1"
    assert v.sanitize_for_log("a\nb\x1b[31m") == "a?b?[31m".replace("[", "?").replace("]", "?")
    assert v.sanitize_for_log("x" * 100).endswith("...")
    assert len(v.sanitize_for_log("x" * 100)) == 67


# ---------------------------------------------------------------------- HTTP bodies


def body(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_parse_send_defaults():
    req = _wire.parse_send(body(source_agent="a", target_agent="b"), "wf", S)
    assert (req.workflow_id, req.message_type, req.payload, req.ttl) == ("wf", "data", b"{}", None)


def test_parse_send_keeps_large_integers_exact():
    req = _wire.parse_send(body(source_agent="a", target_agent="b", payload={"n": 9007199254740993}), "wf", S)
    assert orjson.loads(req.payload)["n"] == 9007199254740993


@pytest.mark.parametrize(
    ("raw", "error", "param"),
    [
        (b"", MalformedJSONError, "body"),
        (b"{", MalformedJSONError, "body"),
        (b"[1]", MalformedJSONError, "body"),
        (b'"x"', MalformedJSONError, "body"),
        (b"\xff", MalformedJSONError, "body"),
        (b"[" * 2000 + b"]" * 2000, InvalidRequestError, "body"),
        (body(target_agent="b"), InvalidRequestError, "source_agent"),
        (body(source_agent="a"), InvalidRequestError, "target_agent"),
        (body(source_agent=1, target_agent="b"), InvalidRequestError, "source_agent"),
        (body(source_agent="a", target_agent="b", extra=1), InvalidRequestError, "extra"),
        (body(source_agent="a", target_agent="b", message_type=""), InvalidRequestError, "message_type"),
        (body(source_agent="a", target_agent="b", ttl="5"), InvalidRequestError, "ttl"),
        (body(source_agent="a", target_agent="b", ttl=True), InvalidRequestError, "ttl"),
        (body(source_agent="a", target_agent="b", ttl=-1), InvalidRequestError, "ttl"),
        (body(source_agent="a", target_agent="b", payload=nested(33)), InvalidRequestError, "payload"),
    ],
)
def test_parse_send_errors_name_the_field(raw, error, param):
    with pytest.raises(error) as err:
        _wire.parse_send(raw, "wf", S)
    assert type(err.value) is error
    assert err.value.param == param


def test_parse_send_too_deep_body_is_422_not_400():
    with pytest.raises(InvalidRequestError) as err:
        _wire.parse_send(b"[" * 2000 + b"]" * 2000, "wf", S)
    assert err.value.code == "json_too_deep" and err.value.http_status == 422


@pytest.mark.parametrize(
    ("obj", "param"),
    [
        ({}, "message_ids"),
        ({"message_ids": "m1"}, "message_ids"),
        ({"message_ids": ["m1", 2]}, "message_ids[1]"),
        ({"message_ids": [""]}, "message_ids[0]"),
        ({"message_ids": ["m"] * 1001}, "message_ids"),
        ({"message_ids": [], "x": 1}, "x"),
    ],
)
def test_parse_ack_errors(obj, param):
    with pytest.raises(InvalidRequestError) as err:
        _wire.parse_ack(orjson.dumps(obj), S)
    assert err.value.param == param


def test_parse_records():
    raw = orjson.dumps(
        {
            "records": [
                {"kind": "ROUTED", "workflow_id": "wf", "agent_id": "a", "instance": "i1", "affinity_hit": True},
                {"kind": 2, "workflow_id": "wf", "prompt_tokens": 10, "cached_tokens": 5, "status_code": 200},
            ]
        }
    )
    routed, completed = _wire.parse_records(raw, S)
    assert routed.affinity_hit and routed.instance == "i1"
    assert (completed.prompt_tokens, completed.cached_tokens) == (10, 5)


@pytest.mark.parametrize(
    ("records", "param"),
    [
        ("x", "records"),
        ([1], "records[0]"),
        ([{"workflow_id": "wf"}], "records[0].kind"),
        ([{"kind": "ROUTED"}], "records[0].workflow_id"),
        ([{"kind": "BOGUS", "workflow_id": "wf"}], "records[0].kind"),
        ([{"kind": "ROUTED", "workflow_id": "wf", "affinity_hit": 1}], "records[0].affinity_hit"),
        ([{"kind": "ROUTED", "workflow_id": "wf"}, {"kind": "ROUTED", "workflow_id": "wf", "x": 1}], "records[1].x"),
        ([{"kind": "COMPLETED", "workflow_id": "wf", "prompt_tokens": 1.5}], "records[0].prompt_tokens"),
    ],
)
def test_parse_records_errors(records, param):
    with pytest.raises(InvalidRequestError) as err:
        _wire.parse_records(orjson.dumps({"records": records}), S)
    assert err.value.param == param


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (1.0, 100, None)),  # upstream's defaults
        ("timeout=0&max_messages=1", (0.0, 1, None)),
        ("timeout=30&max_messages=1000", (30.0, 1000, None)),  # the limits themselves
        ("ack=true", (1.0, 100, 30.0)),
        ("ack=1&visibility_timeout=2.5", (1.0, 100, 2.5)),
        ("ack=false&visibility_timeout=2.5", (1.0, 100, None)),
        ("unknown=1", (1.0, 100, None)),
    ],
)
def test_parse_receive_query(query, expected):
    p = _wire.parse_receive_query(query, S)
    assert (p.timeout, p.max_messages, p.visibility_timeout) == expected


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("timeout=abc", "timeout"),
        ("timeout=-1", "timeout"),
        ("timeout=nan", "timeout"),
        ("timeout=inf", "timeout"),
        ("timeout=1e9", "timeout"),  # beyond the limit: refused, as upstream does (was shortened)
        ("max_messages=0", "max_messages"),
        ("max_messages=100000", "max_messages"),
        ("max_messages=1.5", "max_messages"),
        ("ack=maybe", "ack"),
        ("ack=true&visibility_timeout=0", "visibility_timeout"),
        ("ack=true&visibility_timeout=1e9", "visibility_timeout"),
    ],
)
def test_parse_receive_query_errors(query, param):
    with pytest.raises(InvalidRequestError) as err:
        _wire.parse_receive_query(query, S)
    assert err.value.param == param and err.value.http_status == 422


# ---------------------------------------------------------------------- errors


def test_error_json_shape():
    err = QueueFullError("queue of agent 'b' is full", param="target_agent")
    assert err.to_json() == {
        "detail": "queue of agent 'b' is full",  # FastAPI's key, for upstream's clients
        "error": {
            "message": "queue of agent 'b' is full",
            "type": "resource_exhausted_error",
            "param": "target_agent",
            "code": "queue_full",
        }
    }
    invalid = InvalidRequestError("timeout must be >= 0 and <= 30", param="timeout", code="out_of_range")
    assert invalid.to_json()["detail"] == [
        {"type": "out_of_range", "loc": ["query", "timeout"], "msg": "timeout must be >= 0 and <= 30"}
    ]  # a 422's detail: FastAPI's validation list


@pytest.mark.parametrize(
    ("kwargs", "cls"),
    [
        ({"code": "queue_full", "http_status": 429}, QueueFullError),
        ({"code": "message_too_large", "grpc_code": "INVALID_ARGUMENT"}, MessageTooLargeError),
        ({"code": "workflow_not_found", "http_status": 404}, NotFoundError),
        ({"code": "too_many_workflows", "grpc_code": "RESOURCE_EXHAUSTED"}, ResourceExhaustedError),
        ({"http_status": 400}, MalformedJSONError),
        ({"http_status": 418}, InvalidRequestError),
        ({"grpc_code": "UNAVAILABLE"}, UnavailableError),
        ({"http_status": 502}, A2AError),
    ],
)
def test_error_from_wire(kwargs, cls):
    err = error_from_wire("msg", param="p", **kwargs)
    assert isinstance(err, cls) and err.param == "p"


def test_error_classes_map_statuses():
    assert (MessageTooLargeError("x").http_status, MalformedJSONError("x").http_status) == (413, 400)
    assert (InvalidRequestError("x").grpc_code, NotFoundError("x").grpc_code) == ("INVALID_ARGUMENT", "NOT_FOUND")
