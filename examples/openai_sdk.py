"""The official OpenAI Python SDK, unchanged, calling the gateway.

Four small workflows of three agents (collector -> analyst -> writer), each agent building on the previous
one's answer: the legacy ``completions`` API and ``chat.completions``, with the workflow metadata once in the
body (``extra_body``) and once in headers (``default_headers`` for the workflow, ``extra_headers`` per agent).
Agents alternate non-streaming and streaming calls (``stream_options={"include_usage": True}`` so the last chunk
carries ``usage``). The collector hands its findings to the analyst through the A2A service.

    python -m examples.openai_sdk --base-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from openai import OpenAI

from a2a_service.client import A2AClient

from ._common import Call, example_parser, print_calls, report, workflow_context

AGENTS = (
    ("collector", "List the three regions with the highest growth."),
    ("analyst", "Explain what drives growth in those regions."),
    ("writer", "Write a two-sentence summary for the leadership team."),
)


def cached(usage: Any) -> int:
    details = usage.prompt_tokens_details if usage is not None else None
    return (details.cached_tokens or 0) if details is not None else 0


def run_workflow(args: argparse.Namespace, api: str, transport: str) -> list[Call]:
    base_url = args.base_url
    workflow_id = f"sdk-{api}-{transport}-{uuid.uuid4().hex[:6]}"
    # Headers suit code that cannot change request bodies; the workflow id goes into every request.
    default_headers = {"x-workflow-id": workflow_id} if transport == "headers" else None
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", default_headers=default_headers)
    context = workflow_context(f"Q4 sales review {workflow_id}")
    transcript: list[tuple[str, str]] = []
    calls: list[Call] = []
    for step, (agent, task) in enumerate(AGENTS):
        if transport == "body":
            extra: dict[str, Any] = {"extra_body": {"workflow_metadata": {"workflow_id": workflow_id,
                                                                          "agent_id": agent}}}
        else:
            extra = {"extra_headers": {"x-agent-id": agent}}
        if agent == "analyst":
            task += f" The collector's findings (A2A): {receive_findings(base_url, workflow_id)}"
        stream = step % 2 == 1
        text, served_by, usage = call(client, args, api, stream, context, transcript, agent, task, extra)
        calls.append(Call(workflow_id, agent, api, stream, served_by, usage.prompt_tokens, cached(usage)))
        transcript.append((agent, text))
        if agent == "collector":
            send_findings(base_url, workflow_id, text)
    client.close()
    return calls


def call(
    client: OpenAI, args: argparse.Namespace, api: str, stream: bool, context: str,
    transcript: Sequence[tuple[str, str]], agent: str, task: str, extra: dict[str, Any],
) -> tuple[str, str, Any]:
    """One agent's request; returns (text, x-served-by, usage)."""
    common: dict[str, Any] = {"model": args.model, "max_tokens": args.max_tokens, **extra}
    if stream:
        common.update(stream=True, stream_options={"include_usage": True})
    if api == "completions":
        history = "".join(f"{a}: {t.strip()}\n" for a, t in transcript)
        prompt = f"{context}\n\nTranscript:\n{history}\n{agent}: {task}\n"
        if not stream:
            raw = client.completions.with_raw_response.create(prompt=prompt, **common)
            completion = raw.parse()
            return completion.choices[0].text, raw.headers.get("x-served-by", "?"), completion.usage
        with client.completions.with_streaming_response.create(prompt=prompt, **common) as response:
            text, usage = "", None
            for chunk in response.parse():
                text += "".join(c.text for c in chunk.choices)
                usage = chunk.usage or usage
            return text, response.headers.get("x-served-by", "?"), usage
    messages: list[Any] = [{"role": "system", "content": context}]
    for a, t in transcript:
        messages.append({"role": "assistant", "content": t, "name": a})
    messages.append({"role": "user", "content": f"{agent}: {task}"})
    if not stream:
        raw = client.chat.completions.with_raw_response.create(messages=messages, **common)
        chat = raw.parse()
        return chat.choices[0].message.content or "", raw.headers.get("x-served-by", "?"), chat.usage
    with client.chat.completions.with_streaming_response.create(messages=messages, **common) as response:
        text, usage = "", None
        for chunk in response.parse():
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        return text, response.headers.get("x-served-by", "?"), usage


def send_findings(base_url: str, workflow_id: str, text: str) -> None:
    async def send() -> None:
        # The A2A service sits behind the same gateway (/v1/workflows/...).
        async with A2AClient(base_url) as a2a:
            await a2a.send(workflow_id, "collector", "analyst", {"findings": text.strip()}, message_type="data")

    asyncio.run(send())


def receive_findings(base_url: str, workflow_id: str) -> str:
    async def receive() -> str:
        async with A2AClient(base_url) as a2a:
            deliveries = await a2a.receive(workflow_id, "analyst", timeout=5.0)
        return " ".join(str(d.message.json()["findings"]) for d in deliveries)

    return asyncio.run(receive())


def build_parser() -> argparse.ArgumentParser:
    return example_parser(__doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    calls: list[Call] = []
    growth_problems: list[str] = []
    for api in ("completions", "chat"):
        for transport in ("body", "headers"):
            mine = run_workflow(args, api, transport)
            print(f"== {api}, workflow metadata in the {transport}: workflow {mine[0].workflow_id} ==")
            print_calls(mine)
            # Every later agent reuses the prefix (context + transcript) the earlier ones computed.
            if not all(c.cached_tokens > mine[0].cached_tokens for c in mine[1:]):
                growth_problems.append(f"{mine[0].workflow_id}: cached tokens did not grow: "
                                       f"{[c.cached_tokens for c in mine]}")
            calls += mine
    return asyncio.run(report(args.base_url, calls, growth_problems))


if __name__ == "__main__":
    sys.exit(main())
