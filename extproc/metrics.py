"""Prometheus metrics of the ext_proc server (seed names where they apply).

Counters on the hot path are pre-bound label children; figures that live in the routing state (active
workflows, evictions, outstanding requests) are read at scrape time by a collector, so the request path
does not pay for them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from extproc.datastore.endpoints import Endpoints
from extproc.datastore.inflight import InFlight
from extproc.datastore.prefix_index import PrefixIndex
from extproc.datastore.workflows import WorkflowTable
from extproc.scheduling.framework import FastHistogram, Stats
from extproc.usage import Usage

# Routing decisions take microseconds; the buckets resolve 10 µs .. 100 ms.
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
REASONS = ("affinity", "new_workflow", "failover", "rebalance", "prefix", "no_metadata")


class _RouterCollector(Collector):
    def __init__(self, endpoints: Endpoints, workflows: WorkflowTable, inflight: InFlight,
                 prefix_index: PrefixIndex | None) -> None:
        self.endpoints = endpoints
        self.workflows = workflows
        self.inflight = inflight
        self.prefix_index = prefix_index

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        table = self.workflows
        endpoints = self.endpoints
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
        for instance in endpoints.instances:
            outstanding.add_metric([instance], endpoints.outstanding[instance])
            healthy.add_metric([instance], 1.0 if instance in endpoints.healthy else 0.0)
        yield outstanding
        yield healthy
        index = self.prefix_index
        if index is not None:
            yield GaugeMetricFamily("extproc_prefix_index_entries", "Block hashes held by the prefix index",
                                    value=index.entries())
            yield GaugeMetricFamily("extproc_prefix_index_bytes", "Approximate memory of the prefix index",
                                    value=index.approx_bytes())
        load = GaugeMetricFamily("extproc_instance_load", "Load score the routing policy uses", labels=["instance"])
        for instance in endpoints.instances:
            load.add_metric([instance], endpoints.load(instance))
        yield load
        yield CounterMetricFamily("extproc_inflight_abandoned",
                                  "Routed requests whose end was never observed by this replica",
                                  value=self.inflight.abandoned)


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: FastHistogram) -> None:
    family.add_metric(labels, histogram.buckets(), histogram.total)


class _SchedulerCollector(Collector):
    """Per-plugin call time and per-scorer score distributions of the scheduling framework."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        seconds = HistogramMetricFamily("extproc_scheduler_plugin_duration_seconds",
                                        "Time of one scheduling plugin call", labels=["kind", "plugin"])
        for (kind, name), histogram in sorted(self.stats.seconds.items()):
            _histogram(seconds, [kind, name], histogram)
        yield seconds
        scores = HistogramMetricFamily("extproc_scheduler_scorer_score",
                                       "Scores a scorer gave candidates (0..1, before weighting)", labels=["scorer"])
        for name, histogram in sorted(self.stats.scores.items()):
            _histogram(scores, [name], histogram)
        yield scores
        profiles = CounterMetricFamily("extproc_scheduler_profile_runs", "Requests scheduled by each profile",
                                       labels=["profile"])
        for name, count in sorted(self.stats.profiles.items()):
            profiles.add_metric([name], count)
        yield profiles


GC_PAUSE_BUCKETS = (1e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)


class Metrics:
    def __init__(self, instances: Sequence[str], registry: CollectorRegistry | None = None) -> None:
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
        self._decision_family = decisions
        self.decisions = {(i, r): decisions.labels(i, r) for i in instances for r in REASONS}
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
        self._prompt_family, self._cached_family = prompt, cached
        self._prompt = {i: prompt.labels(i) for i in instances}
        self._cached = {i: cached.labels(i) for i in instances}

    def watch_gc(self) -> Callable[[], None]:
        """Time every cyclic garbage collection (``extproc_gc_pause_seconds`` by generation): a collection stops
        the event loop, so its pauses are in every stream's latency. Returns the function that stops it."""
        pauses = Histogram("extproc_gc_pause_seconds", "Cyclic garbage collection pauses (the event loop waits)",
                           ["generation"], buckets=GC_PAUSE_BUCKETS, registry=self.registry)
        by_generation = [pauses.labels(str(g)) for g in range(3)]
        started = [0.0]
        clock = time.perf_counter

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = clock()
            else:
                by_generation[info["generation"]].observe(clock() - started[0])

        gc.callbacks.append(callback)
        return lambda: gc.callbacks.remove(callback)

    def add_instance(self, instance: str) -> None:
        """An instance joined the fleet (discovery): its labelled series start at zero."""
        for reason in REASONS:
            if (instance, reason) not in self.decisions:
                self.decisions[instance, reason] = self._decision_family.labels(instance, reason)
        if instance not in self._prompt:
            self._prompt[instance] = self._prompt_family.labels(instance)
            self._cached[instance] = self._cached_family.labels(instance)

    def watch(self, endpoints: Endpoints, workflows: WorkflowTable, inflight: InFlight,
              prefix_index: PrefixIndex | None, scheduler_stats: Stats) -> None:
        """Figures that live in the routing state, read at scrape time (the request path does not pay)."""
        self.registry.register(_RouterCollector(endpoints, workflows, inflight, prefix_index))
        self.registry.register(_SchedulerCollector(scheduler_stats))

    def usage(self, instance: str, usage: Usage) -> None:
        prompt = self._prompt.get(instance)
        if prompt is not None:
            prompt.inc(usage.prompt_tokens)
            self._cached[instance].inc(usage.cached_tokens)

    def bad_request(self, code: str) -> None:
        self._bad_requests.labels(code).inc()
