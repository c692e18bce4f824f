"""Batched, non-blocking reports of routed/completed requests to the A2A service (gRPC ``RecordRequests``).

The hot path appends a tuple to a bounded deque and returns. A background task sends batches; when the A2A
service is slow or down, batches are dropped and counted — routing never waits for statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from a2a_service.v1 import a2a_pb2, a2a_pb2_grpc
from extproc.metadata import WorkflowMetadata
from extproc.requestcontrol.fleet import workflow_of
from extproc.requestcontrol.types import Decision
from extproc.usage import Usage

log = logging.getLogger("extproc.reporter")

DEFAULT_QUEUE_LIMIT = 50_000
DEFAULT_BATCH = 1_000
DEFAULT_INTERVAL_S = 0.05
DEFAULT_RPC_TIMEOUT_S = 2.0

_ROUTED = a2a_pb2.ROUTED
_COMPLETED = a2a_pb2.COMPLETED


class A2AReporter:
    def __init__(
        self,
        target: str,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        batch: int = DEFAULT_BATCH,
        interval: float = DEFAULT_INTERVAL_S,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        instance_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        # Instances are reported by base URL when known (--backends name=url): the seed document's
        # `assigned_instance` is "http://vllm-1:8000"; without a URL, by name.
        self._urls = dict(instance_urls or {})
        # A router (or admin) bearer token when the A2A service runs with --auth jwt; never logged.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.credentials = credentials  # TLS (with a client certificate when the A2A service requires mTLS)
        self.batch = batch
        self.interval = interval
        # (kind, request_id, workflow_id, agent_id, instance, affinity_hit, failover, latency, ts, prompt,
        #  cached, status, model, identity source)
        self._pending: deque[tuple[object, ...]] = deque()
        self._limit = queue_limit
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.sent = 0
        self.dropped = 0
        self.failed_batches = 0

    # --- hot path ------------------------------------------------------------------------------------------
    def _push(self, record: tuple[object, ...]) -> None:
        if len(self._pending) >= self._limit:
            self.dropped += 1
            return
        self._pending.append(record)

    def set_instance_urls(self, urls: Mapping[str, str]) -> None:
        """The fleet changed (extproc/discovery/): report the new instances by URL too."""
        self._urls.update(urls)

    def routed(self, request_id: str, decision: Decision, metadata: WorkflowMetadata | None, elapsed: float) -> None:
        agent = metadata.agent_id if metadata is not None else None
        instance = self._urls.get(decision.instance, decision.instance)
        model = workflow_of(decision.affinity_key)[1] if decision.affinity_key is not None else None
        self._push((_ROUTED, request_id, decision.workflow_id, agent, instance, decision.affinity_hit,
                    decision.failover, elapsed, time.time(), 0, 0, 0, model or "", decision.identity_source))

    def completed(
        self, request_id: str, workflow_id: str, agent_id: str | None, instance: str, usage: Usage | None,
        status: int,
    ) -> None:
        prompt, cached = (usage.prompt_tokens, usage.cached_tokens) if usage is not None else (0, 0)
        self._push((_COMPLETED, request_id, workflow_id, agent_id, self._urls.get(instance, instance), False, False,
                    0.0, time.time(), prompt, cached, status, "", ""))

    # --- background ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._channel = (grpc.aio.insecure_channel(self.target) if self.credentials is None
                         else grpc.aio.secure_channel(self.target, self.credentials))
        self._stub = a2a_pb2_grpc.A2AServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="a2a-reporter")

    async def stop(self, timeout: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_all(), timeout)
        if self._channel is not None:
            await self._channel.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._flush_all()

    async def _flush_all(self) -> None:
        while self._pending:
            await self._send_batch()

    async def _send_batch(self) -> None:
        pending = self._pending
        count = min(len(pending), self.batch)
        request = a2a_pb2.RecordRequestsRequest()
        add = request.records.add
        for _ in range(count):
            kind, rid, wid, aid, inst, hit, fail, lat, ts, prompt, cached, status, model, source = pending.popleft()
            add(kind=kind, request_id=rid, workflow_id=wid, agent_id=aid or "", instance=inst, affinity_hit=hit,
                failover=fail, routing_latency_seconds=lat, timestamp=ts, prompt_tokens=prompt,
                cached_tokens=cached, status_code=status, model=model, identity_source=source)
        try:
            await self._stub.RecordRequests(request, timeout=DEFAULT_RPC_TIMEOUT_S, metadata=self._metadata)
            self.sent += count
        except grpc.aio.AioRpcError as exc:
            self.dropped += count
            self.failed_batches += 1
            if self.failed_batches == 1 or self.failed_batches % 100 == 0:
                log.warning("A2A reporting failed; records dropped",
                            extra={"code": exc.code().name, "dropped_total": self.dropped})

    def collector(self) -> Collector:
        return _ReporterCollector(self)


class _ReporterCollector(Collector):
    def __init__(self, reporter: A2AReporter) -> None:
        self.reporter = reporter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self.reporter
        yield CounterMetricFamily("extproc_reports_sent", "Request records delivered to the A2A service",
                                  value=r.sent)
        yield CounterMetricFamily("extproc_reports_dropped",
                                  "Request records dropped (A2A service slow/down or queue full)", value=r.dropped)
        yield GaugeMetricFamily("extproc_reports_pending", "Request records waiting to be sent",
                                value=len(r._pending))
