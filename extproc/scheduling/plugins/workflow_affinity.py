"""``workflow-affinity``: a workflow's requests stay on its instance while that instance is within the load bound.

As a **filter** it keeps only the workflow's instance (``request.home``, given only while that instance is
healthy) when ``load(home) - least load <= slack(p, workflow_priority)`` (see ``load_bound``); beyond the slack it
keeps every candidate and the profile's other plugins choose where the workflow **migrates** (its cache there is
cold once, then warm again, whereas spilling single requests would make every spilled request cold). With
p = 0 it never pins (pure load balancing).

As a **scorer** it gives the workflow's instance 1 and the others 0: among equally good candidates the
workflow's own instance wins.
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest
from extproc.scheduling.plugins.load_bound import imbalance_slack


class WorkflowAffinity:
    name = "workflow-affinity"

    def __init__(self, batching_preference: float) -> None:
        self.batching_preference = batching_preference

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        home = request.home
        if home is None or self.batching_preference <= 0.0 or home not in candidates:
            return candidates
        slack = imbalance_slack(self.batching_preference, request.priority)
        if slack == float("inf"):
            return [home]
        load = endpoints.load
        home_load = load(home)
        for other in candidates:
            if home_load - load(other) > slack:
                return candidates  # some instance is lighter by more than the slack: the workflow may move
        return [home]

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        home = request.home
        return {home: 1.0} if home is not None else {}
