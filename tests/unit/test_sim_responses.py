"""The simulator's Responses API and Anthropic Messages API, in-process (ASGI transport, time_scale 0).

Shapes follow vLLM: ``vllm/entrypoints/openai/responses/serving.py`` (the per-process ``response_store``, the
404 for a foreign ``previous_response_id``, ``construct_input_messages`` in ``responses/utils.py``, the stream
of ``responses_stream_generator``), ``responses/protocol.py`` (``ResponsesResponse``, ``ResponseUsage``),
``responses/api_router.py`` (``event: <type>`` SSE framing), ``vllm/entrypoints/anthropic/serving.py`` and
``protocol.py`` (Messages; usage per vLLM PR #40912: ``input_tokens`` exclude ``cache_read_input_tokens``)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from benchmarks.simulator.app import create_app
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.profile import load_profile

INSTRUCTIONS = "You are a meticulous assistant who answers in detail. " * 20


@contextlib.asynccontextmanager
async def client(name: str = "sim-test") -> AsyncIterator[httpx.AsyncClient]:
    cfg = SimConfig(profile=load_profile(), name=name, time_scale=0.0)
    app = create_app(cfg, rng=random.Random(0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
            yield c


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        kind, _, data = block.partition("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        found.append((kind[len("event: "):], orjson.loads(data[len("data: "):])))
    return found


async def test_chained_responses_hit_the_cache_and_a_foreign_id_is_404() -> None:
    async with client() as a, client("other") as b:
        first = await a.post("/v1/responses", json={"model": "m", "instructions": INSTRUCTIONS, "input": "hello",
                                                    "max_output_tokens": 5})
        assert first.status_code == 200
        body = first.json()
        assert next(iter(body)) == "id" and body["id"].startswith("resp_") and body["object"] == "response"
        assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
        assert body["output"][0]["type"] == "message" and body["output"][0]["content"][0]["type"] == "output_text"
        assert body["usage"]["output_tokens"] == 5 and body["usage"]["input_tokens_details"]["cached_tokens"] == 0
        second = await a.post("/v1/responses", json={"model": "m", "instructions": INSTRUCTIONS, "input": "more",
                                                     "previous_response_id": body["id"], "max_output_tokens": 5})
        assert second.status_code == 200
        usage = second.json()["usage"]
        # The chain's prompt starts with the first turn's prompt: cached (whole 16-token blocks).
        assert usage["input_tokens_details"]["cached_tokens"] >= body["usage"]["input_tokens"] - 16
        assert usage["input_tokens"] > body["usage"]["input_tokens"]
        assert second.json()["previous_response_id"] == body["id"]
        foreign = await b.post("/v1/responses", json={"input": "x", "previous_response_id": body["id"]})
        assert foreign.status_code == 404
        assert foreign.json() == {"error": {"message": f"Response with id '{body['id']}' not found.",
                                            "type": "invalid_request_error", "param": "response_id", "code": 404}}


async def test_unstored_responses_cannot_be_continued() -> None:
    async with client() as c:
        first = (await c.post("/v1/responses", json={"input": "x", "store": False})).json()
        again = await c.post("/v1/responses", json={"input": "y", "previous_response_id": first["id"]})
        assert again.status_code == 404


async def test_response_stream_events() -> None:
    async with client() as c:
        r = await c.post("/v1/responses", json={"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Tell me a story"}]}], "stream": True, "max_output_tokens": 4})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        found = events(r.text)
        kinds = [k for k, _ in found]
        assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]
        assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                              "response.output_item.done", "response.completed"]
        assert [d["sequence_number"] for _, d in found] == list(range(len(found)))
        created, completed = found[0][1]["response"], found[-1][1]["response"]
        assert created["id"] == completed["id"] and created["status"] == "in_progress" and created["usage"] is None
        deltas = "".join(d["delta"] for k, d in found if k == "response.output_text.delta")
        assert completed["output"][0]["content"][0]["text"] == deltas
        assert completed["usage"]["output_tokens"] == 4
        follow = await c.post("/v1/responses", json={"input": "go on", "previous_response_id": created["id"]})
        assert follow.status_code == 200  # a streamed response is stored too


async def test_scripted_tool_call_for_handoff_tests() -> None:
    async with client() as c:
        tools = [{"type": "function", "name": "transfer_to_billing", "parameters": {"type": "object"}}]
        r = (await c.post("/v1/responses", json={"input": "please [sim:call transfer_to_billing]",
                                                 "tools": tools})).json()
        assert r["status"] == "completed" and r["output"][0]["type"] == "function_call"
        assert r["output"][0]["name"] == "transfer_to_billing" and r["output"][0]["arguments"] == "{}"
        plain = (await c.post("/v1/responses", json={"input": "[sim:call unknown_tool]", "tools": tools})).json()
        assert plain["output"][0]["type"] == "message"


async def test_bad_responses_input_is_400() -> None:
    async with client() as c:
        r = await c.post("/v1/responses", json={"model": "m"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = await c.post("/v1/responses", json={"input": "x", "max_output_tokens": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"


async def test_messages_api_and_its_cache_usage() -> None:
    async with client() as c:
        body = {"model": "claude-like", "max_tokens": 5, "system": INSTRUCTIONS,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
        first = (await c.post("/v1/messages", json=body)).json()
        assert first["type"] == "message" and first["role"] == "assistant" and first["stop_reason"] == "max_tokens"
        assert first["content"][0]["type"] == "text" and first["usage"]["cache_read_input_tokens"] == 0
        second = (await c.post("/v1/messages", json=body)).json()
        use = second["usage"]
        assert use["cache_read_input_tokens"] > 0 and use["cache_creation_input_tokens"] == 0
        assert use["input_tokens"] + use["cache_read_input_tokens"] == first["usage"]["input_tokens"]
        r = await c.post("/v1/messages", json={**body, "stream": True})
        kinds = [k for k, _ in events(r.text)]
        assert kinds[:2] == ["message_start", "content_block_start"]
        assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        delta = events(r.text)[-2][1]
        assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 5
        bad = await c.post("/v1/messages", json={"model": "m", "messages": []})
        assert bad.status_code == 400 and bad.json()["type"] == "error"


async def test_the_request_id_names_the_response() -> None:
    async with client() as c:
        r = (await c.post("/v1/responses", json={"input": "x", "request_id": "resp_chosen_by_the_router"})).json()
        assert r["id"] == "resp_chosen_by_the_router"
        follow = await c.post("/v1/responses", json={"input": "y", "previous_response_id": "resp_chosen_by_the_router"})
        assert follow.status_code == 200


async def test_scripted_tool_call_in_chat_completions() -> None:
    async with client() as c:
        tools = [{"type": "function", "function": {"name": "transfer_to_billing", "parameters": {"type": "object"}}}]
        r = (await c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "[sim:call transfer_to_billing]"}], "tools": tools})).json()
        choice = r["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "transfer_to_billing", "arguments": "{}"}


async def test_status_is_incomplete_only_at_the_clients_token_bound() -> None:
    async with client() as c:
        assert (await c.post("/v1/responses", json={"input": "x"})).json()["status"] == "completed"
        bounded = (await c.post("/v1/responses", json={"input": "x", "max_output_tokens": 3})).json()
        assert bounded["status"] == "incomplete"
