"""``kv-headroom`` scorer: 1 - the instance's KV-cache usage (``vllm:kv_cache_usage_perc``, last scrape)."""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


class KVHeadroomScorer:
    name = "kv-headroom"

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        return {i: 1.0 - endpoints.live(i).kv_usage for i in candidates}
