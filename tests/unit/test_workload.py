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
    offered_prompt_tokens,
    request_id,
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


# --- the fan-out and tool-loop shapes --------------------------------------------------------------------
def test_fan_out_shape_is_all_fan_outs_with_siblings_naming_the_planner_as_parent() -> None:
    plan = generate(replace(SMALL, shape="fan-out", fanout_workers=(4, 6)), random.Random(11))
    for workflow in plan.workflows:
        assert workflow.topology == FANOUT
        agents = workflow.agents
        siblings = agents[1:-1]
        assert 4 <= len(siblings) <= 6
        assert agents[0].parent is None and agents[0].depends_on == ()
        # Siblings: same parent (the planner), no dependency on each other, so they run concurrently.
        assert all(s.parent == 0 and s.depends_on == (0,) for s in siblings)
        assert request_id(workflow, siblings[0].parent) == f"{workflow.workflow_id}.{agents[0].name}"
        # The aggregator reads every sibling's output.
        outputs = outputs_for(len(agents))
        aggregator = workflow.prompt(len(agents) - 1, outputs)
        assert all(outputs[s.index] in aggregator for s in siblings)
        # Each sibling: the shared context first, its own sub-task last.
        prompts = [workflow.prompt(s.index, outputs) for s in siblings]
        assert all(p.startswith("\n\n".join([plan.system_prompt, workflow.context])) for p in prompts)
        assert len({p.rsplit("\n\n", 1)[1] for p in prompts}) == len(siblings)


def test_fan_out_metadata_carries_the_parent_request_id() -> None:
    from benchmarks.compare_routers import CONTENDERS, request_body

    plan = generate(replace(SMALL, shape="fan-out"), random.Random(12))
    workflow = plan.workflows[0]
    sibling = workflow.agents[1]
    body = request_body(workflow, 1, "p", CONTENDERS["workflow-aware"])
    assert body["workflow_metadata"] == {"workflow_id": workflow.workflow_id, "agent_id": sibling.name,
                                         "context_sharing_strategy": "auto",
                                         "parent_request_id": request_id(workflow, 0)}
    assert "parent_request_id" not in request_body(workflow, 0, "p", CONTENDERS["workflow-aware"])[
        "workflow_metadata"]
    assert "workflow_metadata" not in request_body(workflow, 1, "p", CONTENDERS["prefix-aware"])
    from extproc.metadata import parse_metadata

    assert parse_metadata(body["workflow_metadata"]).parent_request_id == request_id(workflow, 0)


def test_tool_loop_turns_grow_append_only_with_pauses_between_them() -> None:
    config = replace(SMALL, shape="tool-loop", tool_turns=(3, 5), tool_agents=(1, 2), tool_pause_s=(2.0, 4.0),
                     tool_result_tokens=(20, 40))
    plan = generate(config, random.Random(13))
    from benchmarks.simulator.tokenizer import encode

    agent_counts = set()
    for workflow in plan.workflows:
        turns = workflow.agents
        assert 3 <= len(turns) <= 5
        assert turns[0].delay_s == 0.0 and turns[0].depends_on == ()
        assert all(t.depends_on == (t.index - 1,) and t.parent == t.index - 1 for t in turns[1:])
        assert all(2.0 <= t.delay_s <= 4.0 for t in turns[1:])
        assert all(20 <= estimate_tokens(t.tool_result) <= 45 for t in turns)
        agent_counts.add(len({t.agent_id for t in turns}))
        outputs = {t.index: " generated words of turn" for t in turns}
        for k in range(1, len(turns)):
            before, now = workflow.prompt(k - 1, outputs), workflow.prompt(k, outputs)
            # The next turn = the previous prompt + its output + the tool result + the next cue ...
            assert now.startswith(before + outputs[k - 1])
            assert turns[k - 1].tool_result in now and now.endswith(turns[k].task)
            # ... so its tokens extend the previous prompt's and output's tokens (all cacheable).
            assert encode(now)[: len(encode(before + outputs[k - 1]))] == encode(before + outputs[k - 1])
    assert agent_counts == {1, 2}


def test_scaled_plan_stretches_arrivals_but_not_tool_pauses() -> None:
    plan = generate(replace(SMALL, shape="tool-loop"), random.Random(14))
    slow = plan.scaled(3.0)
    for a, b in zip(plan.workflows, slow.workflows, strict=True):
        assert b.arrival == pytest.approx(3.0 * a.arrival)
        assert [t.delay_s for t in a.agents] == [t.delay_s for t in b.agents]
    offered, offered_slow = offered_prompt_tokens(plan), offered_prompt_tokens(slow)
    assert offered_slow["prompt_tokens"] == offered["prompt_tokens"]
    assert offered_slow["tokens_per_s"] == pytest.approx(offered["tokens_per_s"] / 3.0)


def test_existing_shapes_draw_the_same_plans_as_before() -> None:
    # Figures of this plan before the fan-out / tool-loop shapes were added (checked against that code):
    # context-first / role-first plans keep their random draws, so earlier results stay comparable.
    plan = generate(SMALL, random.Random(0))
    assert [len(w.agents) for w in plan.workflows] == [6, 5, 5, 5, 4, 5, 5, 6, 5, 5, 4, 5]
    assert sum(a.max_tokens for w in plan.workflows for a in w.agents) == 700
    assert plan.workflows[-1].arrival == pytest.approx(9.566403)
    assert all(a.delay_s == 0.0 and a.fixed_prompt is None for w in plan.workflows for a in w.agents)
