"""Prometheus metrics under vLLM's exact names, one registry per simulator instance.

Gauges and counters are read from the engine at scrape time (a custom collector, so stepping costs nothing);
latency histograms are observed as steps finish. Every series carries vLLM's ``model_name`` label.

All durations are **simulated** seconds: with ``--time-scale 0.01`` a 100 ms TTFT is observed as 0.1 even
though the client waited 1 ms of wall time. Counters are monotonic: ``POST /sim/reset`` does not reset them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine import Engine, StepResult
from .lora import LoRASlots

__all__ = ["CONTENT_TYPE", "SimMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket boundaries as in vLLM V1 (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        e, labels = self._engine, [self._model]
        stats, kv = e.stats, e.kv.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])  # exposed as name + "_total"
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", e.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv.usage())
        yield counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", kv.queries
        )
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", kv.hits)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", stats.preemptions)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "finished_reason"],
        )
        for reason in ("stop", "length", "abort"):
            success.add_metric([self._model, reason], stats.finished_by_reason.get(reason, 0))
        yield success
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "num_gpu_blocks", "enable_prefix_caching"],
        )
        info.add_metric([str(e.profile.block_size), str(e.profile.num_gpu_blocks), "True"], 1)
        yield info


class _LoRACollector(Collector):
    """``vllm:lora_requests_info``: one series per label set seen, the value the time it was last set."""

    def __init__(self, slots: LoRASlots) -> None:
        self._slots = slots

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        for max_lora, waiting, running, stamp in self._slots.info():
            info.add_metric([max_lora, waiting, running], stamp)
        yield info


class SimMetrics:
    """The registry of one instance; register it as a step observer of the :class:`~.driver.AsyncEngine`."""

    def __init__(self, engine: Engine, model_name: str, lora: LoRASlots | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        if lora is not None:
            self.registry.register(_LoRACollector(lora))
        labels = ["model_name"]
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            registry=self.registry,
            buckets=TTFT_BUCKETS,
        ).labels(model_name)
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            registry=self.registry,
            buckets=ITL_BUCKETS,
        ).labels(model_name)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            registry=self.registry,
            buckets=REQUEST_LATENCY_BUCKETS,
        ).labels(model_name)

        def phase(name: str, doc: str) -> Any:
            return Histogram(name, doc, labels, registry=self.registry, buckets=REQUEST_LATENCY_BUCKETS).labels(
                model_name
            )

        # Observed when a request finishes, from its first scheduling (vllm/v1/metrics/stats.py:
        # queued = scheduled - queued, prefill = first token - scheduled, decode = last token - first token,
        # inference = last token - scheduled).
        self._queue = phase("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.")
        self._inference = phase(
            "vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request."
        )
        self._prefill = phase(
            "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request."
        )
        self._decode = phase("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.")
        self._iteration = Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            labels,
            registry=self.registry,
            buckets=ITERATION_TOKENS_BUCKETS,
        ).labels(model_name)

    def on_step(self, result: StepResult) -> None:
        end = result.end
        iteration_tokens = 0  # vLLM's IterationStats: a prompt counts once, with its first token
        for seq in result.emitted:
            iteration_tokens += 1
            if seq.num_output == 1:
                iteration_tokens += seq.num_prompt_tokens
                self._ttft.observe(end - seq.arrival_time)
            elif seq.prev_token_time is not None:
                self._itl.observe(end - seq.prev_token_time)
        if not result.idle:
            self._iteration.observe(iteration_tokens)
        for seq in result.finished:
            self._e2e.observe(end - seq.arrival_time)
            scheduled = seq.admitted_time if seq.admitted_time is not None else seq.ready_time
            first = seq.first_token_time if seq.first_token_time is not None else end
            self._queue.observe(scheduled - seq.ready_time)
            self._prefill.observe(first - scheduled)
            self._decode.observe(end - first)
            self._inference.observe(end - scheduled)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
