"""The poller's /v1/models and LoRA reading (extproc/datastore/poller.py), against scripted instances
(httpx.MockTransport): a failing /v1/models marks the instance down (it is not "serving nothing") and is logged
once; a server without the route (404: not vLLM) serves anything; a good list gives the models, the adapters and
their cards; vllm:lora_requests_info gives the running/waiting adapters and max_lora."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from extproc.config import Backend
from extproc.datastore.poller import BackendLoad, BackendPoller

METRICS = "\n".join([
    'vllm:num_requests_running{model_name="small"} 2.0',
    'vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql",waiting_lora_adapters=""} 1.7e9',
])
MODELS = {"object": "list", "data": [
    {"id": "small", "object": "model", "root": "/models/small", "parent": None, "max_model_len": 8192},
    {"id": "sql", "object": "model", "root": "/adapters/sql", "parent": "small", "max_model_len": None},
]}


def instance(models: Callable[[], httpx.Response]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/metrics":
            return httpx.Response(200, text=METRICS)
        return models()
    return httpx.MockTransport(handle)


async def poll(models: Callable[[], httpx.Response], times: int = 1) -> tuple[BackendLoad, list[bool]]:
    published: list[dict[str, BackendLoad]] = []
    health: list[bool] = []
    poller = BackendPoller([Backend("a", "http://a:8000")], interval=1.0, timeout=1.0, publish=published.append,
                           on_change=lambda _, healthy: health.append(healthy))
    poller._client = httpx.AsyncClient(transport=instance(models))
    for _ in range(times):
        await poller.poll_once()
    await poller._client.aclose()
    return published[-1]["a"], health


async def test_a_good_list_gives_models_adapters_cards_and_lora_state() -> None:
    load, health = await poll(lambda: httpx.Response(200, json=MODELS))
    assert health == [True] and load.running == 2.0
    assert load.models == {"small", "sql"} and load.adapters == {"sql"}
    assert [(c.id, c.parent, c.root) for c in load.cards] == [("small", None, "/models/small"),
                                                               ("sql", "small", "/adapters/sql")]
    assert (load.lora_running, load.lora_waiting, load.max_lora) == ({"sql"}, frozenset(), 2)


@pytest.mark.parametrize("answer", [
    lambda: httpx.Response(500, text="boom"),
    lambda: httpx.Response(200, text="not json"),
    lambda: httpx.Response(200, json={"data": "nope"}),
    lambda: httpx.Response(200, json={"data": [{"object": "model"}]}),
], ids=["500", "not JSON", "data not a list", "card without id"])
async def test_a_failing_list_is_a_down_instance_logged_once(answer: Callable[[], httpx.Response],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "extproc.backends")
    load, health = await poll(answer, times=3)
    assert health == [False, False, False] and not load.healthy and load.models is None
    assert len([r for r in caplog.records if "/v1/models failed" in r.getMessage()]) == 1


async def test_a_server_without_the_route_serves_anything() -> None:
    load, health = await poll(lambda: httpx.Response(404))
    assert health == [True] and load.models is None and load.cards == ()
