"""Instance selection: sticky per workflow, least-loaded for new workflows and metadata-less requests.

Load here is the number of requests this server routed to an instance that have not finished yet
("outstanding"). Ties between equally loaded instances are broken by rendezvous (highest-random-weight)
hashing of the workflow id, so the same new workflow picks the same instance on every replica and
restarts, and different workflows spread evenly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from extproc.metadata import WorkflowMetadata
from extproc.routing.workflows import WorkflowTable


@dataclass(frozen=True, slots=True)
class Decision:
    instance: str
    workflow_id: str | None
    affinity_hit: bool  # the request went to the instance its workflow already had
    new_workflow: bool
    failover: bool  # the workflow's instance was unavailable and it moved


def rendezvous_weight(key: str, instance: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    def __init__(self, instances: Sequence[str], table: WorkflowTable) -> None:
        if not instances:
            raise ValueError("at least one instance is required")
        self.instances: tuple[str, ...] = tuple(instances)
        self.table = table
        self.outstanding: dict[str, int] = dict.fromkeys(self.instances, 0)
        self.healthy: set[str] = set(self.instances)
        self._rotation = 0

    # --- load bookkeeping ---------------------------------------------------------------------------------
    def acquire(self, instance: str) -> None:
        self.outstanding[instance] += 1

    def release(self, instance: str) -> None:
        if self.outstanding[instance] > 0:
            self.outstanding[instance] -= 1

    def set_healthy(self, instance: str, healthy: bool) -> None:
        if healthy:
            self.healthy.add(instance)
        else:
            self.healthy.discard(instance)

    def _candidates(self) -> Iterable[str]:
        # With every instance marked down, still try them all: Envoy's own health checks get the last word.
        return [i for i in self.instances if i in self.healthy] or self.instances

    def least_loaded(self, key: str | None) -> str:
        candidates = list(self._candidates())
        low = min(self.outstanding[i] for i in candidates)
        tied = [i for i in candidates if self.outstanding[i] == low]
        if len(tied) == 1:
            return tied[0]
        if key is None:
            # Requests without a workflow rotate over the tie so idle fleets still spread evenly.
            self._rotation += 1
            return tied[self._rotation % len(tied)]
        return max(tied, key=lambda i: rendezvous_weight(key, i))

    # --- the decision -------------------------------------------------------------------------------------
    def route(self, metadata: WorkflowMetadata | None, now: float) -> Decision:
        if metadata is None or not metadata.wants_affinity:
            self.table.expire(now)
            return Decision(self.least_loaded(None), None, False, False, False)
        workflow_id = metadata.workflow_id
        entry = self.table.get(workflow_id, now)
        if entry is not None and entry.instance in self.healthy:
            entry.requests += 1
            return Decision(entry.instance, workflow_id, True, False, False)
        failover = entry is not None
        instance = self.least_loaded(workflow_id)
        entry = self.table.assign(workflow_id, instance, now)
        entry.requests += 1
        return Decision(instance, workflow_id, False, not failover, failover)
