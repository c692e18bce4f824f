"""The multi-agent workload generator: deterministic, shapes order the parts as documented, DAGs are right."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from benchmarks.workload import (
    CHAIN,
    FANOUT,
    ROLE_NAMES,
    WORKER_ROLES,
    WorkloadConfig,
    estimate_tokens,
    generate,
)

SMALL = WorkloadConfig(workflows=12, arrival_rate=1.0, system_tokens=50, role_tokens=80,
                       context_tokens=(100, 200), output_tokens=(8, 16))


def outputs_for(n: int) -> dict[int, str]:
    return {i: f" output of agent {i} " + "word " * (i + 1) for i in range(n)}


def test_same_seed_same_plan_and_different_seed_different_plan() -> None:
    a = generate(SMALL, random.Random(7))
    b = generate(SMALL, random.Random(7))
    assert a == b
    assert [w.prompt(0, {}) for w in a.workflows] == [w.prompt(0, {}) for w in b.workflows]
    assert a.roles == b.roles
    c = generate(SMALL, random.Random(8))
    assert c != a


def test_shapes_share_everything_but_the_order() -> None:
    context_first = generate(replace(SMALL, shape="context-first"), random.Random(3))
    role_first = generate(replace(SMALL, shape="role-first"), random.Random(3))
    for cf, rf in zip(context_first.workflows, role_first.workflows, strict=True):
        assert (cf.workflow_id, cf.arrival, cf.context, cf.agents) == (rf.workflow_id, rf.arrival, rf.context,
                                                                        rf.agents)


def test_context_first_orders_system_context_transcript_role_task() -> None:
    plan = generate(replace(SMALL, shape="context-first"), random.Random(1))
    workflow = plan.workflows[0]
    last = len(workflow.agents) - 1
    outputs = outputs_for(last)
    spec = workflow.agents[last]
    prompt = workflow.prompt(last, outputs)
    positions = [prompt.index(part) for part in (plan.system_prompt, workflow.context, "## Transcript",
                                                 plan.roles[spec.role], spec.task)]
    assert positions == sorted(positions)
    assert prompt.startswith(plan.system_prompt)
    assert prompt.endswith(spec.task)
    # Every dependency's output is in the transcript, in agent order.
    seen = [prompt.index(outputs[d]) for d in spec.depends_on]
    assert seen == sorted(seen)


def test_role_first_orders_system_role_context_transcript_task() -> None:
    plan = generate(replace(SMALL, shape="role-first"), random.Random(1))
    workflow = plan.workflows[0]
    spec = workflow.agents[1]
    prompt = workflow.prompt(1, outputs_for(1))
    positions = [prompt.index(part) for part in (plan.system_prompt, plan.roles[spec.role], workflow.context,
                                                 "## Transcript", spec.task)]
    assert positions == sorted(positions)


def test_context_first_prompts_of_a_chain_extend_the_previous_prefix() -> None:
    plan = generate(replace(SMALL, shape="context-first", chain_fraction=1.0), random.Random(2))
    workflow = plan.workflows[0]
    outputs = outputs_for(len(workflow.agents))
    for k in range(1, len(workflow.agents)):
        before = workflow.prompt(k - 1, outputs)
        now = workflow.prompt(k, outputs)
        shared = "\n\n".join([plan.system_prompt, workflow.context, workflow.transcript(k - 1, outputs)])
        assert before.startswith(shared) and now.startswith(shared)


def test_role_first_prompts_of_different_workflows_share_the_role_prefix() -> None:
    plan = generate(replace(SMALL, shape="role-first"), random.Random(2))
    first, second = plan.workflows[0], plan.workflows[1]
    planner_prefix = "\n\n".join([plan.system_prompt, plan.roles["planner"]])
    assert first.prompt(0, {}).startswith(planner_prefix)
    assert second.prompt(0, {}).startswith(planner_prefix)


def test_chain_agents_see_every_earlier_agent() -> None:
    plan = generate(replace(SMALL, chain_fraction=1.0, chain_agents=(3, 6)), random.Random(4))
    for workflow in plan.workflows:
        assert workflow.topology == CHAIN
        assert 3 <= len(workflow.agents) <= 6
        for agent in workflow.agents:
            assert agent.depends_on == tuple(range(agent.index))
        assert workflow.agents[0].role == "planner" and workflow.agents[-1].role == "synthesizer"
        assert workflow.roots() == [0]


def test_fanout_workers_see_the_planner_and_the_aggregator_sees_all() -> None:
    plan = generate(replace(SMALL, chain_fraction=0.0, fanout_workers=(2, 4)), random.Random(5))
    for workflow in plan.workflows:
        assert workflow.topology == FANOUT
        agents = workflow.agents
        workers = agents[1:-1]
        assert 2 <= len(workers) <= 4
        assert agents[0].depends_on == () and agents[0].role == "planner"
        assert all(w.depends_on == (0,) and w.role in WORKER_ROLES for w in workers)
        assert agents[-1].depends_on == tuple(range(len(agents) - 1)) and agents[-1].role == "synthesizer"
        # Workers of one fan-out have distinct task lines even when they share a role.
        assert len({w.task for w in workers}) == len(workers)
        # A worker's transcript holds the planner's output only.
        outputs = outputs_for(len(agents))
        transcript = workflow.transcript(1, outputs)
        assert outputs[0] in transcript and outputs[2] not in transcript


def test_arrivals_are_poisson_and_ordered() -> None:
    plan = generate(replace(SMALL, workflows=400, arrival_rate=2.0), random.Random(6))
    arrivals = [w.arrival for w in plan.workflows]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    mean_gap = arrivals[-1] / (len(arrivals) - 1)
    assert 0.4 < mean_gap < 0.6  # 1 / rate = 0.5


def test_lengths_follow_the_knobs() -> None:
    config = replace(SMALL, system_tokens=300, role_tokens=600, context_tokens=(1000, 1000), output_tokens=(5, 9))
    plan = generate(config, random.Random(9))
    assert abs(estimate_tokens(plan.system_prompt) - 300) < 20
    assert set(plan.roles) == set(ROLE_NAMES)
    assert all(abs(estimate_tokens(role) - 600) < 20 for role in plan.roles.values())
    assert all(abs(estimate_tokens(w.context) - 1000) < 20 for w in plan.workflows)
    assert all(5 <= a.max_tokens <= 9 for w in plan.workflows for a in w.agents)
    assert len({w.context for w in plan.workflows}) == len(plan.workflows)


def test_estimate_matches_the_simulator_tokenizer() -> None:
    from benchmarks.simulator.tokenizer import count_tokens

    plan = generate(SMALL, random.Random(10))
    for text in (plan.system_prompt, plan.workflows[0].context, *plan.roles.values()):
        assert abs(count_tokens(text) - estimate_tokens(text)) <= 0.05 * count_tokens(text) + 3


@pytest.mark.parametrize("bad", [
    {"workflows": 0}, {"arrival_rate": 0.0}, {"chain_fraction": 1.5}, {"chain_agents": (1, 3)},
    {"output_tokens": (5, 2)}, {"shape": "sideways"},
])
def test_invalid_configs_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate(replace(SMALL, **bad), random.Random(0))  # type: ignore[arg-type]
