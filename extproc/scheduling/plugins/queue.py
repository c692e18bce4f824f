"""``queue`` scorer: 1 - load / the highest load among the candidates (an idle fleet scores 1 everywhere)."""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


class QueueScorer:
    name = "queue"

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        loads = {i: endpoints.load(i) for i in candidates}
        top = max(loads.values(), default=0.0) or 1.0
        return {i: 1.0 - load / top for i, load in loads.items()}
