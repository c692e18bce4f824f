"""The simulator's served model names and LoRA adapters against vLLM's behaviour:

- ``/v1/models`` (vllm/entrypoints/openai/models/serving.py ``show_available_models``): one card per served
  name with ``parent: null``, one per adapter with ``root`` = its path and ``parent`` = its base model;
- an unknown model: 404, type NotFoundError, param ``model`` (``check_model`` there);
- ``--lora-modules`` in its two forms (vllm/entrypoints/openai/cli_args.py ``LoRAParserAction``);
- ``vllm:lora_requests_info{max_lora, waiting_lora_adapters, running_lora_adapters}`` set to the time, one series
  per label set seen (vllm/v1/metrics/loggers.py ``PrometheusStatLogger``);
- ``--max-loras`` slots: a request whose adapter is not in a slot loads it; with every slot held it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from benchmarks.simulator.__main__ import build_config
from benchmarks.simulator.app import create_app
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.lora import LoRAModule, LoRASlots, parse_lora_modules
from benchmarks.simulator.profile import load_profile
from extproc.datastore.poller import parse_lora_info, parse_models

BASE = "meta-llama/Llama-3.1-8B-Instruct"


@contextlib.asynccontextmanager
async def client(**config: Any) -> AsyncIterator[httpx.AsyncClient]:
    cfg = SimConfig(profile=load_profile(), name="sim-lora", time_scale=0.0, **config)
    app = create_app(cfg, rng=random.Random(0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        yield c


@pytest.mark.parametrize(("values", "expected"), [
    (["sql=/adapters/sql"], (LoRAModule("sql", "/adapters/sql"),)),
    (['{"name": "sql", "path": "/a/sql", "base_model_name": "llama"}'], (LoRAModule("sql", "/a/sql", "llama"),)),
    (["a=/x", "b=/y"], (LoRAModule("a", "/x"), LoRAModule("b", "/y"))),
])
def test_lora_modules_parse_in_vllms_two_forms(values: list[str], expected: tuple[LoRAModule, ...]) -> None:
    assert parse_lora_modules(values) == expected


@pytest.mark.parametrize("values", [["sql"], ["=/x"], ['{"name": "a"}'], ["a=/x", "a=/y"], ["{bad"]])
def test_bad_lora_modules_are_refused(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_lora_modules(values)


def test_cli_flags() -> None:
    config = build_config(["--served-model-name", "big", "b", "--lora-modules", "sql=/s", "chat=/c",
                           "--max-loras", "2", "--lora-load-time", "0.5"], env={})
    assert config.base_model_names == ("big", "b") and config.model_name == "big"
    assert [m.name for m in config.lora_modules] == ["sql", "chat"] and config.max_loras == 2
    assert config.lora_load_s == 0.5 and config.strict_models
    assert not build_config([], env={}).strict_models  # a bare simulator still serves any name


async def test_models_list_and_unknown_model_404() -> None:
    async with client(served_model_names=("small", "s"), lora_modules=(LoRAModule("sql", "/a/sql"),)) as c:
        listed = (await c.get("/v1/models")).json()
        cards = {card["id"]: card for card in listed["data"]}
        assert list(cards) == ["small", "s", "sql"]
        assert cards["small"]["parent"] is None and cards["small"]["root"] == BASE
        assert cards["sql"]["parent"] == "small" and cards["sql"]["root"] == "/a/sql"
        models = parse_models(listed)  # what the router's poller reads
        assert {m.id for m in models if m.parent is not None} == {"sql"}
        for name in ("small", "s", "sql"):
            ok = await c.post("/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 2})
            assert ok.status_code == 200, ok.text
            assert ok.json()["model"] == name
        missing = await c.post("/v1/completions", json={"model": "other", "prompt": "hi", "max_tokens": 2})
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["type"] == "NotFoundError" and error["param"] == "model"
        assert error["message"] == "The model `other` does not exist."


async def test_lora_info_gauge_reports_running_and_max() -> None:
    async with client(served_model_names=("small",), lora_modules=(LoRAModule("sql", "/a/sql"),),
                      max_loras=2) as c:
        idle = (await c.get("/metrics")).text
        assert parse_lora_info(idle) == (frozenset(), frozenset(), 2)
        assert 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""}' in idle


async def test_slots_load_evict_and_wait() -> None:
    slots = LoRASlots(max_loras=1, load_s=0.01, time_scale=1.0)
    await slots.acquire("a")
    assert slots.loads == 1 and slots.running == {"a": 1}
    await slots.acquire("a")  # resident: no second load
    assert slots.loads == 1
    waiter = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0.05)
    assert not waiter.done() and slots.waiting == {"b": 1}  # the only slot is held by a's requests
    running, waiting, max_lora = parse_lora_info(_exposition(slots)) or ((), (), 0)
    assert running == {"a"} and waiting == {"b"} and max_lora == 1
    await slots.release("a")
    await slots.release("a")
    await asyncio.wait_for(waiter, 1.0)  # a is idle now: evicted, b loaded
    assert slots.loads == 2 and list(slots.resident) == ["b"] and slots.running == {"b": 1}


def _exposition(slots: LoRASlots) -> str:
    return "\n".join(f'vllm:lora_requests_info{{max_lora="{m}",running_lora_adapters="{r}",'
                     f'waiting_lora_adapters="{w}"}} {stamp}' for m, w, r, stamp in slots.info())


async def test_an_adapters_prefix_cache_is_its_own() -> None:
    # vLLM puts the adapter's name in every block hash (vllm/v1/core/kv_cache_utils.py _gen_lora_extra_hash_keys):
    # a prompt cached for the base model is not a hit for an adapter, and the other way round.
    prompt = "a shared system prompt for every agent of the team. " * 30
    async with client(served_model_names=("small",), lora_modules=(LoRAModule("sql", "/a/sql"),)) as c:
        async def cached(model: str) -> int:
            r = await c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1})
            assert r.status_code == 200, r.text
            return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

        assert await cached("small") == 0
        assert await cached("small") > 0
        assert await cached("sql") == 0  # the base model's blocks do not match
        assert await cached("sql") > 0


def test_sha256_cbor_extra_keys_as_vllm() -> None:
    from benchmarks.simulator.block_hash import Sha256CborHasher

    hasher = Sha256CborHasher(none_hash=b"\x01" * 32)
    tokens = list(range(32))
    base, adapter = hasher(tokens, 16), hasher(tokens, 16, extra_keys=("sql",))
    # hash_block_tokens(parent, token ids, extra_keys): the tuple's third element is the extra keys, None without.
    assert base[0] == Sha256CborHasher.sha256_cbor((b"\x01" * 32, tuple(range(16)), None))
    assert adapter[0] == Sha256CborHasher.sha256_cbor((b"\x01" * 32, tuple(range(16)), ("sql",)))
    assert adapter[1] == Sha256CborHasher.sha256_cbor((adapter[0], tuple(range(16, 32)), ("sql",)))


async def test_runtime_lora_updating_as_vllm() -> None:
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's messages,
    # vllm/entrypoints/openai/models/serving.py); /v1/models and the 404 follow. Without it the routes do not exist.
    ask = {"model": "sql", "prompt": "q", "max_tokens": 1}
    async with client(served_model_names=("small",), enable_lora=True, runtime_lora_updating=True) as c:
        assert (await c.post("/v1/completions", json=ask)).status_code == 404
        loaded = await c.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/a/sql"})
        assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'sql' added successfully."
        again = await c.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/a/sql"})
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        cards = {card["id"]: card for card in (await c.get("/v1/models")).json()["data"]}
        assert cards["sql"]["parent"] == "small" and cards["sql"]["root"] == "/a/sql"
        assert (await c.post("/v1/completions", json=ask)).status_code == 200
        unloaded = await c.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
        assert unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'sql' removed successfully."
        gone = await c.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
        assert gone.status_code == 404 and gone.json()["error"]["message"] == "The lora adapter 'sql' cannot be found."
        assert "sql" not in {card["id"] for card in (await c.get("/v1/models")).json()["data"]}
    async with client(served_model_names=("small",), enable_lora=True) as c:
        assert (await c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"})).status_code == 404
