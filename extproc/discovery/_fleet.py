"""Applies a fleet change everywhere per-instance state lives (the event loop's thread, between requests)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from extproc.config import Backend, destination_endpoints
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.poller import BackendPoller
from extproc.requestcontrol.director import Director

log = logging.getLogger("extproc.discovery")


class Fleet:
    def __init__(self, endpoints: Endpoints, director: Director, poller: BackendPoller | None = None,
                 on_change: Callable[[Sequence[Backend]], None] | None = None) -> None:
        self.endpoints = endpoints
        self.director = director
        self.poller = poller
        self.on_change = on_change
        self.backends: tuple[Backend, ...] = ()
        self.changes = 0

    def apply(self, backends: Sequence[Backend]) -> bool:
        """Make ``backends`` the fleet; False (nothing changed) when it is empty or the same. New instances start
        down until the poller's first good scrape (within one poll interval); removed ones take no new request
        from now on, and their workflows move on their next request."""
        backends = tuple(backends)
        if not backends or backends == self.backends:
            return False
        if self.director.destinations is not None:
            # Every instance needs an ip:port in endpoint mode; computed before anything changes.
            destinations = destination_endpoints(backends)
            self.director.destinations.update(destinations)
        # With a poller, a new instance starts down until its first good scrape; without, nothing would bring it up.
        added, removed = self.endpoints.update([b.cluster for b in backends], healthy=self.poller is None)
        if self.poller is not None:
            self.poller.set_backends(backends)
        self.backends = backends
        self.changes += 1
        if self.on_change is not None:
            self.on_change(backends)
        if added or removed or self.changes == 1:
            log.info("fleet changed", extra={"added": added, "removed": removed,
                                             "instances": [b.cluster for b in backends]})
        return True
