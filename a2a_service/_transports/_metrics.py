"""Prometheus exposition of the store's statistics (read at scrape time, nothing on the request path).

Families (counters get the ``_total`` suffix in the text format):
``workflow_active_count``, ``workflow_message_queue_size`` (queued, not leased),
``workflow_messages_in_flight``, ``workflow_queues``, ``workflow_total_requests``,
``workflow_affinity_hits``, ``workflow_affinity_hit_rate``, ``workflow_completed_requests``,
``workflow_cache_hits``, ``workflow_cache_hit_rate`` (cached/prompt tokens), ``workflow_prompt_tokens``,
``workflow_cached_tokens``, ``workflow_records_rejected``, ``workflow_messages_{sent,delivered,acked,
redelivered,expired,dropped}``, ``workflow_messages_rejected{code}``, ``workflow_workflows_expired``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._types import SystemStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: SystemStats | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        gauges = (
            ("workflow_active_count", "Workflows currently held", s.active_workflows),
            ("workflow_message_queue_size", "Messages queued for delivery, all queues", s.queued_messages),
            ("workflow_messages_in_flight", "Messages leased and not yet acknowledged", s.in_flight_messages),
            ("workflow_queues", "Agent queues", s.queues),
            ("workflow_cache_hit_rate", "Cached prompt tokens / prompt tokens", s.cache_hit_rate),
            ("workflow_affinity_hit_rate", "Routed requests that kept their workflow's instance", s.affinity_hit_rate),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        m = s.messages
        counters = (
            ("workflow_total_requests", "Workflow requests routed", s.total_requests),
            ("workflow_affinity_hits", "Routed requests sent to the workflow's instance", s.affinity_hits),
            ("workflow_completed_requests", "Workflow requests completed", s.completed_requests),
            ("workflow_cache_hits", "Completed requests with cached prompt tokens", s.cache_hits),
            ("workflow_prompt_tokens", "Prompt tokens of completed requests", s.prompt_tokens),
            ("workflow_cached_tokens", "Cached prompt tokens of completed requests", s.cached_tokens),
            ("workflow_records_rejected", "Invalid request records skipped", s.records_rejected),
            ("workflow_workflows_expired", "Idle workflows removed", s.workflows_expired),
            ("workflow_messages_sent", "Messages enqueued (per recipient queue)", m.sent),
            ("workflow_messages_delivered", "Messages handed to receivers (redeliveries count)", m.delivered),
            ("workflow_messages_acked", "Messages acknowledged", m.acked),
            ("workflow_messages_redelivered", "Leases that expired unacknowledged", m.redelivered),
            ("workflow_messages_expired", "Messages that reached their TTL undelivered", m.expired),
            ("workflow_messages_dropped", "Messages discarded with their workflow", m.dropped),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        rejected = CounterMetricFamily("workflow_messages_rejected", "Sends refused, by error code", labels=["code"])
        for code, count in sorted(s.rejected_by_code.items()):
            rejected.add_metric([code], count)
        yield rejected


class Metrics:
    """One registry per app, so that several apps (tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = StatsCollector()
        self.registry.register(self._collector)

    def render(self, stats: SystemStats) -> bytes:
        self._collector.snapshot = stats
        return generate_latest(self.registry)
