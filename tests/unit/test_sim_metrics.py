"""Histograms the router reads, with vLLM's names, labels and buckets (vllm/v1/metrics/loggers.py)."""

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.simulator.engine import Engine, EngineRequest, simulate
from benchmarks.simulator.metrics import ITERATION_TOKENS_BUCKETS, REQUEST_LATENCY_BUCKETS, SimMetrics
from benchmarks.simulator.profile import load_profile

PROFILE = load_profile()
PHASES = (
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
)


class _Observed:
    def __init__(self, metrics: SimMetrics) -> None:
        self.metrics = metrics

    def families(self) -> dict:
        text = self.metrics.exposition().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}


def run() -> tuple[dict, dict]:
    eng = Engine(PROFILE.replace(max_num_seqs=1), rng=random.Random(0))
    metrics = SimMetrics(eng, "m")
    queue = [(0.0, EngineRequest(str(i), list(range(i * 1000, i * 1000 + 300)), max_tokens=5)) for i in range(3)]
    # Drive simulate's steps through the metrics observer, as the asyncio driver does.
    step = eng.step

    def observed(now: float):
        result = step(now)
        metrics.on_step(result)
        return result

    eng.step = observed  # type: ignore[method-assign]
    states, _ = simulate(eng, queue)
    return states, _Observed(metrics).families()


def buckets(family) -> list[float]:
    return [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"]


def value(family, suffix: str) -> float:
    return next(s.value for s in family.samples if s.name == family.name + suffix)


def test_request_phase_histograms_match_vllm_and_the_requests():
    # Names, "model_name" label and request_latency_buckets as in vllm/v1/metrics/loggers.py; values as in
    # vllm/v1/metrics/stats.py: queued = scheduled - queued, prefill = first token - scheduled,
    # decode = last token - first token, inference = last token - scheduled; observed at finish.
    states, fams = run()
    for name in PHASES:
        fam = fams[name]
        assert fam.type == "histogram"
        assert buckets(fam) == list(REQUEST_LATENCY_BUCKETS)
        assert all(s.labels.get("model_name") == "m" for s in fam.samples)
        assert value(fam, "_count") == 3
    expect = {
        "vllm:request_queue_time_seconds": sum(s.admitted_time - s.ready_time for s in states.values()),
        "vllm:request_prefill_time_seconds": sum(s.first_token_time - s.admitted_time for s in states.values()),
        "vllm:request_decode_time_seconds": sum(s.finish_time - s.first_token_time for s in states.values()),
        "vllm:request_inference_time_seconds": sum(s.finish_time - s.admitted_time for s in states.values()),
    }
    for name, total in expect.items():
        assert value(fams[name], "_sum") == pytest.approx(total)
    # max_num_seqs=1: the later requests waited, the first did not.
    assert expect["vllm:request_queue_time_seconds"] > 0


def test_iteration_tokens_histogram():
    # vllm:iteration_tokens_total: buckets [1, 8, ..., 16384]; each step observes prompt tokens of requests
    # that got their first token plus the tokens generated (vLLM's IterationStats).
    states, fams = run()
    fam = fams["vllm:iteration_tokens_total"]
    assert fam.type == "histogram" and buckets(fam) == [float(b) for b in ITERATION_TOKENS_BUCKETS]
    total_prompt = sum(s.num_prompt_tokens for s in states.values())
    total_output = sum(s.num_output for s in states.values())
    assert value(fam, "_sum") == total_prompt + total_output
    assert value(fam, "_count") >= 15  # one observation per engine step
