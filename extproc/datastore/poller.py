"""Live backend state: a poller scrapes each instance's ``/health`` and ``/metrics`` off the hot path and
publishes an immutable snapshot that the routing policy reads.

Works unchanged against real vLLM and the simulator: it reads vLLM's metric names
(``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``; older vLLM
releases call the last one ``vllm:gpu_cache_usage_perc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extproc.config import Backend

log = logging.getLogger("extproc.backends")

# A refused connection or a non-200 /health marks an instance down at once; timeouts only after this many polls
# in a row, so one slow answer on a loaded host does not move workflows away from a warm cache.
TIMEOUTS_TO_MARK_DOWN = 3

_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",
    # Cumulative figures the cost model learns per-token prefill costs from (deltas between scrapes).
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:request_prefill_time_seconds_sum": "prefill_seconds",
    "vllm:request_prefill_time_seconds_count": "prefills",
    # Latency histograms the per-request deadlines learn from (requestcontrol/deadline.py; engine seconds).
    "vllm:time_to_first_token_seconds_sum": "ttft_seconds",
    "vllm:time_to_first_token_seconds_count": "ttfts",
    "vllm:inter_token_latency_seconds_sum": "itl_seconds",
    "vllm:inter_token_latency_seconds_count": "itls",
    "vllm:e2e_request_latency_seconds_sum": "e2e_seconds",
    "vllm:e2e_request_latency_seconds_count": "e2es",
}
# vllm:cache_config_info{block_size="16",num_gpu_blocks="27950",...} 1.0: the instance's KV capacity.
_CACHE_INFO = "vllm:cache_config_info"
# vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters=""} <unix time>: one
# series per label set ever seen, the current one carries the latest time (vllm/v1/metrics/loggers.py).
_LORA_INFO = "vllm:lora_requests_info"


@dataclass(frozen=True, slots=True)
class BackendLoad:
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    healthy: bool = True
    scraped_at: float = 0.0
    prompt_tokens: float = 0.0  # counter: prompt tokens of requests that started (vllm:prompt_tokens_total)
    prefix_hits: float = 0.0  # counter: of those, tokens served from the prefix cache
    prefill_seconds: float = 0.0  # histogram sum of vllm:request_prefill_time_seconds
    prefills: float = 0.0  # its count
    kv_capacity_tokens: float = 0.0  # num_gpu_blocks x block_size (0: not reported)
    ttft_seconds: float = 0.0  # histogram sums and counts of TTFT, inter-token and end-to-end latency
    ttfts: float = 0.0
    itl_seconds: float = 0.0
    itls: float = 0.0
    e2e_seconds: float = 0.0
    e2es: float = 0.0
    # What the instance serves, from its /v1/models (None: not known, e.g. no URL or no /v1/models route).
    models: frozenset[str] | None = None
    adapters: frozenset[str] = frozenset()  # of those, the LoRA adapters (a card with a `parent`)
    cards: tuple[ModelCard, ...] = ()  # the /v1/models entries (the gateway's own /v1/models lists their union)
    # vllm:lora_requests_info: adapters with running / waiting requests and the adapter slots (0: no LoRA).
    lora_running: frozenset[str] = frozenset()
    lora_waiting: frozenset[str] = frozenset()
    max_lora: int = 0


def _label(line: str, name: str) -> str | None:
    start = line.find(f'{name}="')
    if start < 0:
        return None
    start += len(name) + 2
    end = line.find('"', start)
    return line[start:end] if end > 0 else None


def _adapters(value: str | None) -> frozenset[str]:
    return frozenset(a.strip() for a in value.split(",") if a.strip()) if value else frozenset()


def parse_lora_info(text: str) -> tuple[frozenset[str], frozenset[str], int] | None:
    """``(running adapters, waiting adapters, max_lora)`` from the latest ``vllm:lora_requests_info`` series
    (the one with the highest timestamp value); None when the instance does not serve LoRA."""
    best: tuple[float, str] | None = None
    for line in text.splitlines():
        if not line.startswith(_LORA_INFO + "{"):
            continue
        try:
            stamp = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if best is None or stamp >= best[0]:
            best = (stamp, line)
    if best is None:
        return None
    line = best[1]
    slots = _label(line, "max_lora")
    return (_adapters(_label(line, "running_lora_adapters")), _adapters(_label(line, "waiting_lora_adapters")),
            int(slots) if slots and slots.isdigit() else 0)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One entry of an instance's ``/v1/models`` (vLLM's ModelCard: the fields a client of the gateway uses)."""

    id: str
    root: str | None = None  # a served model's path/name, an adapter's path
    parent: str | None = None  # an adapter's base model; None for a served model name
    max_model_len: int | None = None


def parse_models(payload: object) -> tuple[ModelCard, ...]:
    """The model cards of a ``/v1/models`` answer (vLLM lists each served model name with ``parent: null`` and
    each LoRA adapter with ``root`` = its path and ``parent`` = its base model,
    vllm/entrypoints/openai/models/serving.py ``show_available_models``). ValueError when it is not such a list."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("expected {\"object\": \"list\", \"data\": [...]}")
    cards: list[ModelCard] = []
    for card in payload["data"]:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            raise ValueError("a model card without a string 'id'")
        root, parent, length = card.get("root"), card.get("parent"), card.get("max_model_len")
        cards.append(ModelCard(card["id"], root if isinstance(root, str) else None,
                               parent if isinstance(parent, str) else None,
                               length if isinstance(length, int) and not isinstance(length, bool) else None))
    return tuple(cards)


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """The load gauges, the counters the cost model learns from and the KV capacity, from a Prometheus
    exposition (summed over label sets, e.g. several models)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = line.find("{")
        if name_end < 0:
            name_end = line.find(" ")
        name = line[:name_end]
        if name == _CACHE_INFO:
            blocks, size = _label(line, "num_gpu_blocks"), _label(line, "block_size")
            if blocks and size and blocks.isdigit() and size.isdigit():
                found["kv_capacity_tokens"] = float(int(blocks) * int(size))
            continue
        field = _GAUGES.get(name)
        if field is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        found[field] = found.get(field, 0.0) + value
    return found


class BackendPoller:
    """Polls every ``interval`` seconds; calls ``on_change(name, healthy)`` with every instance's health."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        interval: float,
        timeout: float,
        publish: Callable[[dict[str, BackendLoad]], None],
        on_change: Callable[[str, bool], None],
        dynamic: bool = False,
    ) -> None:
        self.backends = [b for b in backends if b.url]
        self.dynamic = dynamic  # the fleet may change (extproc/discovery/): poll even while it is empty
        self.interval = interval
        self.timeout = timeout
        self.publish = publish
        self.on_change = on_change
        self.snapshot: dict[str, BackendLoad] = {}
        self._timeouts: dict[str, int] = {b.cluster: 0 for b in self.backends}
        self._models_failing: set[str] = set()  # instances whose /v1/models failure was logged (once each)
        self.polls = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """The fleet changed (discovery): the next poll scrapes these instances."""
        self.backends = [b for b in backends if b.url]
        for backend in self.backends:
            self._timeouts.setdefault(backend.cluster, 0)
        self.snapshot = {name: load for name, load in self.snapshot.items()
                         if name in {b.cluster for b in self.backends}}

    async def start(self) -> None:
        if not self.backends and not self.dynamic:
            return
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(
            max_keepalive_connections=3 * max(len(self.backends), 8 if self.dynamic else 1)))
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="backend-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # never let the poller die: routing would silently lose its load signal
                log.exception("backend poll failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        backends = self.backends
        results = await asyncio.gather(*(self._poll(b) for b in backends))
        if backends is not self.backends:  # the fleet changed meanwhile: the next poll publishes it
            return
        snapshot = {b.cluster: load for b, load in zip(backends, results, strict=True)}
        for name, load in snapshot.items():
            previous = self.snapshot.get(name)
            if previous is not None and previous.healthy != load.healthy:
                log.warning("instance %s", "up" if load.healthy else "down", extra={"instance": name})
            # Every poll, not only on change: a successful poll also clears a passive (failed-response) mark.
            self.on_change(name, load.healthy)
        self.snapshot = snapshot
        self.publish(snapshot)

    async def _poll(self, backend: Backend) -> BackendLoad:
        assert self._client is not None and backend.url is not None
        self.polls += 1
        now = time.monotonic()
        try:
            health, metrics, listed = await asyncio.gather(
                self._client.get(f"{backend.url}/health"), self._client.get(f"{backend.url}/metrics"),
                self._client.get(f"{backend.url}/v1/models"),
            )
        except httpx.TimeoutException:
            self.failures += 1
            self._timeouts[backend.cluster] = self._timeouts.get(backend.cluster, 0) + 1
            previous = self.snapshot.get(backend.cluster)
            if self._timeouts[backend.cluster] < TIMEOUTS_TO_MARK_DOWN and previous is not None:
                return previous  # keep the last known state for now
            return BackendLoad(healthy=False, scraped_at=now)
        except httpx.HTTPError:
            self.failures += 1
            return BackendLoad(healthy=False, scraped_at=now)
        self._timeouts[backend.cluster] = 0
        if health.status_code != 200:
            self.failures += 1
            return BackendLoad(healthy=False, scraped_at=now)
        # A failing /v1/models is a failing instance, not one serving nothing; a server without the route
        # (404: not vLLM, e.g. a test stub) serves whatever it is sent.
        cards: tuple[ModelCard, ...] | None = None
        if listed.status_code != 404:
            try:
                if listed.status_code != 200:
                    raise ValueError(f"status {listed.status_code}")
                cards = parse_models(listed.json())
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                self.failures += 1
                if backend.cluster not in self._models_failing:
                    self._models_failing.add(backend.cluster)
                    log.error("instance's /v1/models failed: treated as down", extra={
                        "instance": backend.cluster, "error": str(error)})
                return BackendLoad(healthy=False, scraped_at=now)
        self._models_failing.discard(backend.cluster)
        text = metrics.text if metrics.status_code == 200 else ""
        gauges = parse_vllm_metrics(text) if text else {}
        fields: dict[str, Any] = dict(gauges)
        if cards is not None:
            fields.update(models=frozenset(c.id for c in cards), cards=cards,
                          adapters=frozenset(c.id for c in cards if c.parent is not None))
        lora = parse_lora_info(text) if text else None
        if lora is not None:
            fields.update(lora_running=lora[0], lora_waiting=lora[1], max_lora=lora[2])
        return BackendLoad(healthy=True, scraped_at=now, **fields)

    def collector(self) -> Collector:
        return _PollerCollector(self)


class _PollerCollector(Collector):
    def __init__(self, poller: BackendPoller) -> None:
        self.poller = poller

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("extproc_backend_polls", "Backend health/metrics scrapes", value=self.poller.polls)
        yield CounterMetricFamily("extproc_backend_poll_failures", "Backend scrapes that failed",
                                  value=self.poller.failures)
