"""The seed's three-agent workflow (data-collector → analyzer → reporter), run through Envoy.

Each agent's prompt is what a real multi-agent framework sends: a shared system prompt, the workflow's
context, the transcript so far, then the agent's role. Sharing one instance lets every agent reuse the KV
cache of the prefix the previous agents already computed — the cached-token column shows it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from a2a_service import NotFoundError, WorkflowStatus
from a2a_service.client import A2AClient

if TYPE_CHECKING:
    from benchmarks.stack import ModelSpec

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SYSTEM_PROMPT = (
    "You are one agent in a team of analysts. Be precise, cite figures from the context, and keep answers short. "
    * 4
)
CONTEXT = " ".join(
    f"Region {r} Q4 sales: revenue ${200 + 17 * r}k, growth {5 + r % 11}%, churn {2 + r % 5}%, "
    f"top product SKU-{1000 + 37 * r}, returns {r % 7} percent, new customers {40 + 3 * r}."
    for r in range(1, 41)
)
AGENTS = (
    ("data-collector", "Collect and summarize the Q4 sales data above: revenue, growth and outliers."),
    ("analyzer", "Analyze the sales trends in the summary and identify the three key insights."),
    ("reporter", "Generate an executive summary report from the analysis for the leadership team."),
)


@dataclass
class Step:
    agent: str
    instance: str
    status: int
    prompt_tokens: int
    cached_tokens: int
    seconds: float
    text: str
    model: str = MODEL


async def run_workflow(
    client: httpx.AsyncClient, url: str, workflow_id: str, *, max_tokens: int = 48, with_metadata: bool = True,
    between: Callable[[Step], Awaitable[None]] | None = None, models: Sequence[str] | None = None,
) -> list[Step]:
    """Run the three agents in order; ``between`` is awaited after each agent's request; ``models``: each
    agent's model (default: all on MODEL)."""
    transcript = ""
    steps: list[Step] = []
    for index, (agent, role) in enumerate(AGENTS):
        model = models[index] if models else MODEL
        prompt = f"{SYSTEM_PROMPT}\n\nContext:\n{CONTEXT}\n\nTranscript:\n{transcript}\n\n{agent}: {role}\n"
        body: dict[str, object] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
        if with_metadata:
            body["workflow_metadata"] = {"workflow_id": workflow_id, "agent_id": agent,
                                         "context_sharing_strategy": "auto"}
        started = time.perf_counter()
        response = await client.post(f"{url}/v1/completions", json=body)
        elapsed = time.perf_counter() - started
        data = response.json()
        usage = data.get("usage") or {}
        text = (data.get("choices") or [{}])[0].get("text", "")
        steps.append(Step(
            agent=agent,
            instance=response.headers.get("x-served-by", "?"),
            status=response.status_code,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
            seconds=elapsed,
            text=text,
            model=model,
        ))
        transcript += f"{agent}: {text.strip()}\n"
        if between is not None:
            await between(steps[-1])
    return steps


def print_steps(title: str, steps: list[Step]) -> None:
    print(title)
    width = max(len(s.model) for s in steps) if steps else 5
    print(f"  {'agent':<15} {'model':<{width}} {'instance':<15} {'status':>6} {'prompt tok':>10} {'cached tok':>10} "
          f"{'latency':>9}")
    for s in steps:
        print(f"  {s.agent:<15} {s.model:<{width}} {s.instance:<15} {s.status:>6} {s.prompt_tokens:>10} "
              f"{s.cached_tokens:>10} {s.seconds * 1000:>7.0f}ms")


def agent_models(models: Sequence[ModelSpec]) -> list[str]:
    """The demo's agents on a mixed fleet: the collector and the reporter on the first model, the analyzer on
    the second (its first LoRA adapter when it has one), so one workflow uses two models."""
    first = models[0].name
    second = models[1] if len(models) > 1 else models[0]
    analyzer = second.adapters[0] if second.adapters else second.name
    return [first, analyzer, first]


async def run_demo(url: str, *, with_a2a: bool = True, models: Sequence[ModelSpec] | None = None) -> None:
    workflow_id = f"analysis-workflow-{uuid.uuid4().hex[:6]}"
    a2a_lines: list[str] = []
    async with httpx.AsyncClient(timeout=120) as client, A2AClient(url) as a2a:

        async def hand_over(step: Step) -> None:
            # The data collector hands its findings to the analyzer through the A2A queue (via Envoy :8001).
            if not with_a2a or step.agent != "data-collector":
                return
            sent = await a2a.send(workflow_id, "data-collector", "analyzer",
                                  {"findings": ["trend_up", "anomaly_q4"], "confidence": 0.85},
                                  message_type="data", ttl=300)
            started = time.perf_counter()
            received = await a2a.receive(workflow_id, "analyzer", timeout=5.0, max_messages=10)
            waited = (time.perf_counter() - started) * 1000
            a2a_lines.append(f"  A2A: data-collector -> analyzer message {sent.message_id} sent; analyzer "
                             f"received {len(received)} message(s) in {waited:.1f} ms: "
                             f"{[d.message.json() for d in received]}")

        chosen = agent_models(models) if models else None
        steps = await run_workflow(client, url, workflow_id, between=hand_over, models=chosen)
        print_steps(f"== Demo workflow {workflow_id} through {url} ==", steps)
        if chosen is not None and len(set(chosen)) > 1:
            per_model = {m: {s.instance for s in steps if s.model == m} for m in dict.fromkeys(chosen)}
            print("  -> one workflow on " + " and ".join(
                f"{m} (served by {', '.join(sorted(i))})" for m, i in per_model.items())
                + ": each model keeps its own instance; cached prompt tokens: "
                + " -> ".join(str(s.cached_tokens) for s in steps))
        else:
            instances = {s.instance for s in steps}
            verdict = "one instance" if len(instances) == 1 else f"{len(instances)} instances (!)"
            print(f"  -> all three agents were served by {verdict}; cached prompt tokens: "
                  f"{' -> '.join(str(s.cached_tokens) for s in steps)}")
        for line in a2a_lines:
            print(line)
        if with_a2a:
            status = await wait_for_status(a2a, workflow_id, completed=len(steps))
            print(f"  GET /v1/workflows/{workflow_id}/status:")
            print(f"    assigned_instance={status.assigned_instance} total_requests={status.total_requests} "
                  f"affinity_hits={status.affinity_hits} cache_hits={status.cache_hits} "
                  f"cache_hit_rate={status.cache_hit_rate:.2f} cached_token_rate={status.cached_token_rate:.2f} "
                  f"(cached {status.cached_tokens} of {status.prompt_tokens} prompt tokens) "
                  f"active_agents={status.active_agents} "
                  f"messages sent={status.messages.sent} delivered={status.messages.delivered}")
            if len(status.model_instances) > 1:  # affinity per (workflow, model): one instance per model
                print(f"    model_instances={status.model_instances}")


async def wait_for_status(a2a: A2AClient, workflow_id: str, *, completed: int, timeout: float = 5.0) -> WorkflowStatus:
    """The router reports in batches (every 50 ms): wait until the workflow's completed requests show up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = await a2a.status(workflow_id)
            if status.completed_requests >= completed or time.monotonic() > deadline:
                return status
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)
