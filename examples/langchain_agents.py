"""LangChain (``langchain-openai``'s ``ChatOpenAI``) calling the gateway: researcher -> analyst -> writer.

Each agent is its own ``ChatOpenAI`` carrying the workflow metadata in ``extra_body`` (LangChain's documented
place for fields an OpenAI-compatible server adds to the API). All agents send the same workflow context
first and their own instructions last, so each one reuses the KV cache of everything before. The researcher
hands its notes to the analyst through the A2A service; the writer streams its answer.

    python -m examples.langchain_agents --base-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from a2a_service.client import A2AClient

from ._common import Call, example_parser, print_calls, report, workflow_context

AGENTS = {
    "researcher": "You are the researcher. List the three regions with the highest growth and their figures.",
    "analyst": "You are the analyst. Explain what drives growth in the regions the researcher found.",
    "writer": "You are the writer. Write a two-sentence summary for the leadership team.",
}


def make_agent(base_url: str, model: str, max_tokens: int, workflow_id: str, agent: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        model=model,
        max_tokens=max_tokens,
        extra_body={"workflow_metadata": {"workflow_id": workflow_id, "agent_id": agent}},
        include_response_headers=True,  # to show the gateway's x-served-by header
        stream_usage=True,  # streaming: ask for usage (with cached tokens) in the last chunk
    )


def as_call(workflow_id: str, agent: str, stream: bool, message: AIMessage) -> Call:
    usage: Any = message.usage_metadata or {}
    return Call(
        workflow_id, agent, "chat", stream,
        served_by=message.response_metadata.get("headers", {}).get("x-served-by", "?"),
        prompt_tokens=usage.get("input_tokens", 0),
        cached_tokens=usage.get("input_token_details", {}).get("cache_read", 0),
    )


async def run_workflow(base_url: str, model: str, max_tokens: int) -> list[Call]:
    workflow_id = f"langchain-{uuid.uuid4().hex[:6]}"
    agents = {name: make_agent(base_url, model, max_tokens, workflow_id, name) for name in AGENTS}
    shared: list[BaseMessage] = [SystemMessage(workflow_context(f"Q4 sales review {workflow_id}"))]
    calls: list[Call] = []
    async with A2AClient(base_url) as a2a:  # the A2A service, behind the same gateway
        notes = await agents["researcher"].ainvoke([*shared, HumanMessage(AGENTS["researcher"])])
        calls.append(as_call(workflow_id, "researcher", False, notes))
        shared.append(AIMessage(notes.text, name="researcher"))
        await a2a.send(workflow_id, "researcher", "analyst", {"notes": notes.text}, message_type="data")

        inbox = await a2a.receive(workflow_id, "analyst", timeout=5.0)
        handed = " ".join(d.message.json()["notes"] for d in inbox)
        analysis = await agents["analyst"].ainvoke(
            [*shared, HumanMessage(f"{AGENTS['analyst']} Notes received: {handed}")]
        )
        calls.append(as_call(workflow_id, "analyst", False, analysis))
        shared.append(AIMessage(analysis.text, name="analyst"))

        summary: AIMessageChunk | None = None
        async for chunk in agents["writer"].astream([*shared, HumanMessage(AGENTS["writer"])]):
            summary = chunk if summary is None else summary + chunk
        assert summary is not None
        calls.append(as_call(workflow_id, "writer", True, summary))
    print(f"== LangChain workflow {workflow_id}: researcher -> analyst -> writer ==")
    print(f"  writer: {summary.text[:80]!r}...")
    return calls


def build_parser() -> argparse.ArgumentParser:
    return example_parser(__doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    calls = asyncio.run(run_workflow(args.base_url, args.model, args.max_tokens))
    print_calls(calls)
    return asyncio.run(report(args.base_url, calls))


if __name__ == "__main__":
    sys.exit(main())
