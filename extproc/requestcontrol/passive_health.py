"""Passive health checking: failed attempts the poller cannot see mark an instance down for a while.

Gateway errors (502/503/504), and attempts Envoy gave up on and retried on another instance (refused, reset,
or a per-try idle timeout: a hung engine whose /health still answers). ``FAILURES_TO_MARK_DOWN`` in a row mark
the instance down and hold it down for ``PASSIVE_HOLD_DOWN_S`` even if its /health answers; every further
failure extends the hold. Any other answer resets the count.
"""

from __future__ import annotations

import logging
import time

from extproc.config import FAILURES_TO_MARK_DOWN, PASSIVE_HOLD_DOWN_S
from extproc.datastore.endpoints import Endpoints

log = logging.getLogger("extproc")


class PassiveHealth:
    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.failures: dict[str, int] = dict.fromkeys(endpoints.instances, 0)

    def add(self, instance: str) -> None:
        """An instance joined the fleet (discovery)."""
        self.failures.setdefault(instance, 0)

    def record(self, instance: str, status: int, retried_away: bool) -> None:
        if instance not in self.failures:
            return
        if status in (502, 503, 504) or retried_away:
            self.failures[instance] += 1
            if self.failures[instance] >= FAILURES_TO_MARK_DOWN:
                if self.failures[instance] == FAILURES_TO_MARK_DOWN:
                    log.warning("instance marked down after failed attempts",
                                extra={"instance": instance, "hold_down_s": PASSIVE_HOLD_DOWN_S})
                self.endpoints.hold_down(instance, time.monotonic() + PASSIVE_HOLD_DOWN_S)
        elif status:
            self.failures[instance] = 0
