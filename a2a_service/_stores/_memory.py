"""In-memory ``Store``: the pure ``QueueCore`` plus asyncio waiters, lease timers and a background sweep.

Fairness: waiters on one queue form a line. Whenever messages may have become available (a send, an
expired lease), the line is served from its head, each waiter taking what is there (up to its
``max_messages``) until the queue or the line is empty. A new receive first lets the line be served, so
it never overtakes an earlier waiter; by construction the queue is empty whenever the line is not.
Everything runs on one event loop thread, so no message is handed to two waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

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
from .._validation import sanitize_for_log
from ..config import Settings
from ..errors import A2AError
from ._queue import Clock, IdFactory, QueueCore, _uuid_hex
from ._waiters import Key, LeaseTimers, WaitingLines, answer_empty

log = logging.getLogger("a2a_service.store")

_SWEEP_CHUNK = 64


class MemoryStore:
    """Single-process store. All methods must be called from the same event loop."""

    def __init__(self, settings: Settings, *, clock: Clock = time.time, new_id: IdFactory = _uuid_hex) -> None:
        self.settings = settings
        self.core = QueueCore(settings, clock=clock, new_id=new_id)
        self._waiters = WaitingLines()
        self._lease_timers = LeaseTimers()
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="a2a-sweeper")

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._lease_timers.cancel_all()
        for key in list(self._waiters):
            self._dispatch(key)  # hand over whatever is available...
        self._waiters.wake_all()  # ...and wake the rest empty-handed
        self._waiters.clear()

    async def aclose(self) -> None:
        """Nothing to release, but the messages still queued go with this process: say how many."""
        stats = self.core.stats()
        dropped = stats.queued_messages + stats.in_flight_messages
        if dropped:
            log.warning(
                "memory store: queued messages dropped at shutdown (use --store redis:// to keep them)",
                extra={"dropped_messages": dropped, "queued": stats.queued_messages,
                       "in_flight": stats.in_flight_messages, "workflows": stats.active_workflows},
            )

    async def ping(self) -> None:
        """Always ready."""

    # ------------------------------------------------------------------ messages

    async def send(self, request: SendRequest) -> SendResult:
        result = self.core.send(request)
        for agent in result.delivered_to:
            self._dispatch((request.workflow_id, agent))
        if log.isEnabledFor(logging.DEBUG):  # ids only, sanitised; payloads are never logged
            log.debug(
                "message sent",
                extra={
                    "workflow_id": sanitize_for_log(request.workflow_id),
                    "source_agent": sanitize_for_log(request.source_agent),
                    "delivered_to": [sanitize_for_log(a) for a in result.delivered_to[:20]],
                    "message_id": result.message_id,
                    "payload_bytes": len(request.payload),
                },
            )
        return result

    async def receive(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        max_messages: int,
        timeout: float,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]:
        key = (workflow_id, agent_id)
        if key in self._waiters:
            self._dispatch(key)  # earlier waiters first
        out = self.core.receive(workflow_id, agent_id, max_messages, visibility_timeout)
        timeout = min(timeout, self.settings.receive_timeout_cap)
        if out or timeout <= 0 or self._closing:
            if out and visibility_timeout is not None:
                self._arm_lease_timer(key)
            return out
        waiter = self._waiters.join(key, max_messages, visibility_timeout)
        out = await self._waiters.wait(key, waiter, timeout, answer_empty, lambda handed: self._put_back(key, handed))
        if out and visibility_timeout is not None:
            self._arm_lease_timer(key)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "messages received after waiting",
                extra={"workflow_id": sanitize_for_log(workflow_id), "agent_id": sanitize_for_log(agent_id),
                       "count": len(out)},
            )  # fmt: skip
        return out

    async def release(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        self._put_back((workflow_id, agent_id), deliveries)

    async def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        return self.core.ack(workflow_id, agent_id, message_ids)

    # ------------------------------------------------------------------ workflows

    async def status(self, workflow_id: str) -> WorkflowStatus:
        return self.core.status(workflow_id)

    async def stats(self) -> SystemStats:
        return self.core.stats()

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        result = self.core.delete_workflow(workflow_id)
        log.info(
            "workflow deleted",
            extra={"workflow_id": sanitize_for_log(workflow_id), "dropped_messages": result.dropped_messages},
        )
        return result

    async def record(self, records: Sequence[RequestRecord]) -> RecordResult:
        return self.core.record(records)

    async def note_rejected(self, code: str, workflow_id: str | None = None) -> None:
        self.core.note_rejected(code, workflow_id)

    # ------------------------------------------------------------------ internals

    def _put_back(self, key: Key, deliveries: Sequence[Delivery]) -> None:
        """Deliveries that never reached their receiver go back in their place; waiters may take them."""
        if deliveries:
            self.core.restore(*key, deliveries)
            self._dispatch(key)

    def _dispatch(self, key: Key) -> None:
        """Serve the line of waiters on ``key`` from its head while messages are available."""
        line = self._waiters.get(key)
        if not line:
            return
        workflow_id, agent_id = key
        while line:
            waiter = line[0]
            if waiter.done:  # timed out or cancelled; it leaves the line itself too
                line.popleft()
                continue
            try:
                out = self.core.receive(workflow_id, agent_id, waiter.max_messages, waiter.visibility_timeout)
            except A2AError as exc:  # e.g. the workflow was removed and the service is full
                line.popleft()
                waiter.fail(exc)
                continue
            if not out:
                break
            line.popleft()
            waiter.answer(out)
        if not line:
            del self._waiters[key]

    def _arm_lease_timer(self, key: Key) -> None:
        """Make sure a timer fires at the queue's earliest lease deadline (one timer per queue)."""
        deadline = self.core.next_lease_deadline(*key)
        if deadline is None or self._closing:
            return
        self._lease_timers.arm(key, deadline - self.core.now(), self._on_lease_timer)

    def _on_lease_timer(self, key: Key) -> None:
        self._lease_timers.fired(key)
        if self.core.requeue_expired_leases(*key):
            self._dispatch(key)
        self._arm_lease_timer(key)

    async def _sweep_forever(self) -> None:
        interval = self.settings.cleanup_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except Exception:  # never let the sweeper die; it is the backstop for expiry
                log.exception("sweep failed")

    async def sweep_once(self) -> None:
        """One pass over all workflows, in chunks, yielding to the loop between chunks."""
        ids = self.core.workflow_ids()
        for start in range(0, len(ids), _SWEEP_CHUNK):
            report = self.core.sweep(ids[start : start + _SWEEP_CHUNK])
            for key in report.ready_queues:
                self._dispatch(key)
            for workflow_id in report.workflows_expired:
                log.info("idle workflow removed", extra={"workflow_id": sanitize_for_log(workflow_id)})
            if report.expired_messages:
                log.debug("messages expired", extra={"count": report.expired_messages})
            await asyncio.sleep(0)
