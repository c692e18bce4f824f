"""``workflow-affinity``: a workflow's requests stay on its instance while that instance is within the load bound.

As a **filter** it keeps only the workflow's instance (``request.home``, given only while that instance is
healthy) when ``load(home) - least load <= slack(p, workflow_priority)`` (see ``load_bound``); beyond the slack it
keeps every candidate and the profile's other plugins choose where the workflow **migrates** (its cache there is
cold once, then warm again, whereas spilling single requests would make every spilled request cold). With
p = 0 it never pins (pure load balancing).

The pin holds while the prompt continues the workflow's last one on the home (``continues_on_home``: a
conversation or tool loop appending to what the home still holds; also when that is unknown, e.g. another
replica routed the last prompt), or while the home holds something of *this* prompt that no other candidate
holds (``request.cached_tokens``: KV events or the prefix index). Otherwise (a shared role prompt first, the
workflow's own context after it: every instance has the role prompt, none has more) staying saves no prefill and
only concentrates the workflow's load, so the filter keeps the least-loaded of the candidates holding at least
what the home holds, rotating among equals. With p = 1.0, without a cache view (no prefix routing) or with
``always_pin: true`` (the rule before the cache lead), the pin is the rule.

Where the home holds a lead (or the prompt continues there) staying saves that prefill, but the request also
waits behind what is queued there: a fan-out's siblings arriving together all find the parent's context on the
home. With ``weigh_queue: true`` the pin holds only while the home's expected time to first token
(``cost_model.expected_ttft``: the prefill queued ahead + this prompt's uncached tokens + running sequences, per
learned token cost) is no longer than the best other candidate's, the uncached tokens counted twice
(``MOVE_WORK_WEIGHT``: a prefill redone elsewhere also takes fleet capacity from the requests after it);
otherwise the request goes to that best candidate. Off by default: in two runs of six high-load cells it was
neutral against the lead alone (benchmarks/compare_routers/queue-weighed.yaml).

As a **scorer** it gives the workflow's instance 1 and the others 0: among equally good candidates the
workflow's own instance wins.
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest
from extproc.scheduling.plugins.cost_model import expected_ttft
from extproc.scheduling.plugins.least_load import LeastLoadFilter
from extproc.scheduling.plugins.load_bound import imbalance_slack

_LEAST_LOAD = LeastLoadFilter()
# Uncached tokens count (1 + this) times when staying is weighed against moving (cost_model's work_weight).
MOVE_WORK_WEIGHT = 1.0


class WorkflowAffinity:
    name = "workflow-affinity"

    def __init__(self, batching_preference: float, always_pin: bool = False, weigh_queue: bool = False) -> None:
        self.batching_preference = batching_preference
        self.always_pin = always_pin
        self.weigh_queue = weigh_queue and not always_pin
        self.needs_prompt = not always_pin  # the cache lead is measured on this prompt's blocks
        self._rotation = 0

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        home = request.home
        if home is None or self.batching_preference <= 0.0 or home not in candidates:
            return candidates
        slack = imbalance_slack(self.batching_preference, request.priority)
        if slack == float("inf"):  # p = 1.0: a workflow never leaves a healthy instance
            return [home]
        cached = request.cached_tokens
        if cached is not None and not self.always_pin and request.continues_on_home is False:
            home_cached = cached.get(home, 0)
            if any(cached.get(other, 0) >= home_cached for other in candidates if other != home):
                holders = [i for i in candidates if cached.get(i, 0) >= home_cached]
                return self._rotate(_LEAST_LOAD.filter(request, endpoints, holders))
        if (self.weigh_queue and cached is not None and request.continues_on_home is not None
                and request.prompt_tokens and len(candidates) > 1):
            costs = {i: expected_ttft(request, endpoints, i, MOVE_WORK_WEIGHT) for i in candidates}
            best = min(candidates, key=costs.__getitem__)
            if costs[best] < costs[home]:
                return [best]  # the queue on the home costs more than its cache saves
        load = endpoints.load
        home_load = load(home)
        for other in candidates:
            if home_load - load(other) > slack:
                return candidates  # some instance is lighter by more than the slack: the workflow may move
        return [home]

    def _rotate(self, least: list[str]) -> list[str]:
        """One of the least-loaded holders, in turn: with the home preferred on ties (the scorer) or a hash of the
        workflow, an idle fleet would keep the workflow where it was (at low load every instance ties), so the
        workflows' placements at arrival would decide all their load."""
        self._rotation += 1
        return [least[self._rotation % len(least)]]

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        home = request.home
        return {home: 1.0} if home is not None else {}
