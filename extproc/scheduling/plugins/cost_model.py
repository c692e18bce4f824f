"""``cost-model`` scorer: the expected time to first token of this request on each candidate.

    expected TTFT(i) = overhead(i) + per_token(i) x (queued prefill tokens ahead on i + uncached tokens of this
                                                     prompt on i + running sequences on i)

- **queued prefill ahead**: uncached prompt tokens this server routed to i whose first response bytes have not
  come back (``endpoints.queued_prefill``), or, when other replicas feed i too, its scraped waiting requests x
  its mean uncached prompt: whichever is larger;
- **uncached tokens**: prompt tokens - the tokens of this prompt i holds (``request.cached_tokens``: from vLLM's
  KV events where configured, else the router's prefix index);
- **running sequences**: every step a prefill shares carries one token per decoding sequence (decode
  interference beyond what the learned per-token cost already includes);
- **overhead** and **per_token**: learned online from i's own prefill-time and prompt-token metrics
  (``datastore/costs.py``); token units until an instance has reported.

Parameter ``work_weight`` (default 0) counts the uncached tokens (1 + work_weight) times: the prefill also
takes fleet capacity from the requests that arrive after this one (at utilisation rho an M/M/1 queue has about
rho / (1 - rho) of them), so a higher weight prefers cache hits over short queues.

Score = lowest expected TTFT among the candidates / this one's, in (0, 1]: the cheapest scores 1.
Like Dynamo's KV router (uncached prefill against load) and LMetric, in seconds rather than blocks, so that
instances of different speeds compare correctly.
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


def expected_ttft(request: SchedulingRequest, endpoints: Endpoints, instance: str, work_weight: float = 0.0) -> float:
    cost = endpoints.costs.costs[instance]
    live = endpoints.live(instance)
    # Before an instance reports its mean uncached prompt, a waiting request is taken to be like this one.
    mean_uncached = cost.mean_uncached if cost.learned else request.prompt_tokens
    queued = max(endpoints.queued_prefill[instance], live.waiting * mean_uncached)
    cached = request.cached_tokens.get(instance, 0) if request.cached_tokens is not None else 0
    uncached = max(0.0, request.prompt_tokens - cached)
    running = max(float(endpoints.outstanding[instance]), live.running)
    return cost.overhead_s + cost.per_token_s * (queued + (1.0 + work_weight) * uncached + running)


class CostModelScorer:
    name = "cost-model"
    needs_prompt = True  # every request's uncached tokens are weighed

    def __init__(self, work_weight: float = 0.0) -> None:
        self.work_weight = work_weight

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        costs = {i: expected_ttft(request, endpoints, i, self.work_weight) for i in candidates}
        best = min(costs.values(), default=0.0)
        if best <= 0.0:  # nothing queued, nothing to compute anywhere: all equal
            return {i: 1.0 if cost <= 0.0 else 0.0 for i, cost in costs.items()}
        return {i: best / cost for i, cost in costs.items()}
