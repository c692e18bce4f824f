"""``kv-room`` filter: drops instances whose KV cache is full while requests wait there, unless all are.

Full = ``vllm:kv_cache_usage_perc >= 0.95`` with ``vllm:num_requests_waiting > 0`` (``endpoints.full``): a new
request there would queue behind evictions and preemptions while another instance has room.
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


class KVRoomFilter:
    name = "kv-room"

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        return [i for i in candidates if not endpoints.full(i)] or candidates
