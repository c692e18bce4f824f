"""``lora-affinity`` filter (and scorer): a request for a LoRA adapter goes where the adapter is already active, or
where a free adapter slot can take it, never by choice to an instance whose slots are all held by other adapters.

What an instance reports (vLLM's ``vllm:lora_requests_info`` gauge, vllm/v1/metrics/loggers.py): the adapters
with running requests, those with waiting requests, and ``max_lora``, the adapters one batch can hold. An
adapter that is not active must be loaded first (vLLM's worker loads it into a GPU slot, evicting an idle one),
and a request whose adapter finds every slot busy waits until one frees. So, among the candidates that serve the
adapter (the ``model`` filter ran before):

1. **active**: the adapter is running or waiting there — no load;
2. **room**: fewer than ``max_lora`` adapters active — a load (``load_cost``, in requests of load) but no wait;
3. **full**: every slot held by other adapters — the request would wait for one.

Tier 1 is kept unless its least loaded instance is more than ``load_cost`` heavier than tier 2's (the cost of
loading the adapter elsewhere is then worth paying); else tier 2; tier 3 only when nothing else serves the
adapter. Requests for a base model, or on a fleet that reports no LoRA, keep every candidate.
Modelled on the Gateway API Inference Extension's LoRA affinity filter (``pkg/epp/scheduling``).
"""

from __future__ import annotations

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest

# An adapter load, in requests of load it is worth: a few hundred milliseconds to read and copy the weights.
DEFAULT_LOAD_COST = 4.0


class LoRAAffinityFilter:
    name = "lora-affinity"

    def __init__(self, load_cost: float = DEFAULT_LOAD_COST) -> None:
        self.load_cost = load_cost

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        adapter = request.model
        if adapter is None or len(candidates) < 2:
            return candidates
        active, room, full = self._tiers(adapter, endpoints, candidates)
        if not active and not room and not full:
            return candidates  # not an adapter anywhere (a base model): nothing to prefer
        if active and room:
            lightest_room = min(endpoints.load(i) for i in room)
            if min(endpoints.load(i) for i in active) - lightest_room > self.load_cost:
                return room
            return active
        return active or room or full

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        """As a scorer (a ``--scheduling-config`` may weigh it against others): 1 where the adapter is active,
        0.5 where a slot is free (one load), 0 where every slot is held by other adapters; base models: 0."""
        adapter = request.model
        if adapter is None:
            return {}
        active, room, _ = self._tiers(adapter, endpoints, candidates)
        return {**dict.fromkeys(room, 0.5), **dict.fromkeys(active, 1.0)}

    @staticmethod
    def _tiers(adapter: str, endpoints: Endpoints, candidates: list[str]) -> tuple[list[str], list[str], list[str]]:
        """``(active, room, full)`` for ``adapter`` (candidates that do not serve it are in none)."""
        active: list[str] = []
        room: list[str] = []
        full: list[str] = []
        for instance in candidates:
            live = endpoints.live(instance)
            if adapter not in live.adapters or not live.max_lora:
                if adapter in live.adapters or live.models is None:
                    room.append(instance)  # serves it, slots not reported: no reason to avoid it
                continue
            if adapter in live.lora_running or adapter in live.lora_waiting:
                active.append(instance)
            elif len(live.lora_running | live.lora_waiting) < live.max_lora:
                room.append(instance)
            else:
                full.append(instance)
        return active, room, full
