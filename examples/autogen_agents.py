"""AutoGen (``autogen-agentchat`` + ``autogen-ext[openai]``) calling the gateway: a round-robin team of three.

Each ``AssistantAgent`` has its own ``OpenAIChatCompletionClient`` whose ``default_headers`` carry the
workflow and agent ids (AutoGen builds the request body itself, headers are the clean way in). AutoGen puts
an agent's system message first, so every agent's system message starts with the same workflow context and
ends with its role: the context's KV cache is shared by the whole team. After the round, the writer hands the
report to the researcher through the A2A service.

AutoGen pins protobuf 5, older than the gateway's gRPC stubs need: run this in its own virtualenv
(see docs/clients.md); it needs only autogen-agentchat, autogen-ext[openai], httpx and orjson.

    python -m examples.autogen_agents --base-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from a2a_service.client import A2AClient

from ._common import Call, example_parser, print_calls, report, workflow_context

if TYPE_CHECKING:
    from autogen_ext.models.openai import OpenAIChatCompletionClient

ROLES = {
    "researcher": "You are the researcher: list the regions with the highest growth and their figures.",
    "analyst": "You are the analyst: explain what drives growth in the regions the researcher found.",
    "writer": "You are the writer: summarise the discussion in two sentences for the leadership team.",
}
# Not an OpenAI model, so AutoGen must be told what it can do.
MODEL_INFO = {"vision": False, "function_calling": False, "json_output": False, "structured_output": False,
              "family": "unknown"}


def model_client(base_url: str, model: str, max_tokens: int, workflow_id: str, agent: str,
                 calls: list[Call]) -> OpenAIChatCompletionClient:
    # AutoGen is imported where it is used, so that --help (and the docs' command checker) work without it.
    import openai
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def record(response: Any) -> None:  # an httpx response (httpx2 from openai 3 on)
        # AutoGen's results carry neither response headers nor cached tokens: read them off the HTTP response.
        if not response.headers.get("content-type", "").startswith("application/json"):
            return
        await response.aread()
        usage = response.json().get("usage") or {}
        calls.append(Call(workflow_id, agent, "chat", False, response.headers.get("x-served-by", "?"),
                          usage.get("prompt_tokens", 0),
                          (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)))

    return OpenAIChatCompletionClient(
        model=model,
        base_url=f"{base_url}/v1",
        api_key="unused",
        model_info=MODEL_INFO,  # type: ignore[typeddict-item]
        max_tokens=max_tokens,
        default_headers={"x-workflow-id": workflow_id, "x-agent-id": agent},
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [record]}),
    )


async def run_team(base_url: str, model: str, max_tokens: int) -> tuple[list[Call], list[str]]:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.teams import RoundRobinGroupChat

    workflow_id = f"autogen-{uuid.uuid4().hex[:6]}"
    context = workflow_context(f"Q4 sales review {workflow_id}")
    calls: list[Call] = []
    clients = {name: model_client(base_url, model, max_tokens, workflow_id, name, calls) for name in ROLES}
    agents = [AssistantAgent(name, model_client=clients[name], system_message=f"{context}\n\n{role}")
              for name, role in ROLES.items()]
    team = RoundRobinGroupChat(agents, max_turns=6)  # two rounds: each agent speaks twice
    result = await team.run(task="Prepare the Q4 growth briefing.")
    report_text = result.messages[-1].to_text()
    async with A2AClient(base_url) as a2a:  # the A2A service, behind the same gateway
        await a2a.send(workflow_id, "writer", "researcher", {"report": report_text}, message_type="review")
        inbox = await a2a.receive(workflow_id, "researcher", timeout=5.0)
    for client in clients.values():
        await client.close()
    print(f"== AutoGen team {workflow_id}: {len(result.messages) - 1} turns, stop: {result.stop_reason} ==")
    received = [d.message.json()["report"] for d in inbox]
    print(f"  researcher received {len(received)} A2A message(s): {[r[:60] for r in received]}")
    return calls, [] if received == [report_text] else [f"A2A: researcher received {received!r}"]


def build_parser() -> argparse.ArgumentParser:
    return example_parser(__doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    calls, problems = asyncio.run(run_team(args.base_url, args.model, args.max_tokens))
    print_calls(calls)
    return asyncio.run(report(args.base_url, calls, problems))


if __name__ == "__main__":
    sys.exit(main())
