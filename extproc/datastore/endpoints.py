"""The endpoints datastore: what the router knows about each instance, read by the scheduling plugins.

Health (from the poller, or held down by passive health checking), outstanding requests (routed by this server
and not seen finishing), and the poller's latest immutable load snapshot. Pure and synchronous: the shells
(poller, observer stream) feed it; plugins only read it.

**Load** of an instance = max(requests this server routed there and has not seen finish, running + waiting
requests the instance last reported) + its waiting requests again (a queue means the instance is saturated,
so it weighs double). The local count reacts within microseconds; the scraped figures see other replicas'
traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from extproc.datastore.costs import CostModel
from extproc.datastore.poller import BackendLoad

# An instance whose KV cache is this full while requests wait there gets no new work while others have room.
KV_FULL = 0.95
_IDLE = BackendLoad()


class Endpoints:
    def __init__(self, instances: Sequence[str]) -> None:
        if not instances:
            raise ValueError("at least one instance is required")
        self.instances: tuple[str, ...] = tuple(instances)
        self.outstanding: dict[str, int] = dict.fromkeys(self.instances, 0)
        # Uncached prompt tokens this server routed to each instance whose prefill has not visibly ended.
        self.queued_prefill: dict[str, float] = dict.fromkeys(self.instances, 0.0)
        self.costs = CostModel(self.instances)
        self.healthy: set[str] = set(self.instances)
        self._candidates: tuple[str, ...] = self.instances  # the healthy ones in order, rebuilt on a change
        # instance -> monotonic time before which a healthy poll does not bring it back (passive health)
        self.held_down: dict[str, float] = {}
        self.snapshot: Mapping[str, BackendLoad] = {}
        # Called with an instance that went down (its cache is gone: prefix indexes forget it).
        self.on_down: list[Callable[[str], None]] = []
        # Called with every published snapshot (e.g. the prefix index sizes itself to each instance's KV).
        self.on_publish: list[Callable[[Mapping[str, BackendLoad]], None]] = []
        # Called with an instance that joined the fleet (discovery): per-instance state elsewhere makes room.
        self.on_added: list[Callable[[str], None]] = []

    def __contains__(self, instance: object) -> bool:
        return instance in self.outstanding

    # --- fed by the shells ---------------------------------------------------------------------------------
    def acquire(self, instance: str, prefill_tokens: float = 0.0) -> None:
        self.outstanding[instance] += 1
        self.queued_prefill[instance] += prefill_tokens

    def prefill_done(self, instance: str, prefill_tokens: float) -> None:
        self.queued_prefill[instance] = max(0.0, self.queued_prefill[instance] - prefill_tokens)

    def release(self, instance: str, prefill_tokens: float = 0.0) -> None:
        if self.outstanding[instance] > 0:
            self.outstanding[instance] -= 1
        if prefill_tokens:
            self.prefill_done(instance, prefill_tokens)

    def set_healthy(self, instance: str, healthy: bool, now: float | None = None) -> None:
        """Health from the poller. A held-down instance stays down until its time (``now``: monotonic seconds,
        read from the clock when not given)."""
        if instance not in self.outstanding or (healthy and instance not in self.instances):
            return  # unknown, or removed from the fleet while its last scrape was under way
        if healthy:
            until = self.held_down.get(instance)
            if until is not None:
                if (time.monotonic() if now is None else now) < until:
                    return
                del self.held_down[instance]
            if instance not in self.healthy:
                self.healthy.add(instance)
                self._refresh_candidates()
        elif instance in self.healthy:
            self.healthy.discard(instance)
            self._refresh_candidates()
            for forget in self.on_down:
                forget(instance)

    def update(self, instances: Sequence[str], *, healthy: bool = False) -> tuple[list[str], list[str]]:
        """The fleet changed (extproc/discovery/): ``(added, removed)``. A new instance starts down unless
        ``healthy`` (the poller brings it up on its first good scrape); a removed one leaves the candidates at
        once, its workflows move on their next request and its requests in flight finish where they are (its
        counters are kept for them). Raises ValueError for an empty fleet."""
        if not instances:
            raise ValueError("at least one instance is required")
        wanted = tuple(dict.fromkeys(instances))
        current = set(self.instances)
        added = [i for i in wanted if i not in current]
        removed = [i for i in self.instances if i not in set(wanted)]
        self.instances = wanted
        for instance in added:
            self.outstanding.setdefault(instance, 0)
            self.queued_prefill.setdefault(instance, 0.0)
            self.costs.add(instance)
            self.held_down.pop(instance, None)
            if healthy:
                self.healthy.add(instance)
            for hook in self.on_added:
                hook(instance)
        for instance in removed:
            if instance in self.healthy:
                self.healthy.discard(instance)
                for forget in self.on_down:
                    forget(instance)
        self._refresh_candidates()
        return added, removed

    def hold_down(self, instance: str, until: float) -> None:
        """Mark down from observed failures; successful polls are ignored until ``until`` (monotonic)."""
        if instance in self.instances:
            self.held_down[instance] = until
            self.set_healthy(instance, False)

    def publish(self, snapshot: Mapping[str, BackendLoad]) -> None:
        """Swap in the poller's latest immutable snapshot (one reference assignment) and learn costs from it."""
        self.snapshot = snapshot
        self.costs.observe(snapshot)
        for hook in self.on_publish:
            hook(snapshot)

    # --- read by plugins -----------------------------------------------------------------------------------
    def live(self, instance: str) -> BackendLoad:
        return self.snapshot.get(instance, _IDLE)

    def load(self, instance: str) -> float:
        live = self.snapshot.get(instance, _IDLE)
        return max(float(self.outstanding[instance]), live.running + live.waiting) + live.waiting

    def full(self, instance: str) -> bool:
        live = self.snapshot.get(instance, _IDLE)
        return live.kv_usage >= KV_FULL and live.waiting > 0

    def candidates(self) -> list[str]:
        """The healthy instances; with every instance marked down, all of them (Envoy's own health checks get
        the last word). A fresh list: filters may keep it."""
        return list(self._candidates)

    def _refresh_candidates(self) -> None:
        healthy = self.healthy
        self._candidates = tuple(i for i in self.instances if i in healthy) or self.instances
