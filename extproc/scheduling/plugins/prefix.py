"""``prefix`` scorer: the share of the prompt's leading blocks each instance holds in its prefix cache.

From an external KV index when the request carries its answer (``cached_fraction``, e.g. LMCache's controller),
else from the router's own approximate index (:class:`~extproc.datastore.prefix_index.PrefixIndex`, which the
director teaches every routed prompt).
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.datastore.prefix_index import PrefixIndex
from extproc.scheduling.framework import SchedulingRequest


class PrefixScorer:
    name = "prefix"

    def __init__(self, index: PrefixIndex | None) -> None:
        self.index = index

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        external = request.cached_fraction
        if external:
            return {i: external.get(i, 0.0) for i in candidates}
        blocks = request.prompt_blocks
        if self.index is None or not blocks:
            return {}
        counts = self.index.match(blocks)
        return {i: counts.get(i, 0) / len(blocks) for i in candidates}
