"""The cost model through the real Envoy and ext_proc: a chain stays where its context is cached while a fan-out's
siblings spread once queueing on that instance costs more than the cache saves; and vLLM's KV events move a
request to the instance that really holds its prefix (which the router's own index never saw)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from benchmarks.peers import start_fleet, stop_all
from benchmarks.stack import Stack
from tests.conftest import stack_options
from tests.e2e.test_kv_events_e2e import free_port

pytestmark = pytest.mark.e2e

COST_MODEL = ("--scheduling-config", "builtin:cost-model")
CONTEXT = " ".join(f"ledger line {i}: account {i * 7 % 31} moved {i * 13 % 97} units on day {i % 28}."
                   for i in range(160))  # ~10 KB: ~2.6k tokens


def body(workflow_id: str, agent: str, prompt: str, parent: str | None = None) -> dict[str, object]:
    metadata: dict[str, object] = {"workflow_id": workflow_id, "agent_id": agent}
    if parent is not None:
        metadata["parent_request_id"] = parent
    return {"model": "m", "prompt": prompt, "max_tokens": 4, "workflow_metadata": metadata}


async def test_a_chain_stays_and_a_fan_out_spreads() -> None:
    # A slow enough clock that a sibling's prefill (~3.5k uncached tokens: ~0.9 simulated s) takes ~0.25 s of wall
    # time: all eight are routed while the first ones still queue there, even on a loaded machine.
    with Stack(stack_options(with_a2a=False, time_scale=0.3, extproc_args=COST_MODEL)) as stack:
        run = uuid.uuid4().hex[:6]
        workflow = f"fan-{run}"
        async with httpx.AsyncClient(timeout=60) as client:
            chain = []
            prompt = f"{workflow} {CONTEXT}"
            for step in range(3):
                r = await client.post(f"{stack.url}/v1/completions", json=body(workflow, f"a{step}", prompt))
                assert r.status_code == 200
                chain.append((r.headers["x-served-by"], r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]))
                prompt += f" step {step} found: " + r.json()["choices"][0]["text"] * 4
            homes = {served for served, _ in chain}
            assert len(homes) == 1, chain  # each step extends the context cached where the last one ran
            assert all(cached > 0 for _, cached in chain[1:]), chain
            home = homes.pop()
            # Eight siblings at once, each the context + a long task of its own: the first find the context
            # cached at home; as their uncached tasks queue there, the others are cheaper elsewhere.
            tasks = [f"{prompt} sibling {k}: " + " ".join(f"subtask-{k}-{i} detail" for i in range(400))
                     for k in range(8)]
            answers = await asyncio.gather(*(client.post(f"{stack.url}/v1/completions",
                                                         json=body(workflow, f"w{k}", task, parent="plan-1"))
                                             for k, task in enumerate(tasks)))
            assert all(a.status_code == 200 for a in answers)
            spread = Counter(a.headers["x-served-by"] for a in answers)
            assert spread[home] >= 1 and len(spread) >= 2, spread


async def test_kv_events_send_a_request_to_the_instance_that_really_holds_its_prefix(tmp_path: Path) -> None:
    seed = "4242"
    ports = {f"vllm-{i}": (free_port(), free_port()) for i in (1, 2, 3)}
    os.environ["PYTHONHASHSEED"] = seed  # the simulators inherit it: vLLM's block-hash seed
    fleet: dict[str, object] = {}
    try:
        for name, (pub, replay) in ports.items():
            config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{pub}",
                      "replay_endpoint": f"tcp://*:{replay}", "topic": "kv"}
            (tmp_path / name).mkdir()
            fleet[name] = next(iter(start_fleet(1, ["--time-scale", "0.01", "--prefix-caching-hash-algo", "sha256_cbor",
                                         "--kv-events-config", json.dumps(config), "--name", name],
                                     tmp_path / name).values()))
    finally:
        del os.environ["PYTHONHASHSEED"]
    try:
        http = {name: process.ports["http"] for name, process in fleet.items()}  # type: ignore[attr-defined]
        events = ",".join(f"{name}=tcp://127.0.0.1:{pub};replay=tcp://127.0.0.1:{replay};topic=kv"
                          for name, (pub, replay) in ports.items())
        args = (*COST_MODEL, "--kv-events", events, "--kv-hash-seed", seed)
        with Stack(stack_options(with_a2a=False, external_backends=http, extproc_args=args)) as stack:
            prompts = {name: f"{uuid.uuid4().hex} {name} " + CONTEXT for name in http}
            async with httpx.AsyncClient(timeout=30) as client:
                # Each instance computes one prompt for a client that called it directly: only its KV events
                # tell the router (a guess would pick the right instance for all three 1 time in 27).
                for name, prompt in prompts.items():
                    direct = await client.post(f"http://127.0.0.1:{http[name]}/v1/completions",
                                               json={"model": "m", "prompt": prompt, "max_tokens": 2})
                    assert direct.status_code == 200
                await asyncio.sleep(0.5)  # the BlockStored batches reach the router
                served = {}
                for name, prompt in prompts.items():
                    r = await client.post(f"{stack.url}/v1/completions",
                                          json={"model": "m", "prompt": prompt + " next", "max_tokens": 2})
                    assert r.status_code == 200
                    cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
                    served[name] = (r.headers["x-served-by"], cached)
                assert all(holder == name and cached > 2000 for name, (holder, cached) in served.items()), served
                metrics = (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text
                assert "extproc_kv_events" in metrics
    finally:
        stop_all(fleet.values())
