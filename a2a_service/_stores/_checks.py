"""Input checks of the store operations, shared by both stores so that they refuse the same requests."""

from __future__ import annotations

from collections.abc import Sequence

from .. import _validation as v
from .._types import RecordKind, RequestRecord, SendRequest
from ..config import Settings
from ..errors import InvalidRequestError, MessageTooLargeError


def check_send(req: SendRequest, s: Settings) -> float:
    """Validate a send request; return its ttl (the default when the sender gave none)."""
    v.check_id(req.workflow_id, "workflow_id")
    v.check_id(req.source_agent, "source_agent")
    v.check_id(req.target_agent, "target_agent", allow_broadcast=True)
    v.check_id(req.message_type, "message_type")
    ttl = s.default_message_ttl if req.ttl is None else req.ttl
    v.check_number(ttl, "ttl", minimum=0.0, maximum=s.max_message_ttl, exclusive_minimum=True)
    if len(req.payload) > s.max_message_size:
        raise MessageTooLargeError(
            f"payload is {len(req.payload)} bytes; the limit is {s.max_message_size}", param="payload"
        )
    return ttl


def check_receive(
    workflow_id: str, agent_id: str, max_messages: int, visibility_timeout: float | None, s: Settings
) -> None:
    v.check_id(workflow_id, "workflow_id")
    v.check_id(agent_id, "agent_id")
    v.check_int(max_messages, "max_messages", minimum=1, maximum=s.max_messages_cap)
    if visibility_timeout is not None:
        v.check_number(
            visibility_timeout,
            "visibility_timeout",
            minimum=0.0,
            maximum=s.max_visibility_timeout,
            exclusive_minimum=True,
        )


def check_ack(workflow_id: str, agent_id: str, message_ids: Sequence[str], s: Settings) -> None:
    v.check_id(workflow_id, "workflow_id")
    v.check_id(agent_id, "agent_id")
    if len(message_ids) > s.max_ack_ids:
        raise InvalidRequestError(f"at most {s.max_ack_ids} message ids per ack", param="message_ids", code="too_many")
    for i, message_id in enumerate(message_ids):
        if type(message_id) is not str or not 0 < len(message_id) <= 256:
            raise InvalidRequestError(
                "message ids must be non-empty strings", param=f"message_ids[{i}]", code="invalid_id"
            )


def check_record(rec: RequestRecord) -> None:
    """Validate one router record (an invalid one is counted as rejected and skipped)."""
    v.check_id(rec.workflow_id, "workflow_id")
    if rec.agent_id:
        v.check_id(rec.agent_id, "agent_id")
    if len(rec.request_id) > 256:
        raise InvalidRequestError("request_id too long", param="request_id")
    v.check_text(rec.instance, "instance", max_length=v.MAX_INSTANCE_LENGTH)
    if rec.model:
        v.check_text(rec.model, "model", max_length=v.MAX_MODEL_LENGTH)
    if rec.identity_source:
        v.check_text(rec.identity_source, "identity_source", max_length=v.MAX_IDENTITY_SOURCE_LENGTH)
    v.check_number(rec.routing_latency_seconds, "routing_latency_seconds", minimum=0.0, maximum=3600.0)
    if rec.kind is RecordKind.COMPLETED:
        if rec.prompt_tokens < 0 or rec.cached_tokens < 0 or rec.cached_tokens > rec.prompt_tokens:
            raise InvalidRequestError(
                "need 0 <= cached_tokens <= prompt_tokens", param="cached_tokens", code="out_of_range"
            )
    elif rec.kind is not RecordKind.ROUTED:
        raise InvalidRequestError("kind must be ROUTED or COMPLETED", param="kind")
