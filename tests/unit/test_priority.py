"""Program-level scheduling: vLLM's ``priority`` from a workflow's least attained service (table-driven), and the
director adding it to the forwarded body."""

from __future__ import annotations

import orjson
import pytest

from extproc.config import Backend, Settings
from extproc.metadata import parse_llm_body, with_field
from extproc.reporting import NullReporter
from extproc.requestcontrol.priority import decayed, service, vllm_priority
from extproc.requestcontrol.types import Request, Response
from extproc.server import build_router


@pytest.mark.parametrize(("attained", "workflow_priority", "expected"), [
    (0.0, 1.0, 0),
    (1023.0, 1.0, 0),
    (1024.0, 1.0, 1),  # log2(2)
    (3072.0, 1.0, 2),
    (7168.0, 1.0, 3),
    (7168.0, 2.0, 1),  # a priority-2 workflow waits half as long
    (7168.0, 0.0, 30),  # priority 0 is floored at 0.1
    (1e30, 1.0, 64),  # capped
])
def test_vllm_priority(attained: float, workflow_priority: float, expected: int) -> None:
    assert vllm_priority(attained, workflow_priority) == expected


@pytest.mark.parametrize(("attained", "since", "now", "expected"), [
    (1000.0, 0.0, 0.0, 1000.0), (1000.0, 0.0, 60.0, 500.0), (1000.0, 0.0, 120.0, 250.0), (0.0, 0.0, 10.0, 0.0),
])
def test_decay_halves_every_half_life(attained: float, since: float, now: float, expected: float) -> None:
    assert decayed(attained, since, now, 60.0) == pytest.approx(expected)


def test_service_weighs_output_double() -> None:
    assert service(1000, 100) == 1200.0


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"prompt":"x"}', {"priority": 5, "prompt": "x"}),
    (b' {  } ', {"priority": 5}),
    (b'{"priority":1,"prompt":"x"}', {"priority": 1, "prompt": "x"}),  # the client's own value wins
])
def test_with_field(body: bytes, expected: dict[str, object]) -> None:
    assert orjson.loads(with_field(body, "priority", 5)) == expected


async def test_the_director_sets_priority_from_attained_service() -> None:
    router = build_router(Settings(backends=(Backend("a"), Backend("b")), priority_scheduling=True,
                                   priority_half_life=1e9), NullReporter())
    director = router.director
    raw = orjson.dumps({"prompt": "hello", "workflow_metadata": {"workflow_id": "long"}})

    async def forwarded() -> dict[str, object]:
        request = Request("/v1/completions", "r", None, None)
        plan = await director.route(request, parse_llm_body(raw, None, strip_metadata=True), 0.0)
        assert plan.body is not None
        return orjson.loads(plan.body)

    first = await forwarded()
    assert first["priority"] == 0 and "workflow_metadata" not in first
    usage = b'{"usage":{"prompt_tokens":6000,"completion_tokens":500}}'
    director.completed(Response(None, "a", "long", None, "r", status=200), usage)  # 7,000 tokens of service
    assert (await forwarded())["priority"] == 2  # log2(1 + 7000 / 1024) = 2.97
    other = orjson.dumps({"prompt": "hi", "workflow_metadata": {"workflow_id": "short"}})
    plan = await director.route(Request("/v1/completions", "r2", None, None),
                                parse_llm_body(other, None, strip_metadata=True), 0.0)
    assert orjson.loads(plan.body or b"{}")["priority"] == 0  # a fresh workflow runs first
