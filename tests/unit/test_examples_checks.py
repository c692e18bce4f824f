"""The checks the client examples apply to a workflow's status (examples/_common.py)."""

from __future__ import annotations

import dataclasses

import pytest

from a2a_service import MessageCounters, WorkflowStatus
from examples._common import Call, check_workflow


def calls(*served_by: str) -> list[Call]:
    agents = ("collector", "analyst", "writer")
    return [Call("wf-1", agents[i % 3], "chat", False, s, 500, 0 if i == 0 else 464) for i, s in enumerate(served_by)]


def status(**overrides: object) -> WorkflowStatus:
    base = WorkflowStatus(
        workflow_id="wf-1", active_agents=3, agents=("collector", "analyst", "writer"), total_requests=3,
        affinity_hits=2, affinity_hit_rate=2 / 3, failovers=0, completed_requests=3, failed_requests=0,
        cache_hits=2, cache_hit_rate=2 / 3, cached_token_rate=928 / 1500, prompt_tokens=1500, cached_tokens=928,
        avg_routing_latency_seconds=0.0001, assigned_instance="vllm-2", created_at=0.0, last_updated=1.0,
        queued_messages=0, in_flight_messages=0, queues={}, messages=MessageCounters(sent=1, delivered=1),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_a_pinned_workflow_that_reused_its_cache_passes() -> None:
    assert check_workflow(status(), calls("vllm-2", "vllm-2", "vllm-2")) == []
    # the router reports the instance's base URL when it knows it (the seed's assigned_instance)
    assert check_workflow(status(assigned_instance="http://10.0.0.2:8000"), calls("vllm-2", "vllm-2", "vllm-2")) == []


@pytest.mark.parametrize(
    ("the_status", "served_by", "expected"),
    [
        (status(), ("vllm-2", "vllm-1", "vllm-2"), "served by 2 instances"),
        (status(assigned_instance="vllm-3"), ("vllm-2",) * 3, "assigned_instance 'vllm-3'"),
        (status(assigned_instance=None), ("vllm-2",) * 3, "assigned_instance None"),
        (status(total_requests=5), ("vllm-2",) * 3, "counts 5 requests"),
        (status(agents=("collector", "analyst")), ("vllm-2",) * 3, "missing from the status: ['writer']"),
        (status(cache_hits=0, cache_hit_rate=0.0), ("vllm-2",) * 3, "no prefix-cache reuse"),
        (status(cache_hit_rate=0.0), ("vllm-2",) * 3, "no prefix-cache reuse"),
    ],
)
def test_each_misbehaviour_is_named(the_status: WorkflowStatus, served_by: tuple[str, ...], expected: str) -> None:
    problems = check_workflow(the_status, calls(*served_by))
    assert problems and any(expected in p for p in problems), problems
