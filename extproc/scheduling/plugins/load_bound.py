"""``load-bound`` filter: keeps the instances whose load is within a slack of the least-loaded candidate.

    load(instance) - min load <= IMBALANCE_UNIT * priority * p / (1 - p)

with p = ``--batching-preference`` (like vllm-router's cache_aware imbalance threshold, but set by p). With the
unit of 4 requests: p = 0.8 (default) tolerates an imbalance of 16 requests (a queue of 8, as waiting requests
count double); p = 0.5 tolerates 4; p = 1.0 any; p = 0.0 none. An absolute imbalance, not a multiple of the
mean: with 3 instances the busiest one is at most 3x the mean, so a "5x the mean" bound would never trigger.
``workflow_priority`` scales the slack. The prefix profile runs it first, so a full prefix match cannot keep
feeding a swamped instance; the workflow-affinity filter applies the same bound to a workflow's instance.
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest

IMBALANCE_UNIT = 4.0  # requests of imbalance tolerated per unit of p / (1 - p)


def imbalance_slack(batching_preference: float, priority: float = 1.0) -> float:
    if batching_preference >= 1.0:
        return float("inf")
    return IMBALANCE_UNIT * priority * batching_preference / (1.0 - batching_preference)


class LoadBoundFilter:
    name = "load-bound"

    def __init__(self, batching_preference: float) -> None:
        self.batching_preference = batching_preference

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        slack = imbalance_slack(self.batching_preference)
        if slack == float("inf"):
            return candidates
        loads = [(i, endpoints.load(i)) for i in candidates]
        least = min(load for _, load in loads)
        return [i for i, load in loads if load - least <= slack]
