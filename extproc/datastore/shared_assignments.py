"""Workflow → instance assignments shared by several ext_proc replicas through Redis (the shared assignment store).

Its metrics keep their historical ``extproc_registry_*`` names (dashboards and alerts use them).

The local ``WorkflowTable`` stays the hot-path cache: an affinity hit costs no Redis round trip. Redis is
asked only when the assignment is created or moved (new workflow, failover, rebalance), with one atomic
compare-and-set (Lua), so two replicas that see a workflow's first requests at the same moment agree on one
instance, and a failover re-assignment happens once. Refreshes of the TTL and the cluster-wide LRU bound
(``--max-workflows``) run in a background flush, batched. A cached entry older than ``revalidate_after`` is
re-read in the background, so a move made by another replica is picked up within that bound.

Keys (prefix configurable, default ``wfr:``): ``<prefix>wf:<workflow_id>`` = instance name with the workflow
TTL; ``<prefix>lru`` = sorted set of workflow ids by last use (for the max-workflows bound).

Degraded mode: when Redis fails or answers slower than ``timeout``, decisions are local (this replica's
table), counted in ``extproc_registry_degraded_total``, and Redis is retried after ``retry_after`` seconds.
Clients never see an error for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.config import DEFAULT_STORE_TIMEOUT_S

log = logging.getLogger("extproc.assignments")

# KEYS[1] = workflow key, KEYS[2] = lru zset; ARGV = proposal, expected current ('' = must be absent), ttl,
# now, workflow id. Returns the instance the workflow is assigned to after the call.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if (not current) or (ARGV[2] ~= '' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  return ARGV[1]
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return current
"""

DEFAULT_TIMEOUT_S = DEFAULT_STORE_TIMEOUT_S
# A refused connection means Redis is down at once; timeouts only after this many in a row (a loaded machine
# answers slowly now and then, and a false "down" splits the replicas' decisions for retry_after seconds).
TIMEOUTS_TO_DEGRADE = 3
DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_REVALIDATE_AFTER_S = 2.0


class RedisAssignments:
    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        max_workflows: int,
        prefix: str = "wfr:",
        timeout: float = DEFAULT_TIMEOUT_S,
        retry_after: float = DEFAULT_RETRY_AFTER_S,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_S,
        revalidate_after: float = DEFAULT_REVALIDATE_AFTER_S,
    ) -> None:
        import redis.asyncio as aioredis  # the [redis] extra; only needed with --store redis://

        self._redis = aioredis.from_url(url, socket_timeout=max(timeout * 4, 0.5),
                                        socket_connect_timeout=max(timeout * 4, 0.5), decode_responses=True)
        self._claim = self._redis.register_script(_CLAIM)
        self.url = url
        self.ttl = max(1, int(ttl))
        self.max_workflows = max_workflows
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self.flush_interval = flush_interval
        self.revalidate_after = revalidate_after
        self._touched: set[str] = set()
        self._down_until = 0.0
        self._timeouts = 0
        self._task: asyncio.Task[None] | None = None
        self.claims = 0
        self.conflicts = 0  # claims another replica had won
        self.degraded = 0  # decisions taken locally because Redis was unavailable
        self.evicted = 0

    def _key(self, workflow_id: str) -> str:
        return f"{self.prefix}wf:{workflow_id}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_DEGRADE:
                return
        if self.available:
            log.warning("redis unavailable: routing on local decisions", extra={"error": type(exc).__name__})
        self._timeouts = 0
        self._down_until = time.monotonic() + self.retry_after

    # --- hot path (only for new workflows and moves) -------------------------------------------------------
    async def claim(self, workflow_id: str, proposal: str, expected: str | None) -> str:
        """Assign ``proposal`` unless another replica already did (or, when moving, moved it first)."""
        if not self.available:
            self.degraded += 1
            return proposal
        try:
            winner = await asyncio.wait_for(
                self._claim(keys=[self._key(workflow_id), f"{self.prefix}lru"],
                            args=[proposal, expected or "", self.ttl, time.time(), workflow_id]),
                self.timeout,
            )
        except Exception as exc:  # any Redis or timeout error: degrade, never fail the request
            self._failed(exc)
            self.degraded += 1
            return proposal
        self.claims += 1
        self._timeouts = 0
        if winner != proposal:
            self.conflicts += 1
        return str(winner)

    def touch(self, workflow_id: str) -> None:
        self._touched.add(workflow_id)

    async def lookup(self, workflow_id: str) -> str | None:
        if not self.available:
            return None
        try:
            value = await asyncio.wait_for(self._redis.get(self._key(workflow_id)), self.timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        return str(value) if value is not None else None

    # --- background ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 1.0)
        await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            if self.available:
                try:
                    await self.flush()
                except Exception as exc:
                    self._failed(exc)

    async def flush(self) -> None:
        touched, self._touched = self._touched, set()
        now = time.time()
        lru = f"{self.prefix}lru"
        async with self._redis.pipeline(transaction=False) as pipe:
            for workflow_id in touched:
                pipe.expire(self._key(workflow_id), self.ttl)
                pipe.zadd(lru, {workflow_id: now})
            pipe.zremrangebyscore(lru, "-inf", now - self.ttl)  # expired keys are gone already
            pipe.zcard(lru)
            results = await pipe.execute()
        excess = int(results[-1]) - self.max_workflows
        if excess > 0:
            # decode_responses=True: members come back as str; redis-py's annotation covers every client mode.
            oldest = cast(list[tuple[str, float]], await self._redis.zpopmin(lru, excess))
            if oldest:
                await self._redis.delete(*(self._key(workflow_id) for workflow_id, _score in oldest))
                self.evicted += len(oldest)

    def collector(self) -> Collector:
        return _AssignmentsCollector(self)


class _AssignmentsCollector(Collector):
    def __init__(self, store: RedisAssignments) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self.store
        yield CounterMetricFamily("extproc_registry_claims", "Assignments agreed through Redis", value=r.claims)
        yield CounterMetricFamily("extproc_registry_conflicts", "Claims another replica had already won",
                                  value=r.conflicts)
        yield CounterMetricFamily("extproc_registry_degraded", "Decisions taken locally while Redis was unavailable",
                                  value=r.degraded)
        yield CounterMetricFamily("extproc_registry_evictions", "Workflows evicted cluster-wide at --max-workflows",
                                  value=r.evicted)
        yield GaugeMetricFamily("extproc_registry_available", "1 while Redis answers", value=float(r.available))
