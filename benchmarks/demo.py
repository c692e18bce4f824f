"""The seed's three-agent workflow (data-collector → analyzer → reporter), run through Envoy.

Each agent's prompt is what a real multi-agent framework sends: a shared system prompt, the workflow's
context, the transcript so far, then the agent's role. Sharing one instance lets every agent reuse the KV
cache of the prefix the previous agents already computed — the cached-token column shows it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import httpx

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


async def run_workflow(
    client: httpx.AsyncClient, url: str, workflow_id: str, *, max_tokens: int = 48, with_metadata: bool = True
) -> list[Step]:
    transcript = ""
    steps: list[Step] = []
    for agent, role in AGENTS:
        prompt = f"{SYSTEM_PROMPT}\n\nContext:\n{CONTEXT}\n\nTranscript:\n{transcript}\n\n{agent}: {role}\n"
        body: dict[str, object] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
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
        ))
        transcript += f"{agent}: {text.strip()}\n"
    return steps


def print_steps(title: str, steps: list[Step]) -> None:
    print(title)
    print(f"  {'agent':<15} {'instance':<9} {'status':>6} {'prompt tok':>10} {'cached tok':>10} {'latency':>9}")
    for s in steps:
        print(f"  {s.agent:<15} {s.instance:<9} {s.status:>6} {s.prompt_tokens:>10} {s.cached_tokens:>10} "
              f"{s.seconds * 1000:>7.0f}ms")


async def run_demo(url: str) -> None:
    workflow_id = f"analysis-workflow-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=120) as client:
        steps = await run_workflow(client, url, workflow_id)
        print_steps(f"== Demo workflow {workflow_id} through {url} ==", steps)
        instances = {s.instance for s in steps}
        verdict = "one instance" if len(instances) == 1 else f"{len(instances)} instances (!)"
        print(f"  -> all three agents were served by {verdict}; cached prompt tokens: "
              f"{' -> '.join(str(s.cached_tokens) for s in steps)}")
