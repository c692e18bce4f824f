"""The simulator's ``POST /tokenize``, in the shape of vLLM's (``vllm/entrypoints/openai/protocol.py``:
``TokenizeCompletionRequest``, ``TokenizeChatRequest``, ``TokenizeResponse``; ``serving_tokenization.py``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from benchmarks.simulator.app import create_app
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.profile import load_profile
from benchmarks.simulator.tokenizer import apply_chat_template, encode, pieces

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SimConfig(profile=load_profile(), name="tok", time_scale=0.0), rng=random.Random(0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        yield c


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"model": "m", "prompt": "Hello world"}, "Hello world"),
        ({"prompt": "Hello world", "add_special_tokens": True}, "Hello world"),  # no BOS: the tokenizer has none
        ({"prompt": ""}, ""),
        ({"model": "m", "messages": CHAT}, apply_chat_template(CHAT)),
        ({"messages": CHAT, "add_generation_prompt": False}, apply_chat_template(CHAT, False)),
        ({"messages": CHAT, "add_generation_prompt": False, "continue_final_message": True},
         apply_chat_template(CHAT, False)),
    ],
)  # fmt: skip
async def test_tokenize(client: httpx.AsyncClient, body: dict[str, Any], text: str) -> None:
    r = await client.post("/tokenize", json=body)
    assert r.status_code == 200
    data = r.json()
    ids = encode(text)
    assert data == {"count": len(ids), "max_model_len": data["max_model_len"], "tokens": ids, "token_strs": None}
    assert data["max_model_len"] > 0


async def test_tokenize_token_strs(client: httpx.AsyncClient) -> None:
    r = await client.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True})
    assert r.json()["token_strs"] == pieces("Hello world") == ["Hell", "o", " wor", "ld"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages"),
        ({"messages": CHAT, "continue_final_message": True}, "messages"),  # with add_generation_prompt (default)
        ({"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
        ({"prompt": "x", "model": 3}, "model"),
        ([1, 2], None),
    ],
)
async def test_tokenize_errors(client: httpx.AsyncClient, body: Any, param: str | None) -> None:
    r = await client.post("/tokenize", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_tokenize_is_not_recorded_as_an_inference_request(client: httpx.AsyncClient) -> None:
    await client.post("/tokenize", json={"prompt": "x"})
    assert (await client.get("/sim/requests")).json() == []


async def test_tokenize_invalid_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/tokenize", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400
