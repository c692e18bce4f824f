"""Instance selection: sticky per workflow within a load bound, load-aware placement, prefix-aware fallback.

**Load** of an instance = max(requests this server routed there and has not seen finish, running + waiting
requests the instance last reported) + its waiting requests again (a queue means the instance is saturated,
so it weighs double). The local count reacts within microseconds; the scraped figures see other replicas'
traffic.

**New workflow** → the least-loaded healthy instance, skipping instances whose KV cache is full
(``kv_usage >= KV_FULL`` with requests waiting) while others are not; ties are broken by rendezvous hashing of
the workflow id, so replicas and restarts make the same choice and workflows spread evenly.

**Known workflow** → its instance, while that instance is healthy and its imbalance stays within the slack

    load(home) - load(least-loaded healthy instance) <= IMBALANCE_UNIT * priority * p / (1 - p)

with p = ``--batching-preference`` (like vllm-router's cache_aware imbalance threshold, but set by p). With the
unit of 4 requests: p = 0.8 (default) tolerates an imbalance of 16 requests (a queue of 8, as waiting requests
count double) before giving up a warm cache; p = 0.5 tolerates 4; p = 1.0 never leaves a healthy instance;
p = 0.0 sends every request to the least-loaded instance (pure load balancing, the workflow's instance
preferred on ties). An absolute imbalance, not a multiple of the mean: with 3 instances the busiest one is at
most 3x the mean, so a "5x the mean" bound would never trigger. Beyond the slack the workflow **migrates** to
the least-loaded instance (reason ``rebalance``): its cache there is cold once, then warm again, whereas
spilling single requests would make every spilled request cold. ``workflow_priority`` scales the slack: a
priority-2 workflow keeps its warm instance under twice the imbalance a priority-1 workflow would.

**No metadata** (or ``context_sharing_strategy: none``) → weighted scorers like the Gateway API Inference
Extension's picker, over the instances within the same slack (so a full prefix match cannot keep feeding a
swamped instance): 3 x prefix match (leading prompt blocks this instance was sent recently / prompt blocks)
+ 2 x queue (1 - load / max load) + 2 x KV headroom (1 - kv_usage); ties rotate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from extproc.backends import BackendLoad
from extproc.metadata import WorkflowMetadata
from extproc.routing.prefix import PrefixIndex
from extproc.routing.workflows import WorkflowTable

IMBALANCE_UNIT = 4.0  # requests of imbalance tolerated per unit of p / (1 - p)
KV_FULL = 0.95
PREFIX_WEIGHT, QUEUE_WEIGHT, KV_WEIGHT = 3.0, 2.0, 2.0
_IDLE = BackendLoad()


@dataclass(frozen=True, slots=True)
class Decision:
    instance: str
    workflow_id: str | None
    affinity_hit: bool  # the request went to the instance its workflow already had
    new_workflow: bool
    failover: bool  # the workflow's instance was down and it moved
    rebalanced: bool = False  # the workflow's instance was over the load bound and it moved
    prefix_blocks: int = 0  # no-metadata requests: leading blocks the chosen instance was sent before
    previous: str | None = None  # failover/rebalance: the instance the workflow moved away from


def rendezvous_weight(key: str, instance: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    def __init__(
        self,
        instances: Sequence[str],
        table: WorkflowTable,
        *,
        batching_preference: float = 0.8,
        prefix_index: PrefixIndex | None = None,
    ) -> None:
        if not instances:
            raise ValueError("at least one instance is required")
        self.instances: tuple[str, ...] = tuple(instances)
        self.table = table
        self.batching_preference = batching_preference
        self.prefix_index = prefix_index
        self.outstanding: dict[str, int] = dict.fromkeys(self.instances, 0)
        self.healthy: set[str] = set(self.instances)
        # instance -> monotonic time before which a healthy poll does not bring it back (passive health)
        self.held_down: dict[str, float] = {}
        self.snapshot: Mapping[str, BackendLoad] = {}
        self._rotation = 0

    # --- state fed by the shells ---------------------------------------------------------------------------
    def acquire(self, instance: str) -> None:
        self.outstanding[instance] += 1

    def release(self, instance: str) -> None:
        if self.outstanding[instance] > 0:
            self.outstanding[instance] -= 1

    def set_healthy(self, instance: str, healthy: bool, now: float | None = None) -> None:
        """Health from the poller. A held-down instance stays down until its time (``now``: monotonic seconds,
        read from the clock when not given)."""
        if instance not in self.outstanding:
            return
        if healthy:
            until = self.held_down.get(instance)
            if until is not None:
                if (time.monotonic() if now is None else now) < until:
                    return
                del self.held_down[instance]
            self.healthy.add(instance)
        elif instance in self.healthy:
            self.healthy.discard(instance)
            if self.prefix_index is not None:
                self.prefix_index.forget(instance)  # a dead instance's cache is gone

    def hold_down(self, instance: str, until: float) -> None:
        """Mark down from observed failures; successful polls are ignored until ``until`` (monotonic)."""
        if instance in self.outstanding:
            self.held_down[instance] = until
            self.set_healthy(instance, False)

    def publish(self, snapshot: Mapping[str, BackendLoad]) -> None:
        """Swap in the poller's latest immutable snapshot (one reference assignment)."""
        self.snapshot = snapshot

    # --- load ----------------------------------------------------------------------------------------------
    def load(self, instance: str) -> float:
        live = self.snapshot.get(instance, _IDLE)
        return max(float(self.outstanding[instance]), live.running + live.waiting) + live.waiting

    def _full(self, instance: str) -> bool:
        live = self.snapshot.get(instance, _IDLE)
        return live.kv_usage >= KV_FULL and live.waiting > 0

    def _candidates(self) -> list[str]:
        # With every instance marked down, still try them all: Envoy's own health checks get the last word.
        return [i for i in self.instances if i in self.healthy] or list(self.instances)

    def least_loaded(self, key: str | None, prefer: str | None = None) -> str:
        candidates = self._candidates()
        roomy = [i for i in candidates if not self._full(i)] or candidates
        loads = {i: self.load(i) for i in roomy}
        low = min(loads.values())
        tied = [i for i in roomy if loads[i] == low]
        if len(tied) == 1:
            return tied[0]
        if prefer in tied:
            return prefer
        if key is None:
            # Requests without a workflow rotate over the tie so idle fleets still spread evenly.
            self._rotation += 1
            return tied[self._rotation % len(tied)]
        return max(tied, key=lambda i: rendezvous_weight(key, i))

    def slack(self, priority: float = 1.0) -> float:
        preference = self.batching_preference
        if preference >= 1.0:
            return float("inf")
        return IMBALANCE_UNIT * priority * preference / (1.0 - preference)

    def _within_bound(self, home: str, priority: float) -> bool:
        slack = self.slack(priority)
        if slack == float("inf"):
            return True
        least = min(self.load(i) for i in self._candidates())
        return self.load(home) - least <= slack

    # --- the decision --------------------------------------------------------------------------------------
    def route(
        self, metadata: WorkflowMetadata | None, now: float, prompt_blocks: Sequence[int] = (),
        cached_fraction: Mapping[str, float] | None = None,
    ) -> Decision:
        """``cached_fraction``: per instance, the share of the prompt an external KV index (LMCache) says it
        holds; when given it replaces this router's own prefix index for the prefix score."""
        if metadata is None or not metadata.wants_affinity:
            self.table.expire(now)
            return self._route_without_workflow(prompt_blocks, cached_fraction)
        workflow_id = metadata.workflow_id
        entry = self.table.get(workflow_id, now)
        if entry is not None and entry.instance in self.healthy:
            home = entry.instance
            if self.batching_preference <= 0.0:
                instance = self.least_loaded(workflow_id, prefer=home)
            elif self._within_bound(home, metadata.workflow_priority):
                instance = home
            else:
                instance = self.least_loaded(workflow_id, prefer=home)
            if instance == home:
                entry.requests += 1
                return Decision(home, workflow_id, True, False, False)
            self.table.assign(workflow_id, instance, now).requests += 1
            return Decision(instance, workflow_id, False, False, False, rebalanced=True, previous=home)
        previous = entry.instance if entry is not None else None
        instance = self.least_loaded(workflow_id)
        entry = self.table.assign(workflow_id, instance, now)
        entry.requests += 1
        return Decision(instance, workflow_id, False, previous is None, previous is not None, previous=previous)

    def _route_without_workflow(
        self, blocks: Sequence[int], cached_fraction: Mapping[str, float] | None = None
    ) -> Decision:
        index = self.prefix_index
        if not cached_fraction and (index is None or not blocks):
            return Decision(self.least_loaded(None), None, False, False, False)
        loads = {i: self.load(i) for i in self._candidates()}
        least, slack = min(loads.values()), self.slack()
        candidates = [i for i, load in loads.items() if load - least <= slack]
        if cached_fraction:
            fraction = {i: cached_fraction.get(i, 0.0) for i in self.instances}
        else:
            assert index is not None
            counts = index.match(blocks)
            fraction = {i: counts[i] / len(blocks) for i in self.instances}
        top_load = max(loads[i] for i in candidates) or 1.0
        best: list[str] = []
        best_score = -1.0
        for i in candidates:
            live = self.snapshot.get(i, _IDLE)
            score = (PREFIX_WEIGHT * fraction[i]
                     + QUEUE_WEIGHT * (1.0 - loads[i] / top_load)
                     + KV_WEIGHT * (1.0 - live.kv_usage))
            if score > best_score + 1e-9:
                best, best_score = [i], score
            elif abs(score - best_score) <= 1e-9:
                best.append(i)
        self._rotation += 1
        instance = best[self._rotation % len(best)]
        if index is not None and blocks:
            index.learn(instance, blocks)
        matched = round(fraction[instance] * len(blocks)) if blocks else int(fraction[instance] > 0)
        return Decision(instance, None, False, False, False, prefix_blocks=matched)
