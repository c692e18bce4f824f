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
from ._proto import (
    ack_result_from_pb,
    delete_result_from_pb,
    delivery_from_pb,
    record_result_from_pb,
    records_to_pb,
    send_result_from_pb,
    stats_from_pb,
    status_from_pb,
)

__all__ = ["A2AGrpcClient"]


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
        return send_result_from_pb(r)

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
        return [delivery_from_pb(m) for m in r.messages]

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
                yield [delivery_from_pb(m) for m in response.messages]
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
        return ack_result_from_pb(r)

    async def status(self, workflow_id: str) -> WorkflowStatus:
        try:
            r = await self.stub.GetWorkflowStatus(
                pb.GetWorkflowStatusRequest(workflow_id=workflow_id), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return status_from_pb(r)

    async def stats(self) -> SystemStats:
        try:
            r = await self.stub.GetStats(pb.GetStatsRequest(), timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return stats_from_pb(r)

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        try:
            r = await self.stub.DeleteWorkflow(
                pb.DeleteWorkflowRequest(workflow_id=workflow_id), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return delete_result_from_pb(r)

    async def record_requests(self, records: Sequence[RequestRecord]) -> RecordResult:
        request = records_to_pb(records)
        try:
            r = await self.stub.RecordRequests(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return record_result_from_pb(r)
