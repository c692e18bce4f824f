"""The OpenAI Agents SDK (``openai-agents``), unchanged, through the gateway: a triage agent hands a billing
question off to a billing agent, which then answers a follow-up question.

Twice, with no ``workflow_metadata`` anywhere (the keys the SDK already sends are the workflow's identity):

- over the **Responses API** (``OpenAIResponsesModel``) with stored responses chained by
  ``previous_response_id`` (``Runner.run(..., auto_previous_response_id=True)``, then the follow-up run with
  ``previous_response_id=result.last_response_id``): vLLM keeps stored responses in the memory of the instance
  that produced them, and the router sends each follow-up there;
- over **Chat Completions** (``OpenAIChatCompletionsModel``) with a ``prompt_cache_key`` in ``ModelSettings``:
  the SDK generates one itself (``agents-sdk:run:<id>``, agents/run_internal/prompt_cache_key.py) only for
  api.openai.com, so against a gateway the application sets it, once per conversation.

The simulated model never calls tools by itself: the question carries ``[sim:call transfer_to_billing_agent]``,
which asks the simulator (benchmarks/simulator/responses.py) for the handoff's tool call. A real model decides
from the triage instructions; the marker is then just text.

    python -m examples.openai_agents --base-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import httpx
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from ._common import RESULT_PREFIX, example_parser, workflow_context

HANDOFF = "[sim:call transfer_to_billing_agent]"


class Recorder:
    """What the SDK sent and what the gateway answered, from httpx event hooks (the SDK hides headers)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def on_request(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        self.calls.append({"path": request.url.path, "previous_response_id": body.get("previous_response_id"),
                           "prompt_cache_key": body.get("prompt_cache_key"), "tools": len(body.get("tools") or [])})

    async def on_response(self, response: httpx.Response) -> None:
        await response.aread()
        call = self.calls[-1]
        call["status"] = response.status_code
        call["served_by"] = response.headers.get("x-served-by")
        usage = response.json().get("usage") or {} if response.status_code == 200 else {}
        details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        call["cached_tokens"] = details.get("cached_tokens", 0)


def agents_for(model: Any, settings: ModelSettings) -> Agent[Any]:
    context = workflow_context("Invoice dispute of customer 4711")  # shared prefix of both agents' prompts
    billing = Agent(name="Billing agent", model=model, model_settings=settings,
                    instructions=f"{context}\n\nYou are the billing agent: answer invoice questions precisely.")
    return Agent(name="Triage agent", model=model, model_settings=settings, handoffs=[billing],
                 instructions=f"{context}\n\nYou are the triage agent: hand billing questions to the billing agent.")


async def conversation(api: str, base_url: str, model_name: str) -> tuple[list[dict[str, Any]], list[str]]:
    recorder = Recorder()
    http = httpx.AsyncClient(timeout=60, event_hooks={"request": [recorder.on_request],
                                                      "response": [recorder.on_response]})
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", http_client=http, max_retries=0)
    settings = ModelSettings()
    if api == "responses":
        model: Any = OpenAIResponsesModel(model=model_name, openai_client=client)
    else:  # one prompt_cache_key per conversation: the router's workflow identity (and OpenAI's cache key)
        model = OpenAIChatCompletionsModel(model=model_name, openai_client=client)
        settings = ModelSettings(extra_args={"prompt_cache_key": f"billing-chat-{uuid.uuid4().hex[:8]}"})
    triage = agents_for(model, settings)
    problems: list[str] = []
    try:
        question = f"Why was invoice INV-88 charged twice? {HANDOFF}"
        if api == "responses":
            first = await Runner.run(triage, question, auto_previous_response_id=True)
            second = await Runner.run(first.last_agent, "And when will the refund arrive?",
                                      previous_response_id=first.last_response_id, auto_previous_response_id=True)
        else:
            first = await Runner.run(triage, question)
            follow_up = {"role": "user", "content": "And when will the refund arrive?"}
            second = await Runner.run(first.last_agent, [*first.to_input_list(), follow_up])
    finally:
        await http.aclose()
    calls = recorder.calls
    if first.last_agent.name != "Billing agent":
        problems.append(f"no handoff: the last agent was {first.last_agent.name!r}")
    if not isinstance(second.final_output, str) or not second.final_output:
        problems.append("the follow-up got no answer")
    if any(c.get("status") != 200 for c in calls):
        problems.append(f"failed calls: {[(c['path'], c.get('status')) for c in calls if c.get('status') != 200]}")
    served = sorted({str(c.get("served_by")) for c in calls})
    # A chained response can only be answered where it is stored; a chat conversation may move when another
    # instance holds as much of its prompt (the cached-token check below is what it must keep).
    if api == "responses" and len(served) != 1:
        problems.append(f"{api}: the conversation was served by {served}, not one instance")
    if len(calls) < 3:
        problems.append(f"{api}: {len(calls)} calls, expected triage + billing + follow-up")
    if api == "responses" and any(c["previous_response_id"] is None for c in calls[1:]):
        problems.append("responses: a follow-up call did not chain previous_response_id")
    if any(c["cached_tokens"] <= 0 for c in calls[1:]):
        problems.append(f"{api}: no prefix-cache reuse after the first call: {[c['cached_tokens'] for c in calls]}")
    return calls, problems


async def main_async(base_url: str, model: str) -> int:
    set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI's backend
    calls: list[dict[str, Any]] = []
    problems: list[str] = []
    for api in ("responses", "chat"):
        found, trouble = await conversation(api, base_url, model)
        print(f"{api}:")
        for c in found:
            print(f"  {c['path']:<22} served by {c.get('served_by')!s:<8} cached {c.get('cached_tokens', 0):>5} "
                  f"previous_response_id={c['previous_response_id']} prompt_cache_key={c['prompt_cache_key']}")
        calls += [{**c, "api": api} for c in found]
        problems += trouble
    print(RESULT_PREFIX + json.dumps({"calls": calls, "problems": problems}))
    for p in problems:
        print(f"FAILED: {p}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    return example_parser(__doc__.splitlines()[0])


def main() -> None:
    args = build_parser().parse_args()
    sys.exit(asyncio.run(main_async(args.base_url, args.model)))


if __name__ == "__main__":
    main()
