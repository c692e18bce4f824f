"""``least-load`` filter: keeps only the candidates with the lowest load (``endpoints.load``): ties go on to the
scorers and the picker."""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


class LeastLoadFilter:
    name = "least-load"

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        if len(candidates) < 2:
            return candidates
        loads = [(i, endpoints.load(i)) for i in candidates]
        low = min(load for _, load in loads)
        return [i for i, load in loads if load == low]
