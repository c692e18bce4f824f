"""The HTTP API's OpenAPI documentation (``/docs``, ``/openapi.json``).

Requests are parsed by ``_wire`` (orjson), not by pydantic; the pydantic models here only describe the JSON.
The record shapes are generated from the ``_types`` dataclasses (the single definition of each shape), so a
field added there appears here; JSON-only differences (a payload is any JSON value, tuples are arrays, a
record's ``kind`` is a name) are stated once in ``_json_annotation``. The envelopes that are no dataclass
(``AckBody``, ``RecordsBody``, ``TokenBody``, ``ErrorBody``) are checked against their parsers by
``tests/unit/test_a2a_shapes.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, create_model

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
from ..config import ID_CHARSET, ID_MAX_LENGTH, Settings
from ._wire import DEFAULT_MESSAGE_TYPE

JSON = "application/json"
_ID_PATTERN = f"^[{ID_CHARSET}]{{1,{ID_MAX_LENGTH}}}$"
_FORBID = ConfigDict(extra="forbid")

# Dataclass -> its documentation model (filled as models are generated; nested shapes come first).
_MODELS: dict[type, type[BaseModel]] = {}


def _json_annotation(annotation: Any) -> Any:
    """The JSON form of a dataclass field's type."""
    if annotation is bytes:  # a payload: stored as JSON bytes, sent and received as any JSON value
        return Any
    if annotation is RecordKind:
        return str
    if dataclasses.is_dataclass(annotation):
        return _MODELS[annotation]  # type: ignore[index]  # a dataclass class, not an instance
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:  # tuple[str, ...]
        return list[_json_annotation(args[0])]  # type: ignore[misc]  # a type built at run time
    if origin is dict:
        return dict[_json_annotation(args[0]), _json_annotation(args[1])]  # type: ignore[misc]  # as above
    if origin is types.UnionType:
        return typing.Union[tuple(_json_annotation(a) for a in args)]  # noqa: UP007  # built at run time
    return annotation


def _from_dataclasses(
    name: str,
    *sources: type,
    omit: tuple[str, ...] = (),
    fields: dict[str, Any] | None = None,
    order: tuple[str, ...] = (),
    config: ConfigDict | None = None,
    defaults: bool = False,
) -> type[BaseModel]:
    """A model with the fields of ``sources`` (in order), minus ``omit``. ``fields`` replaces or adds
    ``(annotation, FieldInfo)`` pairs; ``order`` names fields to put first. ``defaults``: take the
    dataclass defaults (request bodies); otherwise every field is required (responses always carry all)."""
    spec: dict[str, Any] = {}
    for source in sources:
        hints = typing.get_type_hints(source)
        for f in dataclasses.fields(source):
            if f.name in omit:
                continue
            if defaults and f.default is not dataclasses.MISSING:
                spec[f.name] = (_json_annotation(hints[f.name]), f.default)
            else:
                spec[f.name] = (_json_annotation(hints[f.name]), ...)
    spec.update(fields or {})
    ordered = {key: spec[key] for key in order} | {key: value for key, value in spec.items() if key not in order}
    model: type[BaseModel] = create_model(name, __config__=config, **ordered)
    if len(sources) == 1:
        _MODELS[sources[0]] = model
    return model


# ---------------------------------------------------------------------- responses

QueueStatusOut = _from_dataclasses("QueueStatusOut", QueueStatus)
MessageCountersOut = _from_dataclasses("MessageCountersOut", MessageCounters)
# Upstream's keys (docs/compatibility.md), sent beside ours with the same values.
_UPSTREAM_ITEM = {
    "id": (str, Field(description="= message_id (upstream's key)")),
    "source": (str, Field(description="= source_agent (upstream's key)")),
    "type": (str, Field(description="= message_type (upstream's key)")),
    "timestamp": (float, Field(description="= created_at (upstream's key)")),
}
MessageOut = _from_dataclasses(
    "MessageOut",
    Message,
    Delivery,
    omit=("message", "sequence"),  # a delivery is sent as its message's fields; the sequence stays inside
    fields={**_UPSTREAM_ITEM, "lease_expires_at": (float | None, Field(description="Set when received with ack=true"))},
    order=tuple(_UPSTREAM_ITEM),
)
SendMessageResult = _from_dataclasses(
    "SendMessageResult",
    SendResult,
    fields={
        "status": (str, Field(description='Always "sent" (upstream\'s field)')),
        "timestamp": (float, Field(description="= created_at (upstream's field)")),
        "workflow_id": (str, ...),
    },
    order=("message_id", "status", "timestamp", "workflow_id"),
)
AckResultOut = _from_dataclasses("AckResultOut", AckResult)
RecordResultOut = _from_dataclasses("RecordResultOut", RecordResult)
DeleteResultOut = _from_dataclasses("DeleteResultOut", DeleteResult)
WorkflowStatusOut = _from_dataclasses(
    "WorkflowStatusOut",
    WorkflowStatus,
    fields={
        "cache_hit_rate": (float, Field(description="cache_hits / total_requests")),
        "cached_token_rate": (float, Field(description="cached_tokens / prompt_tokens")),
        "assigned_instance": (
            str | None,
            Field(description="The instance's base URL when the router knows it (--backends name=url), else its name"),
        ),
        "model_instances": (
            dict[str, str],
            Field(default_factory=dict, description="model -> the instance the workflow's requests for it were "
                  "last routed to (affinity is per workflow and model)"),
        ),
        "identity_source": (
            str,
            Field("", description="where the router took the workflow's identity from, for its latest routed "
                  "request: workflow_metadata, workflow_header, prompt_cache_key, previous_response, "
                  "session_header or trace_id (\"\" = not reported)"),
        ),
    },
)


class WorkflowRoutingOut(BaseModel):
    total_requests: int
    cache_hits: int
    cache_hit_rate: float
    routing_decisions: int


class WorkflowManagerOut(BaseModel):
    total_workflows_created: int
    total_workflows_expired: int
    active_workflows: int
    total_agents: int


class MessageQueueOut(BaseModel):
    total_queues: int
    total_messages_sent: int
    total_messages_received: int
    total_messages_expired: int
    total_pending_messages: int


SystemStatsOut = _from_dataclasses(
    "SystemStatsOut",
    SystemStats,
    fields={
        "workflow_routing": (WorkflowRoutingOut, Field(description="Upstream's section (same figures as above)")),
        "workflow_manager": (WorkflowManagerOut, Field(description="Upstream's section")),
        "message_queue": (MessageQueueOut, Field(description="Upstream's section")),
    },
)


class ReceiveResult(BaseModel):
    messages: list[MessageOut]  # type: ignore[valid-type]  # a model class generated at import
    count: int
    has_more: bool = Field(description="The batch is full or may have been cut at the batch-size limit")


# ---------------------------------------------------------------------- request bodies

SendMessageBody = _from_dataclasses(
    "SendMessageBody",
    SendRequest,
    omit=("workflow_id",),  # from the path
    fields={
        "source_agent": (str, Field(pattern=_ID_PATTERN, description="Sending agent id")),
        "target_agent": (str, Field(description="Receiving agent id, or '*' for every other known agent")),
        "message_type": (str, Field(DEFAULT_MESSAGE_TYPE, pattern=_ID_PATTERN)),
        "payload": (Any, Field(default_factory=dict, description="Any JSON value (nesting depth limited)")),
        "ttl": (float | None, Field(None, gt=0, description="Seconds before the message expires (default 300)")),
    },
    config=_FORBID,
)
RecordIn = _from_dataclasses(
    "RecordIn",
    RequestRecord,
    fields={"kind": (str, Field(description="'ROUTED' or 'COMPLETED'"))},
    order=("kind",),
    config=_FORBID,
    defaults=True,
)


class RecordsBody(BaseModel):
    model_config = _FORBID
    records: list[RecordIn]  # type: ignore[valid-type]  # a model class generated at import


class AckBody(BaseModel):
    model_config = _FORBID
    message_ids: list[str]


class TokenBody(BaseModel):
    model_config = _FORBID
    ttl: float | None = Field(None, gt=0, description="Token lifetime in seconds (default --auth-token-ttl)")


class TokenOut(BaseModel):
    token: str = Field(description="JWT to send as 'Authorization: Bearer <token>'")
    expires_at: float = Field(description="Epoch seconds")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorBody(BaseModel):
    detail: Any = Field(description="FastAPI's shape (upstream clients): the message, or for 422 a list of "
                        "{type, loc, msg}")
    error: ErrorDetail


# ---------------------------------------------------------------------- route documentation


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {JSON: {"schema": model.model_json_schema()}}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed JSON"),
        (401, "Missing, invalid or expired bearer token (only with --auth jwt)"),
        (403, "The token does not cover this workflow/agent, or the call needs the admin token"),
        (404, "Unknown workflow"),
        (413, "Message too large"),
        (422, "Invalid field (named in error.param)"),
        (429, "Queue full / too many workflows or agents"),
        (503, "Shutting down, or the shared store (Redis) is unavailable (code store_unavailable)"),
    )
}

WorkflowId = Annotated[str, Path(description=f"1..{ID_MAX_LENGTH} characters from [{ID_CHARSET}]")]
AgentId = Annotated[str, Path(description=f"1..{ID_MAX_LENGTH} characters from [{ID_CHARSET}]")]


def receive_params_doc(settings: Settings) -> dict[str, Any]:
    def param(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}

    return {
        "parameters": [
            param(
                "timeout",
                {
                    "type": "number",
                    "minimum": 0,
                    "maximum": settings.receive_timeout_cap,
                    "default": settings.default_receive_timeout,
                },
                f"Seconds to wait when the queue is empty (at most {settings.receive_timeout_cap:g}; 0: do not wait)",
            ),
            param(
                "max_messages",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.max_messages_cap,
                    "default": settings.default_max_messages,
                },
                "Most messages to return",
            ),
            param(
                "ack",
                {"type": "boolean", "default": False},
                "Lease the messages instead of removing them; acknowledge with .../messages/ack",
            ),
            param(
                "visibility_timeout",
                {"type": "number", "exclusiveMinimum": 0, "maximum": settings.max_visibility_timeout},
                f"Lease length in seconds with ack=true (default {settings.visibility_timeout:g})",
            ),
        ]
    }
