"""Priority scheduling and preemption under KV pressure, as vLLM V1's scheduler does them."""

import random

import httpx
import pytest

from benchmarks.simulator.app import create_app
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.engine import Engine, EngineRequest, simulate
from benchmarks.simulator.errors import BadRequestError
from benchmarks.simulator.metrics import SimMetrics
from benchmarks.simulator.profile import load_profile

PROFILE = load_profile()


def prompt(n: int, salt: int = 0) -> list[int]:
    return [salt * 1_000_000 + i for i in range(n)]


def engine(policy: str = "priority", **overrides) -> Engine:
    return Engine(PROFILE.replace(**overrides), rng=random.Random(0), scheduling_policy=policy)


def finish_order(states) -> list[str]:
    return sorted(states, key=lambda rid: states[rid].finish_time)


def test_waiting_queue_is_ordered_by_priority_then_arrival():
    # vllm/v1/core/sched/request_queue.py: PriorityRequestQueue is a heap on (priority, arrival_time).
    eng = engine(max_num_seqs=1)
    reqs = [("a", 2, 0.0), ("b", 0, 0.001), ("c", 1, 0.002), ("d", 0, 0.003)]
    arrivals = [
        (t, EngineRequest(rid, prompt(20, salt=i), max_tokens=2, priority=p)) for i, (rid, p, t) in enumerate(reqs)
    ]
    # All four wait while "x" runs, so the order among them is the queue's.
    arrivals.insert(0, (0.0, EngineRequest("x", prompt(20, salt=9), max_tokens=40)))
    states, _ = simulate(eng, arrivals)
    assert finish_order(states) == ["x", "b", "d", "c", "a"]


def test_fcfs_rejects_a_non_zero_priority():
    # vllm/v1/engine/processor.py (input processor): "Got priority {p} but Priority scheduling is not enabled."
    eng = engine("fcfs")
    eng.add_request(EngineRequest("zero", prompt(8), max_tokens=1, priority=0), 0.0)
    with pytest.raises(BadRequestError) as err:
        eng.add_request(EngineRequest("one", prompt(8), max_tokens=1, priority=1), 0.0)
    assert err.value.param == "priority" and "Priority scheduling is not enabled" in err.value.message


def kv_pressure(policy: str, low: int, high: int):
    # 10 blocks of 16 tokens. Each request starts with 3 blocks (48-token prompt) and grows to 7 while it
    # decodes 60 tokens: both fit at admission, not to the end, so one must be preempted.
    eng = engine(policy, num_gpu_blocks=10, max_model_len=160)
    states, _ = simulate(
        eng,
        [
            (0.0, EngineRequest("first", prompt(48, salt=1), max_tokens=60, priority=low)),
            (0.001, EngineRequest("second", prompt(48, salt=2), max_tokens=60, priority=high)),
        ],
    )
    return eng, states


def test_kv_pressure_preempts_the_worst_priority_running_request():
    # vllm/v1/core/sched/scheduler.py (schedule): when allocate_slots fails, the running request with the
    # largest (priority, arrival_time) is preempted: its blocks are freed and it recomputes later.
    eng, states = kv_pressure("priority", low=5, high=0)
    assert states["first"].num_preemptions >= 1 and states["second"].num_preemptions == 0
    assert finish_order(states) == ["second", "first"]
    assert eng.stats.preemptions == states["first"].num_preemptions
    # Recomputation does not change the output: exactly max_tokens tokens, the same text as without pressure.
    alone, _ = simulate(engine("priority"), [(0.0, EngineRequest("first", prompt(48, salt=1), max_tokens=60))])
    assert states["first"].output_ids == alone["first"].output_ids and states["first"].num_output == 60
    assert eng.kv.usage() == 0 and not eng.has_unfinished()


def test_kv_pressure_under_fcfs_preempts_the_last_running_request():
    # Same file: under fcfs the victim is self.running.pop(), the most recently admitted request.
    _, states = kv_pressure("fcfs", low=0, high=0)
    assert states["second"].num_preemptions >= 1 and states["first"].num_preemptions == 0
    assert finish_order(states) == ["first", "second"]


def test_preempted_request_recomputes_with_prefix_cache_hits():
    eng, _ = kv_pressure("priority", low=5, high=0)
    # Its freed blocks stay cached until evicted, so its re-admission hits them (the two prompts differ, so
    # first admissions hit nothing): the resumed prefill is shorter than prompt + output so far.
    assert eng.kv.stats.requests >= 3 and eng.kv.stats.hits > 0


def test_preemptions_are_counted_in_vllm_metric():
    # vllm/v1/metrics/loggers.py: counter "vllm:num_preemptions" (exposed as vllm:num_preemptions_total).
    eng, _ = kv_pressure("priority", low=5, high=0)
    text = SimMetrics(eng, "m").exposition().decode()
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_preemptions_total"))
    assert float(line.split()[-1]) == eng.stats.preemptions >= 1


async def _post(policy: str, body: dict) -> httpx.Response:
    app = create_app(SimConfig(profile=PROFILE, time_scale=0.0, scheduling_policy=policy), rng=random.Random(0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        return await c.post("/v1/completions", json=body)


@pytest.mark.parametrize(
    ("policy", "priority", "status"),
    [("priority", 3, 200), ("priority", -2, 200), ("fcfs", 0, 200), ("fcfs", 1, 400), ("priority", "1", 400),
     ("priority", 1.5, 400), ("priority", True, 400)],
)  # fmt: skip
async def test_priority_field_over_http(policy, priority, status):
    r = await _post(policy, {"prompt": "hello there", "max_tokens": 2, "priority": priority})
    assert r.status_code == status
    if status == 400:
        assert r.json()["error"]["param"] == "priority"
        assert r.json()["error"]["type"] == "invalid_request_error"
