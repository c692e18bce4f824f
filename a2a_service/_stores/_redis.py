"""Redis ``Store``: several A2A replicas share queues and statistics through one Redis (``--store redis://``).

Same semantics and limits as the memory store (``_queue`` is the reference); only the fairness between
waiting receivers is per replica (each replica serves its own waiters on a queue in arrival order).

Design
------
Every operation is ONE Lua script (``_redis_lua``), so it is atomic and costs one round trip: two replicas
never hand out the same message, a full queue refuses the send (429; ``XADD MAXLEN`` would trim silently)
in the same step that would have added it, a broadcast is all-or-nothing, and the statistics stay exact.

Why sorted sets and not Streams consumer groups: each receive chooses its own visibility timeout (XAUTOCLAIM
takes one min-idle time per call), a message whose lease ended or that is released goes back to its FIFO
place (a stream only appends), messages have their own TTL, the size limit must refuse rather than trim,
and at-most-once receives would need XACK + XDEL anyway. A ready sorted set scored by sequence number and a
lease sorted set scored by lease end give exactly the memory store's behaviour.

Key layout (``P`` = ``--redis-prefix``, default ``a2a:``; ids never contain ``/`` or ``|``, so names and
values are unambiguous)::

    P workflows         ZSET  workflow id -> last activity (Unix s): --max-workflows count, idle sweep
    P stats             HASH  system counters and gauges (sent, delivered, ..., pending, leased, queues,
                              workflows_created, ..., started_at)
    P rejected          HASH  error code -> refused sends
    P due               ZSET  "wf/agent" -> earliest lease end or message expiry (what the sweep visits)
    P seq               STR   sequence number of the last message copy (FIFO order in every queue)
    P sweep             STR   sweep lock (SET NX PX cleanup-interval): one replica sweeps per interval
    P wake              pub/sub channel; message "replica|wf|agent|agent..." = messages for these queues
    P w/{wf}            HASH  workflow: created_at, last_updated, agent_seq, message counters,
                              pending, leased, router aggregates, assigned_instance
    P a/{wf}            ZSET  agent -> order in which agents became known
    P b/{wf}            HASH  message id -> "created|expires|source|target|type|payload" (one body shared
                              by a broadcast's copies)
    P n/{wf}            HASH  message id -> copies left (broadcasts only)
    P r/{wf}/{agent}    ZSET  ready messages: id -> seq (FIFO order)
    P l/{wf}/{agent}    ZSET  leased messages: id -> lease end
    P e/{wf}/{agent}    HASH  id -> "seq|delivery_count|expires_at|payload_bytes" (queued + leased;
                              HLEN = the queue size the limit counts)
    P x/{wf}/{agent}    ZSET  ready messages: id -> expires_at (expiry without scanning)
    P wt/{wf}/{agent}   STR   "a receiver waits on this queue" marker, PX = the longest wait + 1 s

Scripts: ``send`` (create workflow/agents within limits, size check of every recipient queue after purging
its expired messages and ended leases, then add), ``receive`` (put back ended leases, drop expired messages
from the head, take up to max_messages / max_batch_bytes, lease or remove them; when empty, set the waiting
marker and return the next lease end), ``ack``, ``release`` (back in FIFO place, re-created if it had been
removed), ``status``, ``stats``, ``delete``, ``note_rejected``, ``record`` (a batch of router records
pre-aggregated here per (workflow, agent): one round trip per batch), ``sweep_due``, ``sweep_idle``.

Wake-up: a long-poll waits in this process (a future in a per-queue line, as in the memory store), never
in a blocking Redis command, so a waiting long-poll holds no pooled connection (thousands of long-polls do
not starve sends) and redis-py's ``socket_timeout`` never races a BLOCK. A receive that finds nothing and
will wait marks the queue (``wt``, set by the same script); a send, release or sweep that adds messages to a
marked queue PUBLISHes on ``P wake`` from inside its script. Each replica keeps one subscribed connection
and, on a message for a queue it has waiters on, runs the receive script again for the head of that line.
A waiter joins its line before its receive script is sent, and a wake-up that arrives while a receive is in
flight makes the line be served once more, so a message cannot slip in between "found nothing" and
"waiting". Pub/sub drops messages while a subscription is down: after (re)subscribing every line is served
again, and as a backstop every line is re-checked every 5 s.

Leases (ack=true): the receive script moves the message from ``r`` to ``l`` with its lease end. Whoever
touches the queue after that — any replica's receive, a send to the full queue, or the sweep — puts it back
in ``r`` at its sequence number (delivery_count + 1 on the next delivery). A replica with receivers waiting
on a queue arms a timer at the earliest lease end (returned by the empty receive), so a message leased by
a replica that died goes to a receiver on another replica when the lease ends, not at the next sweep.

Sweep: every ``--cleanup-interval`` one replica (the ``P sweep`` lock) runs ``sweep_due`` and
``sweep_idle`` in chunks. Each chunk is one atomic script, so replicas sweeping at the same time (after the
lock expired) cannot drop a workflow twice nor drop one that just saw activity.

Clocks: times come from the replica's clock (injectable, like the memory store); replicas' clocks must be
synchronized (NTP): skew shifts lease ends and TTLs by the skew.

Failures: every Redis call is bounded by ``--redis-timeout`` (pool wait, connect, reply; also redis-py's
``socket_timeout``), without redis-py retries (a script that may have run is never run twice). A failure
raises ``StoreUnavailableError`` (HTTP 503 / gRPC UNAVAILABLE, code ``store_unavailable``); the pool
reconnects on the next call, so the service recovers by itself when Redis is back. Long-polls already waiting
when Redis fails end at their timeout with ``[]`` (or with 503 when their line is served meanwhile). An
at-most-once receive whose reply is lost after the script ran (Redis died or answered after the timeout)
loses those messages, the at-most-once trade-off; ``ack=true`` gets them back after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .._types import (
    AckResult,
    DeleteResult,
    Delivery,
    Message,
    RecordResult,
    RequestRecord,
    SendRequest,
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from .._validation import check_id, sanitize_for_log
from ..config import Settings
from ..errors import A2AError, StoreUnavailableError
from ._checks import check_ack, check_receive, check_send
from ._queue import Clock, IdFactory, _uuid_hex
from ._redis_codec import (
    decode_deliveries,
    decode_stats,
    decode_status,
    describe,
    encode_body,
    not_found,
    record_args,
    refusal,
    release_args,
)
from ._redis_lua import PRELUDE, SCRIPTS
from ._redis_waiting import WaitingReceivers

__all__ = ["RedisStore"]

log = logging.getLogger("a2a_service.store")

_SWEEP_CHUNK = 256  # due queues per sweep script
_IDLE_CHUNK = 32  # idle workflows per sweep script
_SWEEP_CHUNKS_MAX = 64
# Redis answers with these while it cannot serve (replica being promoted, loading, out of memory, ...).
_UNAVAILABLE_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "OOM", "BUSY", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")
_SWEEP_REPLICA = "-"  # publisher tag of sweep wake-ups: every replica, this one included, handles them


class RedisStore(WaitingReceivers):
    """Store on a shared Redis. All methods must be called from the same event loop; ``start`` before use."""

    def __init__(
        self,
        settings: Settings,
        url: str | None = None,
        *,
        prefix: str | None = None,
        clock: Clock = time.time,
        new_id: IdFactory = _uuid_hex,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.url = url or settings.store
        self.prefix = settings.redis_prefix if prefix is None else prefix
        self.replica_id = uuid.uuid4().hex[:12]
        self._clock = clock
        self._new_id = new_id
        self._timeout = settings.redis_timeout
        common: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),  # redis-py 8 retries 10 times by default; a script must run once
            "health_check_interval": 0,
        }
        self._pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=settings.redis_pool_size, timeout=self._timeout, **common
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        # The wake-up subscription has its own connection, outside the pool of the request path.
        self._wake_redis = aioredis.Redis.from_url(self.url, **common)
        self._scripts = {name: self._redis.register_script(PRELUDE + body) for name, body in SCRIPTS.items()}
        self._channel = self.prefix + "wake"
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._down = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def closing(self) -> bool:
        return self._closing

    async def start(self) -> None:
        """Start the wake-up subscription, the sweep and the resync; waits (up to the Redis timeout) for the
        subscription. Redis being down is not an error here: the store serves 503s until it is back."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen_forever(), name="a2a-redis-wake"),
            loop.create_task(self._sweep_forever(), name="a2a-redis-sweeper"),
            loop.create_task(self._resync_forever(), name="a2a-redis-resync"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), self._timeout)
        with contextlib.suppress(A2AError):
            await self._command(self._redis.hsetnx(self.prefix + "stats", "started_at", repr(self._clock())))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task that swallowed its cancellation still ends on the closing flag
            await asyncio.wait(self._tasks, timeout=self._timeout + 2.0)
        self._lease_timers.cancel_all()
        self._waiters.wake_all()  # they were waiting on empty queues: wake them empty-handed

    async def aclose(self) -> None:
        pending = [*self._serving.values(), *self._background]
        if pending:
            await asyncio.wait(pending, timeout=self._timeout + 1.0)
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        with contextlib.suppress(Exception):
            await self._pool.aclose()
        with contextlib.suppress(Exception):
            await self._wake_redis.aclose()

    async def ping(self) -> None:
        await self._command(self._redis.ping())

    # ------------------------------------------------------------------ messages

    async def send(self, request: SendRequest) -> SendResult:
        s = self.settings
        try:
            ttl = check_send(request, s)
        except A2AError as exc:
            await self._note_rejected_quietly(exc.code, request.workflow_id)
            raise
        now = self._clock()
        message = Message(
            message_id=self._new_id(),
            workflow_id=request.workflow_id,
            source_agent=request.source_agent,
            target_agent=request.target_agent,
            message_type=request.message_type,
            payload=request.payload,
            created_at=now,
            expires_at=now + ttl,
        )
        res = await self._run(
            "send",
            request.workflow_id,
            request.source_agent,
            request.target_agent,
            repr(now),
            message.message_id,
            repr(message.expires_at),
            len(request.payload),
            encode_body(message),
            s.max_workflows,
            s.max_agents_per_workflow,
            s.max_message_queue_size,
            self.replica_id,
        )
        if res[0] == b"E":
            raise refusal(res, request.workflow_id, self.settings)
        targets = tuple(agent.decode() for agent in res[1:])
        for agent in targets:  # waiters of this replica; the others are woken through pub/sub
            if (request.workflow_id, agent) in self._waiters:
                self._kick((request.workflow_id, agent))
        if log.isEnabledFor(logging.DEBUG):  # ids only, sanitised; payloads are never logged
            log.debug(
                "message sent",
                extra={
                    "workflow_id": sanitize_for_log(request.workflow_id),
                    "source_agent": sanitize_for_log(request.source_agent),
                    "delivered_to": [sanitize_for_log(a) for a in targets[:20]],
                    "message_id": message.message_id,
                    "payload_bytes": len(request.payload),
                },
            )
        return SendResult(message.message_id, targets, message.created_at, message.expires_at)

    async def receive(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        max_messages: int,
        timeout: float,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]:
        check_receive(workflow_id, agent_id, max_messages, visibility_timeout, self.settings)
        timeout = min(timeout, self.settings.receive_timeout_cap)
        once = timeout <= 0 or self._closing
        key = (workflow_id, agent_id)
        loop_time = asyncio.get_running_loop().time()
        waiter = self._waiters.join(
            key, max_messages, visibility_timeout, once=once, deadline=loop_time + max(0.0, timeout)
        )
        self._kick(key)
        # A long-poll answers [] at its timeout whatever Redis does; a single look answers 503 if Redis hangs.
        return await self._waiters.wait(
            key,
            waiter,
            self._timeout * 2 + 0.5 if once else timeout,
            self._give_up,
            lambda handed: self._spawn(self._release_quietly(workflow_id, agent_id, handed)),
        )

    async def release(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        await self._run("release", workflow_id, agent_id, self.replica_id, *release_args(deliveries))
        if (workflow_id, agent_id) in self._waiters:
            self._kick((workflow_id, agent_id))

    async def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        check_ack(workflow_id, agent_id, message_ids, self.settings)
        res = await self._run("ack", workflow_id, agent_id, repr(self._clock()), *message_ids)
        if res[0] == b"E":
            raise refusal(res, workflow_id, self.settings)
        flags = res[1:]
        acked = tuple(m for m, ok in zip(message_ids, flags, strict=True) if ok)
        missing = tuple(m for m, ok in zip(message_ids, flags, strict=True) if not ok)
        return AckResult(acked, missing)

    # ------------------------------------------------------------------ workflows

    async def status(self, workflow_id: str) -> WorkflowStatus:
        check_id(workflow_id, "workflow_id")
        res = await self._run("status", workflow_id)
        if res is None:
            raise not_found(workflow_id)
        return decode_status(workflow_id, res)

    async def stats(self) -> SystemStats:
        now = self._clock()
        res = await self._run("stats", repr(now))
        return decode_stats(res, now, self.settings.max_workflows)

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        check_id(workflow_id, "workflow_id")
        res = await self._run("delete", workflow_id)
        if res is None:
            raise not_found(workflow_id)
        log.info("workflow deleted", extra={"workflow_id": sanitize_for_log(workflow_id), "dropped_messages": int(res)})
        return DeleteResult(workflow_id, int(res))

    async def record(self, records: Sequence[RequestRecord]) -> RecordResult:
        """One script per batch: records are validated and summed here per (workflow, agent) (``record_args``)."""
        invalid, groups = record_args(records)
        if not groups and not invalid:
            return RecordResult(0, 0)
        s = self.settings
        args = [repr(self._clock()), s.max_workflows, s.max_agents_per_workflow, invalid, *groups]
        accepted, rejected = await self._run("record", *args)
        return RecordResult(int(accepted), int(rejected))

    async def note_rejected(self, code: str, workflow_id: str | None = None) -> None:
        await self._run("note_rejected", code, workflow_id or "")

    # ------------------------------------------------------------------ maintenance

    async def sweep_once(self, *, force: bool = False) -> None:
        """Expire messages and leases of due queues, remove idle workflows. Without ``force`` only the replica
        that takes the sweep lock for this interval does it."""
        if not force:
            lock_ms = max(1, int(self.settings.cleanup_interval * 1000))
            taken = await self._command(self._redis.set(self.prefix + "sweep", self.replica_id, nx=True, px=lock_ms))
            if not taken:
                return
        now = self._clock()
        # Idle workflows first (their messages count as dropped, as in the memory store), then due queues.
        cutoff = now - self.settings.workflow_ttl
        for _ in range(_SWEEP_CHUNKS_MAX):
            gone = await self._run("sweep_idle", repr(cutoff), _IDLE_CHUNK)
            for workflow_id in gone:
                log.info("idle workflow removed", extra={"workflow_id": sanitize_for_log(workflow_id.decode())})
            if len(gone) < _IDLE_CHUNK:
                break
        for _ in range(_SWEEP_CHUNKS_MAX):
            visited, expired, redelivered = await self._run("sweep_due", repr(now), _SWEEP_CHUNK, _SWEEP_REPLICA)
            if expired or redelivered:
                log.debug("sweep", extra={"expired": int(expired), "redelivered": int(redelivered)})
            if visited < _SWEEP_CHUNK:
                break

    async def _sweep_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.cleanup_interval)
            try:
                await self.sweep_once()
            except StoreUnavailableError:
                pass  # logged when Redis went down; the next interval tries again
            except Exception:  # never let the sweeper die; it is the backstop for expiry
                log.exception("sweep failed")


    async def _take(
        self, workflow_id: str, agent_id: str, max_messages: int, visibility_timeout: float | None, wait_ms: int
    ) -> tuple[list[Delivery], float | None]:
        s = self.settings
        now = self._clock()
        deadline = None if visibility_timeout is None else now + visibility_timeout
        res = await self._run(
            "receive",
            workflow_id,
            agent_id,
            repr(now),
            max_messages,
            "" if deadline is None else repr(deadline),
            s.max_batch_bytes,
            s.max_workflows,
            s.max_agents_per_workflow,
            wait_ms,
        )
        if res[0] == b"E":
            raise refusal(res, workflow_id, self.settings)
        out = decode_deliveries(res, workflow_id, deadline)
        return out, float(res[1]) if res[1] else None


    # ------------------------------------------------------------------ Redis calls and errors

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._command(self._scripts[name](args=[self.prefix, *args]))

    async def _command(self, call: Awaitable[Any]) -> Any:
        """Await one Redis call within the Redis timeout; failures become ``StoreUnavailableError``."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await call
        except ResponseError as exc:
            if not str(exc).startswith(_UNAVAILABLE_REPLIES):
                log.error("Redis refused a store script", extra={"error": describe(exc)})
                raise A2AError("internal error: the store refused the operation") from exc
            raise self._unavailable(exc) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        if self._down:
            self._down = False
            log.info("Redis store reachable again")
        return result

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        if not self._down:
            self._down = True
            log.warning("Redis store unavailable", extra={"error": describe(exc)})
        return StoreUnavailableError(f"the message store (Redis) is unavailable: {describe(exc)}; retry later")

    async def _note_rejected_quietly(self, code: str, workflow_id: str) -> None:
        with contextlib.suppress(A2AError):  # the refusal itself must not turn into a 503
            await self.note_rejected(code, workflow_id)
