import orjson

from extproc.datastore.endpoints import Endpoints
from extproc.datastore.inflight import InFlight
from extproc.usage import TailBuffer, Usage, extract_usage


def test_non_streaming_usage() -> None:
    body = orjson.dumps({"choices": [{"text": "hi"}], "usage": {
        "prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
        "prompt_tokens_details": {"cached_tokens": 96}}})
    assert extract_usage(body) == Usage(120, 7, 96)


def test_streaming_usage_is_the_last_chunk() -> None:
    chunks = [b'data: {"choices":[{"text":"a"}],"usage":null}\n\n' for _ in range(50)]
    chunks.append(b'data: {"choices":[],"usage":{"prompt_tokens":64,"completion_tokens":50,'
                  b'"prompt_tokens_details":{"cached_tokens":48}}}\n\n')
    chunks.append(b"data: [DONE]\n\n")
    tail = TailBuffer(limit=512)
    for chunk in chunks:
        tail.feed(chunk)
    assert len(tail.data) <= 512
    assert extract_usage(tail.data) == Usage(64, 50, 48)


def test_no_usage() -> None:
    assert extract_usage(b'{"choices": []}') is None
    assert extract_usage(b'data: {"usage": null}') is None
    assert extract_usage(b"") is None


def test_missing_details_means_zero_cached() -> None:
    assert extract_usage(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 1}}') == Usage(5, 1, 0)


def test_inflight_counts_observed_requests_until_they_finish() -> None:
    endpoints = Endpoints(["a", "b"])
    inflight = InFlight(endpoints, observe_within=0.1)
    first = inflight.start("a", 0.0)
    second = inflight.start("a", 0.0)
    assert endpoints.outstanding == {"a": 2, "b": 0}
    assert inflight.observe(first) == "a"
    inflight.start("b", 20.0)  # sweeps the never-observed second request (its observer went elsewhere)...
    assert inflight.abandoned == 1 and endpoints.outstanding == {"a": 1, "b": 1}
    assert inflight.finish(second) is None
    assert inflight.finish(first) == "a"  # ...but an observed one counts until its response ends
    assert inflight.finish(first) is None  # idempotent
    assert endpoints.outstanding == {"a": 0, "b": 1}
