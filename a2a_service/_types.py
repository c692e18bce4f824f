"""Values exchanged between the store and the adapters. Transport-neutral; payloads are JSON bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson


@dataclass(slots=True, frozen=True)
class Message:
    """One message as sent. Broadcast copies share the same object (and ``message_id``)."""

    message_id: str
    workflow_id: str
    source_agent: str
    target_agent: str  # the addressed agent, or "*" for a broadcast
    message_type: str
    payload: bytes  # UTF-8 JSON document, validated on the way in
    created_at: float  # Unix time, seconds
    expires_at: float

    def json(self) -> Any:
        """The payload, decoded."""
        return orjson.loads(self.payload)


@dataclass(slots=True, frozen=True)
class Delivery:
    """A message handed to a receiver."""

    message: Message
    delivery_count: int  # 1 on first delivery, +1 on each redelivery after an expired lease
    lease_expires_at: float | None  # set for ack=true receives
    # Position in its queue (monotonic per store); lets a delivery that never reached its receiver be put
    # back in order.
    sequence: int = field(default=0, compare=False)


@dataclass(slots=True, frozen=True)
class SendRequest:
    workflow_id: str
    source_agent: str
    target_agent: str
    message_type: str
    payload: bytes  # already-validated JSON (see _validation.encode_payload / check_payload_bytes)
    ttl: float | None = None  # seconds; None = the configured default


@dataclass(slots=True, frozen=True)
class SendResult:
    message_id: str
    delivered_to: tuple[str, ...]
    created_at: float
    expires_at: float


@dataclass(slots=True, frozen=True)
class AckResult:
    acked: tuple[str, ...]
    not_found: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class DeleteResult:
    workflow_id: str
    dropped_messages: int


class RecordKind(IntEnum):
    """Same numbers as the proto enum ``a2a_service.v1.RecordKind``."""

    UNSPECIFIED = 0
    ROUTED = 1
    COMPLETED = 2


@dataclass(slots=True, frozen=True)
class RequestRecord:
    """What the ext_proc router reports about one routed request (ROUTED) or its response (COMPLETED)."""

    workflow_id: str
    kind: RecordKind
    request_id: str = ""
    agent_id: str = ""
    instance: str = ""
    affinity_hit: bool = False
    failover: bool = False
    routing_latency_seconds: float = 0.0
    timestamp: float = 0.0
    prompt_tokens: int = 0  # COMPLETED: usage.prompt_tokens
    cached_tokens: int = 0  # COMPLETED: usage.prompt_tokens_details.cached_tokens
    status_code: int = 0  # COMPLETED: backend HTTP status
    model: str = ""  # ROUTED: the request's model ("" = none named)
    identity_source: str = ""  # ROUTED: where the router took the workflow's identity from ("" = not reported)


@dataclass(slots=True, frozen=True)
class RecordResult:
    accepted: int
    rejected: int


@dataclass(slots=True, frozen=True)
class QueueStatus:
    queued: int  # waiting to be received (may include expired messages not yet swept)
    in_flight: int  # leased, not yet acknowledged


@dataclass(slots=True, frozen=True)
class MessageCounters:
    """Per recipient queue: a broadcast to three agents counts three ``sent``."""

    sent: int = 0
    delivered: int = 0  # handed to a receiver (each redelivery counts again)
    acked: int = 0
    redelivered: int = 0  # leases that expired and put the message back
    expired: int = 0  # reached their TTL before delivery (never delivered)
    rejected: int = 0  # sends refused (full queue, too large, invalid...)
    dropped: int = 0  # discarded with a deleted or idle-expired workflow


@dataclass(slots=True, frozen=True)
class WorkflowStatus:
    workflow_id: str
    active_agents: int
    agents: tuple[str, ...]
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    failovers: int
    completed_requests: int
    failed_requests: int
    cache_hits: int  # completed requests with cached_tokens > 0
    cache_hit_rate: float  # cache_hits / total_requests (the seed document's definition)
    cached_token_rate: float  # cached_tokens / prompt_tokens: the share of prompt tokens served from cache
    prompt_tokens: int
    cached_tokens: int
    avg_routing_latency_seconds: float
    assigned_instance: str | None
    created_at: float
    last_updated: float
    queued_messages: int
    in_flight_messages: int
    queues: dict[str, QueueStatus]
    messages: MessageCounters
    # model -> the instance its requests in this workflow were last routed to (affinity is per workflow and model)
    model_instances: dict[str, str] = field(default_factory=dict)
    # where the router took the workflow's identity from, for its latest routed request (extproc identity sources:
    # workflow_metadata, workflow_header, prompt_cache_key, previous_response, session_header, trace_id)
    identity_source: str = ""


@dataclass(slots=True, frozen=True)
class SystemStats:
    active_workflows: int
    max_workflows: int
    workflows_created: int
    workflows_expired: int
    workflows_deleted: int
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    completed_requests: int
    cache_hits: int
    cache_hit_rate: float  # cache_hits / total_requests
    cached_token_rate: float  # cached_tokens / prompt_tokens
    prompt_tokens: int
    cached_tokens: int
    records_rejected: int
    queues: int
    queued_messages: int
    in_flight_messages: int
    messages: MessageCounters
    rejected_by_code: dict[str, int]
    uptime_seconds: float


def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else 0.0
