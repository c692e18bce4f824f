"""Each scheduling plugin on its own, table-driven: endpoint state in, kept candidates / scores / pick out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from extproc.datastore.endpoints import Endpoints
from extproc.datastore.poller import BackendLoad
from extproc.datastore.prefix_index import PrefixIndex, block_hashes
from extproc.scheduling.framework import SchedulingRequest
from extproc.scheduling.plugins.kv_headroom import KVHeadroomScorer
from extproc.scheduling.plugins.kv_room import KVRoomFilter
from extproc.scheduling.plugins.least_load import LeastLoadFilter
from extproc.scheduling.plugins.load_bound import LoadBoundFilter, imbalance_slack
from extproc.scheduling.plugins.max_score import MaxScorePicker, rendezvous_weight
from extproc.scheduling.plugins.prefix import PrefixScorer
from extproc.scheduling.plugins.queue import QueueScorer
from extproc.scheduling.plugins.workflow_affinity import WorkflowAffinity

ABC = ["a", "b", "c"]


def endpoints(loads: Mapping[str, BackendLoad] | None = None, outstanding: Mapping[str, int] | None = None
              ) -> Endpoints:
    e = Endpoints(ABC)
    e.publish(dict(loads or {}))
    for instance, count in (outstanding or {}).items():
        for _ in range(count):
            e.acquire(instance)
    return e


@dataclass
class Case:
    name: str
    request: SchedulingRequest
    loads: dict[str, BackendLoad] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=lambda: list(ABC))
    expected: object = None


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


AFFINITY_FILTER = [
    Case("no home keeps all", SchedulingRequest("w"), expected=ABC),
    Case("home within slack", SchedulingRequest("w", "b"), outstanding={"b": 16}, expected=["b"]),
    Case("home past slack", SchedulingRequest("w", "b"), outstanding={"b": 17}, expected=ABC),
    Case("waiting counts double", SchedulingRequest("w", "b"), loads={"b": BackendLoad(running=8, waiting=5)},
         expected=ABC),
    Case("priority widens the slack", SchedulingRequest("w", "b", priority=2.0), outstanding={"b": 30},
         expected=["b"]),
    Case("home not a candidate (down)", SchedulingRequest("w", "b"), candidates=["a", "c"], expected=["a", "c"]),
]


@pytest.mark.parametrize("case", AFFINITY_FILTER, ids=_ids(AFFINITY_FILTER))
def test_workflow_affinity_filter(case: Case) -> None:
    plugin = WorkflowAffinity(batching_preference=0.8)  # slack 16 requests at priority 1
    kept = plugin.filter(case.request, endpoints(case.loads, case.outstanding), case.candidates)
    assert kept == case.expected


# The pin holds while the home holds something of this prompt no other candidate holds (``cached_tokens``).
CACHE_LEAD = [
    Case("home leads: pinned", SchedulingRequest("w", "b", cached_tokens={"a": 64, "b": 512, "c": 64},
                                                continues_on_home=False),
         expected=["b"]),
    Case("another holds as much: the least loaded of the holders", SchedulingRequest(
        "w", "b", cached_tokens={"a": 64, "b": 64, "c": 0}, continues_on_home=False),
         outstanding={"b": 2, "a": 1}, expected=["a"]),
    Case("another holds more: it is kept, the lesser are not", SchedulingRequest(
        "w", "b", cached_tokens={"a": 512, "b": 64}, continues_on_home=False), outstanding={"a": 3}, expected=["b"]),
    Case("nobody holds any: the least loaded", SchedulingRequest("w", "b", cached_tokens={}, continues_on_home=False),
         outstanding={"a": 1, "b": 1}, expected=["c"]),
    Case("no cache view: the rule", SchedulingRequest("w", "b"), outstanding={"b": 3}, expected=["b"]),
    Case("unknown whether it continues (another replica routed the last): pinned", SchedulingRequest(
        "w", "b", cached_tokens={"a": 64, "b": 64}), outstanding={"b": 3}, expected=["b"]),
    Case("continues its last prompt on the home: pinned though others hold as much", SchedulingRequest(
        "w", "b", cached_tokens={"a": 64, "b": 64}, continues_on_home=True), outstanding={"b": 3}, expected=["b"]),
    Case("lead but past the slack: all", SchedulingRequest("w", "b", cached_tokens={"b": 512}, continues_on_home=False),
         outstanding={"b": 17}, expected=ABC),
]


@pytest.mark.parametrize("case", CACHE_LEAD, ids=_ids(CACHE_LEAD))
def test_workflow_affinity_pins_only_a_cache_lead(case: Case) -> None:
    kept = WorkflowAffinity(0.8).filter(case.request, endpoints(case.loads, case.outstanding), case.candidates)
    assert kept == case.expected


# A lead (or a continuation) pins only while the home's expected TTFT, its queued prefill included and uncached
# tokens counted twice, is no longer than the best other candidate's. A 600-token prompt; "b" holds 512 of it.
def _leading(continues: bool | None = False, others: int = 64) -> SchedulingRequest:
    return SchedulingRequest("w", "b", cached_tokens={"a": others, "b": 512, "c": others}, prompt_tokens=600,
                             continues_on_home=continues)


QUEUE_WEIGHED = [
    # (name, request, prefill tokens queued on the home, weigh_queue, expected)
    ("nothing queued: the lead pins", _leading(), 0, True, ["b"]),
    ("a short queue costs less than redoing the prefill elsewhere: pinned", _leading(), 600, True, ["b"]),
    ("a queue longer than twice the lead: the best other", _leading(), 3000, True, ["a"]),
    ("the default (weigh_queue false): pinned whatever is queued", _leading(), 3000, False, ["b"]),
    ("unknown whether it continues (another replica): pinned", _leading(continues=None), 3000, True, ["b"]),
    ("continues on the home, others hold as much: the queue decides", _leading(True, 512), 3000, True, ["a"]),
    ("continues on the home, nothing queued: pinned", _leading(True, 64), 0, True, ["b"]),
]


@pytest.mark.parametrize(("request_", "queued", "weigh", "expected"), [c[1:] for c in QUEUE_WEIGHED],
                         ids=[c[0] for c in QUEUE_WEIGHED])
def test_workflow_affinity_weighs_the_homes_queue_against_its_lead(request_: SchedulingRequest, queued: int,
                                                                   weigh: bool, expected: list[str]) -> None:
    state = endpoints()
    if queued:
        state.acquire("b", queued)
    assert WorkflowAffinity(0.8, weigh_queue=weigh).filter(request_, state, list(ABC)) == expected


def test_a_batching_preference_of_one_never_leaves_a_healthy_instance_whatever_it_holds() -> None:
    request = SchedulingRequest("w", "b", cached_tokens={"a": 64, "b": 64, "c": 64}, continues_on_home=False)
    assert WorkflowAffinity(1.0).filter(request, endpoints(outstanding={"b": 2}), list(ABC)) == ["b"]
    assert WorkflowAffinity(0.8).filter(request, endpoints(outstanding={"b": 2}), list(ABC)) in (["a"], ["c"])


def test_workflow_affinity_rotates_among_equal_holders_and_always_pin_keeps_the_rule() -> None:
    request = SchedulingRequest("w", "b", cached_tokens={"a": 64, "b": 64, "c": 64}, continues_on_home=False)
    plugin = WorkflowAffinity(0.8)
    picks = {plugin.filter(request, endpoints(), list(ABC))[0] for _ in range(6)}
    assert picks == set(ABC)  # an idle fleet: every instance ties, the workflow is spread, not kept
    assert WorkflowAffinity(0.8, always_pin=True).filter(request, endpoints(), list(ABC)) == ["b"]
    assert plugin.needs_prompt and not WorkflowAffinity(0.8, always_pin=True).needs_prompt


@pytest.mark.parametrize(("preference", "home_load", "pinned"),
                         [(1.0, 10_000, True), (0.5, 4, True), (0.5, 5, False), (0.0, 0, False)])
def test_workflow_affinity_filter_follows_the_batching_preference(preference: float, home_load: int,
                                                                  pinned: bool) -> None:
    kept = WorkflowAffinity(preference).filter(SchedulingRequest("w", "a"), endpoints(outstanding={"a": home_load}),
                                               list(ABC))
    assert (kept == ["a"]) is pinned


def test_workflow_affinity_scores_only_the_home() -> None:
    plugin = WorkflowAffinity(0.8)
    assert plugin.score(SchedulingRequest("w", "c"), endpoints(), ABC) == {"c": 1.0}
    assert plugin.score(SchedulingRequest("w"), endpoints(), ABC) == {}


LOAD_BOUND = [
    Case("idle keeps all", SchedulingRequest(), expected=ABC),
    Case("within 16 of the least", SchedulingRequest(), outstanding={"a": 16, "b": 3}, expected=ABC),
    Case("beyond the slack dropped", SchedulingRequest(), outstanding={"a": 17}, expected=["b", "c"]),
    Case("scraped load counts", SchedulingRequest(), loads={"c": BackendLoad(running=10, waiting=10)},
         expected=["a", "b"]),
]


@pytest.mark.parametrize("case", LOAD_BOUND, ids=_ids(LOAD_BOUND))
def test_load_bound_filter(case: Case) -> None:
    assert LoadBoundFilter(0.8).filter(case.request, endpoints(case.loads, case.outstanding), case.candidates) == (
        case.expected)


@pytest.mark.parametrize(("preference", "priority", "slack"),
                         [(0.8, 1.0, 16.0), (0.5, 1.0, 4.0), (0.5, 2.0, 8.0), (0.0, 1.0, 0.0),
                          (1.0, 1.0, float("inf"))])
def test_imbalance_slack(preference: float, priority: float, slack: float) -> None:
    assert imbalance_slack(preference, priority) == pytest.approx(slack)


KV_ROOM = [
    Case("none full", SchedulingRequest(), expected=ABC),
    Case("full with a queue dropped", SchedulingRequest(), loads={"a": BackendLoad(kv_usage=0.96, waiting=1)},
         expected=["b", "c"]),
    Case("full without a queue kept", SchedulingRequest(), loads={"a": BackendLoad(kv_usage=0.99)}, expected=ABC),
    Case("all full keeps all", SchedulingRequest(),
         loads={i: BackendLoad(kv_usage=1.0, waiting=2) for i in ABC}, expected=ABC),
]


@pytest.mark.parametrize("case", KV_ROOM, ids=_ids(KV_ROOM))
def test_kv_room_filter(case: Case) -> None:
    assert KVRoomFilter().filter(case.request, endpoints(case.loads), case.candidates) == case.expected


LEAST_LOAD = [
    Case("idle ties", SchedulingRequest(), expected=ABC),
    Case("one least", SchedulingRequest(), outstanding={"a": 1, "c": 2}, expected=["b"]),
    Case("max of local and scraped", SchedulingRequest(), outstanding={"a": 3},
         loads={"b": BackendLoad(running=2, waiting=1), "c": BackendLoad(running=2)}, expected=["c"]),
]


@pytest.mark.parametrize("case", LEAST_LOAD, ids=_ids(LEAST_LOAD))
def test_least_load_filter(case: Case) -> None:
    assert LeastLoadFilter().filter(case.request, endpoints(case.loads, case.outstanding), case.candidates) == (
        case.expected)


QUEUE = [
    Case("idle scores 1", SchedulingRequest(), expected={"a": 1.0, "b": 1.0, "c": 1.0}),
    Case("relative to the busiest", SchedulingRequest(), outstanding={"a": 4, "b": 2},
         expected={"a": 0.0, "b": 0.5, "c": 1.0}),
]


@pytest.mark.parametrize("case", QUEUE, ids=_ids(QUEUE))
def test_queue_scorer(case: Case) -> None:
    assert QueueScorer().score(case.request, endpoints(case.loads, case.outstanding), case.candidates) == (
        case.expected)


def test_kv_headroom_scorer() -> None:
    e = endpoints({"a": BackendLoad(kv_usage=0.25), "b": BackendLoad(kv_usage=1.0)})
    assert KVHeadroomScorer().score(SchedulingRequest(), e, ABC) == {"a": 0.75, "b": 0.0, "c": 1.0}


def test_prefix_scorer_reads_its_index_and_defers_to_an_external_index() -> None:
    index = PrefixIndex(ABC)
    scorer = PrefixScorer(index)
    blocks = block_hashes("system prompt " * 40)
    request = SchedulingRequest(prompt_blocks=blocks)
    assert scorer.score(request, endpoints(), ABC) == {"a": 0.0, "b": 0.0, "c": 0.0}
    index.learn("b", blocks)  # the director teaches the index every routed prompt
    assert scorer.score(request, endpoints(), ABC) == {"a": 0.0, "b": 1.0, "c": 0.0}
    half = SchedulingRequest(prompt_blocks=[*blocks[: len(blocks) // 2], *block_hashes("other " * 80)])
    assert scorer.score(half, endpoints(), ABC)["b"] == pytest.approx((len(blocks) // 2) / len(half.prompt_blocks))
    external = SchedulingRequest(prompt_blocks=blocks, cached_fraction={"c": 0.9})
    assert scorer.score(external, endpoints(), ABC) == {"a": 0.0, "b": 0.0, "c": 0.9}
    assert PrefixScorer(None).score(request, endpoints(), ABC) == {}


@pytest.mark.parametrize(("workflow", "best", "expected"), [
    ("w1", ["b"], "b"),
    ("w1", ABC, max(ABC, key=lambda i: rendezvous_weight("w1", i))),
    ("w2", ["a", "c"], max(["a", "c"], key=lambda i: rendezvous_weight("w2", i))),
])
def test_max_score_picker_breaks_workflow_ties_by_rendezvous(workflow: str, best: list[str], expected: str) -> None:
    assert MaxScorePicker().pick(SchedulingRequest(workflow), best) == expected


def test_max_score_picker_rotates_without_a_workflow() -> None:
    picker = MaxScorePicker()
    assert {picker.pick(SchedulingRequest(), list(ABC)) for _ in range(3)} == set(ABC)
