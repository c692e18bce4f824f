"""Requests routed and not yet finished, per instance: the load signal of the routing policy.

The router stream (which decides) and the observer stream (which sees the response end) are two gRPC streams
of one HTTP request. The decision registers the request under a route id that the router stream also adds
as a request header; the observer stream reads it back (``observe``), then finishes the request when the
response ends (``finish``). With several replicas Envoy may send the observer stream to another replica: an
entry not observed within ``observe_within`` seconds (the observer normally follows within milliseconds) is
dropped, so requests this replica cannot see the end of never pile up as phantom load. Those requests are
still counted by the backend's scraped figures.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict

from extproc.config import EXPIRY_POPS_PER_REQUEST
from extproc.datastore.endpoints import Endpoints

DEFAULT_OBSERVE_WITHIN_S = 0.1


class InFlight:
    """Each entry also carries the request's uncached prompt tokens, queued as prefill work on its instance until
    the first response bytes show the prefill done (``prefilled``) or the request ends."""

    def __init__(self, endpoints: Endpoints, observe_within: float = DEFAULT_OBSERVE_WITHIN_S) -> None:
        self.endpoints = endpoints
        self.observe_within = observe_within
        self._prefix = os.urandom(4).hex()  # distinguishes this replica's route ids from others'
        self._seq = itertools.count(1)
        self._unobserved: OrderedDict[str, tuple[str, float, float]] = OrderedDict()  # instance, started, tokens
        self._observed: dict[str, tuple[str, float]] = {}  # instance, prefill tokens still queued
        self.abandoned = 0  # observed by no stream of this replica (another replica's observer, or none)

    def __len__(self) -> int:
        return len(self._unobserved) + len(self._observed)

    def start(self, instance: str, now: float, prefill_tokens: float = 0.0) -> str:
        self._sweep(now)
        route_id = f"{self._prefix}-{next(self._seq)}"
        self._unobserved[route_id] = (instance, now, prefill_tokens)
        self.endpoints.acquire(instance, prefill_tokens)
        return route_id

    def observe(self, route_id: str) -> str | None:
        """The observer stream of this request reached this replica: keep counting it until it finishes."""
        entry = self._unobserved.pop(route_id, None)
        if entry is None:
            return None
        self._observed[route_id] = (entry[0], entry[2])
        return entry[0]

    def prefilled(self, route_id: str) -> None:
        """The response's first bytes arrived: the prompt is computed, its prefill no longer queues others."""
        entry = self._observed.get(route_id)
        if entry is not None and entry[1]:
            self._observed[route_id] = (entry[0], 0.0)
            self.endpoints.prefill_done(entry[0], entry[1])

    def finish(self, route_id: str) -> str | None:
        observed = self._observed.pop(route_id, None)
        if observed is not None:
            instance, tokens = observed
        else:
            entry = self._unobserved.pop(route_id, None)
            if entry is None:
                return None
            instance, _, tokens = entry
        self.endpoints.release(instance, tokens)
        return instance

    def _sweep(self, now: float) -> None:
        entries = self._unobserved
        for _ in range(EXPIRY_POPS_PER_REQUEST):
            if not entries:
                return
            route_id, (instance, started, tokens) = next(iter(entries.items()))
            if now - started <= self.observe_within:
                return
            del entries[route_id]
            self.endpoints.release(instance, tokens)
            self.abandoned += 1
