"""The gRPC wire mapping: ``_types`` values <-> ``a2a_service.v1`` protobuf messages, both directions (the
servicer and ``A2AGrpcClient`` use the same functions). Pure; ``tests/unit/test_a2a_shapes.py`` round-trips
every shape through here and compares the proto fields with the dataclass fields.

proto3 ``optional`` fields map to ``None`` when unset (``lease_expires_at``, ``assigned_instance``).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from ..v1 import a2a_pb2 as pb

# ---------------------------------------------------------------------- messages


def delivery_to_pb(d: Delivery) -> pb.Message:
    m = d.message
    out = pb.Message(
        message_id=m.message_id,
        workflow_id=m.workflow_id,
        source_agent=m.source_agent,
        target_agent=m.target_agent,
        message_type=m.message_type,
        payload=m.payload,
        created_at=m.created_at,
        expires_at=m.expires_at,
        delivery_count=d.delivery_count,
    )
    if d.lease_expires_at is not None:
        out.lease_expires_at = d.lease_expires_at
    return out


def delivery_from_pb(m: pb.Message) -> Delivery:
    message = Message(
        message_id=m.message_id,
        workflow_id=m.workflow_id,
        source_agent=m.source_agent,
        target_agent=m.target_agent,
        message_type=m.message_type,
        payload=m.payload or b"{}",
        created_at=m.created_at,
        expires_at=m.expires_at,
    )
    return Delivery(message, m.delivery_count, m.lease_expires_at if m.HasField("lease_expires_at") else None)


def send_result_to_pb(r: SendResult) -> pb.SendMessageResponse:
    return pb.SendMessageResponse(
        message_id=r.message_id, delivered_to=r.delivered_to, created_at=r.created_at, expires_at=r.expires_at
    )


def send_result_from_pb(r: pb.SendMessageResponse) -> SendResult:
    return SendResult(r.message_id, tuple(r.delivered_to), r.created_at, r.expires_at)


def ack_result_to_pb(r: AckResult) -> pb.AckMessagesResponse:
    return pb.AckMessagesResponse(acked=r.acked, not_found=r.not_found)


def ack_result_from_pb(r: pb.AckMessagesResponse) -> AckResult:
    return AckResult(tuple(r.acked), tuple(r.not_found))


# ---------------------------------------------------------------------- workflows and statistics


def counters_to_pb(c: MessageCounters) -> pb.MessageCounters:
    return pb.MessageCounters(
        sent=c.sent,
        delivered=c.delivered,
        acked=c.acked,
        redelivered=c.redelivered,
        expired=c.expired,
        rejected=c.rejected,
        dropped=c.dropped,
    )


def counters_from_pb(c: pb.MessageCounters) -> MessageCounters:
    return MessageCounters(c.sent, c.delivered, c.acked, c.redelivered, c.expired, c.rejected, c.dropped)


def status_to_pb(st: WorkflowStatus) -> pb.WorkflowStatus:
    out = pb.WorkflowStatus(
        workflow_id=st.workflow_id,
        active_agents=st.active_agents,
        agents=st.agents,
        total_requests=st.total_requests,
        affinity_hits=st.affinity_hits,
        affinity_hit_rate=st.affinity_hit_rate,
        failovers=st.failovers,
        completed_requests=st.completed_requests,
        failed_requests=st.failed_requests,
        cache_hits=st.cache_hits,
        cache_hit_rate=st.cache_hit_rate,
        cached_token_rate=st.cached_token_rate,
        prompt_tokens=st.prompt_tokens,
        cached_tokens=st.cached_tokens,
        avg_routing_latency_seconds=st.avg_routing_latency_seconds,
        created_at=st.created_at,
        last_updated=st.last_updated,
        queued_messages=st.queued_messages,
        in_flight_messages=st.in_flight_messages,
        queues={a: pb.QueueStatus(queued=q.queued, in_flight=q.in_flight) for a, q in st.queues.items()},
        messages=counters_to_pb(st.messages),
        model_instances=st.model_instances,
        identity_source=st.identity_source,
    )
    if st.assigned_instance is not None:
        out.assigned_instance = st.assigned_instance
    return out


def status_from_pb(r: pb.WorkflowStatus) -> WorkflowStatus:
    return WorkflowStatus(
        workflow_id=r.workflow_id,
        active_agents=r.active_agents,
        agents=tuple(r.agents),
        total_requests=r.total_requests,
        affinity_hits=r.affinity_hits,
        affinity_hit_rate=r.affinity_hit_rate,
        failovers=r.failovers,
        completed_requests=r.completed_requests,
        failed_requests=r.failed_requests,
        cache_hits=r.cache_hits,
        cache_hit_rate=r.cache_hit_rate,
        cached_token_rate=r.cached_token_rate,
        prompt_tokens=r.prompt_tokens,
        cached_tokens=r.cached_tokens,
        avg_routing_latency_seconds=r.avg_routing_latency_seconds,
        assigned_instance=r.assigned_instance if r.HasField("assigned_instance") else None,
        model_instances=dict(r.model_instances),
        identity_source=r.identity_source,
        created_at=r.created_at,
        last_updated=r.last_updated,
        queued_messages=r.queued_messages,
        in_flight_messages=r.in_flight_messages,
        queues={a: QueueStatus(q.queued, q.in_flight) for a, q in r.queues.items()},
        messages=counters_from_pb(r.messages),
    )


def stats_to_pb(st: SystemStats) -> pb.SystemStats:
    return pb.SystemStats(
        active_workflows=st.active_workflows,
        max_workflows=st.max_workflows,
        workflows_created=st.workflows_created,
        workflows_expired=st.workflows_expired,
        workflows_deleted=st.workflows_deleted,
        total_requests=st.total_requests,
        affinity_hits=st.affinity_hits,
        affinity_hit_rate=st.affinity_hit_rate,
        completed_requests=st.completed_requests,
        cache_hits=st.cache_hits,
        cache_hit_rate=st.cache_hit_rate,
        cached_token_rate=st.cached_token_rate,
        prompt_tokens=st.prompt_tokens,
        cached_tokens=st.cached_tokens,
        records_rejected=st.records_rejected,
        queues=st.queues,
        queued_messages=st.queued_messages,
        in_flight_messages=st.in_flight_messages,
        messages=counters_to_pb(st.messages),
        rejected_by_code=st.rejected_by_code,
        uptime_seconds=st.uptime_seconds,
    )


def stats_from_pb(r: pb.SystemStats) -> SystemStats:
    return SystemStats(
        active_workflows=r.active_workflows,
        max_workflows=r.max_workflows,
        workflows_created=r.workflows_created,
        workflows_expired=r.workflows_expired,
        workflows_deleted=r.workflows_deleted,
        total_requests=r.total_requests,
        affinity_hits=r.affinity_hits,
        affinity_hit_rate=r.affinity_hit_rate,
        completed_requests=r.completed_requests,
        cache_hits=r.cache_hits,
        cache_hit_rate=r.cache_hit_rate,
        cached_token_rate=r.cached_token_rate,
        prompt_tokens=r.prompt_tokens,
        cached_tokens=r.cached_tokens,
        records_rejected=r.records_rejected,
        queues=r.queues,
        queued_messages=r.queued_messages,
        in_flight_messages=r.in_flight_messages,
        messages=counters_from_pb(r.messages),
        rejected_by_code=dict(r.rejected_by_code),
        uptime_seconds=r.uptime_seconds,
    )


def delete_result_to_pb(r: DeleteResult) -> pb.DeleteWorkflowResponse:
    return pb.DeleteWorkflowResponse(workflow_id=r.workflow_id, dropped_messages=r.dropped_messages)


def delete_result_from_pb(r: pb.DeleteWorkflowResponse) -> DeleteResult:
    return DeleteResult(r.workflow_id, r.dropped_messages)


# ---------------------------------------------------------------------- router records


def record_to_pb(r: RequestRecord) -> pb.RequestRecord:
    return pb.RequestRecord(
        request_id=r.request_id,
        workflow_id=r.workflow_id,
        agent_id=r.agent_id,
        instance=r.instance,
        affinity_hit=r.affinity_hit,
        failover=r.failover,
        routing_latency_seconds=r.routing_latency_seconds,
        timestamp=r.timestamp,
        kind=int(r.kind),  # type: ignore[arg-type]  # the stub wants the enum class; protobuf takes its int
        prompt_tokens=r.prompt_tokens,
        cached_tokens=r.cached_tokens,
        status_code=r.status_code,
        model=r.model,
        identity_source=r.identity_source,
    )


def record_from_pb(r: pb.RequestRecord) -> RequestRecord:
    try:
        kind = RecordKind(r.kind)
    except ValueError:
        kind = RecordKind.UNSPECIFIED  # counted as rejected by the store
    return RequestRecord(
        workflow_id=r.workflow_id,
        kind=kind,
        request_id=r.request_id,
        agent_id=r.agent_id,
        instance=r.instance,
        affinity_hit=r.affinity_hit,
        failover=r.failover,
        routing_latency_seconds=r.routing_latency_seconds,
        timestamp=r.timestamp,
        prompt_tokens=r.prompt_tokens,
        cached_tokens=r.cached_tokens,
        status_code=r.status_code,
        model=r.model,
        identity_source=r.identity_source,
    )


def records_to_pb(records: Sequence[RequestRecord]) -> pb.RecordRequestsRequest:
    return pb.RecordRequestsRequest(records=[record_to_pb(r) for r in records])


def record_result_to_pb(r: RecordResult) -> pb.RecordRequestsResponse:
    return pb.RecordRequestsResponse(accepted=r.accepted, rejected=r.rejected)


def record_result_from_pb(r: pb.RecordRequestsResponse) -> RecordResult:
    return RecordResult(r.accepted, r.rejected)
