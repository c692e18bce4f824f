"""Stored Responses-API responses → the instance that holds them (and the workflow of their chain).

vLLM keeps a stored response (``store: true`` with ``VLLM_ENABLE_RESPONSES_API_STORE=1``) in the memory of the
process that produced it (``OpenAIServingResponses.response_store``, a dict, in
``vllm/entrypoints/openai/responses/serving.py``): a follow-up naming it in ``previous_response_id`` can only be
answered there; any other instance answers 404 "Response with id '…' not found.". The observer learns each
response's id from the response itself (the JSON body's ``id``, or the ``response.created`` event that opens a
stream) and the router pins follow-ups to the instance recorded here.

``ResponseIds`` is pure and synchronous: an LRU bounded by ``max_entries`` with an inactivity TTL, O(1)
amortised (expired entries sit at the front and are popped a few at a time). ``SharedResponseIds`` adds the
Redis copy that other replicas read on a local miss (``<prefix>resp:<id>`` = ``instance\\nworkflow_id`` with the
TTL): writes are fire-and-forget tasks, reads are bounded by a timeout; a Redis failure costs the pin on another
replica, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.config import DEFAULT_MAX_RESPONSE_IDS, DEFAULT_RESPONSE_ID_TTL_S, EXPIRY_POPS_PER_REQUEST

log = logging.getLogger("extproc.response_ids")

# The response id is the first member of vLLM's ResponsesResponse (``model_dump()`` keeps declaration order) and
# of the ``response`` object in ``response.created``, the first event of a stream: the first chunk carries it.
ID_SCAN_BYTES = 4096
_FIRST_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')


def response_id_from_chunk(chunk: bytes) -> str | None:
    """The response id in the first bytes of a Responses-API answer: a JSON ``ResponsesResponse`` (``{"id":
    "resp_…", …``) or an SSE stream whose first event is ``response.created`` (``event: response.created`` then
    ``data: {"response": {"id": …``; the event's ``type`` member comes last, after the echoed instructions and
    tools, so the event line is what identifies it). None when neither."""
    head = chunk[:ID_SCAN_BYTES].lstrip()
    if head.startswith(b"event:"):
        if not head[6:].lstrip(b" ").startswith(b"response.created"):
            return None
    elif head.startswith(b"data:"):
        if b"response.created" not in head:
            return None
    elif not head.startswith(b"{"):
        return None
    found = _FIRST_ID.search(head)
    return found.group(1).decode("utf-8", "replace") if found is not None else None


_WHOLE = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"[^"\\]{1,256}"')
_TOP_LEVEL = re.compile(rb'"object"\s*:\s*"response"')


def whole_response(tail: bytes) -> bool:
    """Whether a kept tail is a whole JSON ``ResponsesResponse`` (it begins with its ``id`` and names its
    ``object``), not the end of a longer body that happens to begin at a nested item's ``{"id": …``."""
    return _WHOLE.match(tail) is not None and _TOP_LEVEL.search(tail) is not None


@dataclass(slots=True)
class StoredResponse:
    instance: str
    workflow_id: str
    last_used: float


class ResponseIds:
    """Local map of response ids; pure, the caller passes ``now`` (monotonic seconds)."""

    def __init__(self, ttl: float = DEFAULT_RESPONSE_ID_TTL_S, max_entries: int = DEFAULT_MAX_RESPONSE_IDS) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.learned = 0
        self.evicted = 0
        self.expired = 0
        self.pinned = 0  # follow-ups sent to the instance holding their previous response
        self.unknown = 0  # previous_response_id this router never saw (routed by the other sources)
        self.lost = 0  # previous response on an instance that is gone or down (answered with an error)

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, response_id: str, instance: str, workflow_id: str, now: float) -> None:
        self._expire(now)
        entries = self._entries
        entry = entries.get(response_id)
        if entry is not None:
            entry.instance, entry.workflow_id, entry.last_used = instance, workflow_id, now
            entries.move_to_end(response_id)
            return
        entries[response_id] = StoredResponse(instance, workflow_id, now)
        self.learned += 1
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1

    def get(self, response_id: str, now: float) -> StoredResponse | None:
        """The live entry, refreshed as just used (a chain's ids stay while it continues); None if unknown."""
        self._expire(now)
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if now - entry.last_used > self.ttl:
            del self._entries[response_id]
            self.expired += 1
            return None
        entry.last_used = now
        self._entries.move_to_end(response_id)
        return entry

    def _expire(self, now: float) -> None:
        entries = self._entries
        for _ in range(EXPIRY_POPS_PER_REQUEST):
            if not entries:
                return
            response_id, entry = next(iter(entries.items()))
            if now - entry.last_used <= self.ttl:
                return
            del entries[response_id]
            self.expired += 1

    def collector(self, shared: SharedResponseIds | None = None) -> Collector:
        return _ResponseIdsCollector(self, shared)


class SharedResponseIds:
    """The Redis copy of the map, for replicas that did not observe the response (``--store redis://``)."""

    def __init__(self, url: str, *, ttl: float, prefix: str = "wfr:", timeout: float = 0.25,
                 retry_after: float = 1.0) -> None:
        self.url = url
        self.ttl = max(1, int(ttl))
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self._redis: Any = None  # created on first use, inside the event loop
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.writes = 0
        self.hits = 0
        self.failures = 0

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis  # the [redis] extra; only with --store redis://

            self._redis = aioredis.from_url(self.url, socket_timeout=max(self.timeout * 4, 0.5),
                                            socket_connect_timeout=max(self.timeout * 4, 0.5),
                                            decode_responses=True)
        return self._redis

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}resp:{response_id}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.available:
            log.warning("redis unavailable: response ids stay local", extra={"error": type(exc).__name__})
        self._down_until = time.monotonic() + self.retry_after

    def publish(self, response_id: str, instance: str, workflow_id: str) -> None:
        """Write the entry in the background (the observer must not wait)."""
        if not self.available:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._write(response_id, f"{instance}\n{workflow_id}"))
        except RuntimeError:  # no running loop (unit tests of the pure parts)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, response_id: str, value: str) -> None:
        try:
            await asyncio.wait_for(self._client().set(self._key(response_id), value, ex=self.ttl), self.timeout)
            self.writes += 1
        except Exception as exc:  # any Redis or timeout error: the pin stays local to this replica
            self._failed(exc)

    async def lookup(self, response_id: str) -> tuple[str, str] | None:
        """``(instance, workflow_id)`` another replica recorded, or None (unknown, or Redis unavailable)."""
        if not self.available:
            return None
        try:
            value = await asyncio.wait_for(self._client().get(self._key(response_id)), self.timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        if not value:
            return None
        instance, _, workflow_id = str(value).partition("\n")
        self.hits += 1
        return instance, workflow_id

    async def stop(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 1.0)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


class _ResponseIdsCollector(Collector):
    def __init__(self, ids: ResponseIds, shared: SharedResponseIds | None) -> None:
        self.ids = ids
        self.shared = shared

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ids = self.ids
        yield GaugeMetricFamily("extproc_response_ids", "Stored response ids mapped to their instance", value=len(ids))
        yield CounterMetricFamily("extproc_response_ids_learned", "Response ids learned from responses",
                                  value=ids.learned)
        yield CounterMetricFamily("extproc_response_ids_evicted", "Response ids dropped at --max-response-ids",
                                  value=ids.evicted)
        outcomes = CounterMetricFamily("extproc_previous_response_lookups",
                                       "Requests naming a previous_response_id, by outcome", labels=["outcome"])
        outcomes.add_metric(["pinned"], ids.pinned)
        outcomes.add_metric(["unknown"], ids.unknown)
        outcomes.add_metric(["lost"], ids.lost)
        yield outcomes
        if self.shared is not None:
            yield CounterMetricFamily("extproc_response_ids_shared_hits",
                                      "Response ids found in Redis (recorded by another replica)",
                                      value=self.shared.hits)
