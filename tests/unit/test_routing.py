"""The rule-based profiles (``builtin:rules``) end to end through the director (no sockets): stickiness within
the load bound, load-aware placement, failover, prefix-aware routing without metadata. The default cost-model
profiles are tested in test_cost_model.py."""

from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from extproc.config import Backend, Settings
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.poller import BackendLoad, parse_vllm_metrics
from extproc.datastore.prefix_index import block_hashes
from extproc.datastore.workflows import WorkflowTable
from extproc.metadata import ContextSharing, WorkflowMetadata
from extproc.reporting import NullReporter
from extproc.requestcontrol.types import Decision
from extproc.scheduling.plugins.load_bound import imbalance_slack
from extproc.scheduling.plugins.max_score import rendezvous_weight
from extproc.server import Router, build_router

INSTANCES = ("vllm-1", "vllm-2", "vllm-3")


def router(ttl: float = 100.0, max_workflows: int = 1000, preference: float = 0.8, prefix: bool = False,
           instances: Sequence[str] = INSTANCES) -> Router:
    settings = Settings(backends=tuple(Backend(i) for i in instances), workflow_ttl=ttl,
                        max_workflows=max_workflows, batching_preference=preference, prefix_routing=prefix,
                        scheduling_config="builtin:rules")
    return build_router(settings, NullReporter())


def route(r: Router, metadata: WorkflowMetadata | None, now: float, blocks: Sequence[int] = (),
          cached: Mapping[str, float] | None = None) -> Decision:
    return r.director.decide(metadata, now, blocks, cached)


def wf(workflow_id: str, strategy: ContextSharing = ContextSharing.AUTO) -> WorkflowMetadata:
    return WorkflowMetadata(workflow_id, context_sharing_strategy=strategy)


def test_workflow_sticks_to_its_instance_even_under_load() -> None:
    r = router()
    first = route(r, wf("a"), 0.0)
    assert first.new_workflow and not first.affinity_hit
    r.endpoints.acquire(first.instance)
    r.endpoints.acquire(first.instance)
    for t in range(1, 10):
        d = route(r, wf("a"), float(t))
        assert d.instance == first.instance and d.affinity_hit and not d.new_workflow


def test_new_workflows_go_to_least_loaded() -> None:
    r = router()
    r.endpoints.acquire("vllm-1")
    r.endpoints.acquire("vllm-2")
    assert route(r, wf("new"), 0.0).instance == "vllm-3"


def test_ties_break_by_rendezvous_hash_and_spread() -> None:
    r = router()
    picks = [route(r, wf(f"w{i}"), 0.0).instance for i in range(300)]
    for i, pick in enumerate(picks):
        assert pick == max(INSTANCES, key=lambda inst, i=i: rendezvous_weight(f"w{i}", inst))
    counts = Counter(picks)
    assert set(counts) == set(INSTANCES)
    assert min(counts.values()) > 60  # roughly even: 100 expected each
    # Deterministic across routers (replicas, restarts).
    assert [route(router(), wf(f"w{i}"), 0.0).instance for i in range(300)] == picks


def test_concurrent_new_workflows_spread_by_outstanding_load() -> None:
    r = router()
    chosen = []
    for i in range(6):
        d = route(r, wf(f"w{i}"), 0.0)
        r.endpoints.acquire(d.instance)
        chosen.append(d.instance)
    assert Counter(chosen) == {"vllm-1": 2, "vllm-2": 2, "vllm-3": 2}


def test_requests_without_metadata_rotate_when_idle_and_avoid_load() -> None:
    r = router()
    assert {route(r, None, 0.0).instance for _ in range(3)} == set(INSTANCES)
    r.endpoints.acquire("vllm-1")
    r.endpoints.acquire("vllm-3")
    assert all(route(r, None, 0.0).instance == "vllm-2" for _ in range(5))
    none = route(r, wf("x", ContextSharing.NONE), 0.0)
    assert none.workflow_id is None and "x" not in r.workflows


def test_ttl_expiry_forgets_workflows() -> None:
    r = router(ttl=10.0)
    route(r, wf("a"), 0.0)
    assert route(r, wf("a"), 9.0).affinity_hit
    d = route(r, wf("a"), 19.5)  # 10.5 s after its last use
    assert d.new_workflow and r.workflows.expired == 1


def test_expiry_is_amortised_from_the_lru_front() -> None:
    table = WorkflowTable(ttl=10.0, max_workflows=10_000)
    for i in range(100):
        table.assign(f"w{i}", "vllm-1", float(i) / 100)
    table.assign("fresh", "vllm-1", 50.0)
    assert table.expire(50.0, budget=8) == 8  # bounded work per call
    assert len(table) == 93
    while table.expire(50.0):
        pass
    assert len(table) == 1 and table.expired == 100


def test_lru_eviction_at_max_workflows() -> None:
    r = router(max_workflows=3)
    for name in ("a", "b", "c"):
        route(r, wf(name), 0.0)
    route(r, wf("a"), 1.0)  # a is now most recently used
    route(r, wf("d"), 2.0)  # evicts b
    assert "b" not in r.workflows and {"a", "c", "d"} <= {k for k in ("a", "b", "c", "d") if k in r.workflows}
    assert r.workflows.evicted == 1 and len(r.workflows) == 3


def test_unhealthy_instance_fails_over_and_counts() -> None:
    r = router()
    first = route(r, wf("a"), 0.0)
    r.endpoints.set_healthy(first.instance, False)
    moved = route(r, wf("a"), 1.0)
    assert moved.failover and moved.instance != first.instance
    assert r.workflows.peek("a") is not None and r.workflows.peek("a").failovers == 1  # type: ignore[union-attr]
    r.endpoints.set_healthy(first.instance, True)
    assert route(r, wf("a"), 2.0).instance == moved.instance  # stays where it moved


def test_release_never_goes_negative() -> None:
    r = router()
    r.endpoints.release("vllm-1")
    assert r.endpoints.outstanding["vllm-1"] == 0


# --- load-aware rule (issue: smart placement) ---------------------------------------------------------------
def loaded_router(preference: float, prefix: bool = False) -> Router:
    return router(preference=preference, prefix=prefix)


def home_of(r: Router, workflow: str) -> str:
    return route(r, wf(workflow), 0.0).instance


@pytest.mark.parametrize(
    ("preference", "home_load", "stays"),
    [
        (1.0, 1000, True),   # never leave a healthy instance
        (0.8, 16, True),     # slack = 4 x 0.8 / 0.2 = 16 requests of imbalance
        (0.8, 17, False),
        (0.5, 4, True),      # slack = 4
        (0.5, 5, False),
        (0.0, 1, False),     # pure least-load: any imbalance moves the request
    ],
)
def test_batching_preference_sets_how_much_imbalance_affinity_tolerates(
    preference: float, home_load: int, stays: bool
) -> None:
    r = loaded_router(preference)
    home = home_of(r, "w")
    r.endpoints.publish({home: BackendLoad(running=home_load)})
    decision = route(r, wf("w"), 1.0)
    assert (decision.instance == home) is stays
    assert decision.affinity_hit is stays
    if not stays and preference > 0:
        assert decision.rebalanced and r.workflows.peek("w").instance == decision.instance  # type: ignore[union-attr]


def test_pure_least_load_prefers_the_workflows_instance_on_ties() -> None:
    r = loaded_router(0.0)
    home = home_of(r, "w")
    assert all(route(r, wf("w"), float(t)).instance == home for t in range(5))


def test_priority_widens_the_bound() -> None:
    r = loaded_router(0.5)
    home = home_of(r, "w")
    # over the slack for priority 1 (4), within it for priority 2 (8)
    r.endpoints.publish({home: BackendLoad(running=7)})
    assert route(r, WorkflowMetadata("w", workflow_priority=2.0), 1.0).instance == home
    assert route(r, WorkflowMetadata("w", workflow_priority=1.0), 2.0).instance != home


def test_parallel_agents_do_not_move_a_workflow_at_the_default_preference() -> None:
    r = loaded_router(0.8)
    home = home_of(r, "w")
    r.endpoints.publish({home: BackendLoad(running=6)})
    assert route(r, wf("w"), 1.0).instance == home
    assert imbalance_slack(0.8) == pytest.approx(16.0)


def test_overloaded_or_full_instances_get_no_new_workflows() -> None:
    r = loaded_router(0.8)
    r.endpoints.publish({"vllm-1": BackendLoad(running=30, waiting=10),
                         "vllm-2": BackendLoad(kv_usage=0.99, waiting=1)})
    assert {route(r, wf(f"n{i}"), 0.0).instance for i in range(20)} == {"vllm-3"}


def test_waiting_requests_weigh_double_and_local_count_reacts_before_the_scrape() -> None:
    r = loaded_router(0.8)
    r.endpoints.publish({"vllm-1": BackendLoad(running=2, waiting=2)})
    assert r.endpoints.load("vllm-1") == 6
    r.endpoints.acquire("vllm-2")
    r.endpoints.acquire("vllm-2")
    assert r.endpoints.load("vllm-2") == 2  # not yet in any scrape


def test_failover_state_machine() -> None:
    r = loaded_router(0.8, prefix=True)
    index = r.prefix_index
    assert index is not None
    home = home_of(r, "w")
    blocks = block_hashes("shared prefix " * 50)
    index.learn(home, blocks)
    r.endpoints.set_healthy(home, False)  # poll failed or 3 failed responses
    assert home not in r.endpoints.healthy and index.size(home) == 0  # its cache is gone
    moved = route(r, wf("w"), 1.0)
    assert moved.failover and moved.instance != home
    assert all(route(r, wf(f"new{i}"), 1.0).instance != home for i in range(10))
    r.endpoints.set_healthy(home, True)  # healthy poll: rejoins, receives new workflows again
    assert home in {route(r, wf(f"later{i}"), 2.0).instance for i in range(30)}
    assert route(r, wf("w"), 3.0).instance == moved.instance  # moved workflows stay where they are warm


def test_prefix_scorer_follows_the_prompt_and_yields_to_load() -> None:
    r = loaded_router(0.8, prefix=True)
    index = r.prefix_index
    assert index is not None
    blocks = block_hashes("You are an expert analyst. " * 40)
    first = route(r, None, 0.0, blocks)
    assert first.prefix_blocks == 0
    again = [route(r, None, 0.0, blocks) for _ in range(5)]
    assert {d.instance for d in again} == {first.instance}
    assert all(d.prefix_blocks == len(blocks) for d in again)
    r.endpoints.publish({first.instance: BackendLoad(running=50, waiting=20)})  # swamped: load beats the prefix
    assert route(r, None, 1.0, blocks).instance != first.instance


def test_parse_vllm_metrics() -> None:
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1234.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
garbage line
vllm:num_requests_waiting{model_name="m"} not-a-number
"""
    assert parse_vllm_metrics(text) == {"running": 5.0, "waiting": 1.0, "kv_usage": 0.25, "prefix_hits": 1234.0}
    assert parse_vllm_metrics("vllm:gpu_cache_usage_perc 0.5") == {"kv_usage": 0.5}
    # The KV capacity from vLLM's cache config info gauge (labels only), and the prefill histogram's sum/count.
    info = ('vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="2048"} 1.0\n'
            'vllm:request_prefill_time_seconds_sum{model_name="m"} 3.5\n'
            'vllm:request_prefill_time_seconds_count{model_name="m"} 7.0\n'
            'vllm:prompt_tokens_total{model_name="m"} 9000.0\n')
    assert parse_vllm_metrics(info) == {"kv_capacity_tokens": 32768.0, "prefill_seconds": 3.5, "prefills": 7.0,
                                        "prompt_tokens": 9000.0}


def test_external_kv_index_fraction_replaces_the_local_prefix_score() -> None:
    r = loaded_router(0.8, prefix=True)
    index = r.prefix_index
    assert index is not None
    blocks = block_hashes("local history " * 40)
    index.learn("vllm-1", blocks)  # the local index believes vllm-1 ...
    decision = route(r, None, 0.0, blocks, {"vllm-3": 0.9, "vllm-1": 0.1})  # ... LMCache knows better
    assert decision.instance == "vllm-3" and decision.prefix_blocks > 0
    assert route(r, None, 0.0, blocks, None).instance in INSTANCES  # no answer: local index and load decide


def test_held_down_instance_ignores_healthy_polls_until_its_time() -> None:
    endpoints = Endpoints(["a", "b"])
    endpoints.hold_down("a", until=100.0)
    assert "a" not in endpoints.healthy
    endpoints.set_healthy("a", True, now=99.0)  # a hung engine's /health may still answer
    assert "a" not in endpoints.healthy
    endpoints.set_healthy("a", True, now=100.0)
    assert "a" in endpoints.healthy and "a" not in endpoints.held_down
    endpoints.set_healthy("a", False, now=101.0)  # plain poll failures are not held
    endpoints.set_healthy("a", True, now=101.5)
    assert "a" in endpoints.healthy
    endpoints.hold_down("unknown", until=100.0)  # not an instance: ignored
    assert "unknown" not in endpoints.held_down


SHARED = "Team rules: cite sources, keep answers short, say what you do not know. " * 4


@pytest.mark.parametrize(("name", "prompts", "one_instance"), [
    # Each agent's prompt starts with its role (shared by every workflow), the workflow's context after it:
    # every instance holds the role prompts, the workflow's own instance holds no more of the next prompt.
    ("role first: spread", [f"{SHARED}role {k % 3}: " + "case file of wf " * 8 + f"turn {k}" for k in range(6)],
     False),
    # A conversation appends to its last prompt: it continues where its cache is, though every instance holds
    # the shared instructions and the new text adds less than a block.
    ("conversation: stays", [SHARED + "".join(f"q{t} a{t} " for t in range(k)) for k in range(1, 7)], True),
    # Fan-out siblings share the workflow's context first: the home leads.
    ("shared context first: stays", [SHARED + "case file of wf " * 8 + f"part {k} of the plan" for k in range(6)],
     True),
])
def test_a_workflow_stays_where_its_instance_holds_more_of_the_prompt(name: str, prompts: list[str],
                                                                      one_instance: bool) -> None:
    r = router(prefix=True)
    for other, instance in enumerate(INSTANCES):  # every instance has served the shared prompts before
        for k in range(3):
            route(r, None, 0.0, block_hashes(f"{SHARED}role {k}: other {other}"))
            r.director.prefix_index.learn(instance, block_hashes(f"{SHARED}role {k}: "))  # type: ignore[union-attr]
    homes = [route(r, wf("w"), float(t), block_hashes(prompt)).instance for t, prompt in enumerate(prompts)]
    assert (len(set(homes)) == 1) is one_instance, homes
