"""What the examples share: the workflow's context, the command line, and the checks of the workflow status.

Only the standard library and ``a2a_service.client`` (httpx) are imported here, so the AutoGen example can run in
its own virtualenv (AutoGen pins an older protobuf than the gateway's gRPC stubs need).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from a2a_service import WorkflowStatus
from a2a_service.client import A2AClient
from benchmarks.demo import wait_for_status

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Prefix caching reuses whole 16-token blocks from the start of the prompt, so every agent's prompt starts
# with the same team instructions and workflow context; what differs per agent comes after it.
TEAM_PROMPT = (
    "You are one agent in a small research team. Work only from the context below, cite figures, "
    "and keep answers short; the next agent builds on what you write."
)
RESULT_PREFIX = "EXAMPLE_RESULT "


def workflow_context(topic: str) -> str:
    rows = " ".join(
        f"Region {r}: revenue ${200 + 17 * r}k, growth {5 + r % 11}%, churn {2 + r % 5}%, "
        f"top product SKU-{1000 + 37 * r}."
        for r in range(1, 21)
    )
    return f"{TEAM_PROMPT}\n\nTopic: {topic}\n\nContext:\n{rows}"


def example_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", default="http://127.0.0.1:8001", help="the gateway (Envoy) URL")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--max-tokens", type=int, default=24, help="output tokens per agent call")
    return parser


@dataclass(slots=True, frozen=True)
class Call:
    """One LLM call as the client saw it."""

    workflow_id: str
    agent: str
    api: str  # "completions" / "chat"
    stream: bool
    served_by: str  # the gateway's x-served-by response header
    prompt_tokens: int
    cached_tokens: int


def check_workflow(status: WorkflowStatus, calls: Sequence[Call]) -> list[str]:
    """What did not behave, as readable lines (empty when the workflow was pinned and reused its cache)."""
    problems: list[str] = []
    served = sorted({c.served_by for c in calls})
    if len(served) != 1:
        problems.append(f"calls were served by {len(served)} instances: {served}")
    # assigned_instance is the instance's base URL when the router knows it (the seed's example), else the name
    # x-served-by carries; a client of the gateway cannot map the URL to the name, so it checks the name only.
    is_url = isinstance(status.assigned_instance, str) and status.assigned_instance.startswith(("http://",
                                                                                                "https://"))
    if len(served) != 1 or (not is_url and status.assigned_instance not in served):
        problems.append(f"assigned_instance {status.assigned_instance!r} != x-served-by {served}")
    if status.total_requests != len(calls):
        problems.append(f"status counts {status.total_requests} requests, the client made {len(calls)}")
    missing = sorted({c.agent for c in calls} - set(status.agents))
    if missing:
        problems.append(f"agents missing from the status: {missing}")
    if status.cache_hits <= 0 or status.cache_hit_rate <= 0:
        problems.append(f"no prefix-cache reuse: cache_hits={status.cache_hits} rate={status.cache_hit_rate}")
    return problems


def print_calls(calls: Sequence[Call]) -> None:
    print(f"  {'agent':<12} {'api':<12} {'stream':<6} {'served by':<10} {'prompt tok':>10} {'cached tok':>10}")
    for c in calls:
        print(f"  {c.agent:<12} {c.api:<12} {c.stream!s:<6} {c.served_by:<10} {c.prompt_tokens:>10} "
              f"{c.cached_tokens:>10}")


def print_status(status: WorkflowStatus) -> None:
    print(f"  GET /v1/workflows/{status.workflow_id}/status: assigned_instance={status.assigned_instance} "
          f"total_requests={status.total_requests} affinity_hits={status.affinity_hits} "
          f"cache_hits={status.cache_hits} cache_hit_rate={status.cache_hit_rate:.2f} "
          f"cached_token_rate={status.cached_token_rate:.2f} "
          f"agents={list(status.agents)} messages sent={status.messages.sent} "
          f"delivered={status.messages.delivered}")


async def report(base_url: str, calls: Sequence[Call], problems: Sequence[str] = ()) -> int:
    """Read each workflow's status through the gateway, print it and the checks (plus the example's own
    ``problems``); returns the exit code."""
    problems = list(problems)
    async with A2AClient(base_url) as a2a:
        for workflow_id in dict.fromkeys(c.workflow_id for c in calls):
            mine = [c for c in calls if c.workflow_id == workflow_id]
            status = await wait_for_status(a2a, workflow_id, completed=len(mine), timeout=10.0)
            print_status(status)
            problems += [f"{workflow_id}: {p}" for p in check_workflow(status, mine)]
    # One machine-readable line, so a test can check the same things itself.
    print(RESULT_PREFIX + json.dumps({"calls": [asdict(c) for c in calls], "problems": problems}))
    for p in problems:
        print(f"FAILED: {p}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
