"""Each record shape is defined once, by the ``a2a_service._types`` dataclasses. What still restates a shape
is pinned here and fails when it drifts: the HTTP JSON encoders and client decoders (``_wire``), the OpenAPI
models (``_http_docs``, generated from the dataclasses), the request-body parsers, and the protobuf messages
(``protos/``) with their mapping (``_proto``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import orjson
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel

from a2a_service import (
    A2AError,
    AckResult,
    DeleteResult,
    Delivery,
    Message,
    MessageCounters,
    QueueStatus,
    RecordKind,
    RecordResult,
    RequestRecord,
    SendRequest,
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from a2a_service._transports import _http_docs as docs
from a2a_service._transports import _proto, _wire
from a2a_service._transports._auth import parse_token_request
from a2a_service.errors import InvalidRequestError
from a2a_service.v1 import a2a_pb2 as pb

# ---------------------------------------------------------------------- sample values: every field set, distinct

MESSAGE = Message("m-1", "wf", "planner", "coder", "task", b'{"k":[1,2.5,"x"]}', 1700000000.25, 1700000300.5)
DELIVERY = Delivery(MESSAGE, 3, 1700000030.75, 42)
COUNTERS = MessageCounters(1, 2, 3, 4, 5, 6, 7)
STATUS = WorkflowStatus(
    workflow_id="wf", active_agents=2, agents=("planner", "coder"), total_requests=11, affinity_hits=7,
    affinity_hit_rate=0.625, failovers=1, completed_requests=9, failed_requests=2, cache_hits=5,
    cache_hit_rate=0.4545, cached_token_rate=0.375, prompt_tokens=1000, cached_tokens=375,
    avg_routing_latency_seconds=0.0125,
    assigned_instance="vllm-1", created_at=1700000000.5, last_updated=1700000100.25, queued_messages=4,
    in_flight_messages=3, queues={"planner": QueueStatus(1, 2), "coder": QueueStatus(3, 1)}, messages=COUNTERS,
    model_instances={"planner-70b": "vllm-1", "worker-8b": "vllm-3"},
    identity_source="prompt_cache_key",
)  # fmt: skip
STATS = SystemStats(
    active_workflows=3, max_workflows=1000, workflows_created=8, workflows_expired=2, workflows_deleted=3,
    total_requests=40, affinity_hits=30, affinity_hit_rate=0.75, completed_requests=38, cache_hits=20,
    cache_hit_rate=0.5, cached_token_rate=0.45, prompt_tokens=4000, cached_tokens=2000, records_rejected=1, queues=6,
    queued_messages=9,
    in_flight_messages=2, messages=COUNTERS, rejected_by_code={"queue_full": 4, "invalid_value": 2},
    uptime_seconds=12.5,
)  # fmt: skip
RECORD = RequestRecord(
    workflow_id="wf", kind=RecordKind.COMPLETED, request_id="r-1", agent_id="coder", instance="vllm-1",
    affinity_hit=True, failover=True, routing_latency_seconds=0.25, timestamp=1700000000.5, prompt_tokens=100,
    cached_tokens=40, status_code=200, model="worker-8b", identity_source="previous_response",
)  # fmt: skip
SEND_RESULT = SendResult("m-1", ("coder", "tester"), 1700000000.25, 1700000300.5)
ACK = AckResult(("m-1",), ("m-2", "m-3"))
DELETE = DeleteResult("wf", 5)
RECORD_RESULT = RecordResult(3, 1)


def names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def model_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


# The fields of a delivery on the wire (HTTP JSON and protobuf): its message's, then its own, never `sequence`.
DELIVERY_WIRE = [*names(Message), *(n for n in names(Delivery) if n not in ("message", "sequence"))]


def test_the_sample_values_set_every_field_to_a_non_default() -> None:
    for value in (MESSAGE, DELIVERY, COUNTERS, STATUS, STATS, RECORD, SEND_RESULT, ACK, DELETE, RECORD_RESULT):
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                assert getattr(value, f.name) != f.default, (type(value).__name__, f.name)


# ---------------------------------------------------------------------- HTTP JSON: encoders, decoders, OpenAPI


@pytest.mark.parametrize(
    ("model", "encoded"),
    [
        (docs.MessageOut, lambda: orjson.loads(orjson.dumps(_wire.encode_delivery(DELIVERY)))),
        (docs.ReceiveResult, lambda: orjson.loads(_wire.encode_deliveries([DELIVERY], True))),
        (docs.SendMessageResult, lambda: orjson.loads(_wire.encode_send_result("wf", SEND_RESULT))),
        (docs.WorkflowStatusOut, lambda: orjson.loads(_wire.encode(STATUS))),
        (docs.SystemStatsOut, lambda: orjson.loads(_wire.encode_stats(STATS))),
        (docs.AckResultOut, lambda: orjson.loads(_wire.encode(ACK))),
        (docs.DeleteResultOut, lambda: orjson.loads(_wire.encode(DELETE))),
        (docs.RecordResultOut, lambda: orjson.loads(_wire.encode(RECORD_RESULT))),
        (docs.ErrorBody, lambda: A2AError("x", param="p").to_json()),
        (docs.ErrorBody, lambda: A2AError("x").to_json()),
        (docs.ErrorBody, lambda: InvalidRequestError("x", param="timeout").to_json()),
    ],
)
def test_the_openapi_models_describe_exactly_what_the_encoders_send(model: type[BaseModel], encoded: Any) -> None:
    data = encoded()
    model.model_validate(data, strict=False)  # the types fit
    _same_keys(model, data)


def _same_keys(model: type[BaseModel], data: Any) -> None:
    """Same keys at every level (nested models, lists and dicts of models)."""
    assert isinstance(data, dict)
    assert list(data) == model_names(model), model.__name__
    for name, info in model.model_fields.items():
        inner = _model_in(info.annotation)
        if inner is None:
            continue
        value = data[name]
        items = value.values() if isinstance(value, dict) and typing.get_origin(info.annotation) is dict else None
        if isinstance(value, list):
            items = value
        for item in items if items is not None else [value]:
            _same_keys(inner, item)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def test_the_openapi_models_have_the_dataclass_fields() -> None:
    # HTTP JSON also carries upstream's keys (docs/compatibility.md); the dataclass fields follow them.
    assert model_names(docs.MessageOut) == ["id", "source", "type", "timestamp", *DELIVERY_WIRE]
    assert model_names(docs.SendMessageResult) == [
        "message_id", "status", "timestamp", "workflow_id", *names(SendResult)[1:]
    ]
    assert model_names(docs.SystemStatsOut) == [
        *names(SystemStats), "workflow_routing", "workflow_manager", "message_queue"
    ]
    for model, cls in (
        (docs.WorkflowStatusOut, WorkflowStatus),
        (docs.QueueStatusOut, QueueStatus), (docs.MessageCountersOut, MessageCounters),
        (docs.AckResultOut, AckResult), (docs.DeleteResultOut, DeleteResult), (docs.RecordResultOut, RecordResult),
    ):  # fmt: skip
        assert model_names(model) == names(cls), model.__name__
    assert sorted(model_names(docs.RecordIn)) == sorted(names(RequestRecord))
    assert model_names(docs.SendMessageBody) == [n for n in names(SendRequest) if n != "workflow_id"]


def test_the_request_body_models_accept_what_the_parsers_accept() -> None:
    assert tuple(model_names(docs.SendMessageBody)) == _wire.SEND_FIELDS
    assert tuple(model_names(docs.AckBody)) == _wire.ACK_FIELDS
    assert tuple(model_names(docs.RecordsBody)) == _wire.RECORDS_FIELDS
    typed = {"kind", *_wire._RECORD_STRS, *_wire._RECORD_BOOLS, *_wire._RECORD_INTS, *_wire._RECORD_FLOATS}
    assert typed == set(_wire._RECORD_FIELDS) == set(model_names(docs.RecordIn)) == set(names(RequestRecord))
    assert model_names(docs.TokenBody) == ["ttl"]
    assert parse_token_request(b'{"ttl": 60}') == 60.0
    with pytest.raises(InvalidRequestError):
        parse_token_request(b'{"ttl": 60, "other": 1}')


def test_a_send_body_built_from_the_model_fields_parses() -> None:
    body = {"source_agent": "a", "target_agent": "b", "message_type": "t", "payload": {"x": 1}, "ttl": 5.0}
    assert list(body) == model_names(docs.SendMessageBody)
    request = _wire.parse_send(orjson.dumps(body), "wf", _settings())
    assert (request.source_agent, request.target_agent, request.message_type, request.payload, request.ttl) == (
        "a", "b", "t", b'{"x":1}', 5.0
    )


def test_http_json_round_trips_through_the_client_decoders() -> None:
    assert _wire.delivery_from_json(orjson.loads(orjson.dumps(_wire.encode_delivery(DELIVERY)))) == DELIVERY
    assert _wire.status_from_json(orjson.loads(_wire.encode(STATUS))) == STATUS
    assert _wire.stats_from_json(orjson.loads(_wire.encode(STATS))) == STATS
    record_json = _wire.record_to_json(RECORD)
    assert list(record_json) == names(RequestRecord)
    parsed = _wire.parse_records(orjson.dumps({"records": [record_json]}), _settings())
    assert parsed == [RECORD]


def _settings() -> Any:
    from a2a_service import Settings

    return Settings()


# ---------------------------------------------------------------------- protobuf: descriptors and the mapping

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "str", FieldDescriptor.TYPE_BYTES: "bytes", FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_DOUBLE: "float", FieldDescriptor.TYPE_FLOAT: "float", FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_INT32: "int", FieldDescriptor.TYPE_INT64: "int", FieldDescriptor.TYPE_UINT32: "int",
    FieldDescriptor.TYPE_UINT64: "int", FieldDescriptor.TYPE_SINT32: "int", FieldDescriptor.TYPE_SINT64: "int",
}  # fmt: skip


def _proto_kind(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"dict[{_proto_kind(key)}, {_proto_kind(value)}]"
        base = entry.name
    else:
        base = _SCALARS[field.type]
    if field.is_repeated:
        return f"list[{base}]"
    if field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE:
        return f"optional[{base}]"
    return base


def _python_kind(annotation: Any) -> str:
    if annotation is RecordKind:
        return "enum"
    if dataclasses.is_dataclass(annotation):
        return annotation.__name__  # type: ignore[union-attr]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return f"list[{_python_kind(args[0])}]"
    if origin is dict:
        return f"dict[{_python_kind(args[0])}, {_python_kind(args[1])}]"
    if origin is types.UnionType:
        (inner,) = [a for a in args if a is not type(None)]
        return f"optional[{_python_kind(inner)}]"
    return str(annotation.__name__)


def _dataclass_kinds(*classes: type, skip: tuple[str, ...] = (), rename: dict[str, str] | None = None
                     ) -> dict[str, str]:  # fmt: skip
    out: dict[str, str] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                out[(rename or {}).get(f.name, f.name)] = _python_kind(hints[f.name])
    return out


def _proto_kinds(descriptor: Descriptor) -> dict[str, str]:
    return {f.name: _proto_kind(f) for f in descriptor.fields}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (pb.Message, lambda: _dataclass_kinds(Message, Delivery, skip=("message", "sequence"))),
        (pb.WorkflowStatus, lambda: _dataclass_kinds(WorkflowStatus)),
        (pb.SystemStats, lambda: _dataclass_kinds(SystemStats)),
        (pb.QueueStatus, lambda: _dataclass_kinds(QueueStatus)),
        (pb.MessageCounters, lambda: _dataclass_kinds(MessageCounters)),
        (pb.RequestRecord, lambda: _dataclass_kinds(RequestRecord)),
        (pb.SendMessageRequest, lambda: _dataclass_kinds(SendRequest, rename={"ttl": "ttl_seconds"})),
        (pb.SendMessageResponse, lambda: _dataclass_kinds(SendResult)),
        (pb.AckMessagesResponse, lambda: _dataclass_kinds(AckResult)),
        (pb.DeleteWorkflowResponse, lambda: _dataclass_kinds(DeleteResult)),
        (pb.RecordRequestsResponse, lambda: _dataclass_kinds(RecordResult)),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_the_proto_messages_have_the_dataclass_fields_and_types(message: Any, expected: Any) -> None:
    assert _proto_kinds(message.DESCRIPTOR) == expected()


def test_the_record_kind_numbers_match_the_proto_enum() -> None:
    proto = {v.number: v.name for v in pb.RecordKind.DESCRIPTOR.values}
    assert set(proto) == {k.value for k in RecordKind}
    for kind in RecordKind:
        assert proto[kind.value].endswith(kind.name)


@pytest.mark.parametrize(
    ("value", "to_pb", "from_pb"),
    [
        (DELIVERY, _proto.delivery_to_pb, _proto.delivery_from_pb),
        (dataclasses.replace(DELIVERY, lease_expires_at=None), _proto.delivery_to_pb, _proto.delivery_from_pb),
        (STATUS, _proto.status_to_pb, _proto.status_from_pb),
        (dataclasses.replace(STATUS, assigned_instance=None), _proto.status_to_pb, _proto.status_from_pb),
        (STATS, _proto.stats_to_pb, _proto.stats_from_pb),
        (COUNTERS, _proto.counters_to_pb, _proto.counters_from_pb),
        (RECORD, _proto.record_to_pb, _proto.record_from_pb),
        (dataclasses.replace(RECORD, kind=RecordKind.ROUTED), _proto.record_to_pb, _proto.record_from_pb),
        (SEND_RESULT, _proto.send_result_to_pb, _proto.send_result_from_pb),
        (ACK, _proto.ack_result_to_pb, _proto.ack_result_from_pb),
        (DELETE, _proto.delete_result_to_pb, _proto.delete_result_from_pb),
        (RECORD_RESULT, _proto.record_result_to_pb, _proto.record_result_from_pb),
    ],
)
def test_every_field_survives_the_protobuf_mapping(value: Any, to_pb: Any, from_pb: Any) -> None:
    message = to_pb(value)
    assert from_pb(type(message).FromString(message.SerializeToString())) == value
    if isinstance(value, Delivery):  # the sequence stays in the process
        assert from_pb(message).sequence == 0


def test_the_record_batch_mapping_keeps_every_record() -> None:
    request = _proto.records_to_pb([RECORD, dataclasses.replace(RECORD, kind=RecordKind.ROUTED)])
    assert [_proto.record_from_pb(r) for r in request.records] == [
        RECORD, dataclasses.replace(RECORD, kind=RecordKind.ROUTED)
    ]
