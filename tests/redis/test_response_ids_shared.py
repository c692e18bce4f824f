"""Response ids shared by ext_proc replicas through Redis (--store redis://): a follow-up that reaches a replica
which did not route (or observe) the previous response is still pinned to the instance holding it."""

from __future__ import annotations

import asyncio

import orjson

from extproc.config import Backend, Settings
from extproc.datastore.response_ids import SharedResponseIds
from extproc.datastore.shared_assignments import RedisAssignments
from extproc.reporting import NullReporter
from extproc.server import Router, build_router

INSTANCES = ("vllm-1", "vllm-2", "vllm-3", "vllm-4")


def replica(url: str, prefix: str) -> Router:
    settings = Settings(backends=tuple(Backend(i) for i in INSTANCES), prefix_routing=False, store=url)
    return build_router(settings, NullReporter(), assignments=RedisAssignments(url, ttl=60, max_workflows=100,
                                                                                prefix=prefix))


async def route(r: Router, body: dict[str, object]) -> tuple[str, bytes | None]:
    director = r.director
    request = director.start({":path": "/v1/responses"})
    plan = await director.route(request, director.parse(request, orjson.dumps(body)), 0.0)
    return plan.instance, plan.body


async def test_a_follow_up_on_another_replica_is_pinned(redis_url: str, redis_prefix: str) -> None:
    a, b = replica(redis_url, redis_prefix), replica(redis_url, redis_prefix)
    try:
        instance, body = await route(a, {"input": "hello"})
        assert body is not None
        response_id = orjson.loads(body)["request_id"]
        shared = a.director.shared_response_ids
        assert shared is not None
        for _ in range(50):  # the write is fire-and-forget
            if shared.writes:
                break
            await asyncio.sleep(0.01)
        for other in INSTANCES:  # replica b sees the holder as the busiest instance
            if other == instance:
                for _ in range(30):
                    b.endpoints.acquire(other)
        followed, _ = await route(b, {"input": "more", "previous_response_id": response_id})
        assert followed == instance
        assert b.director.response_ids.pinned == 1 and b.director.shared_response_ids.hits == 1  # type: ignore[union-attr]
        entry = b.workflows.peek(f"resp:{response_id}")
        assert entry is not None and entry.instance == instance
    finally:
        for r in (a, b):
            if r.director.shared_response_ids is not None:
                await r.director.shared_response_ids.stop()


async def test_unknown_ids_and_redis_down_degrade_to_the_other_sources(redis_prefix: str) -> None:
    shared = SharedResponseIds("redis://127.0.0.1:1/0", ttl=60, prefix=redis_prefix, timeout=0.1)
    assert await shared.lookup("resp_x") is None and not shared.available and shared.failures == 1
    await shared.stop()
