"""Per-request deadlines (extproc/requestcontrol/deadline.py): the rule, the stream-idle bucket, the latency
learner (engine seconds -> wall seconds) and the headers the director adds."""

from __future__ import annotations

import pytest

from extproc.config import PER_TRY_TIMEOUT_HEADER, STREAM_IDLE_BUCKETS_S, STREAM_IDLE_HEADER
from extproc.datastore.poller import BackendLoad, parse_vllm_metrics
from extproc.metadata import parse_llm_body
from extproc.requestcontrol.deadline import (
    PRIOR_ITL_S,
    PRIOR_TTFT_S,
    DeadlinePolicy,
    Deadlines,
    LatencyLearner,
    expected_seconds,
    per_try_timeout_s,
    stream_idle_s,
    timeout_ms,
)

DEFAULT = DeadlinePolicy()


@pytest.mark.parametrize(("policy", "max_tokens", "ttft", "itl", "deadline"), [
    # short requests: the floor
    (DEFAULT, 16, 0.05, 0.012, 10.0),
    (DEFAULT, 1, 3.0, 0.012, 10.0),
    # 3 x (0.2 + 999 x 0.012) = 36.564
    (DEFAULT, 1000, 0.2, 0.012, pytest.approx(36.564)),
    # long prefill: 3 x (8 + 99 x 0.02) = 29.94
    (DEFAULT, 100, 8.0, 0.02, pytest.approx(29.94)),
    # no max_tokens: the default (4096) tokens: 3 x (0.1 + 4095 x 0.01) = 123.15
    (DEFAULT, None, 0.1, 0.01, pytest.approx(123.15)),
    (DEFAULT, 0, 0.1, 0.01, pytest.approx(123.15)),
    (DeadlinePolicy(default_max_tokens=100), None, 0.1, 0.01, 10.0),
    # other floor / multiplier
    (DeadlinePolicy(floor_s=1.0), 100, 0.1, 0.01, pytest.approx(3.27)),
    (DeadlinePolicy(floor_s=1.0, multiplier=2.0), 1000, 0.0, 0.01, pytest.approx(19.98)),
    (DeadlinePolicy(floor_s=30.0), 1000, 0.2, 0.012, pytest.approx(36.564)),
])
def test_per_try_timeout(policy: DeadlinePolicy, max_tokens: int | None, ttft: float, itl: float,
                         deadline: float) -> None:
    assert per_try_timeout_s(policy, max_tokens, ttft, itl) == deadline


@pytest.mark.parametrize(("max_tokens", "ttft", "itl", "expected"), [
    (1, 0.5, 0.01, 0.5), (2, 0.5, 0.01, 0.51), (101, 0.0, 0.02, 2.0), (0, 0.3, 0.01, 0.3),
])
def test_expected_seconds(max_tokens: int, ttft: float, itl: float, expected: float) -> None:
    assert expected_seconds(max_tokens, ttft, itl) == pytest.approx(expected)


@pytest.mark.parametrize(("policy", "ttft", "itl", "bucket"), [
    (DEFAULT, 0.1, 0.01, 10.0),  # the floor's bucket
    (DEFAULT, 4.0, 0.01, 20.0),  # 12 s of silence before the first token -> 20
    (DEFAULT, 0.1, 5.0, 20.0),  # a slow engine's gaps
    (DEFAULT, 60.0, 0.01, None),  # 180 s: beyond every bucket -> no idle bound
    (DeadlinePolicy(floor_s=1.0), 0.1, 0.01, 2.0),
    (DeadlinePolicy(floor_s=1.0), 1.0, 0.01, 5.0),
])
def test_stream_idle_bucket(policy: DeadlinePolicy, ttft: float, itl: float, bucket: float | None) -> None:
    assert stream_idle_s(policy, ttft, itl, STREAM_IDLE_BUCKETS_S) == bucket


@pytest.mark.parametrize(("seconds", "ms"), [(10.0, "10000"), (36.5641, "36565"), (0.0, "1"), (0.0004, "1")])
def test_timeout_ms(seconds: float, ms: str) -> None:
    assert timeout_ms(seconds) == ms


def load(ttft: tuple[float, float], itl: tuple[float, float], e2e: tuple[float, float],
         healthy: bool = True) -> BackendLoad:
    return BackendLoad(healthy=healthy, ttft_seconds=ttft[0], ttfts=ttft[1], itl_seconds=itl[0], itls=itl[1],
                       e2e_seconds=e2e[0], e2es=e2e[1])


def test_learner_priors_before_any_figure() -> None:
    learner = LatencyLearner(["a"])
    assert learner.wall_latencies("a") == (PRIOR_TTFT_S, PRIOR_ITL_S)
    assert learner.wall_latencies("unknown") == (PRIOR_TTFT_S, PRIOR_ITL_S)
    learner.scraped({"a": load((5, 10), (1, 100), (20, 10))})  # the first scrape is only a baseline
    assert learner.wall_latencies("a") == (PRIOR_TTFT_S, PRIOR_ITL_S)


def test_learner_engine_seconds_are_wall_seconds_until_the_router_saw_completions() -> None:
    learner = LatencyLearner(["a"])
    learner.scraped({"a": load((0, 0), (0, 0), (0, 0))})
    # 4 requests: TTFT 0.1 s each, 400 tokens at 12 ms, e2e 1.3 s each
    learner.scraped({"a": load((0.4, 4), (4.8, 400), (5.2, 4))})
    ttft, itl = learner.wall_latencies("a")
    assert ttft == pytest.approx(0.1) and itl == pytest.approx(0.012)
    assert learner.ratio("a") == 1.0


@pytest.mark.parametrize(("wall_e2e", "ratio"), [
    (0.013, 0.01),  # simulator at --time-scale 0.01: 1.3 simulated s took 13 wall ms
    (1.3, 1.0),  # vLLM: wall = engine seconds
    (1.43, 1.1),  # vLLM behind a slow network: the router's clock says a little more (longer deadlines)
])
def test_learner_converts_engine_seconds_with_the_observed_clock_ratio(wall_e2e: float, ratio: float) -> None:
    learner = LatencyLearner(["a"])
    learner.scraped({"a": load((0, 0), (0, 0), (0, 0))})
    for _ in range(4):
        learner.served("a", wall_e2e)
    learner.scraped({"a": load((0.4, 4), (4.8, 400), (5.2, 4))})
    assert learner.ratio("a") == pytest.approx(ratio)
    ttft, itl = learner.wall_latencies("a")
    assert ttft == pytest.approx(0.1 * ratio) and itl == pytest.approx(0.012 * ratio)


def test_learner_follows_load_forgets_old_windows_and_survives_a_restart() -> None:
    learner = LatencyLearner(["a", "b"])
    learner.scraped({"a": load((0, 0), (0, 0), (0, 0)), "b": load((0, 0), (0, 0), (0, 0))})
    learner.scraped({"a": load((0.1, 1), (1.0, 100), (1.1, 1)), "b": load((0, 0), (0, 0), (0, 0))})
    assert learner.wall_latencies("a")[1] == pytest.approx(0.01)
    total_itl, tokens = 1.0, 100.0
    for _ in range(100):  # the instance slows down to 50 ms per token
        total_itl, tokens = total_itl + 5.0, tokens + 100
        learner.scraped({"a": load((0.1, 1), (total_itl, tokens), (1.1, 1))})
    assert learner.wall_latencies("a")[1] == pytest.approx(0.05, rel=0.01)
    assert learner.wall_latencies("b") == (PRIOR_TTFT_S, PRIOR_ITL_S)  # b reported nothing
    # a restarts (counters from zero): a new baseline, the learned figures stay
    learner.scraped({"a": load((0, 0), (0, 0), (0, 0))})
    assert learner.wall_latencies("a")[1] == pytest.approx(0.05, rel=0.01)
    learner.scraped({"a": load((0, 0), (0, 0), (0, 0), healthy=False)})  # a down scrape teaches nothing
    assert learner.wall_latencies("a")[1] == pytest.approx(0.05, rel=0.01)


def test_the_poller_reads_the_latency_histograms() -> None:
    text = "\n".join([
        '# TYPE vllm:time_to_first_token_seconds histogram',
        'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0',
        'vllm:time_to_first_token_seconds_sum{model_name="m"} 0.75',
        'vllm:time_to_first_token_seconds_count{model_name="m"} 5.0',
        'vllm:inter_token_latency_seconds_sum{model_name="m"} 1.2',
        'vllm:inter_token_latency_seconds_count{model_name="m"} 100.0',
        'vllm:e2e_request_latency_seconds_sum{model_name="m"} 2.0',
        'vllm:e2e_request_latency_seconds_count{model_name="m"} 5.0',
    ])
    assert parse_vllm_metrics(text) == {"ttft_seconds": 0.75, "ttfts": 5.0, "itl_seconds": 1.2, "itls": 100.0,
                                        "e2e_seconds": 2.0, "e2es": 5.0}


@pytest.mark.parametrize(("policy", "max_tokens", "stream", "headers"), [
    (DEFAULT, 16, False, [(PER_TRY_TIMEOUT_HEADER, "10000")]),
    (DEFAULT, 16, True, [(PER_TRY_TIMEOUT_HEADER, "10000"), (STREAM_IDLE_HEADER, "10")]),
    # cold (priors 2 s + 50 ms/token): 3 x (2 + 999 x 0.05) = 155.85 s
    (DEFAULT, 1000, False, [(PER_TRY_TIMEOUT_HEADER, "155850")]),
    (DeadlinePolicy(floor_s=0.0), 16, True, []),  # deadlines off
])
def test_headers(policy: DeadlinePolicy, max_tokens: int, stream: bool, headers: list[tuple[str, str]]) -> None:
    deadlines = Deadlines(policy, ["a"], STREAM_IDLE_BUCKETS_S, PER_TRY_TIMEOUT_HEADER, STREAM_IDLE_HEADER)
    assert deadlines.headers("a", max_tokens, stream) == headers


@pytest.mark.parametrize(("body", "max_tokens", "stream"), [
    (b'{"prompt": "x", "max_tokens": 64}', 64, False),
    (b'{"prompt": "x", "max_tokens": 64, "max_completion_tokens": 32, "stream": true}', 32, True),
    (b'{"prompt": "x", "max_completion_tokens": null, "max_tokens": 8}', 8, False),
    (b'{"prompt": "x", "stream": "yes", "max_tokens": "64"}', None, False),
    (b'{"prompt": "x", "max_tokens": true}', None, False),
    (b'{"prompt": "x", "max_tokens": -1}', None, False),
    (b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w"}, "max_tokens": 5, "stream": true}', 5, True),
])
def test_the_body_parser_extracts_max_tokens_and_stream(body: bytes, max_tokens: int | None, stream: bool) -> None:
    routing = parse_llm_body(body, None, strip_metadata=True)
    assert (routing.max_tokens, routing.stream) == (max_tokens, stream)
