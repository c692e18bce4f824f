"""Prometheus metrics of the ext_proc server (seed names where they apply).

Counters on the hot path are pre-bound label children; figures that live in the routing state (active
workflows, evictions, outstanding requests) are read at scrape time by a collector, so the request path
does not pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.routing.inflight import InFlight
from extproc.routing.policy import Router
from extproc.usage import Usage

# Routing decisions take microseconds; the buckets resolve 10 µs .. 100 ms.
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
REASONS = ("affinity", "new_workflow", "failover", "rebalance", "prefix", "no_metadata")


class _RouterCollector(Collector):
    def __init__(self, router: Router, inflight: InFlight) -> None:
        self.router = router
        self.inflight = inflight

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        table = self.router.table
        yield GaugeMetricFamily("workflow_active_count", "Workflows with a live instance assignment",
                                value=len(table))
        yield CounterMetricFamily("extproc_workflow_evictions", "Workflows evicted at --max-workflows (LRU)",
                                  value=table.evicted)
        yield CounterMetricFamily("extproc_workflow_expirations", "Workflows forgotten after --workflow-ttl",
                                  value=table.expired)
        outstanding = GaugeMetricFamily("extproc_outstanding_requests",
                                        "Requests routed to an instance and not finished", labels=["instance"])
        healthy = GaugeMetricFamily("extproc_instance_healthy", "1 if the instance is routable",
                                    labels=["instance"])
        for instance in self.router.instances:
            outstanding.add_metric([instance], self.router.outstanding[instance])
            healthy.add_metric([instance], 1.0 if instance in self.router.healthy else 0.0)
        yield outstanding
        yield healthy
        index = self.router.prefix_index
        if index is not None:
            yield GaugeMetricFamily("extproc_prefix_index_entries", "Block hashes held by the prefix index",
                                    value=index.entries())
            yield GaugeMetricFamily("extproc_prefix_index_bytes", "Approximate memory of the prefix index",
                                    value=index.approx_bytes())
        load = GaugeMetricFamily("extproc_instance_load", "Load score the routing policy uses", labels=["instance"])
        for instance in self.router.instances:
            load.add_metric([instance], self.router.load(instance))
        yield load
        yield CounterMetricFamily("extproc_inflight_abandoned",
                                  "Routed requests whose end was never observed by this replica",
                                  value=self.inflight.abandoned)


class Metrics:
    def __init__(self, router: Router, inflight: InFlight, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.total_requests = Counter(
            "workflow_total_requests", "Requests routed with workflow metadata", registry=reg
        )
        self.routing_latency = Histogram(
            "workflow_routing_latency", "Time to parse a request and pick its instance (seconds)",
            buckets=LATENCY_BUCKETS, registry=reg,
        )
        decisions = Counter(
            "extproc_routing_decisions", "Routing decisions by instance and reason", ["instance", "reason"],
            registry=reg,
        )
        self.decisions = {(i, r): decisions.labels(i, r) for i in router.instances for r in REASONS}
        self._bad_requests = Counter(
            "extproc_bad_requests", "Requests answered 400 by the ext_proc server", ["code"], registry=reg
        )
        self.streams = Counter("extproc_streams", "ext_proc streams opened by Envoy", registry=reg)
        self.stream_errors = Counter(
            "extproc_stream_errors", "ext_proc streams that ended with an unexpected error", registry=reg
        )
        prompt = Counter("extproc_prompt_tokens", "Prompt tokens reported by backends' usage", ["instance"],
                         registry=reg)
        cached = Counter("extproc_cached_tokens", "Cached prompt tokens reported by backends' usage (vLLM "
                         "usage.prompt_tokens_details.cached_tokens)", ["instance"], registry=reg)
        self._prompt = {i: prompt.labels(i) for i in router.instances}
        self._cached = {i: cached.labels(i) for i in router.instances}
        reg.register(_RouterCollector(router, inflight))

    def usage(self, instance: str, usage: Usage) -> None:
        prompt = self._prompt.get(instance)
        if prompt is not None:
            prompt.inc(usage.prompt_tokens)
            self._cached[instance].inc(usage.cached_tokens)

    def bad_request(self, code: str) -> None:
        self._bad_requests.labels(code).inc()
