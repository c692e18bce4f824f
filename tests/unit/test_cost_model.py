"""The cost model: per-instance prefill costs learned from metrics, the expected-TTFT scorer (table-driven), and
the default profiles through the director (queues spread siblings, a cached prefix keeps a chain)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from extproc.config import Backend, Settings
from extproc.datastore.costs import DEFAULT_COST, CostModel, PrefillFit
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.poller import BackendLoad
from extproc.datastore.prefix_index import block_hashes
from extproc.metadata import WorkflowMetadata
from extproc.reporting import NullReporter
from extproc.scheduling.framework import SchedulingRequest
from extproc.scheduling.plugins.cost_model import CostModelScorer, expected_ttft
from extproc.server import build_router

ABC = ["a", "b", "c"]


def test_prefill_fit_recovers_overhead_and_per_token_cost() -> None:
    fit = PrefillFit()
    for requests, uncached in ((2, 1000), (1, 4000), (3, 600), (2, 8000), (1, 100)):
        fit.add(requests, uncached, 0.03 * requests + 0.00025 * uncached)
    overhead, per_token = fit.solve()  # type: ignore[misc]
    assert overhead == pytest.approx(0.03, rel=1e-3)
    assert per_token == pytest.approx(0.00025, rel=1e-3)


def test_prefill_fit_without_variety_falls_back_to_a_per_token_average() -> None:
    fit = PrefillFit()
    for _ in range(5):
        fit.add(1, 1000, 0.28)  # every window alike: overhead and per-token cost cannot be told apart
    overhead, per_token = fit.solve()  # type: ignore[misc]
    assert overhead >= 0.0 and overhead + 1000 * per_token == pytest.approx(0.28, rel=0.01)
    assert PrefillFit().solve() is None


def _load(prefills: float, seconds: float, prompt: float, hits: float, **kw: float) -> BackendLoad:
    return BackendLoad(prefills=prefills, prefill_seconds=seconds, prompt_tokens=prompt, prefix_hits=hits, **kw)


def test_cost_model_learns_from_scrape_deltas_and_ignores_resets() -> None:
    model = CostModel(("a", "b"))
    assert model.costs["a"] is DEFAULT_COST
    scrapes = [(0, 0.0, 0, 0), (2, 0.56, 3000, 1000), (3, 1.09, 5000, 1000), (5, 1.4, 6000, 1800),
               (6, 2.4, 10000, 1800)]
    for prefills, seconds, prompt, hits in scrapes:
        model.observe({"a": _load(prefills, seconds, prompt, hits)})
    cost = model.costs["a"]
    assert cost.learned and cost.per_token_s > 0.0
    assert model.costs["b"].learned  # the pooled fit stands in until b reports
    model.observe({"a": _load(1, 0.1, 100, 0)})  # counters went down: restarted, no window
    assert model.costs["a"] == cost


@dataclass
class Case:
    name: str
    request: SchedulingRequest
    queued: dict[str, float] = field(default_factory=dict)
    loads: dict[str, BackendLoad] = field(default_factory=dict)
    best: str = ""


def _endpoints(case: Case) -> Endpoints:
    e = Endpoints(ABC)
    e.publish(case.loads)
    for instance, tokens in case.queued.items():
        e.acquire(instance, tokens)
    return e


CASES = [
    Case("cached prefix wins", SchedulingRequest(prompt_tokens=4000, cached_tokens={"b": 3500}), best="b"),
    Case("queue outweighs the cache", SchedulingRequest(prompt_tokens=4000, cached_tokens={"b": 3500}),
         queued={"b": 9000, "a": 4000, "c": 4500}, best="a"),
    Case("cache outweighs a short queue", SchedulingRequest(prompt_tokens=4000, cached_tokens={"b": 3500}),
         queued={"b": 2000}, best="b"),
    Case("other replicas' waiting requests count", SchedulingRequest(prompt_tokens=100),
         loads={"a": BackendLoad(waiting=3), "b": BackendLoad(running=2)}, best="c"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cost_model_scorer(case: Case) -> None:
    e = _endpoints(case)
    scores = CostModelScorer().score(case.request, e, list(ABC))
    assert max(scores, key=lambda i: scores[i]) == case.best
    assert scores[case.best] == 1.0 and all(0.0 < v <= 1.0 for v in scores.values())


@pytest.mark.parametrize("per_instance", [False, True])
def test_expected_ttft_uses_the_learned_seconds(per_instance: bool) -> None:
    e = Endpoints(ABC)
    e.costs.per_instance = per_instance
    for prefills, seconds, prompt in ((0, 0.0, 0), (1, 0.28, 1000), (3, 0.84, 3000), (4, 2.03, 7000),
                                      (6, 2.59, 9000)):
        e.publish({i: _load(prefills, seconds * (2 if i == "a" else 1), prompt, 0) for i in ABC})
    request = SchedulingRequest(prompt_tokens=2000)
    a, b = expected_ttft(request, e, "a"), expected_ttft(request, e, "b")
    if per_instance:
        assert a > 1.5 * b  # a is twice as slow
    else:
        assert a == b > 0.0  # one fleet-wide fit (the default): an instance's busy spell is not its speed


def _router():  # type: ignore[no-untyped-def]
    settings = Settings(backends=tuple(Backend(i) for i in ABC), scheduling_config="builtin:cost-model")
    return build_router(settings, NullReporter())


def test_a_chain_stays_with_its_cached_context_and_a_fan_out_spreads() -> None:
    router = _router()
    director = router.director
    context = "shared workflow context, the documents every agent reads. " * 200  # ~11 KB, ~2.9k tokens
    tokens = len(context) // 4
    first = director.decide(WorkflowMetadata("wf", "planner"), 0.0, block_hashes(context), prompt_tokens=tokens)
    router.inflight.start(first.instance, 0.0, first.prefill_tokens)
    # the planner's response arrives: its prefill is done; the next agent's prompt extends the context
    router.endpoints.prefill_done(first.instance, first.prefill_tokens)
    longer = context + "planner output. " * 40
    chained = director.decide(WorkflowMetadata("wf", "analyst"), 1.0, block_hashes(longer),
                              prompt_tokens=len(longer) // 4)
    assert chained.instance == first.instance and chained.prefill_tokens < 400
    # Five siblings at once, each with the context + its own task: the first ones find it cached at home; as
    # their prefill queues there, later siblings are cheaper elsewhere.
    placed = []
    for k in range(5):
        prompt = longer + f"sibling task {k}: " + "details " * 1500
        sibling = director.decide(WorkflowMetadata("wf", f"worker-{k}", parent_request_id="p1"), 2.0,
                                  block_hashes(prompt), prompt_tokens=len(prompt) // 4)
        router.endpoints.acquire(sibling.instance, sibling.prefill_tokens)
        placed.append(sibling.instance)
    assert placed[0] == first.instance
    assert len(set(placed)) > 1


def test_requests_without_metadata_use_the_same_model() -> None:
    router = _router()
    prompt = "a long system prompt shared by many requests. " * 100
    first = router.director.decide(None, 0.0, block_hashes(prompt), prompt_tokens=len(prompt) // 4)
    again = router.director.decide(None, 0.1, block_hashes(prompt), prompt_tokens=len(prompt) // 4)
    blocks = len(block_hashes(prompt))
    assert again.instance == first.instance and again.prefix_blocks == blocks
    assert again.prefill_tokens == len(prompt) // 4 - blocks * 16  # only the partial last block


def test_the_index_forgets_what_the_instance_kv_cannot_hold() -> None:
    router = _router()
    index = router.prefix_index
    assert index is not None
    router.endpoints.publish({"a": BackendLoad(kv_capacity_tokens=64 * 16)})  # 64 blocks of KV
    blocks = block_hashes("x" * 64 * 100)  # 100 blocks
    index.learn("a", blocks)
    assert index.size("a") == 64
    assert index.match(blocks)["a"] == 64  # the leading blocks stay (vLLM frees a request's blocks tail first)
    index.occupy("a", 40)  # a response's generated tokens push older blocks out
    assert index.match(blocks)["a"] == 24 and index.size("a") == 64


class FakePrecise:
    """What vLLM's KV events say each instance holds (None: that instance has no live event stream)."""

    def __init__(self, tokens: int, held: dict[str, int | None]) -> None:
        self.tokens, self.held = tokens, held

    async def cached_tokens(self, prompt_text: str, messages: object) -> tuple[int, dict[str, int | None]]:
        return self.tokens, self.held


async def test_kv_events_override_the_estimate_and_move_the_request_to_the_real_holder() -> None:
    from extproc.metadata import RoutingInput
    from extproc.requestcontrol.types import Request

    router = _router()
    prompt = "context the router once sent to vllm-a. " * 120
    router.prefix_index.learn("a", block_hashes(prompt))  # type: ignore[union-attr]  # the estimate: a holds it
    # ... but a evicted it and c holds it (another replica routed it there); b has no event stream.
    router.director.precise = FakePrecise(1200, {"a": 0, "b": None, "c": 1184})
    request = Request("/v1/completions", "r1", None, None)
    plan = await router.director.route(request, RoutingInput(None, prompt_text=prompt), 0.0)
    assert plan.instance == "c"
