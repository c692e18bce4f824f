import asyncio
import random

import pytest

from benchmarks.simulator.driver import AsyncEngine
from benchmarks.simulator.engine import Engine, EngineRequest, simulate
from benchmarks.simulator.errors import EngineStoppedError
from benchmarks.simulator.metrics import SimMetrics
from benchmarks.simulator.profile import load_profile

PROFILE = load_profile()


class FakeClock:
    """A wall clock that only moves when told: the driver's sleeps then cost no real time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def prompt(n: int, salt: int = 0) -> list[int]:
    return [salt * 1_000_000 + i for i in range(n)]


async def test_results_in_simulated_time_match_the_pure_engine():
    reqs = [EngineRequest(str(i), prompt(300, salt=i % 2), max_tokens=5) for i in range(6)]
    expected, _ = simulate(Engine(PROFILE, rng=random.Random(0)), [(0.0, r) for r in reqs])

    driver = AsyncEngine(Engine(PROFILE, rng=random.Random(0)), time_scale=0.0)
    driver.start()
    handles = [driver.submit(r) for r in reqs]
    states = await asyncio.gather(*(h.result() for h in handles))
    await driver.stop()
    for state in states:
        exp = expected[state.request_id]
        assert state.output_text() == exp.output_text()
        assert state.num_cached_tokens == exp.num_cached_tokens
        assert state.first_token_time == pytest.approx(exp.first_token_time)
        assert state.finish_time == pytest.approx(exp.finish_time)


async def test_stream_yields_every_token_and_marks_the_last():
    driver = AsyncEngine(Engine(PROFILE, rng=random.Random(0)), time_scale=0.0)
    driver.start()
    handle = driver.submit(EngineRequest("s", prompt(50), max_tokens=9))
    deltas = [d async for d in handle.stream()]
    await driver.stop()
    assert "".join(text for text, _ in deltas) == handle.state.output_text()
    assert [last for _, last in deltas][-1] is True
    assert not any(last for _, last in deltas[:-1])


async def test_metrics_observe_simulated_seconds():
    engine = Engine(PROFILE, rng=random.Random(0))
    metrics = SimMetrics(engine, "m")
    driver = AsyncEngine(engine, time_scale=0.0, observers=[metrics])
    driver.start()
    state = await driver.submit(EngineRequest("a", prompt(256), max_tokens=3)).result()
    await driver.stop()
    ttft = metrics.registry.get_sample_value("vllm:time_to_first_token_seconds_sum", {"model_name": "m"})
    assert ttft == pytest.approx(state.first_token_time - state.arrival_time)
    assert ttft == pytest.approx(
        PROFILE.request_overhead_s + PROFILE.step_base_s + 256 * PROFILE.prefill_per_token_s + PROFILE.per_seq_s
    )
    assert metrics.registry.get_sample_value("vllm:inter_token_latency_seconds_count", {"model_name": "m"}) == 2


async def test_time_scale_paces_steps_against_the_wall_clock(monkeypatch):
    clock = FakeClock()
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args):
        sleeps.append(delay)
        clock.t += max(delay, 0)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    driver = AsyncEngine(Engine(PROFILE, rng=random.Random(0)), time_scale=0.5, clock=clock)
    driver.start()
    state = await driver.submit(EngineRequest("a", prompt(100), max_tokens=4)).result()
    await driver.stop()
    # Steps sleep until wall = simulated end x time_scale (the fake clock only moves in sleeps).
    assert clock.t == pytest.approx(state.finish_time * 0.5, rel=1e-6)
    assert len([s for s in sleeps if s > 0]) == 4  # one sleep per engine step: prefill + 3 decodes


async def test_stop_fails_in_flight_requests_and_rejects_new_ones():
    driver = AsyncEngine(Engine(PROFILE, rng=random.Random(0)), time_scale=1.0)
    driver.start()
    handle = driver.submit(EngineRequest("slow", prompt(10), max_tokens=10_000))
    await asyncio.sleep(0)
    await driver.stop()
    with pytest.raises(EngineStoppedError):
        await handle.result()
    with pytest.raises(EngineStoppedError):
        driver.submit(EngineRequest("late", prompt(10), max_tokens=1))
    assert driver.engine.kv.usage() == 0


async def test_abort_frees_the_request():
    driver = AsyncEngine(Engine(PROFILE, rng=random.Random(0)), time_scale=1.0)
    driver.start()
    handle = driver.submit(EngineRequest("gone", prompt(10), max_tokens=10_000))
    driver.abort("gone")
    with pytest.raises(EngineStoppedError):
        await handle.result()
    assert not driver.engine.has_unfinished()
    await driver.stop()
