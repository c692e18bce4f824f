"""Requests routed and not yet finished, per instance: the load signal of the routing policy.

The router stream (which decides) and the observer stream (which sees the response end) are two gRPC streams
of one HTTP request. The decision registers the request under a route id that the router stream also adds
as a request header; the observer stream reads it back and finishes the request when the response ends.
If the observer stream lands on another replica, the entry here is never finished: entries older than
``max_age`` are dropped a few at a time (counted), so the count cannot drift for long.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict

from extproc.config import EXPIRY_POPS_PER_REQUEST
from extproc.routing.policy import Router


class InFlight:
    def __init__(self, router: Router, max_age: float) -> None:
        self.router = router
        self.max_age = max_age
        self._prefix = os.urandom(4).hex()  # distinguishes this replica's route ids from others'
        self._seq = itertools.count(1)
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.abandoned = 0

    def __len__(self) -> int:
        return len(self._entries)

    def start(self, instance: str, now: float) -> str:
        self._sweep(now)
        route_id = f"{self._prefix}-{next(self._seq)}"
        self._entries[route_id] = (instance, now)
        self.router.acquire(instance)
        return route_id

    def instance_of(self, route_id: str) -> str | None:
        entry = self._entries.get(route_id)
        return entry[0] if entry else None

    def finish(self, route_id: str) -> str | None:
        entry = self._entries.pop(route_id, None)
        if entry is None:
            return None
        self.router.release(entry[0])
        return entry[0]

    def _sweep(self, now: float) -> None:
        entries = self._entries
        for _ in range(EXPIRY_POPS_PER_REQUEST):
            if not entries:
                return
            route_id, (instance, started) = next(iter(entries.items()))
            if now - started <= self.max_age:
                return
            del entries[route_id]
            self.router.release(instance)
            self.abandoned += 1
