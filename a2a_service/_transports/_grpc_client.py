"""``A2AGrpcClient``: the gRPC client of the A2A service (loaded on first use by ``a2a_service.client``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import orjson

from .._types import (
    AckResult,
    DeleteResult,
    Delivery,
    Message,
    MessageCounters,
    QueueStatus,
    RecordResult,
    RequestRecord,
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from ..client import UNSET
from ..errors import A2AError, error_from_wire
from ..v1 import a2a_pb2 as pb
from ..v1 import a2a_pb2_grpc as pb_grpc

__all__ = ["A2AGrpcClient"]


def _delivery_from_pb(m: pb.Message) -> Delivery:
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


def _counters_from_pb(c: pb.MessageCounters) -> MessageCounters:
    return MessageCounters(c.sent, c.delivered, c.acked, c.redelivered, c.expired, c.rejected, c.dropped)


def _grpc_error(exc: grpc.aio.AioRpcError) -> A2AError:
    metadata = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    return error_from_wire(
        exc.details() or exc.code().name,
        code=metadata.get("a2a-error-code"),
        param=metadata.get("a2a-error-param"),
        grpc_code=exc.code().name,
    )


class A2AGrpcClient:
    """gRPC client. ``timeout`` is the deadline of each call on top of the long-poll wait it asks for."""

    def __init__(
        self, target: str, *, timeout: float = 10.0, channel: grpc.aio.Channel | None = None, token: str | None = None
    ) -> None:
        """``token``: bearer token sent as ``authorization`` metadata (services running with ``--auth jwt``)."""
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._owns_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        self.stub = pb_grpc.A2AServiceStub(self._channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def send(
        self,
        workflow_id: str,
        source_agent: str,
        target_agent: str,
        payload: Any = UNSET,
        *,
        message_type: str | None = None,
        ttl: float | None = None,
    ) -> SendResult:
        request = pb.SendMessageRequest(
            workflow_id=workflow_id,
            source_agent=source_agent,
            target_agent=target_agent,
            message_type=message_type or "",
            payload=b"" if payload is UNSET else orjson.dumps(payload),
        )
        if ttl is not None:
            request.ttl_seconds = ttl
        try:
            r = await self.stub.SendMessage(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return SendResult(r.message_id, tuple(r.delivered_to), r.created_at, r.expires_at)

    async def receive(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        timeout: float = 0.0,
        max_messages: int = 10,
        ack: bool = False,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]:
        request = pb.ReceiveMessagesRequest(
            workflow_id=workflow_id, agent_id=agent_id, timeout_seconds=timeout, max_messages=max_messages, ack=ack
        )
        if visibility_timeout is not None:
            request.visibility_timeout_seconds = visibility_timeout
        try:
            r = await self.stub.ReceiveMessages(request, timeout=timeout + self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return [_delivery_from_pb(m) for m in r.messages]

    async def subscribe_batches(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        max_messages: int | None = None,
        ack: bool = False,
        visibility_timeout: float | None = None,
    ) -> AsyncIterator[list[Delivery]]:
        """Server-streaming delivery: yields each batch as the server pushes it, until cancelled or the
        server shuts down. At-most-once unless ``ack=True``."""
        request = pb.SubscribeRequest(workflow_id=workflow_id, agent_id=agent_id, ack=ack)
        if max_messages is not None:
            request.max_messages = max_messages
        if visibility_timeout is not None:
            request.visibility_timeout_seconds = visibility_timeout
        call = self.stub.Subscribe(request, metadata=self._metadata)
        try:
            async for response in call:
                yield [_delivery_from_pb(m) for m in response.messages]
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        finally:
            call.cancel()

    async def subscribe(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        max_messages: int | None = None,
        ack: bool = False,
        visibility_timeout: float | None = None,
    ) -> AsyncIterator[Delivery]:
        """Like ``subscribe_batches``, one delivery at a time."""
        async for batch in self.subscribe_batches(
            workflow_id, agent_id, max_messages=max_messages, ack=ack, visibility_timeout=visibility_timeout
        ):
            for delivery in batch:
                yield delivery

    async def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        try:
            r = await self.stub.AckMessages(
                pb.AckMessagesRequest(workflow_id=workflow_id, agent_id=agent_id, message_ids=message_ids),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return AckResult(tuple(r.acked), tuple(r.not_found))

    async def status(self, workflow_id: str) -> WorkflowStatus:
        try:
            r = await self.stub.GetWorkflowStatus(
                pb.GetWorkflowStatusRequest(workflow_id=workflow_id), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
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
            prompt_tokens=r.prompt_tokens,
            cached_tokens=r.cached_tokens,
            avg_routing_latency_seconds=r.avg_routing_latency_seconds,
            assigned_instance=r.assigned_instance if r.HasField("assigned_instance") else None,
            created_at=r.created_at,
            last_updated=r.last_updated,
            queued_messages=r.queued_messages,
            in_flight_messages=r.in_flight_messages,
            queues={a: QueueStatus(q.queued, q.in_flight) for a, q in r.queues.items()},
            messages=_counters_from_pb(r.messages),
        )

    async def stats(self) -> SystemStats:
        try:
            r = await self.stub.GetStats(pb.GetStatsRequest(), timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
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
            prompt_tokens=r.prompt_tokens,
            cached_tokens=r.cached_tokens,
            records_rejected=r.records_rejected,
            queues=r.queues,
            queued_messages=r.queued_messages,
            in_flight_messages=r.in_flight_messages,
            messages=_counters_from_pb(r.messages),
            rejected_by_code=dict(r.rejected_by_code),
            uptime_seconds=r.uptime_seconds,
        )

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        try:
            r = await self.stub.DeleteWorkflow(
                pb.DeleteWorkflowRequest(workflow_id=workflow_id), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return DeleteResult(r.workflow_id, r.dropped_messages)

    async def record_requests(self, records: Sequence[RequestRecord]) -> RecordResult:
        request = pb.RecordRequestsRequest(
            records=[
                pb.RequestRecord(
                    request_id=r.request_id,
                    workflow_id=r.workflow_id,
                    agent_id=r.agent_id,
                    instance=r.instance,
                    affinity_hit=r.affinity_hit,
                    failover=r.failover,
                    routing_latency_seconds=r.routing_latency_seconds,
                    timestamp=r.timestamp,
                    kind=int(r.kind),  # type: ignore[arg-type]
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=r.cached_tokens,
                    status_code=r.status_code,
                )
                for r in records
            ]
        )
        try:
            r = await self.stub.RecordRequests(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return RecordResult(r.accepted, r.rejected)
