"""Per-instance prefill costs learned online from the instances' own metrics (pure; fed by each scrape).

Between two scrapes an instance reports (cumulative counters, ``datastore/poller.py``) how many requests
finished their prefill (``vllm:request_prefill_time_seconds_count``), how long those prefills took in total
(``_sum``), how many prompt tokens started (``vllm:prompt_tokens_total``) and how many of them the prefix cache
served (``vllm:prefix_cache_hits_total``). Each window is one observation of

    prefill seconds = overhead x requests + per_token x uncached prompt tokens

and :class:`PrefillFit` solves it by least squares with exponential forgetting (recent windows weigh most, so
the figures follow the instance's load: a prefill shares its steps with the running decodes, and the measured
per-token cost includes that interference). Until an instance has reported enough, the fleet's pooled figures
stand in, and before any data the cost model works in token units (per_token 1, overhead 0: queued plus
uncached tokens), which orders identical instances exactly as seconds would.

The seconds are the instance's own (wall seconds for vLLM; simulated seconds for the simulator): only ratios
between instances and between the terms matter to the scheduler, never a comparison with the router's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extproc.datastore.poller import BackendLoad

# Each new window multiplies the weight of the older ones by this (about the last 20 windows count).
FORGETTING = 0.95
# Windows with fewer finished prefills than this carry too little signal (one request's noise).
MIN_REQUESTS_PER_WINDOW = 1.0
# Ridge term, relative to each diagonal entry: keeps the 2x2 system solvable when every window has the same ratio of
# uncached tokens to requests (then the fit degrades to the pooled per-token average).
RIDGE = 1e-6


class PrefillFit:
    """Weighted least squares of ``seconds = overhead * requests + per_token * uncached`` over windows."""

    __slots__ = ("srr", "sru", "sry", "suu", "suy", "windows")

    def __init__(self) -> None:
        self.srr = self.sru = self.suu = self.sry = self.suy = 0.0
        self.windows = 0

    def add(self, requests: float, uncached: float, seconds: float) -> None:
        f = FORGETTING
        self.srr = f * self.srr + requests * requests
        self.sru = f * self.sru + requests * uncached
        self.suu = f * self.suu + uncached * uncached
        self.sry = f * self.sry + requests * seconds
        self.suy = f * self.suy + uncached * seconds
        self.windows += 1

    def solve(self) -> tuple[float, float] | None:
        """``(overhead_s, per_token_s)``, both >= 0; None before any window."""
        if self.windows == 0 or self.suu <= 0.0:
            return None
        a11, a12, a22 = self.srr * (1.0 + RIDGE), self.sru, self.suu * (1.0 + RIDGE)
        det = a11 * a22 - a12 * a12
        if det > 0.0:
            overhead = (a22 * self.sry - a12 * self.suy) / det
            per_token = (a11 * self.suy - a12 * self.sry) / det
            if overhead >= 0.0 and per_token > 0.0:
                return overhead, per_token
        # Not identifiable or a negative term: all of it per token (a through-origin fit).
        per_token = self.suy / self.suu
        return (0.0, per_token) if per_token > 0.0 else None


@dataclass(frozen=True, slots=True)
class PrefillCost:
    overhead_s: float  # per request (tokenization, scheduling, the first step's fixed part)
    per_token_s: float  # per uncached prompt token, under the instance's recent load
    mean_uncached: float  # uncached prompt tokens per request (sizes the queues of other replicas' requests)
    learned: bool  # False: the token-unit defaults (no data yet)


DEFAULT_COST = PrefillCost(0.0, 1.0, 0.0, False)


class CostModel:
    """The learned :class:`PrefillCost` of every instance, updated from each published snapshot."""

    def __init__(self, instances: tuple[str, ...], per_instance: bool = False) -> None:
        # One fleet-wide fit by default: instances of one model on one kind of GPU cost the same per token, and
        # per-instance fits mostly measure which instance happened to be busy (a prefill's measured time
        # includes the steps it shared), which would push work away from exactly the warm instances.
        self.per_instance = per_instance
        self._fits = {i: PrefillFit() for i in instances}
        self._pooled = PrefillFit()
        self._previous: dict[str, BackendLoad] = {}
        self._uncached = dict.fromkeys(instances, 0.0)  # exponentially weighted sums for the mean
        self._requests = dict.fromkeys(instances, 0.0)
        self.costs: dict[str, PrefillCost] = dict.fromkeys(instances, DEFAULT_COST)

    def add(self, instance: str) -> None:
        """An instance joined the fleet: it starts from the fleet-wide fit (or the default) until it reports."""
        if instance in self._fits:
            return
        self._fits[instance] = PrefillFit()
        self._uncached[instance] = 0.0
        self._requests[instance] = 0.0
        pooled = self._pooled.solve()
        self.costs[instance] = PrefillCost(pooled[0], pooled[1], 0.0, True) if pooled is not None else DEFAULT_COST

    def observe(self, snapshot: Mapping[str, BackendLoad]) -> None:
        changed = False
        for instance, load in snapshot.items():
            fit = self._fits.get(instance)
            if fit is None or not load.healthy:
                continue
            previous = self._previous.get(instance)
            self._previous[instance] = load
            if previous is None:
                continue
            requests = load.prefills - previous.prefills
            seconds = load.prefill_seconds - previous.prefill_seconds
            uncached = (load.prompt_tokens - previous.prompt_tokens) - (load.prefix_hits - previous.prefix_hits)
            if requests < MIN_REQUESTS_PER_WINDOW or seconds < 0.0 or uncached < 0.0:
                continue  # idle, or counters reset (a restarted instance)
            fit.add(requests, uncached, seconds)
            self._pooled.add(requests, uncached, seconds)
            self._uncached[instance] = FORGETTING * self._uncached[instance] + uncached
            self._requests[instance] = FORGETTING * self._requests[instance] + requests
            changed = True
        if changed:
            self._refresh()

    def _refresh(self) -> None:
        pooled = self._pooled.solve()
        for instance, fit in self._fits.items():
            solved = fit.solve() if self.per_instance and fit.windows >= 3 else None
            solved = solved or pooled
            if solved is None:
                continue
            requests = self._requests[instance]
            mean = self._uncached[instance] / requests if requests > 0 else 0.0
            self.costs[instance] = PrefillCost(solved[0], solved[1], mean, True)
