"""The HTTP API's JSON: pure parsing (bytes in, values out) and encoding (values in, bytes out)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .. import _validation as v
from .._types import (
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
from ..config import Settings
from ..errors import InvalidRequestError, MalformedJSONError

# The fields each request body accepts (the OpenAPI models of ``_http_docs`` are checked against these).
SEND_FIELDS = ("source_agent", "target_agent", "message_type", "payload", "ttl")
ACK_FIELDS = ("message_ids",)
RECORDS_FIELDS = ("records",)
DEFAULT_MESSAGE_TYPE = "data"  # upstream's default (docs/compatibility.md)
_RECORD_FIELDS = {f.name for f in fields(RequestRecord)}
_RECORD_INTS = ("prompt_tokens", "cached_tokens", "status_code")
_RECORD_FLOATS = ("routing_latency_seconds", "timestamp")
_RECORD_BOOLS = ("affinity_hit", "failover")
_RECORD_STRS = ("request_id", "workflow_id", "agent_id", "instance", "model", "identity_source")
_INT64_MAX = 2**63 - 1


def parse_object(body: bytes, *, max_depth: int) -> dict[str, Any]:
    """Parse a request body that must be a JSON object."""
    if not body:
        raise MalformedJSONError("request body is empty; expected a JSON object", param="body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "ecursion" in str(exc):  # orjson refuses > 1024 levels
            raise InvalidRequestError(
                f"body nests deeper than {max_depth} levels", param="body", code="json_too_deep"
            ) from None
        raise MalformedJSONError(f"body is not valid JSON: {exc}", param="body") from None
    if type(value) is not dict:
        raise MalformedJSONError("body must be a JSON object", param="body")
    return value


def _reject_unknown(obj: dict[str, Any], allowed: tuple[str, ...] | set[str], prefix: str = "") -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequestError(f"unknown field {key!r}", param=prefix + key, code="unknown_field")


def parse_send(body: bytes, workflow_id: str, settings: Settings) -> SendRequest:
    """``POST /v1/workflows/{workflow_id}/messages`` body -> ``SendRequest`` (ids are checked by the store)."""
    obj = parse_object(body, max_depth=settings.json_max_depth)
    _reject_unknown(obj, SEND_FIELDS)
    for name in ("source_agent", "target_agent"):
        if name not in obj:
            raise InvalidRequestError(f"{name} is required", param=name, code="missing_field")
        v.check_id(obj[name], name, allow_broadcast=name == "target_agent")
    message_type = obj.get("message_type", DEFAULT_MESSAGE_TYPE)
    v.check_id(message_type, "message_type")
    payload = (
        v.encode_payload(obj["payload"], max_depth=settings.json_max_depth, max_size=settings.max_message_size)
        if "payload" in obj
        else v.EMPTY_PAYLOAD
    )
    ttl = obj.get("ttl")
    if ttl is not None:
        ttl = v.check_number(ttl, "ttl", minimum=0.0, maximum=settings.max_message_ttl, exclusive_minimum=True)
    return SendRequest(workflow_id, obj["source_agent"], obj["target_agent"], message_type, payload, ttl)


def parse_ack(body: bytes, settings: Settings) -> list[str]:
    obj = parse_object(body, max_depth=settings.json_max_depth)
    _reject_unknown(obj, ACK_FIELDS)
    ids = obj.get("message_ids")
    if type(ids) is not list:
        raise InvalidRequestError("message_ids must be a list of strings", param="message_ids", code="invalid_type")
    if len(ids) > settings.max_ack_ids:
        raise InvalidRequestError(
            f"at most {settings.max_ack_ids} message ids per ack", param="message_ids", code="too_many"
        )
    for i, message_id in enumerate(ids):
        if type(message_id) is not str or not 0 < len(message_id) <= 256:
            raise InvalidRequestError(
                "message ids must be non-empty strings of at most 256 characters",
                param=f"message_ids[{i}]",
                code="invalid_id",
            )
    return ids


def parse_kind(value: object, param: str) -> RecordKind:
    if type(value) is str and value.upper() in ("ROUTED", "COMPLETED"):
        return RecordKind[value.upper()]
    if type(value) is int and value in (1, 2):
        return RecordKind(value)
    raise InvalidRequestError("kind must be 'ROUTED' or 'COMPLETED'", param=param, code="invalid_value")


def parse_records(body: bytes, settings: Settings) -> list[RequestRecord]:
    """``POST /v1/workflows/records``: ``{"records": [...]}``. Wrong types fail the whole batch (422);
    semantically invalid records are left for the store to count as rejected."""
    obj = parse_object(body, max_depth=settings.json_max_depth)
    _reject_unknown(obj, RECORDS_FIELDS)
    items = obj.get("records")
    if type(items) is not list:
        raise InvalidRequestError("records must be a list of objects", param="records", code="invalid_type")
    if len(items) > settings.max_records_per_batch:
        raise InvalidRequestError(
            f"at most {settings.max_records_per_batch} records per call", param="records", code="too_many"
        )
    out: list[RequestRecord] = []
    for i, item in enumerate(items):
        prefix = f"records[{i}]."
        if type(item) is not dict:
            raise InvalidRequestError("each record must be an object", param=f"records[{i}]", code="invalid_type")
        _reject_unknown(item, _RECORD_FIELDS, prefix)
        if "kind" not in item or "workflow_id" not in item:
            missing = "kind" if "kind" not in item else "workflow_id"
            raise InvalidRequestError(f"{missing} is required", param=prefix + missing, code="missing_field")
        kwargs: dict[str, Any] = {"kind": parse_kind(item["kind"], prefix + "kind")}
        for name in _RECORD_STRS:
            if name in item:
                if type(item[name]) is not str:
                    raise InvalidRequestError(f"{name} must be a string", param=prefix + name, code="invalid_type")
                kwargs[name] = item[name]
        for name in _RECORD_BOOLS:
            if name in item:
                if type(item[name]) is not bool:
                    raise InvalidRequestError(f"{name} must be a boolean", param=prefix + name, code="invalid_type")
                kwargs[name] = item[name]
        for name in _RECORD_INTS:
            if name in item:
                kwargs[name] = v.check_int(item[name], prefix + name, minimum=0, maximum=_INT64_MAX)
        for name in _RECORD_FLOATS:
            if name in item:
                kwargs[name] = v.check_number(item[name], prefix + name, minimum=0.0, maximum=1e12)
        out.append(RequestRecord(**kwargs))
    return out


@dataclass(slots=True, frozen=True)
class ReceiveParams:
    timeout: float  # within 0..receive_timeout_cap
    max_messages: int  # within 1..max_messages_cap
    visibility_timeout: float | None  # None: at-most-once


def check_receive_limits(timeout: float, max_messages: int, settings: Settings, *, timeout_param: str) -> None:
    """A wait or batch beyond the limits is refused (422), as upstream's ``Query(le=...)`` does; the HTTP and
    gRPC receives share this check."""
    if not (math.isfinite(timeout) and 0 <= timeout <= settings.receive_timeout_cap):
        raise InvalidRequestError(
            f"{timeout_param} must be >= 0 and <= {settings.receive_timeout_cap:g}",
            param=timeout_param,
            code="out_of_range",
        )
    if not 1 <= max_messages <= settings.max_messages_cap:
        raise InvalidRequestError(
            f"max_messages must be >= 1 and <= {settings.max_messages_cap}", param="max_messages", code="out_of_range"
        )


def may_have_more(deliveries: list[Delivery], max_messages: int, settings: Settings) -> bool:
    """``has_more``: the batch is full, or it may have been cut at ``max_batch_bytes`` (its payloads leave less
    room than one more message could need). True means "receive again"; it may then return nothing."""
    if len(deliveries) >= max_messages:
        return True
    total = sum(len(d.message.payload) for d in deliveries)
    return bool(deliveries) and total > settings.max_batch_bytes - settings.max_message_size


_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))


def _query_float(raw: str, param: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"{param} must be a number", param=param, code="invalid_type") from None
    if not math.isfinite(value):
        raise InvalidRequestError(f"{param} must be finite", param=param, code="out_of_range")
    return value


def parse_receive_query(query: str, settings: Settings) -> ReceiveParams:
    """``?timeout=1.0&max_messages=100&ack=false&visibility_timeout=30``. Values out of range are errors (a wait
    above ``receive_timeout_cap`` or a batch above ``max_messages_cap`` too). Unknown parameters are ignored."""
    timeout = settings.default_timeout
    max_messages = settings.default_max_messages
    ack = False
    visibility: float | None = None
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key == "timeout":
            timeout = _query_float(raw, key)
        elif key == "max_messages":
            try:
                max_messages = int(raw)
            except ValueError:
                raise InvalidRequestError("max_messages must be an integer", param=key, code="invalid_type") from None
        elif key == "ack":
            lowered = raw.lower()
            if lowered not in _TRUE and lowered not in _FALSE:
                raise InvalidRequestError("ack must be true or false", param=key, code="invalid_type")
            ack = lowered in _TRUE
        elif key == "visibility_timeout":
            visibility = _query_float(raw, key)
            if not 0 < visibility <= settings.max_visibility_timeout:
                raise InvalidRequestError(
                    f"visibility_timeout must be > 0 and <= {settings.max_visibility_timeout:g}",
                    param=key,
                    code="out_of_range",
                )
    check_receive_limits(timeout, max_messages, settings, timeout_param="timeout")
    return ReceiveParams(
        timeout=timeout,
        max_messages=max_messages,
        visibility_timeout=(visibility or settings.visibility_timeout) if ack else None,
    )


# ---------------------------------------------------------------------- encoding (server side)


def encode_delivery(d: Delivery) -> dict[str, Any]:
    """Our fields, and upstream's item keys (``id``, ``source``, ``type``, ``timestamp``) with the same values."""
    m = d.message
    return {
        "id": m.message_id,
        "source": m.source_agent,
        "type": m.message_type,
        "timestamp": m.created_at,
        "message_id": m.message_id,
        "workflow_id": m.workflow_id,
        "source_agent": m.source_agent,
        "target_agent": m.target_agent,
        "message_type": m.message_type,
        "payload": orjson.Fragment(m.payload),  # stored JSON bytes, spliced in without re-parsing
        "created_at": m.created_at,
        "expires_at": m.expires_at,
        "delivery_count": d.delivery_count,
        "lease_expires_at": d.lease_expires_at,
    }


def encode_deliveries(deliveries: list[Delivery], has_more: bool) -> bytes:
    return orjson.dumps(
        {"messages": [encode_delivery(d) for d in deliveries], "count": len(deliveries), "has_more": has_more}
    )


def encode_send_result(workflow_id: str, r: SendResult) -> bytes:
    """Upstream's ``{message_id, status: "sent", timestamp}`` and our fields."""
    return orjson.dumps(
        {
            "message_id": r.message_id,
            "status": "sent",
            "timestamp": r.created_at,
            "workflow_id": workflow_id,
            "delivered_to": r.delivered_to,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
        }
    )


def encode_stats(s: SystemStats) -> bytes:
    """Our flat figures, and upstream's sections (``workflow_routing``, ``workflow_manager``, ``message_queue``)
    with the keys of upstream's that we can fill from them (docs/compatibility.md lists those we leave out)."""
    out = {f.name: getattr(s, f.name) for f in fields(SystemStats)}
    m = s.messages
    out["workflow_routing"] = {
        "total_requests": s.total_requests,
        "cache_hits": s.cache_hits,
        "cache_hit_rate": s.cache_hit_rate,
        "routing_decisions": s.total_requests,
    }
    out["workflow_manager"] = {
        "total_workflows_created": s.workflows_created,
        "total_workflows_expired": s.workflows_expired,
        "active_workflows": s.active_workflows,
        "total_agents": s.queues,
    }
    out["message_queue"] = {
        "total_queues": s.queues,
        "total_messages_sent": m.sent,
        "total_messages_received": m.delivered,
        "total_messages_expired": m.expired,
        "total_pending_messages": s.queued_messages + s.in_flight_messages,
    }
    return orjson.dumps(out)


def encode(value: WorkflowStatus | SystemStats | AckResult | DeleteResult | RecordResult | dict[str, Any]) -> bytes:
    """Dataclasses serialize field by field (orjson handles them natively)."""
    return orjson.dumps(value)


# ---------------------------------------------------------------------- decoding (client side)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: val for k, val in data.items() if k in names}


def delivery_from_json(d: dict[str, Any]) -> Delivery:
    message = Message(
        message_id=d["message_id"],
        workflow_id=d["workflow_id"],
        source_agent=d["source_agent"],
        target_agent=d["target_agent"],
        message_type=d["message_type"],
        payload=orjson.dumps(d.get("payload")),
        created_at=d["created_at"],
        expires_at=d["expires_at"],
    )
    return Delivery(message, d["delivery_count"], d.get("lease_expires_at"))


def status_from_json(d: dict[str, Any]) -> WorkflowStatus:
    data = _known(WorkflowStatus, d)
    data["agents"] = tuple(data.get("agents", ()))
    data["queues"] = {k: QueueStatus(**_known(QueueStatus, q)) for k, q in data.get("queues", {}).items()}
    data["messages"] = MessageCounters(**_known(MessageCounters, data.get("messages", {})))
    return WorkflowStatus(**data)


def stats_from_json(d: dict[str, Any]) -> SystemStats:
    data = _known(SystemStats, d)
    data["messages"] = MessageCounters(**_known(MessageCounters, data.get("messages", {})))
    data["rejected_by_code"] = dict(data.get("rejected_by_code", {}))
    return SystemStats(**data)


def record_to_json(r: RequestRecord) -> dict[str, Any]:
    out = {f.name: getattr(r, f.name) for f in fields(RequestRecord)}
    out["kind"] = r.kind.name
    return out
