"""Streamed responses the observer does not read: which ones it reads (a sample), and the others' usage, estimated.

A streamed response sends one SSE event per token, and each reaches an observer that reads the body as one gRPC
message into Python: the observer's cost would grow with output tokens. So streams on the stream-idle routes
reach it without their body (``extproc/envoy_config/_routes.py``): request headers and response headers. What the
body carried is then known otherwise:

- *The end* (in-flight count, passive health, the deadline learner): the end of the request's router stream,
  which Envoy closes with the HTTP stream (``Director.router_ended``; the observer stream's own end, 1 s later,
  stands in where the router stream ran on another replica).
- *The prefill done* (the cost model's queued prefill): the response headers (a stream's headers leave before
  its first token, so the queue ahead of later requests is under-counted by the prefill time of such a stream).
- *Usage*: estimated. Prompt and cached tokens as the router predicted them when it chose the instance (its
  tokenizer or the prompt's length in characters / 4; the cached tokens from KV events or the prefix index); a
  request routed on its metadata alone (the prompt not read) counts its body's length / 4 as prompt tokens and
  the instance's recent cached share of reported usage (every non-streamed response, the sampled streams);
  completion tokens from the response's wall time and the instance's learned TTFT and inter-token latency,
  capped at ``max_tokens``.

A share of streams (``--observe-stream-bodies``, default one in 100) is read in full: their usage is exact, and
each is also estimated, so ``extproc_usage_estimate_error`` measures the estimate against the real usage.
Where estimates go: the A2A workflow status (its token counts then include estimates; ``--observe-stream-bodies
1`` makes them exact again), the prefix index's occupancy, least-attained-service priorities, and their own
counters (``extproc_estimated_prompt_tokens`` / ``extproc_estimated_cached_tokens``); ``extproc_prompt_tokens`` and
``extproc_cached_tokens`` stay the backends' reported figures.
Responses-API streams are always read (their first event names the response id the next turn needs).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from extproc.usage import Usage

# Routed streams waiting for their observer stream; another replica may observe them (then they are never taken).
MAX_PENDING = 65_536
# Each reported usage multiplies the weight of the older ones by this (about the last 50 responses count).
SHARE_FORGETTING = 0.98
# Signed relative errors, so a bias shows: cached tokens over the reported prompt tokens, completion tokens over
# the reported completion tokens.
ERROR_BUCKETS = (-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the router knew of a request when it chose the instance."""

    prompt_tokens: int
    cached_tokens: int | None  # None: not predicted (the prompt was not read)
    max_tokens: int | None


def estimated_usage(estimate: Estimate, wall_s: float, ttft_s: float, itl_s: float, cached_share: float) -> Usage:
    """Usage of a response whose body nobody read: the first token after ``ttft_s``, one more every ``itl_s``;
    ``cached_share`` of the prompt cached where the router predicted nothing."""
    completion = 1 + (max(0, round((wall_s - ttft_s) / itl_s)) if itl_s > 0 else 0)
    if estimate.max_tokens is not None and estimate.max_tokens > 0:
        completion = min(completion, estimate.max_tokens)
    prompt = estimate.prompt_tokens
    cached = round(cached_share * prompt) if estimate.cached_tokens is None else estimate.cached_tokens
    return Usage(prompt, completion, min(cached, prompt))


class StreamObservation:
    """Which streams the observer reads in full, and the estimates of the others until their end."""

    def __init__(self, fraction: float, registry: CollectorRegistry) -> None:
        self.fraction = fraction
        self._streams = 0
        self._pending: OrderedDict[str, Estimate] = OrderedDict()
        self._shares: dict[str, list[float]] = {}  # instance: forgetting-weighted [cached, prompt] tokens
        self.messages = Counter("extproc_observer_messages", "Messages the observer streams received (with "
                                "extproc_observer_streams: per request, flat in output tokens)", registry=registry)
        self.streams = Counter("extproc_observer_streams", "Observer streams (one per routed request)",
                               registry=registry)
        self.estimated = Counter("extproc_usage_estimated", "Responses whose usage was estimated (streams the "
                                 "observer did not read; --observe-stream-bodies)", registry=registry)
        self.estimated_prompt = Counter("extproc_estimated_prompt_tokens", "Prompt tokens of the responses whose "
                                        "usage was estimated", registry=registry)
        self.estimated_cached = Counter("extproc_estimated_cached_tokens", "Cached prompt tokens of the responses "
                                        "whose usage was estimated", registry=registry)
        error = Histogram("extproc_usage_estimate_error", "On the streams read in full: estimated minus reported "
                          "tokens, over the reported prompt tokens (tokens=cached) or completion tokens "
                          "(tokens=completion)", ["tokens"], buckets=ERROR_BUCKETS,
                          registry=registry)
        self._cached_error, self._completion_error = error.labels("cached"), error.labels("completion")

    def read_body(self) -> bool:
        """Whether the observer reads this stream's body: every 1/fraction-th stream (deterministic, no RNG)."""
        fraction = self.fraction
        if fraction <= 0:
            return False
        self._streams += 1
        return int(self._streams * fraction) != int((self._streams - 1) * fraction)

    def expect(self, route_id: str, estimate: Estimate) -> None:
        pending = self._pending
        pending[route_id] = estimate
        if len(pending) > MAX_PENDING:
            pending.popitem(last=False)

    def take(self, route_id: str | None) -> Estimate | None:
        return self._pending.pop(route_id, None) if route_id is not None else None

    def reported(self, instance: str, usage: Usage) -> None:
        """A response's reported usage: the instance's recent cached share (forgetting-weighted)."""
        share = self._shares.get(instance)
        if share is None:
            share = self._shares[instance] = [0.0, 0.0]
        share[0] = SHARE_FORGETTING * share[0] + usage.cached_tokens
        share[1] = SHARE_FORGETTING * share[1] + usage.prompt_tokens

    def cached_share(self, instance: str) -> float:
        share = self._shares.get(instance)
        return share[0] / share[1] if share is not None and share[1] > 0 else 0.0

    def compare(self, estimate: Usage, reported: Usage) -> None:
        self._cached_error.observe((estimate.cached_tokens - reported.cached_tokens) / max(1, reported.prompt_tokens))
        self._completion_error.observe(
            (estimate.completion_tokens - reported.completion_tokens) / max(1, reported.completion_tokens))
