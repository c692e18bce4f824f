"""A seeded multi-agent workload: workflows arriving over time, agents in chains and fan-outs, growing transcripts.

Pure: :func:`generate` draws everything from the one ``random.Random`` it is given, so the same seed gives the
same :class:`Plan` in every process, and every router contender replays exactly the same workflows. Nothing
here does I/O; the replay (``benchmarks/compare_routers/``) sends the requests and feeds each agent's actual
generated text back through :meth:`Workflow.prompt`, so the transcripts (and with them the prompts) are
driven by the run.

What a workflow is
------------------
* It **arrives** at a time drawn from a Poisson process (exponential gaps, ``arrival_rate`` workflows per
  *simulated* second; the replay multiplies by the simulator's time scale).
* Its **topology** is a *chain* (with probability ``chain_fraction``) or a *fan-out*:

  - chain of ``chain_agents`` agents: a planner, workers, then a synthesizer; agent k runs after agent k-1
    and sees the outputs of every agent before it (``depends_on = (0, ..., k-1)``);
  - fan-out: a planner, ``fanout_workers`` parallel workers that all see only the planner's output, then a
    synthesizer (the aggregator) that sees the planner's and every worker's output.

* Its prompt parts:

  - a **system prompt** shared by every agent of every workflow (``system_tokens``);
  - a **context document** of its own (``context_tokens``, uniform in the range), e.g. the case file or the
    retrieved documents the workflow works on;
  - a **transcript** that grows as agents finish: ``[agent-name]`` + the text the backend actually returned,
    for each agent this one depends on, in agent order;
  - the agent's **role prompt**: one of a small shared set of roles (planner, researcher, analyst, critic,
    writer, synthesizer), each a long-ish instruction (``role_tokens``) the same for every workflow. The
    planner opens and the synthesizer closes every workflow; the agents in between draw their role from the
    four worker roles with replacement, so a role may recur within a workflow;
  - a short **task** line naming the agent (and, for fan-out workers, which part of the job is theirs).

* Each agent's ``max_tokens`` is uniform in ``output_tokens`` (the simulator always generates exactly
  ``max_tokens`` tokens).

Lengths are in tokens at ~4 characters per token: a space-prefixed word counts ceil((len(word) + 1) / 4)
tokens, the rule the simulator's tokenizer applies.

The two prompt shapes
---------------------
``context-first``
    system + workflow context + transcript + role prompt + task. Everything an agent shares with the
    earlier agents of its workflow comes first, so the longest cached prefix on the instance that served the
    workflow so far is system + context + the transcript up to the previous agent. A router that keeps the
    workflow on one instance, or a text-prefix router (the prompt's leading blocks identify the workflow),
    can find it.
``role-first``
    system + role prompt + workflow context + transcript + task. The leading blocks after the shared system
    prompt are the *role's*, shared by all workflows, so a text-prefix router sees its best match wherever
    that role ran before (any workflow) and is misled into grouping requests by role across workflows: one
    workflow's context then gets spread over (and duplicated in the caches of) several instances, and a
    popular role piles up on one instance. Reuse beyond system + role needs the same role of the same
    workflow on the same instance (a role that recurs in a workflow, or fan-out workers sharing a role).
``fan-out``
    Heavy fan-out, context-first order: every workflow is a planner, then ``fanout_workers`` sibling agents
    that run concurrently (each sees system + context + the planner's output, then its role and its own
    sub-task line), then an aggregator (the synthesizer) that reads every sibling's output. The siblings carry
    ``parent_request_id`` = the planner's request id (``Agent.parent``), as does the aggregator. Siblings
    arrive together: a router that spreads them loses the shared context on all but one instance, one that
    stacks them on the planner's instance queues them there.
``tool-loop``
    Multi-turn tool loop (Continuum-style): every workflow is one or two agents (``tool_agents``) taking
    ``tool_turns`` turns, alternating when there are two. A turn's prompt is the previous turn's prompt +
    its generated output + a tool result + the next cue line (append-only: system + role prompts + context +
    the turns so far), so on the instance that served the last turn everything but the new tool result is
    cached. Before each turn after the first the agent waits for its tool call, ``tool_pause_s`` simulated
    seconds (``Agent.delay_s``; the replay multiplies it by the time scale), and other workflows use the
    fleet meanwhile, so under KV pressure the workflow's blocks may be evicted before it comes back.

A fifth shape, ``mooncake``, replays a trace instead of generating one (``benchmarks/mooncake.py``); its
plans use the same :class:`Plan` / :class:`Workflow` / :class:`Agent` values with fixed prompts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "CHAIN",
    "CONTEXT_FIRST",
    "FANOUT",
    "FAN_OUT",
    "GENERATED_SHAPES",
    "MOONCAKE",
    "ROLE_FIRST",
    "ROLE_NAMES",
    "SHAPES",
    "TOOL_LOOP",
    "WORKER_ROLES",
    "Agent",
    "Plan",
    "Workflow",
    "WorkloadConfig",
    "estimate_tokens",
    "generate",
    "offered_prompt_tokens",
    "request_id",
]

CONTEXT_FIRST = "context-first"
ROLE_FIRST = "role-first"
FAN_OUT = "fan-out"  # the shape (every workflow a heavy fan-out)
TOOL_LOOP = "tool-loop"
MOONCAKE = "mooncake"  # a trace replay, built by benchmarks/mooncake.py
GENERATED_SHAPES = (CONTEXT_FIRST, ROLE_FIRST, FAN_OUT, TOOL_LOOP)
SHAPES = (*GENERATED_SHAPES, MOONCAKE)
CHAIN = "chain"
FANOUT = "fan-out"  # the topology (a planner, parallel workers, a synthesizer)
TOOLS = "tool-loop"  # the topology of a tool-loop workflow

PLANNER, SYNTHESIZER = "planner", "synthesizer"
WORKER_ROLES = ("researcher", "analyst", "critic", "writer")
ROLE_NAMES = (PLANNER, *WORKER_ROLES, SYNTHESIZER)

_ROLE_DUTIES = {
    PLANNER: "break the job down into concrete steps, decide which specialist handles each step, and state "
             "the order and the expected deliverable of every step",
    "researcher": "extract every fact, figure and source from the context that bears on your step, quote "
                  "figures exactly, and flag gaps the context leaves open",
    "analyst": "quantify trends, compare periods and segments, compute the derived figures your step needs, "
               "and say how confident each conclusion is",
    "critic": "check the work so far for errors, unsupported claims, missing cases and inconsistent "
              "numbers, and list each problem with the fix it needs",
    "writer": "turn the findings so far into clear prose for the intended reader, keeping every figure "
              "traceable to the context",
    SYNTHESIZER: "merge the contributions of all agents into one final answer, resolve disagreements "
                 "explicitly, and end with the decisions and open questions",
}
_TASKS = {
    PLANNER: "Write the plan for this job.",
    "researcher": "Collect the evidence for your part.",
    "analyst": "Analyze your part.",
    "critic": "Review the work so far.",
    "writer": "Draft the text for your part.",
    SYNTHESIZER: "Write the final answer.",
}
_WORDS = (
    "revenue", "margin", "quarter", "region", "segment", "customer", "churn", "growth", "forecast", "budget",
    "supplier", "contract", "invoice", "shipment", "inventory", "warehouse", "pricing", "discount", "renewal",
    "pipeline", "incident", "latency", "capacity", "outage", "release", "feature", "backlog", "ticket",
    "audit", "policy", "risk", "control", "exposure", "hedge", "liquidity", "payroll", "headcount", "hiring",
    "training", "survey", "score", "cohort", "retention", "funnel", "campaign", "channel", "partner",
    "region", "market", "share", "product", "component", "defect", "yield", "throughput", "cost", "variance",
    "target", "baseline", "estimate", "the", "of", "and", "in", "for", "with", "from", "by", "per", "was",
    "rose", "fell", "held", "flat", "above", "below", "against", "versus", "while", "after", "before",
)
_GUIDELINES = (
    "Cite the section of the context you rely on.", "Prefer numbers over adjectives.",
    "Keep each point to one or two sentences.", "Say so when the context does not support a claim.",
    "Do not repeat what earlier agents already established.", "Use the units the context uses.",
    "Mark assumptions explicitly.", "Order points by their impact on the decision.",
)


@dataclass(frozen=True)
class WorkloadConfig:
    """The knobs of the workload. Token counts are estimates at ~4 characters per token."""

    workflows: int = 40  # how many workflows arrive over the run
    arrival_rate: float = 0.5  # Poisson arrivals: workflows per simulated second
    chain_fraction: float = 0.5  # share of chains; the rest are fan-outs
    chain_agents: tuple[int, int] = (3, 6)  # agents in a chain (inclusive range)
    fanout_workers: tuple[int, int] = (2, 4)  # parallel workers of a fan-out (+ planner + synthesizer)
    system_tokens: int = 300  # the system prompt shared by all workflows
    role_tokens: int = 600  # each role prompt (shared by all workflows)
    context_tokens: tuple[int, int] = (1000, 3000)  # each workflow's context document (uniform)
    output_tokens: tuple[int, int] = (48, 160)  # max_tokens per agent (uniform, inclusive)
    shape: str = CONTEXT_FIRST  # one of GENERATED_SHAPES (see the module docstring)
    # tool-loop only:
    tool_turns: tuple[int, int] = (4, 8)  # turns per workflow (inclusive)
    tool_agents: tuple[int, int] = (1, 2)  # agents taking turns in one workflow
    tool_pause_s: tuple[float, float] = (2.0, 8.0)  # simulated seconds of each tool call (uniform)
    tool_result_tokens: tuple[int, int] = (100, 300)  # each tool result appended to the context

    def validate(self) -> WorkloadConfig:
        if self.workflows < 1:
            raise ValueError("workflows must be >= 1")
        if self.arrival_rate <= 0:
            raise ValueError("arrival_rate must be > 0")
        if not 0.0 <= self.chain_fraction <= 1.0:
            raise ValueError("chain_fraction must be in [0, 1]")
        for name in ("chain_agents", "fanout_workers", "context_tokens", "output_tokens", "tool_turns",
                     "tool_agents", "tool_result_tokens"):
            low, high = getattr(self, name)
            if low < 1 or high < low:
                raise ValueError(f"{name} must be a range (low, high) with 1 <= low <= high")
        if self.chain_agents[0] < 2:
            raise ValueError("a chain has at least 2 agents (planner and synthesizer)")
        if self.system_tokens < 1 or self.role_tokens < 1:
            raise ValueError("system_tokens and role_tokens must be >= 1")
        if not 0.0 <= self.tool_pause_s[0] <= self.tool_pause_s[1]:
            raise ValueError("tool_pause_s must be a range (low, high) with 0 <= low <= high")
        if self.tool_agents[1] > 2:
            raise ValueError("tool_agents: one or two agents per tool loop")
        if self.shape not in GENERATED_SHAPES:
            raise ValueError(f"shape must be one of {GENERATED_SHAPES} (mooncake: benchmarks/mooncake.py)")
        return self


@dataclass(frozen=True)
class Agent:
    index: int  # position in the workflow (0 = planner)
    name: str  # e.g. "a2-critic": the agent id sent as workflow_metadata.agent_id
    role: str  # one of ROLE_NAMES
    depends_on: tuple[int, ...]  # agents whose outputs it sees (and waits for), ascending
    max_tokens: int
    task: str  # the last line of its prompt (tool-loop: the turn's cue line)
    parent: int | None = None  # the agent whose request spawned this one (workflow_metadata.parent_request_id)
    # Simulated seconds to wait after its dependencies finished (after the workflow's arrival if it has
    # none) before sending: a tool call's duration (tool-loop), a trace request's arrival offset (mooncake).
    delay_s: float = 0.0
    tool_result: str = field(default="", repr=False)  # tool-loop: the tool's answer to this turn
    agent_id: str = ""  # workflow_metadata.agent_id; default: name (tool-loop: the agent taking the turn)
    fixed_prompt: str | None = field(default=None, repr=False)  # mooncake: the prompt, whatever ran before

    @property
    def metadata_agent_id(self) -> str:
        return self.agent_id or self.name


@dataclass(frozen=True)
class Workflow:
    workflow_id: str
    arrival: float  # simulated seconds after the start of the run
    topology: str  # CHAIN or FANOUT
    context: str
    agents: tuple[Agent, ...]
    shape: str
    system_prompt: str = field(repr=False)
    roles: Mapping[str, str] = field(repr=False, compare=False)

    def transcript(self, agent: int, outputs: Mapping[int, str]) -> str:
        """The transcript agent ``agent`` sees: the outputs of the agents it depends on, in agent order."""
        lines = ["## Transcript"]
        for dep in self.agents[agent].depends_on:
            lines.append(f"[{self.agents[dep].name}]: {outputs[dep]}")
        return "\n".join(lines)

    def prompt_parts(self, agent: int, outputs: Mapping[int, str]) -> list[str]:
        """The prompt's parts in shape order (joined by blank lines in :meth:`prompt`)."""
        spec = self.agents[agent]
        role = self.roles[spec.role]
        context = self.context
        if self.shape == TOOL_LOOP:
            roles = [self.roles[r] for r in dict.fromkeys(a.role for a in self.agents)]
            return [self.system_prompt, *roles, context, self._turns(agent, outputs)]
        transcript = self.transcript(agent, outputs)
        if self.shape in (CONTEXT_FIRST, FAN_OUT):
            return [self.system_prompt, context, transcript, role, spec.task]
        return [self.system_prompt, role, context, transcript, spec.task]

    def _turns(self, agent: int, outputs: Mapping[int, str]) -> str:
        # Append-only: turn k's prompt is turn k-1's prompt + its output + its tool result + turn k's cue.
        parts = []
        for turn in self.agents[:agent]:
            parts.append(f"{turn.task}{outputs[turn.index]}\n## Tool result\n{turn.tool_result}\n")
        parts.append(self.agents[agent].task)
        return "".join(parts)

    def prompt(self, agent: int, outputs: Mapping[int, str]) -> str:
        """Agent ``agent``'s prompt, given the generated text of (at least) the agents it depends on."""
        fixed = self.agents[agent].fixed_prompt
        if fixed is not None:
            return fixed
        return "\n\n".join(self.prompt_parts(agent, outputs))

    def roots(self) -> list[int]:
        return [a.index for a in self.agents if not a.depends_on]


@dataclass(frozen=True)
class Plan:
    config: WorkloadConfig
    system_prompt: str
    roles: Mapping[str, str] = field(compare=False)
    workflows: tuple[Workflow, ...]

    @property
    def requests(self) -> int:
        return sum(len(w.agents) for w in self.workflows)

    def summary(self) -> dict[str, float]:
        """Static figures of the plan (token counts estimated; transcripts excluded, they depend on the run)."""
        chains = sum(1 for w in self.workflows if w.topology == CHAIN)
        fan_outs = sum(1 for w in self.workflows if w.topology == FANOUT)
        context = sum(estimate_tokens(w.context) for w in self.workflows)
        context += sum(estimate_tokens(a.tool_result) for w in self.workflows for a in w.agents)
        output = sum(a.max_tokens for w in self.workflows for a in w.agents)
        return {
            "workflows": len(self.workflows),
            "chains": chains,
            "fan_outs": fan_outs,
            "tool_loops": sum(1 for w in self.workflows if w.topology == TOOLS),
            "requests": self.requests,
            "last_arrival_s": self.workflows[-1].arrival,
            "system_tokens": estimate_tokens(self.system_prompt),
            "role_tokens_total": sum(estimate_tokens(r) for r in self.roles.values()),
            "context_tokens_total": context,
            "output_tokens_total": output,
        }

    def scaled(self, factor: float) -> Plan:
        """The same plan with every workflow's arrival time multiplied by ``factor`` (> 1 = a lighter load).

        Agents' ``delay_s`` are tool-call durations or (mooncake) offsets within a session; the latter scale
        with the arrivals, the former do not (a tool takes as long whatever the load)."""
        workflows = []
        for w in self.workflows:
            agents = w.agents
            if w.topology != TOOLS:
                agents = tuple(replace(a, delay_s=a.delay_s * factor) for a in agents)
            workflows.append(replace(w, arrival=w.arrival * factor, agents=agents))
        return replace(self, workflows=tuple(workflows))


def request_id(workflow: Workflow, agent: int) -> str:
    """The id of agent ``agent``'s request (what a child names as its ``parent_request_id``)."""
    return f"{workflow.workflow_id}.{workflow.agents[agent].name}"


def offered_prompt_tokens(plan: Plan) -> dict[str, float]:
    """Prompt tokens the plan offers, and over how long: ``tokens_per_s`` = total prompt tokens / span.

    A prompt is estimated with every output it includes at its ``max_tokens`` (the simulator generates
    exactly that many). The span is the last workflow's arrival stretched by n/(n-1) (the mean gap of the
    arrival process after it; for a trace: the last request's arrival), so ``tokens_per_s`` is the
    long-run prefill demand the arrival process offers, with no cache hits counted."""
    total = 0
    for w in plan.workflows:
        outputs = {a.index: " x" * a.max_tokens for a in w.agents}
        total += sum(estimate_tokens(w.prompt(a.index, outputs)) for a in w.agents)
    n = len(plan.workflows)
    if plan.config.shape == MOONCAKE:  # agents' delays are their arrival offsets
        span = max(w.arrival + max(a.delay_s for a in w.agents) for w in plan.workflows)
    else:
        span = plan.workflows[-1].arrival * n / (n - 1) if n > 1 else 0.0
    return {"prompt_tokens": total, "span_s": span, "tokens_per_s": total / span if span > 0 else math.inf}


def _word_tokens(word: str) -> int:
    return math.ceil((len(word) + 1) / 4)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` at the simulator's rule: each space-prefixed word is ceil(chars / 4) tokens."""
    return sum(_word_tokens(w) for w in text.split())


def _filler(rng: random.Random, tokens: int, sentences: Sequence[str] = ()) -> str:
    """Text of about ``tokens`` tokens: domain words with figures, sentences interleaved when given."""
    out: list[str] = []
    count = 0
    while count < tokens:
        if sentences and rng.random() < 0.08:
            piece = rng.choice(sentences)
        elif rng.random() < 0.12:
            piece = f"{rng.randrange(1, 1000)}.{rng.randrange(10)}%" if rng.random() < 0.5 else str(
                rng.randrange(10, 100_000))
        else:
            piece = rng.choice(_WORDS)
        out.append(piece)
        count += sum(_word_tokens(w) for w in piece.split())
    return " ".join(out)


def _system_prompt(rng: random.Random, tokens: int) -> str:
    head = ("You are one agent of a team of AI analysts that works through business cases together. Each agent "
            "has a role; follow the role's instructions and the team rules below.")
    head += "\nTeam rules:"
    return f"{head} {_filler(rng, max(1, tokens - estimate_tokens(head)), _GUIDELINES)}"


def _role_prompt(rng: random.Random, role: str, tokens: int) -> str:
    head = f"## Your role: {role}\nAs the {role}, your job is to {_ROLE_DUTIES[role]}.\nReference notes:"
    return f"{head} {_filler(rng, max(1, tokens - estimate_tokens(head)), _GUIDELINES)}"


def _context(rng: random.Random, workflow_id: str, tokens: int) -> str:
    head = f"## Case file of {workflow_id}"
    return f"{head}\n{_filler(rng, max(1, tokens - estimate_tokens(head)))}"


def _chain(rng: random.Random, config: WorkloadConfig) -> list[tuple[str, tuple[int, ...], str, int | None]]:
    n = rng.randint(*config.chain_agents)
    roles = [PLANNER, *(rng.choice(WORKER_ROLES) for _ in range(n - 2)), SYNTHESIZER]
    return [(role, tuple(range(k)), _TASKS[role], None) for k, role in enumerate(roles)]


def _fanout(rng: random.Random, config: WorkloadConfig) -> list[tuple[str, tuple[int, ...], str, int | None]]:
    workers = rng.randint(*config.fanout_workers)
    agents: list[tuple[str, tuple[int, ...], str, int | None]] = [(PLANNER, (), _TASKS[PLANNER], None)]
    for i in range(workers):
        role = rng.choice(WORKER_ROLES)
        agents.append((role, (0,), f"{_TASKS[role]} Your part: step {i + 1} of {workers} of the plan.", 0))
    agents.append((SYNTHESIZER, tuple(range(workers + 1)), _TASKS[SYNTHESIZER], 0))
    return agents


def _tool_loop(rng: random.Random, config: WorkloadConfig, workflow_id: str) -> tuple[Agent, ...]:
    turns = rng.randint(*config.tool_turns)
    roles = rng.sample(WORKER_ROLES, rng.randint(*config.tool_agents))
    agents = []
    for k in range(turns):
        which = k % len(roles)
        role = roles[which]
        cue = (f"\n[turn {k + 1} of {workflow_id}, agent {which} ({role})] "
               f"{'Start the job.' if k == 0 else 'Use the tool result and continue.'} Call a tool if needed. Answer:")
        agents.append(Agent(
            index=k, name=f"t{k}-{role}", role=role, depends_on=(k - 1,) if k else (),
            max_tokens=rng.randint(*config.output_tokens), task=cue, parent=k - 1 if k else None,
            delay_s=rng.uniform(*config.tool_pause_s) if k else 0.0,
            tool_result=_filler(rng, rng.randint(*config.tool_result_tokens)), agent_id=f"agent{which}-{role}"))
    return tuple(agents)


def generate(config: WorkloadConfig, rng: random.Random) -> Plan:
    """The plan of the whole run, drawn from ``rng`` only (same seed and config -> equal plan)."""
    config.validate()
    system = _system_prompt(rng, config.system_tokens)
    roles = {role: _role_prompt(rng, role, config.role_tokens) for role in ROLE_NAMES}
    workflows: list[Workflow] = []
    arrival = 0.0
    for w in range(config.workflows):
        if w:
            arrival += rng.expovariate(config.arrival_rate)
        workflow_id = f"wf-{w:04d}"
        if config.shape == TOOL_LOOP:
            agents = _tool_loop(rng, config, workflow_id)
            context = _context(rng, workflow_id, rng.randint(*config.context_tokens))
            workflows.append(Workflow(workflow_id, arrival, TOOLS, context, agents, config.shape, system, roles))
            continue
        mixed = config.shape != FAN_OUT  # the fan-out shape draws no topology (same draws as before otherwise)
        topology = CHAIN if mixed and rng.random() < config.chain_fraction else FANOUT
        specs = _chain(rng, config) if topology == CHAIN else _fanout(rng, config)
        agents = tuple(
            Agent(index=k, name=f"a{k}-{role}", role=role, depends_on=deps,
                  max_tokens=rng.randint(*config.output_tokens),
                  task=f"Task of agent a{k}-{role} in {workflow_id}: {task}\nAnswer:", parent=parent)
            for k, (role, deps, task, parent) in enumerate(specs)
        )
        context = _context(rng, workflow_id, rng.randint(*config.context_tokens))
        workflows.append(Workflow(workflow_id, arrival, topology, context, agents, config.shape, system, roles))
    return Plan(config, system, roles, tuple(workflows))
