"""Aggregation of the router's request records into workflow status and system stats."""

from __future__ import annotations

import pytest

from a2a_service import QueueCore, RecordKind, RequestRecord, Settings

ROUTED, COMPLETED = RecordKind.ROUTED, RecordKind.COMPLETED


def core() -> QueueCore:
    return QueueCore(Settings(), clock=lambda: 5_000.0)


def routed(wf: str = "wf", agent: str = "a", instance: str = "http://i1:8000", hit: bool = False, **kw):
    return RequestRecord(wf, ROUTED, agent_id=agent, instance=instance, affinity_hit=hit, **kw)


def completed(prompt: int, cached: int, wf: str = "wf", status: int = 200):
    return RequestRecord(wf, COMPLETED, agent_id="a", prompt_tokens=prompt, cached_tokens=cached, status_code=status)


def test_routed_records_count_requests_affinity_and_instance():
    c = core()
    result = c.record(
        [
            routed(hit=False, routing_latency_seconds=0.002),
            routed(agent="b", hit=True, routing_latency_seconds=0.004),
            routed(agent="b", hit=True, instance="http://i2:8000", failover=True, routing_latency_seconds=0.006),
        ]
    )
    assert (result.accepted, result.rejected) == (3, 0)
    st = c.status("wf")
    assert st.total_requests == 3
    assert st.affinity_hits == 2
    assert st.affinity_hit_rate == pytest.approx(2 / 3)
    assert st.failovers == 1
    assert st.assigned_instance == "http://i2:8000"  # the latest routing decision
    assert st.active_agents == 2 and st.agents == ("a", "b")
    assert st.avg_routing_latency_seconds == pytest.approx(0.004)
    assert st.completed_requests == 0 and st.cache_hit_rate == 0.0


def test_cache_hit_rate_counts_requests_and_cached_token_rate_counts_tokens():
    c = core()
    c.record([routed(), routed(hit=True), routed(hit=True)])
    c.record([completed(1000, 0), completed(1000, 800), completed(2000, 1600, status=500)])
    st = c.status("wf")
    assert st.completed_requests == 3
    assert st.cache_hits == 2  # completed requests with cached_tokens > 0
    assert (st.prompt_tokens, st.cached_tokens) == (4000, 2400)
    assert st.cache_hit_rate == pytest.approx(2 / 3)  # cache_hits / total_requests: the seed document's definition
    assert st.cached_token_rate == pytest.approx(0.6)  # cached_tokens / prompt_tokens
    assert st.failed_requests == 1
    assert st.total_requests == 3  # COMPLETED records do not count as new requests


def test_system_stats_sum_over_workflows_and_survive_deletion():
    c = core()
    c.record([routed("w1", hit=True), routed("w2"), completed(100, 50, wf="w1"), completed(100, 0, wf="w2")])
    c.delete_workflow("w1")
    s = c.stats()
    assert (s.total_requests, s.affinity_hits, s.completed_requests, s.cache_hits) == (2, 1, 2, 1)
    assert s.affinity_hit_rate == pytest.approx(0.5)
    assert s.cache_hit_rate == pytest.approx(0.5)  # 1 hit / 2 requests
    assert s.cached_token_rate == pytest.approx(0.25)
    assert s.active_workflows == 1


def test_record_for_unknown_workflow_creates_it():
    c = core()
    c.record([routed("new-wf")])
    assert c.status("new-wf").created_at == 5_000.0


@pytest.mark.parametrize(
    "bad",
    [
        RequestRecord("bad id", ROUTED),
        RequestRecord("", ROUTED),
        RequestRecord("wf", RecordKind.UNSPECIFIED),
        RequestRecord("wf", ROUTED, agent_id="a b"),
        RequestRecord("wf", ROUTED, routing_latency_seconds=-1.0),
        RequestRecord("wf", ROUTED, instance="http://x\n"),
        RequestRecord("wf", COMPLETED, prompt_tokens=10, cached_tokens=11),
        RequestRecord("wf", COMPLETED, prompt_tokens=-1),
        RequestRecord("wf", ROUTED, request_id="r" * 300),
    ],
)
def test_invalid_records_are_counted_and_skipped(bad):
    c = core()
    result = c.record([routed(), bad, routed()])
    assert (result.accepted, result.rejected) == (2, 1)
    assert c.status("wf").total_requests == 2
    assert c.stats().records_rejected == 1


def test_records_beyond_max_workflows_are_rejected_not_raised():
    c = QueueCore(Settings(max_workflows=1), clock=lambda: 0.0)
    result = c.record([routed("w1"), routed("w2")])
    assert (result.accepted, result.rejected) == (1, 1)


def test_empty_agent_id_is_allowed_and_not_an_agent():
    c = core()
    c.record([RequestRecord("wf", ROUTED, instance="i1")])
    assert c.status("wf").active_agents == 0


def test_the_status_shows_each_models_instance():
    # Affinity is per (workflow, model) in the router (#14): one workflow's agents on two models keep one instance
    # per model, and the status shows both.
    c = core()
    c.record([routed(agent="planner", instance="http://big-1:8000", model="planner-70b"),
              routed(agent="worker", instance="http://small-2:8000", model="worker-8b"),
              routed(agent="worker", instance="http://small-2:8000", model="worker-8b", hit=True),
              routed(agent="other", instance="http://big-1:8000")])  # no model named: not listed
    st = c.status("wf")
    assert st.model_instances == {"planner-70b": "http://big-1:8000", "worker-8b": "http://small-2:8000"}
    assert st.assigned_instance == "http://big-1:8000"  # still the latest decision
    assert c.record([routed(model="x" * 257)]).rejected == 1  # bounded like the other fields


def test_the_status_shows_where_the_workflow_identity_came_from():
    # Issue #17: the router takes a workflow's identity from keys clients already send; the status shows the
    # source of the latest routed request that reported one.
    c = core()
    c.record([routed(identity_source="prompt_cache_key")])
    assert c.status("wf").identity_source == "prompt_cache_key"
    c.record([routed(identity_source="previous_response"), routed(), completed(10, 5)])
    assert c.status("wf").identity_source == "previous_response"  # records that report none keep it
    assert c.record([routed(identity_source="x" * 33)]).rejected == 1
