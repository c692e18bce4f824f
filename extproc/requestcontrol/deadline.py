"""Per-request deadlines: a frozen engine must not hold a request until the client gives up (pure).

Every forwarded LLM request gets Envoy's per-try timeout (``x-envoy-upstream-rq-per-try-timeout-ms``, set by the
ext_proc answer; the router filter's ``mutation_rules`` allow ``x-envoy-*``) of

    deadline = max(floor, multiplier x expected)      expected = TTFT + (max_tokens - 1) x ITL

with TTFT and ITL the chosen instance's recent means in wall seconds. Envoy resets an attempt that has not started
its response by then and retries it once on another instance (``retry_on: reset``); an attempt whose response
started is never cut by it (Envoy ignores the per-try timeout once response bytes went downstream). Streamed
responses start at once (headers before the first token), so a stream also gets an idle bound: the ext_proc
names one of the ``STREAM_IDLE_BUCKETS_S`` routes, whose retry policy has that ``per_try_idle_timeout``, the
smallest at or above ``max(floor, multiplier x max(TTFT, ITL))``.

Where the figures come from. vLLM exports ``vllm:time_to_first_token_seconds`` and
``vllm:inter_token_latency_seconds`` histograms; the poller scrapes their ``_sum``/``_count`` and
:class:`LatencyLearner` keeps forgetting-weighted means of the deltas. Those are the engine's seconds: wall
seconds for vLLM, simulated seconds for the simulator (``--time-scale``). The learner converts them with a
per-instance clock ratio = the mean wall duration the router observed for the instance's completed requests
(observer stream: request headers to response end) / the mean ``vllm:e2e_request_latency_seconds`` it reported
over the same windows. For vLLM the ratio is about 1 (slightly above: the network and Envoy add to the wall
time, which errs towards longer deadlines); for the simulator it is its time scale. Until an instance has reported
anything the priors stand in (``PRIOR_TTFT_S``, ``PRIOR_ITL_S``: slow on purpose, so a cold router never cuts a
healthy long generation), and until the router saw a request of it complete, the ratio is 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from extproc.config import (
    DEFAULT_DEADLINE_FLOOR_S,
    DEFAULT_DEADLINE_MAX_TOKENS,
    DEFAULT_DEADLINE_MULTIPLIER,
    PER_TRY_TIMEOUT_HEADER,
    STREAM_IDLE_BUCKETS_S,
    STREAM_IDLE_HEADER,
)
from extproc.datastore.poller import BackendLoad

# Before an instance reported any latency: pessimistic wall-clock figures (a slow GPU under load).
PRIOR_TTFT_S = 2.0
PRIOR_ITL_S = 0.05
# Each scrape multiplies the weight of older windows by this (with 0.1 s scrapes, about the last 2 s count).
FORGETTING = 0.95
# Clock ratios outside this range are noise (a window with one odd request), not a clock.
MIN_RATIO, MAX_RATIO = 1e-4, 100.0


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    floor_s: float = DEFAULT_DEADLINE_FLOOR_S  # no deadline is shorter (0 = no deadlines at all)
    multiplier: float = DEFAULT_DEADLINE_MULTIPLIER  # x the expected duration
    default_max_tokens: int = DEFAULT_DEADLINE_MAX_TOKENS  # for requests without max_tokens

    @property
    def enabled(self) -> bool:
        return self.floor_s > 0


def expected_seconds(max_tokens: int, ttft_s: float, itl_s: float) -> float:
    """The request's expected duration: its first token after TTFT, each further one an ITL later."""
    return ttft_s + max(0, max_tokens - 1) * itl_s


def per_try_timeout_s(policy: DeadlinePolicy, max_tokens: int | None, ttft_s: float, itl_s: float) -> float:
    tokens = policy.default_max_tokens if max_tokens is None or max_tokens < 1 else max_tokens
    return max(policy.floor_s, policy.multiplier * expected_seconds(tokens, ttft_s, itl_s))


def stream_idle_s(policy: DeadlinePolicy, ttft_s: float, itl_s: float, buckets: Sequence[float]) -> float | None:
    """The idle bound of a streamed response: the smallest bucket at or above ``max(floor, multiplier x the
    longest expected silence)`` (the first token's wait); None when every bucket is shorter (no idle bound)."""
    need = max(policy.floor_s, policy.multiplier * max(ttft_s, itl_s))
    return next((b for b in sorted(buckets) if b >= need), None)


def timeout_ms(seconds: float) -> str:
    return str(max(1, math.ceil(round(seconds * 1000, 3))))  # round: 155.85 s is 155850 ms, not 155851


class _Mean:
    """A forgetting-weighted mean of windows (sum, count)."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total = self.count = 0.0

    def add(self, total: float, count: float) -> None:
        self.total = FORGETTING * self.total + total
        self.count = FORGETTING * self.count + count

    def value(self) -> float | None:
        return self.total / self.count if self.count > 1e-9 else None


class _Instance:
    __slots__ = ("e2e", "itl", "last", "ttft", "wall", "wall_count", "wall_total")

    def __init__(self) -> None:
        self.last: BackendLoad | None = None
        self.ttft, self.itl, self.e2e, self.wall = _Mean(), _Mean(), _Mean(), _Mean()
        self.wall_total = 0.0  # router-observed wall durations since the last scrape
        self.wall_count = 0


class LatencyLearner:
    """Per instance: recent TTFT and ITL in wall seconds, learned from scrapes and observed completions."""

    def __init__(self, instances: Iterable[str]) -> None:
        self._instances = {name: _Instance() for name in instances}

    def scraped(self, snapshot: Mapping[str, BackendLoad]) -> None:
        for name, load in snapshot.items():
            state = self._instances.get(name)
            if state is None or not load.healthy:
                continue
            last, state.last = state.last, load
            if last is None or load.e2es < last.e2es or load.itls < last.itls or load.ttfts < last.ttfts:
                continue  # first scrape, or the counters restarted (a new process): a new baseline
            state.ttft.add(load.ttft_seconds - last.ttft_seconds, load.ttfts - last.ttfts)
            state.itl.add(load.itl_seconds - last.itl_seconds, load.itls - last.itls)
            state.e2e.add(load.e2e_seconds - last.e2e_seconds, load.e2es - last.e2es)
            if state.wall_count:
                state.wall.add(state.wall_total, state.wall_count)
                state.wall_total, state.wall_count = 0.0, 0

    def served(self, instance: str, wall_s: float) -> None:
        """A request of ``instance`` completed (200, served there) after ``wall_s`` router-observed seconds."""
        state = self._instances.get(instance)
        if state is not None and wall_s >= 0:
            state.wall_total += wall_s
            state.wall_count += 1

    def ratio(self, instance: str) -> float:
        """Wall seconds per engine second (1 until both sides have figures)."""
        state = self._instances.get(instance)
        if state is None:
            return 1.0
        wall, engine = state.wall.value(), state.e2e.value()
        if wall is None or engine is None or engine <= 0:
            return 1.0
        return min(MAX_RATIO, max(MIN_RATIO, wall / engine))

    def wall_latencies(self, instance: str) -> tuple[float, float]:
        """``(TTFT, ITL)`` in wall seconds (the priors where the instance reported nothing yet)."""
        state = self._instances.get(instance)
        if state is None:
            return PRIOR_TTFT_S, PRIOR_ITL_S
        ratio = self.ratio(instance)
        ttft, itl = state.ttft.value(), state.itl.value()
        return (PRIOR_TTFT_S if ttft is None else ttft * ratio, PRIOR_ITL_S if itl is None else itl * ratio)


# Memoised header answers at most (distinct instance x max_tokens x stream combinations between two scrapes).
MEMO_LIMIT = 4096


class Deadlines:
    """The policy and the learner together: the headers of one forwarded request."""

    def __init__(self, policy: DeadlinePolicy, instances: Iterable[str], stream_buckets: Sequence[float],
                 timeout_header: str, idle_header: str) -> None:
        self.policy = policy
        self.learner = LatencyLearner(instances)
        self.stream_buckets = tuple(stream_buckets)
        self.timeout_header = timeout_header
        self.idle_header = idle_header
        self._memo: dict[tuple[str, int | None, bool], list[tuple[str, str]]] = {}

    def headers(self, instance: str, max_tokens: int | None, stream: bool) -> list[tuple[str, str]]:
        """Memoised per (instance, max_tokens, stream) until the next scrape changes what the learner knows (the
        hot path asks this for every request; the answer changes every poll interval at most)."""
        if not self.policy.enabled:
            return []
        key = (instance, max_tokens, stream)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = self._headers(instance, max_tokens, stream)
        return found

    def forget(self, snapshot: object = None) -> None:
        """Drop the memoised answers (called after each scrape, once the learner has taken it in)."""
        self._memo.clear()

    def _headers(self, instance: str, max_tokens: int | None, stream: bool) -> list[tuple[str, str]]:
        ttft, itl = self.learner.wall_latencies(instance)
        found = [(self.timeout_header, timeout_ms(per_try_timeout_s(self.policy, max_tokens, ttft, itl)))]
        if stream:
            idle = stream_idle_s(self.policy, ttft, itl, self.stream_buckets)
            if idle is not None:
                found.append((self.idle_header, f"{idle:g}"))
        return found

    @classmethod
    def from_settings(cls, floor_s: float, multiplier: float, default_max_tokens: int,
                      instances: Iterable[str]) -> Deadlines:
        return cls(DeadlinePolicy(floor_s, multiplier, default_max_tokens), instances, STREAM_IDLE_BUCKETS_S,
                   PER_TRY_TIMEOUT_HEADER, STREAM_IDLE_HEADER)
