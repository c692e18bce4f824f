"""Two models (one with LoRA adapters) on a 4-instance fleet, through a real Envoy: each request lands on an
instance serving its model, a workflow using both models keeps one instance per model, an unknown model is the
gateway's 404 model_not_found, GET /v1/models answers the union, and an adapter request prefers the instance
where the adapter is running (vLLM's vllm:lora_requests_info, vllm/v1/metrics/loggers.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from a2a_service.client import A2AClient
from benchmarks.demo import wait_for_status
from benchmarks.simulator.config import INSTANCE_HEADER
from benchmarks.stack import ModelSpec, Stack
from tests.conftest import stack_options

BIG, SMALL = "planner-70b", "worker-8b"
ADAPTERS = ("sql", "review")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Stack]:
    options = stack_options(models=(ModelSpec(BIG, 2), ModelSpec(SMALL, 2, ADAPTERS)), max_loras=1)
    with Stack(options) as running:
        yield running


def serving(stack: Stack, model: str) -> set[str]:
    """The simulators that serve ``model`` (a served name or an adapter), from the flags they were started with."""
    return {name for name, args in stack.sim_models.items() if model in args or any(
        a.startswith(f"{model}=") for a in args)}


def body(model: object, prompt: str, workflow_id: str | None = None, agent: str = "a", max_tokens: int = 4,
         **extra: object) -> dict[str, object]:
    request: dict[str, object] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, **extra}
    if workflow_id is not None:
        request["workflow_metadata"] = {"workflow_id": workflow_id, "agent_id": agent}
    return request


async def test_each_request_lands_on_an_instance_serving_its_model(fleet: Stack) -> None:
    assert serving(fleet, BIG) == {"vllm-1", "vllm-2"} and serving(fleet, SMALL) == {"vllm-3", "vllm-4"}
    async with httpx.AsyncClient(timeout=30) as client:
        for model in (BIG, SMALL, *ADAPTERS):
            replies = await asyncio.gather(*(client.post(f"{fleet.url}/v1/completions", json=body(
                model, f"independent request {i} {uuid.uuid4().hex}")) for i in range(8)))
            assert [r.status_code for r in replies] == [200] * 8, replies[0].text
            landed = {r.headers[INSTANCE_HEADER] for r in replies}
            assert landed <= serving(fleet, model), (model, landed)
            assert {r.json()["model"] for r in replies} == {model}


async def test_one_workflow_keeps_one_instance_per_model(fleet: Stack) -> None:
    workflow_id = f"two-models-{uuid.uuid4().hex[:6]}"
    context = "shared context of the workflow. " * 40
    landed: dict[str, set[str]] = {BIG: set(), SMALL: set()}
    async with httpx.AsyncClient(timeout=30) as client:
        for step in range(6):
            model = BIG if step % 2 == 0 else SMALL
            r = await client.post(f"{fleet.url}/v1/completions", json=body(
                model, f"{context} step {step}", workflow_id, agent=f"agent-{model}"))
            assert r.status_code == 200, r.text
            landed[model].add(r.headers[INSTANCE_HEADER])
    assert len(landed[BIG]) == 1 and landed[BIG] <= serving(fleet, BIG), landed
    assert len(landed[SMALL]) == 1 and landed[SMALL] <= serving(fleet, SMALL), landed
    # The workflow status shows each model's instance (the router reports in batches: wait for them).
    async with A2AClient(fleet.url) as a2a:
        status = await wait_for_status(a2a, workflow_id, completed=6)
    urls = {name: fleet.simulator_url(name) for name in fleet.simulators}
    assert status.model_instances == {BIG: urls[landed[BIG].pop()], SMALL: urls[landed[SMALL].pop()]}


async def test_unknown_model_is_the_gateways_404_and_a_bad_model_a_400(fleet: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        before = {name: (await client.get(f"{fleet.simulator_url(name)}/sim/stats")).json()["requests"]
                  for name in fleet.simulators}
        missing = await client.post(f"{fleet.url}/v1/completions", json=body("no-such-model", "hi"))
        chat = await client.post(f"{fleet.url}/v1/chat/completions", json={
            "model": "gpt-unknown", "messages": [{"role": "user", "content": "hi"}]})
        bad = await client.post(f"{fleet.url}/v1/completions", json=body(7, "hi"))
        after = {name: (await client.get(f"{fleet.simulator_url(name)}/sim/stats")).json()["requests"]
                 for name in fleet.simulators}
    assert missing.status_code == 404, missing.text
    error = missing.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "no-such-model" in error["message"]
    assert INSTANCE_HEADER not in missing.headers
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
    assert after == before  # no backend saw any of them


async def test_models_list_is_the_fleets_union(fleet: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{fleet.url}/v1/models")
    assert r.status_code == 200, r.text
    cards = {card["id"]: card for card in r.json()["data"]}
    assert set(cards) == {BIG, SMALL, *ADAPTERS}
    assert cards["sql"]["parent"] == SMALL and cards["sql"]["root"].endswith("/sql")
    assert cards[BIG]["parent"] is None


async def test_adapter_request_prefers_the_instance_where_it_is_running(fleet: Stack) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        # A long "review" generation holds the adapter's slot on one small instance (max_loras 1) ...
        long = asyncio.create_task(client.post(f"{fleet.url}/v1/completions", json=body(
            "review", f"long review {uuid.uuid4().hex}", max_tokens=30_000)))  # >= 3.6 s at time scale 0.01
        holder = None
        for _ in range(200):  # until the router's scrape (every 0.1 s) shows it running somewhere
            await asyncio.sleep(0.05)
            for name in serving(fleet, "review"):
                metrics = (await client.get(f"{fleet.simulator_url(name)}/metrics")).text
                if 'running_lora_adapters="review"' in metrics and _latest_running(metrics) == "review":
                    holder = name
            if holder is not None:
                break
        assert holder is not None, "the long review request never showed as running"
        await asyncio.sleep(1.0)  # ten scrapes of the router's poller (every 0.1 s)
        # ... so the next "review" requests go there (no load, no wait), and "sql" goes to the other instance,
        # whose slot is free, rather than waiting behind review's.
        reviews = [await client.post(f"{fleet.url}/v1/completions", json=body("review", f"r{i} {uuid.uuid4().hex}"))
                   for i in range(3)]
        sql = await client.post(f"{fleet.url}/v1/completions", json=body("sql", f"q {uuid.uuid4().hex}"))
        assert [r.status_code for r in reviews] == [200] * 3
        assert {r.headers[INSTANCE_HEADER] for r in reviews} == {holder}
        assert sql.status_code == 200 and sql.headers[INSTANCE_HEADER] == (serving(fleet, "sql") - {holder}).pop()
        assert (await long).status_code == 200


def _latest_running(metrics: str) -> str:
    series = [line for line in metrics.splitlines() if line.startswith("vllm:lora_requests_info{")]
    latest = max(series, key=lambda line: float(line.rsplit(" ", 1)[1]))
    return latest.split('running_lora_adapters="', 1)[1].split('"', 1)[0]


async def test_a_dead_instance_is_replaced_by_one_serving_the_same_model(fleet: Stack) -> None:
    # Runs last in this module (it kills vllm-1). Envoy's retries stay within the model's instances (the stack's
    # failover groups): a request caught by the death is retried on vllm-2, never on a worker-8b instance (404).
    async with httpx.AsyncClient(timeout=30) as client:
        first = await client.post(f"{fleet.url}/v1/completions", json=body(BIG, f"before {uuid.uuid4().hex}"))
        assert first.status_code == 200
        fleet.kill_simulator("vllm-1")
        replies = [await client.post(f"{fleet.url}/v1/completions", json=body(BIG, f"after {i} {uuid.uuid4().hex}"))
                   for i in range(12)]
    assert [r.status_code for r in replies] == [200] * 12, [r.text for r in replies if r.status_code != 200][:2]
    assert {r.headers[INSTANCE_HEADER] for r in replies} == {"vllm-2"}
