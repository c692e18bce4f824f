"""The queue logic: pure, synchronous, with an injected clock. No asyncio, no I/O.

Model
- A workflow holds one FIFO queue per known agent, plus request statistics reported by the router.
- An agent becomes *known* when it sends, is sent to, receives, or appears in a request record.
  ``target_agent = "*"`` enqueues one copy for every known agent except the sender, all-or-nothing: if
  one recipient queue is full, nothing is enqueued and ``QueueFullError`` names that agent.
- Receive without a lease (at-most-once) removes the messages. Receive with a visibility timeout
  (at-least-once) leases them; a lease that expires puts the message back in FIFO order with
  ``delivery_count`` raised on its next delivery, unless it was acknowledged first.
- A message past its TTL is never delivered; it is counted as expired when a receive reaches it or the
  background sweep finds it.
- Queue size counts queued and leased messages. A send to a full queue first purges that queue's expired
  messages and expired leases, then fails with ``QueueFullError``.

Cost: send, receive and ack are O(batch) (amortized); nothing on those paths scans more than the one
queue, and only when that queue is full. ``sweep`` visits the workflows it is given (the async store
calls it in small chunks from a background task).
"""

from __future__ import annotations

import heapq
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from .. import _validation as v
from .._types import (
    AckResult,
    DeleteResult,
    Delivery,
    Message,
    MessageCounters,
    RecordKind,
    RecordResult,
    RequestRecord,
    SendRequest,
    SendResult,
    SystemStats,
    WorkflowStatus,
    ratio,
)
from ..config import BROADCAST_TARGET, Settings
from ..errors import A2AError, NotFoundError, QueueFullError, TooManyAgentsError, TooManyWorkflowsError
from ._checks import check_ack, check_receive, check_record, check_send
from ._model import AgentQueue, Entry, SweepReport, Workflow, current_lease

Clock = Callable[[], float]
IdFactory = Callable[[], str]


def _uuid_hex() -> str:
    return uuid.uuid4().hex


class QueueCore:
    """All workflows' queues and statistics. Not thread-safe; the async store serializes calls."""

    def __init__(self, settings: Settings, *, clock: Clock, new_id: IdFactory = _uuid_hex) -> None:
        self.settings = settings
        self._clock = clock
        self._new_id = new_id
        self._started_at = clock()
        self._workflows: dict[str, Workflow] = {}
        self._seq = 0
        self._lease_tokens = 0
        self._pending = 0
        self._leased = 0
        self._queues = 0
        # Monotonic system-wide counters (survive workflow deletion).
        self._workflows_created = self._workflows_expired = self._workflows_deleted = 0
        self._total_requests = self._affinity_hits = self._completed_requests = 0
        self._cache_hits = self._prompt_tokens = self._cached_tokens = 0
        self._records_rejected = 0
        self._sent = self._delivered = self._acked = self._redelivered = 0
        self._expired = self._dropped = 0
        self._rejected_by_code: dict[str, int] = {}

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ messages

    def send(self, req: SendRequest) -> SendResult:
        """Enqueue a message. Raises ``InvalidRequestError``/``MessageTooLargeError`` for bad input,
        ``QueueFullError``/``TooManyWorkflowsError``/``TooManyAgentsError`` for capacity."""
        try:
            return self._send(req)
        except A2AError as exc:
            self._count_rejected(exc.code, self._workflows.get(req.workflow_id))
            raise

    def _send(self, req: SendRequest) -> SendResult:
        s = self.settings
        ttl = check_send(req, s)
        now = self._clock()
        wf = self._get_or_create(req.workflow_id, now)
        broadcast = req.target_agent == BROADCAST_TARGET
        if broadcast:
            self._ensure_agents(wf, (req.source_agent,))
            targets = [agent for agent in wf.queues if agent != req.source_agent]
        else:
            self._ensure_agents(wf, (req.source_agent, req.target_agent))
            targets = [req.target_agent]
        for agent in targets:
            q = wf.queues[agent]
            if len(q.pending) >= s.max_message_queue_size:
                self._requeue_expired_leases(wf, q, now)
                self._purge_expired(wf, q, now)
                if len(q.pending) >= s.max_message_queue_size:
                    raise QueueFullError(
                        f"queue of agent {agent!r} is full ({s.max_message_queue_size} messages)",
                        param="target_agent",
                    )
        message = Message(
            message_id=self._new_id(),
            workflow_id=req.workflow_id,
            source_agent=req.source_agent,
            target_agent=req.target_agent,
            message_type=req.message_type,
            payload=req.payload,
            created_at=now,
            expires_at=now + ttl,
        )
        for agent in targets:
            q = wf.queues[agent]
            self._seq += 1
            entry = Entry(message, self._seq)
            q.ready.append(entry)
            q.pending[message.message_id] = entry
            if message.expires_at < q.min_expires_at:
                q.min_expires_at = message.expires_at
            wf.pending += 1
            self._pending += 1
        wf.sent += len(targets)
        self._sent += len(targets)
        wf.last_updated = now
        return SendResult(message.message_id, tuple(targets), message.created_at, message.expires_at)

    def receive(
        self,
        workflow_id: str,
        agent_id: str,
        max_messages: int,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]:
        """Take up to ``max_messages`` deliverable messages, oldest first, stopping before the payloads
        exceed ``max_batch_bytes`` (the first available message always goes).

        ``visibility_timeout=None`` removes them (at-most-once); a number leases them for that many seconds
        (at-least-once). Creates the workflow and the agent's queue if needed (a receiver may poll before
        anything was sent)."""
        check_receive(workflow_id, agent_id, max_messages, visibility_timeout, self.settings)
        now = self._clock()
        wf = self._get_or_create(workflow_id, now)
        self._ensure_agents(wf, (agent_id,))
        wf.last_updated = now
        q = wf.queues[agent_id]
        if q.leases and q.leases[0][0] <= now:
            self._requeue_expired_leases(wf, q, now)
        out: list[Delivery] = []
        ready = q.ready
        budget = self.settings.max_batch_bytes
        while ready and len(out) < max_messages:
            entry = ready[0]
            if entry.done:
                ready.popleft()
                continue
            message = entry.message
            if message.expires_at <= now:
                ready.popleft()
                self._remove(wf, q, entry)
                wf.expired += 1
                self._expired += 1
                continue
            budget -= len(message.payload)
            if budget < 0 and out:
                break  # keep batches bounded; the first message always goes
            ready.popleft()
            entry.delivery_count += 1
            if visibility_timeout is None:
                self._remove(wf, q, entry)
                out.append(Delivery(message, entry.delivery_count, None, entry.seq))
            else:
                deadline = now + visibility_timeout
                entry.lease_deadline = deadline
                q.leased += 1
                wf.leased += 1
                self._leased += 1
                self._lease_tokens += 1
                entry.lease_token = self._lease_tokens
                heapq.heappush(q.leases, (deadline, self._lease_tokens, entry))
                out.append(Delivery(message, entry.delivery_count, deadline, entry.seq))
        wf.delivered += len(out)
        self._delivered += len(out)
        return out

    def restore(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        """Put back deliveries that never reached their receiver (the waiting call was cancelled)."""
        wf = self._workflows.get(workflow_id)
        q = wf.queues.get(agent_id) if wf is not None else None
        if wf is None or q is None:
            self._dropped += len(deliveries)
            return
        for delivery in deliveries:
            message = delivery.message
            entry = q.pending.get(message.message_id)
            if entry is not None:  # leased: release the lease
                if entry.lease_deadline is None:
                    continue
                entry.lease_deadline = None
                q.leased -= 1
                wf.leased -= 1
                self._leased -= 1
            else:  # removed at delivery: re-create
                entry = Entry(message, delivery.sequence)
                q.pending[message.message_id] = entry
                wf.pending += 1
                self._pending += 1
            entry.delivery_count = delivery.delivery_count - 1
            q.insert_ready(entry)
            # Back in `ready` either way (a leased entry was not counted when `min_expires_at` was last
            # recomputed), so the sweep must see its expiry.
            q.min_expires_at = min(q.min_expires_at, message.expires_at)
            wf.delivered -= 1
            self._delivered -= 1

    def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        """Acknowledge delivered messages (leased, or back in the queue after their lease expired).
        Ids that are not pending for this agent, or were never delivered, come back in ``not_found``."""
        check_ack(workflow_id, agent_id, message_ids, self.settings)
        wf = self._require(workflow_id)
        q = wf.queues.get(agent_id)
        acked: list[str] = []
        missing: list[str] = []
        for message_id in message_ids:
            entry = q.pending.get(message_id) if q is not None else None
            if q is None or entry is None or entry.delivery_count == 0:
                missing.append(message_id)
                continue
            self._remove(wf, q, entry)
            acked.append(message_id)
        wf.acked += len(acked)
        self._acked += len(acked)
        wf.last_updated = self._clock()
        if q is not None and len(q.leases) > 2 * len(q.pending) + 64:
            q.leases = [item for item in q.leases if current_lease(item)]
            heapq.heapify(q.leases)
        return AckResult(tuple(acked), tuple(missing))

    def requeue_expired_leases(self, workflow_id: str, agent_id: str) -> int:
        """Put messages whose lease expired back in the queue; return how many."""
        wf = self._workflows.get(workflow_id)
        q = wf.queues.get(agent_id) if wf is not None else None
        if wf is None or q is None:
            return 0
        return self._requeue_expired_leases(wf, q, self._clock())

    def has_ready(self, workflow_id: str, agent_id: str) -> bool:
        """Whether the queue holds a message a receive could return (cheap; ignores expiry)."""
        wf = self._workflows.get(workflow_id)
        q = wf.queues.get(agent_id) if wf is not None else None
        return q is not None and len(q.pending) > q.leased

    def next_lease_deadline(self, workflow_id: str, agent_id: str) -> float | None:
        wf = self._workflows.get(workflow_id)
        q = wf.queues.get(agent_id) if wf is not None else None
        while q is not None and q.leases:
            if current_lease(q.leases[0]):
                return q.leases[0][0]
            heapq.heappop(q.leases)
        return None

    # ------------------------------------------------------------------ workflows and statistics

    def delete_workflow(self, workflow_id: str) -> DeleteResult:
        v.check_id(workflow_id, "workflow_id")
        wf = self._require(workflow_id)
        dropped = self._drop(wf)
        self._workflows_deleted += 1
        return DeleteResult(workflow_id, dropped)

    def workflow_exists(self, workflow_id: str) -> bool:
        return workflow_id in self._workflows

    def workflow_ids(self) -> list[str]:
        return list(self._workflows)

    def status(self, workflow_id: str) -> WorkflowStatus:
        v.check_id(workflow_id, "workflow_id")
        wf = self._require(workflow_id)
        return wf.status()

    def stats(self) -> SystemStats:
        return SystemStats(
            active_workflows=len(self._workflows),
            max_workflows=self.settings.max_workflows,
            workflows_created=self._workflows_created,
            workflows_expired=self._workflows_expired,
            workflows_deleted=self._workflows_deleted,
            total_requests=self._total_requests,
            affinity_hits=self._affinity_hits,
            affinity_hit_rate=ratio(self._affinity_hits, self._total_requests),
            completed_requests=self._completed_requests,
            cache_hits=self._cache_hits,
            cache_hit_rate=ratio(self._cache_hits, self._total_requests),
            cached_token_rate=ratio(self._cached_tokens, self._prompt_tokens),
            prompt_tokens=self._prompt_tokens,
            cached_tokens=self._cached_tokens,
            records_rejected=self._records_rejected,
            queues=self._queues,
            queued_messages=self._pending - self._leased,
            in_flight_messages=self._leased,
            messages=MessageCounters(
                self._sent,
                self._delivered,
                self._acked,
                self._redelivered,
                self._expired,
                sum(self._rejected_by_code.values()),
                self._dropped,
            ),
            rejected_by_code=dict(self._rejected_by_code),
            uptime_seconds=max(0.0, self._clock() - self._started_at),
        )

    def note_rejected(self, code: str, workflow_id: str | None = None) -> None:
        """Count a send refused before it reached the core (e.g. an HTTP body too large to read)."""
        self._count_rejected(code, self._workflows.get(workflow_id) if workflow_id else None)

    def record(self, records: Iterable[RequestRecord]) -> RecordResult:
        """Aggregate router reports. Invalid records (and records that would exceed a capacity limit) are
        counted as rejected and skipped; the others are applied."""
        accepted = rejected = 0
        now = self._clock()
        for rec in records:
            try:
                self._record_one(rec, now)
            except A2AError:
                rejected += 1
            else:
                accepted += 1
        self._records_rejected += rejected
        return RecordResult(accepted, rejected)

    def _record_one(self, rec: RequestRecord, now: float) -> None:
        check_record(rec)
        wf = self._get_or_create(rec.workflow_id, now)
        if rec.agent_id:
            self._ensure_agents(wf, (rec.agent_id,))
        wf.last_updated = now
        if rec.kind is RecordKind.ROUTED:
            wf.total_requests += 1
            self._total_requests += 1
            if rec.affinity_hit:
                wf.affinity_hits += 1
                self._affinity_hits += 1
            if rec.failover:
                wf.failovers += 1
            if rec.instance:
                wf.assigned_instance = rec.instance
                known = wf.model_instances
                if rec.model and (rec.model in known or len(known) < v.MAX_MODELS_PER_WORKFLOW):
                    wf.model_instances[rec.model] = rec.instance
                if rec.identity_source:
                    wf.identity_source = rec.identity_source
            wf.routing_latency_sum += rec.routing_latency_seconds
        else:
            wf.completed_requests += 1
            self._completed_requests += 1
            if rec.status_code >= 400:
                wf.failed_requests += 1
            wf.prompt_tokens += rec.prompt_tokens
            wf.cached_tokens += rec.cached_tokens
            self._prompt_tokens += rec.prompt_tokens
            self._cached_tokens += rec.cached_tokens
            if rec.cached_tokens > 0:
                wf.cache_hits += 1
                self._cache_hits += 1

    # ------------------------------------------------------------------ background maintenance

    def sweep(self, workflow_ids: Iterable[str]) -> SweepReport:
        """Expire messages and leases and remove idle workflows among ``workflow_ids``."""
        now = self._clock()
        idle_before = now - self.settings.workflow_ttl
        expired_before = self._expired
        redelivered_before = self._redelivered
        gone: list[str] = []
        ready: list[tuple[str, str]] = []
        for workflow_id in workflow_ids:
            wf = self._workflows.get(workflow_id)
            if wf is None:
                continue
            if wf.last_updated <= idle_before:
                self._drop(wf)
                self._workflows_expired += 1
                gone.append(workflow_id)
                continue
            for agent, q in wf.queues.items():
                if q.leases and q.leases[0][0] <= now and self._requeue_expired_leases(wf, q, now):
                    ready.append((workflow_id, agent))
                if q.min_expires_at <= now:
                    self._purge_expired(wf, q, now)
        return SweepReport(
            expired_messages=self._expired - expired_before,
            redelivered=self._redelivered - redelivered_before,
            workflows_expired=tuple(gone),
            ready_queues=tuple(ready),
        )

    def check_invariants(self) -> None:
        """Assert the incremental counters match a recount (tests only; O(everything))."""
        pending = leased = queues = 0
        for wf in self._workflows.values():
            wf_pending = sum(len(q.pending) for q in wf.queues.values())
            wf_leased = sum(q.leased for q in wf.queues.values())
            assert wf.pending == wf_pending, (wf.pending, wf_pending)
            assert wf.leased == wf_leased, (wf.leased, wf_leased)
            for q in wf.queues.values():
                assert q.leased == sum(1 for e in q.pending.values() if e.lease_deadline is not None)
                assert all(not e.done for e in q.pending.values())
                queued = [e for e in q.ready if not e.done]
                assert len(queued) == len(q.pending) - q.leased
                assert [e.seq for e in queued] == sorted(e.seq for e in queued)
            pending += wf_pending
            leased += wf_leased
            queues += len(wf.queues)
        assert (self._pending, self._leased, self._queues) == (pending, leased, queues)

    # ------------------------------------------------------------------ internals

    def _require(self, workflow_id: str) -> Workflow:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found", param="workflow_id", code="workflow_not_found")
        return wf

    def _get_or_create(self, workflow_id: str, now: float) -> Workflow:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            if len(self._workflows) >= self.settings.max_workflows:
                raise TooManyWorkflowsError(
                    f"the service already holds {self.settings.max_workflows} workflows", param="workflow_id"
                )
            wf = self._workflows[workflow_id] = Workflow(workflow_id, now)
            self._workflows_created += 1
        return wf

    def _ensure_agents(self, wf: Workflow, agents: Sequence[str]) -> None:
        new = [a for a in dict.fromkeys(agents) if a not in wf.queues]
        if not new:
            return
        if len(wf.queues) + len(new) > self.settings.max_agents_per_workflow:
            raise TooManyAgentsError(
                f"workflow {wf.workflow_id!r} already has {len(wf.queues)} agents "
                f"(limit {self.settings.max_agents_per_workflow})",
                param="agent_id",
            )
        for agent in new:
            wf.queues[agent] = AgentQueue()
        self._queues += len(new)

    def _remove(self, wf: Workflow, q: AgentQueue, entry: Entry) -> None:
        """Take a pending entry out of the queue for good (it may stay in `ready`/`leases` as done)."""
        del q.pending[entry.message.message_id]
        entry.done = True
        if entry.lease_deadline is not None:
            entry.lease_deadline = None
            q.leased -= 1
            wf.leased -= 1
            self._leased -= 1
        wf.pending -= 1
        self._pending -= 1

    def _requeue_expired_leases(self, wf: Workflow, q: AgentQueue, now: float) -> int:
        back: list[Entry] = []
        leases = q.leases
        while leases and leases[0][0] <= now:
            item = heapq.heappop(leases)
            if not current_lease(item):
                continue  # acknowledged, released, or leased again since
            entry = item[2]
            entry.lease_deadline = None
            q.leased -= 1
            wf.leased -= 1
            self._leased -= 1
            if entry.message.expires_at <= now:
                self._remove(wf, q, entry)
                wf.expired += 1
                self._expired += 1
                continue
            back.append(entry)
        for entry in sorted(back, key=lambda e: e.seq):
            q.insert_ready(entry)
            q.min_expires_at = min(q.min_expires_at, entry.message.expires_at)
        wf.redelivered += len(back)
        self._redelivered += len(back)
        return len(back)

    def _purge_expired(self, wf: Workflow, q: AgentQueue, now: float) -> int:
        """Drop expired queued entries (and done leftovers) from one queue; O(queue length)."""
        kept: deque[Entry] = deque()
        earliest = math.inf
        expired = 0
        for entry in q.ready:
            if entry.done:
                continue
            if entry.message.expires_at <= now:
                self._remove(wf, q, entry)
                expired += 1
                continue
            kept.append(entry)
            earliest = min(earliest, entry.message.expires_at)
        q.ready = kept
        q.min_expires_at = earliest
        wf.expired += expired
        self._expired += expired
        return expired

    def _drop(self, wf: Workflow) -> int:
        del self._workflows[wf.workflow_id]
        dropped = wf.pending
        for q in wf.queues.values():
            for entry in q.pending.values():
                entry.done = True
        self._pending -= wf.pending
        self._leased -= wf.leased
        self._queues -= len(wf.queues)
        self._dropped += dropped
        return dropped

    def _count_rejected(self, code: str, wf: Workflow | None) -> None:
        self._rejected_by_code[code] = self._rejected_by_code.get(code, 0) + 1
        if wf is not None:
            wf.rejected += 1
