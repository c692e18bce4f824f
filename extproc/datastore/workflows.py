"""The workflow → instance table: sticky assignments with an inactivity TTL and an LRU bound.

Pure and synchronous; the caller passes ``now`` (monotonic seconds). Every operation is O(1) amortised: the
OrderedDict is kept in last-use order, so expired workflows are always at its front and are popped a few at a
time on the request path — never a scan over all workflows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from extproc.config import EXPIRY_POPS_PER_REQUEST


@dataclass(slots=True)
class Assignment:
    instance: str
    created_at: float
    last_used: float
    requests: int = 0
    failovers: int = 0
    synced_at: float = 0.0  # when a shared registry last confirmed this assignment
    attained: float = 0.0  # service received (input + 2 x output tokens), decayed; see requestcontrol/priority.py
    attained_at: float = 0.0
    # The workflow's last prompt: its full blocks and the last one's chained hash (a next prompt that has that
    # hash at that position continues it; see the workflow-affinity filter).
    last_blocks: int = 0
    last_hash: int = 0


class WorkflowTable:
    def __init__(self, ttl: float, max_workflows: int) -> None:
        self.ttl = ttl
        self.max_workflows = max_workflows
        self._entries: OrderedDict[str, Assignment] = OrderedDict()
        self.evicted = 0  # dropped because max_workflows was reached
        self.expired = 0  # dropped after ttl seconds without a request

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, workflow_id: str) -> bool:
        return workflow_id in self._entries

    def get(self, workflow_id: str, now: float) -> Assignment | None:
        """The live assignment of a workflow, refreshed as just used; None if unknown or expired."""
        self.expire(now)
        entry = self._entries.get(workflow_id)
        if entry is None:
            return None
        if now - entry.last_used > self.ttl:
            del self._entries[workflow_id]
            self.expired += 1
            return None
        entry.last_used = now
        self._entries.move_to_end(workflow_id)
        return entry

    def assign(self, workflow_id: str, instance: str, now: float) -> Assignment:
        """Create or move a workflow's assignment, evicting the least recently used beyond the bound."""
        entry = self._entries.get(workflow_id)
        if entry is not None:
            if entry.instance != instance:
                entry.failovers += 1
            entry.instance = instance
            entry.last_used = now
            self._entries.move_to_end(workflow_id)
            return entry
        entry = Assignment(instance, created_at=now, last_used=now)
        self._entries[workflow_id] = entry
        while len(self._entries) > self.max_workflows:
            self._entries.popitem(last=False)
            self.evicted += 1
        return entry

    def peek(self, workflow_id: str) -> Assignment | None:
        """Read without refreshing (for status and tests)."""
        return self._entries.get(workflow_id)

    def expire(self, now: float, budget: int = EXPIRY_POPS_PER_REQUEST) -> int:
        """Drop up to ``budget`` expired workflows from the LRU front; returns how many were dropped."""
        dropped = 0
        entries = self._entries
        while entries and dropped < budget:
            oldest_id = next(iter(entries))
            if now - entries[oldest_id].last_used <= self.ttl:
                break
            del entries[oldest_id]
            dropped += 1
        self.expired += dropped
        return dropped
