"""The seam between the transports (HTTP, gRPC) and where queues live (this process, or Redis).

Semantics every implementation keeps (see ``_queue`` for the reference implementation):
- FIFO per (workflow, agent); ``target_agent = "*"`` enqueues for every known agent except the sender.
- ``receive`` returns as soon as at least one message is available (at most ``max_messages``), else waits
  up to ``timeout`` seconds and returns ``[]``; concurrent waiters on one queue are served in arrival
  order (with Redis: the waiters of one replica). ``visibility_timeout=None`` removes what it returns
  (at-most-once); a number leases it and the message comes back unless ``ack``-ed in time (at-least-once).
- Limits raise the ``errors`` classes (``QueueFullError``, ``MessageTooLargeError``, ...); a store that
  cannot be reached raises ``StoreUnavailableError`` (503 / UNAVAILABLE) within a bounded time.

Two implementations: ``_memory.MemoryStore`` (one process) and ``_redis.RedisStore`` (several replicas
sharing one Redis). The Redis store keeps each queue as sorted sets and hashes changed only by Lua scripts
(one atomic script per operation), waits for messages in-process and is woken through Redis pub/sub; its
module docstring gives the key layout and why it does not use Redis Streams consumer groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._types import (
    AckResult,
    DeleteResult,
    Delivery,
    RecordResult,
    RequestRecord,
    SendRequest,
    SendResult,
    SystemStats,
    WorkflowStatus,
)


@runtime_checkable
class Store(Protocol):
    @property
    def closing(self) -> bool:
        """True once ``close`` began: receives stop waiting and return what is available at once."""
        ...

    async def start(self) -> None:
        """Start background work (expiry, lease redelivery, idle-workflow cleanup)."""
        ...

    async def close(self) -> None:
        """Stop background work and wake every waiting receive with what is available. Calls still in
        flight (the transports' shutdown grace) keep working until ``aclose``."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once the transports have stopped."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` if the store cannot serve requests now (readiness)."""
        ...

    async def send(self, request: SendRequest) -> SendResult: ...

    async def receive(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        max_messages: int,
        timeout: float,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]: ...

    async def release(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        """Put back deliveries that never reached their receiver (the transport failed before handing them
        over): they become receivable again at once, in their original order."""
        ...

    async def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        """Raises ``NotFoundError`` for an unknown workflow."""
        ...

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Raises ``NotFoundError`` for an unknown workflow."""
        ...

    async def stats(self) -> SystemStats: ...

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        """Raises ``NotFoundError`` for an unknown workflow. Waiting receivers keep waiting."""
        ...

    async def record(self, records: Sequence[RequestRecord]) -> RecordResult: ...

    async def note_rejected(self, code: str, workflow_id: str | None = None) -> None:
        """Count a send the transport refused before calling ``send`` (e.g. body too large to read)."""
        ...
