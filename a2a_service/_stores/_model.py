"""The mutable records behind ``QueueCore``: one message copy, one agent's queue, one workflow."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .._types import Message, MessageCounters, QueueStatus, WorkflowStatus, ratio


class Entry:
    """One message copy in one agent's queue."""

    __slots__ = ("delivery_count", "done", "lease_deadline", "lease_token", "message", "seq")

    def __init__(self, message: Message, seq: int) -> None:
        self.message = message
        self.seq = seq
        self.delivery_count = 0
        self.lease_deadline: float | None = None
        self.lease_token = 0  # identifies the current lease; heap items of older leases are stale
        self.done = False  # acknowledged / delivered at-most-once / expired / dropped


class AgentQueue:
    __slots__ = ("leased", "leases", "min_expires_at", "pending", "ready")

    def __init__(self) -> None:
        # Entries waiting for a receiver, in seq order. May hold `done` entries (removed lazily).
        self.ready: deque[Entry] = deque()
        # Every entry not done (queued or leased), by message id. Its size is the queue size.
        self.pending: dict[str, Entry] = {}
        self.leased = 0
        # (deadline, lease token, entry); stale items (acked, released or re-leased) are skipped when popped.
        self.leases: list[tuple[float, int, Entry]] = []
        # Lower bound of the earliest expires_at among queued entries: lets the sweep skip this queue.
        self.min_expires_at = math.inf

    def insert_ready(self, entry: Entry) -> None:
        """Insert in seq order. Returning entries are old, so the position is near the head."""
        ready = self.ready
        i = 0
        n = len(ready)
        while i < n and ready[i].seq < entry.seq:
            i += 1
        ready.insert(i, entry)


class Workflow:
    __slots__ = (
        "acked", "affinity_hits", "assigned_instance", "cache_hits", "cached_tokens", "completed_requests",
        "created_at", "delivered", "dropped", "expired", "failed_requests", "failovers", "identity_source",
        "last_updated", "leased", "model_instances", "pending", "prompt_tokens", "queues", "redelivered", "rejected",
        "routing_latency_sum", "sent", "total_requests", "workflow_id",
    )  # fmt: skip

    def __init__(self, workflow_id: str, now: float) -> None:
        self.workflow_id = workflow_id
        self.created_at = now
        self.last_updated = now
        self.queues: dict[str, AgentQueue] = {}  # insertion order = order agents became known
        self.pending = 0
        self.leased = 0
        self.total_requests = 0
        self.affinity_hits = 0
        self.failovers = 0
        self.completed_requests = 0
        self.failed_requests = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.routing_latency_sum = 0.0
        self.assigned_instance: str | None = None
        self.model_instances: dict[str, str] = {}  # model -> instance (affinity is per workflow and model)
        self.identity_source = ""  # of the latest routed request that reported one
        self.sent = self.delivered = self.acked = self.redelivered = 0
        self.expired = self.rejected = self.dropped = 0

    def status(self) -> WorkflowStatus:
        return WorkflowStatus(
            workflow_id=self.workflow_id,
            active_agents=len(self.queues),
            agents=tuple(self.queues),
            total_requests=self.total_requests,
            affinity_hits=self.affinity_hits,
            affinity_hit_rate=ratio(self.affinity_hits, self.total_requests),
            failovers=self.failovers,
            completed_requests=self.completed_requests,
            failed_requests=self.failed_requests,
            cache_hits=self.cache_hits,
            cache_hit_rate=ratio(self.cache_hits, self.total_requests),
            cached_token_rate=ratio(self.cached_tokens, self.prompt_tokens),
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            avg_routing_latency_seconds=self.routing_latency_sum / self.total_requests if self.total_requests else 0.0,
            assigned_instance=self.assigned_instance,
            model_instances=dict(self.model_instances),
            identity_source=self.identity_source,
            created_at=self.created_at,
            last_updated=self.last_updated,
            queued_messages=self.pending - self.leased,
            in_flight_messages=self.leased,
            queues={a: QueueStatus(len(q.pending) - q.leased, q.leased) for a, q in self.queues.items()},
            messages=MessageCounters(
                self.sent, self.delivered, self.acked, self.redelivered, self.expired, self.rejected, self.dropped
            ),
        )


def current_lease(item: tuple[float, int, Entry]) -> bool:
    entry = item[2]
    return not entry.done and entry.lease_deadline is not None and entry.lease_token == item[1]


@dataclass(slots=True, frozen=True)
class SweepReport:
    expired_messages: int
    redelivered: int
    workflows_expired: tuple[str, ...]
    # Queues where expired leases put messages back: waiters there may now be served.
    ready_queues: tuple[tuple[str, str], ...]
