"""W3C trace context through a real Envoy: traceparent/tracestate reach the vLLM instance unchanged, none is
invented, and the ext_proc and A2A logs carry the caller's trace_id and span_id."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from benchmarks.stack import Process, Stack
from tests.conftest import stack_options

pytestmark = pytest.mark.e2e


def _ids() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def traced_stack() -> Iterator[Stack]:
    # ext_proc at debug: its routing decisions are logged (the A2A service logs refusals at info).
    options = stack_options(instances=2, log_level="info", extproc_args=("--log-level", "debug"))
    with Stack(options) as running:
        yield running


def _log_records(process: Process) -> list[dict[str, Any]]:
    records = []
    with process.log_path.open("rb") as log:
        log.seek(process.log_offset)
        for line in log.read().decode(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records


def _wait_record(process: Process, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in _log_records(process) if match(r)]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no such log record in {process.log_path}"
        time.sleep(0.05)


def _recorded_headers(stack: Stack, workflow_id: str) -> dict[str, str]:
    """The headers the simulated vLLM instance received for the request of this workflow."""
    for name in stack.simulators:
        items = httpx.get(f"{stack.simulator_url(name)}/sim/requests", params={"path": "/v1/completions"},
                          timeout=5).json()
        for item in items:
            if item["headers"].get("x-workflow-id") == workflow_id:
                return item["headers"]
    raise AssertionError(f"no instance recorded a request of {workflow_id}")


def _completion(workflow_id: str) -> dict[str, object]:
    return {"model": "m", "prompt": "trace me", "max_tokens": 4,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "tracer"}}


def test_traceparent_reaches_the_instance_unchanged_and_the_routing_log_has_its_ids(traced_stack: Stack) -> None:
    trace_id, span_id = _ids()
    traceparent = f"00-{trace_id}-{span_id}-01"
    tracestate = "vendor1=opaque-value,vendor2=x:y"
    workflow_id = f"wf-trace-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{traced_stack.url}/v1/completions", json=_completion(workflow_id), timeout=30,
                          headers={"traceparent": traceparent, "tracestate": tracestate})
    assert response.status_code == 200, response.text

    headers = _recorded_headers(traced_stack, workflow_id)
    assert headers["traceparent"] == traceparent
    assert headers["tracestate"] == tracestate

    record = _wait_record(traced_stack.extprocs[0],
                          lambda r: r.get("message") == "routed" and r.get("workflow_id") == workflow_id)
    assert (record["level"], record["trace_id"], record["span_id"]) == ("DEBUG", trace_id, span_id)
    assert record["instance"] == response.headers["x-served-by"]


def test_no_traceparent_is_invented_and_an_invalid_one_is_forwarded_but_not_logged(traced_stack: Stack) -> None:
    plain = f"wf-plain-{uuid.uuid4().hex[:8]}"
    assert httpx.post(f"{traced_stack.url}/v1/completions", json=_completion(plain), timeout=30).status_code == 200
    assert "traceparent" not in _recorded_headers(traced_stack, plain)
    record = _wait_record(traced_stack.extprocs[0],
                          lambda r: r.get("message") == "routed" and r.get("workflow_id") == plain)
    assert "trace_id" not in record

    invalid = f"wf-invalid-{uuid.uuid4().hex[:8]}"
    zero_trace = f"00-{'0' * 32}-{_ids()[1]}-01"  # all-zero trace id: invalid, ignored by our logs
    response = httpx.post(f"{traced_stack.url}/v1/completions", json=_completion(invalid), timeout=30,
                          headers={"traceparent": zero_trace})
    assert response.status_code == 200
    assert _recorded_headers(traced_stack, invalid)["traceparent"] == zero_trace  # still passed through
    record = _wait_record(traced_stack.extprocs[0],
                          lambda r: r.get("message") == "routed" and r.get("workflow_id") == invalid)
    assert "trace_id" not in record and "span_id" not in record


def test_a_bad_request_is_logged_at_info_with_the_trace_id(traced_stack: Stack) -> None:
    trace_id, span_id = _ids()
    body = {"model": "m", "prompt": "x", "workflow_metadata": {"workflow_id": 17}}
    response = httpx.post(f"{traced_stack.url}/v1/completions", json=body, timeout=30,
                          headers={"traceparent": f"00-{trace_id}-{span_id}-00"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "workflow_metadata.workflow_id"
    record = _wait_record(traced_stack.extprocs[0], lambda r: r.get("trace_id") == trace_id)
    assert (record["message"], record["level"], record["span_id"]) == ("bad request", "INFO", span_id)
    assert (record["status"], record["param"], record["path"]) == (400, "workflow_metadata.workflow_id",
                                                                   "/v1/completions")


@pytest.mark.parametrize("route", ["hot-path send", "FastAPI route"])
def test_a2a_logs_carry_the_trace_id(traced_stack: Stack, route: str) -> None:
    trace_id, span_id = _ids()
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    workflow_id = f"wf-a2a-{uuid.uuid4().hex[:8]}"
    if route == "hot-path send":  # answered ahead of FastAPI (a2a_service/_transports/_http_hot.py HotPaths)
        response = httpx.post(f"{traced_stack.url}/v1/workflows/{workflow_id}/messages", headers=headers,
                              json={"source_agent": "a", "target_agent": "b", "ttl": -1}, timeout=30)
        assert response.status_code in (400, 422), response.text
    else:
        response = httpx.get(f"{traced_stack.url}/v1/workflows/{workflow_id}/status", headers=headers, timeout=30)
        assert response.status_code == 404, response.text
    assert traced_stack.a2a is not None
    record = _wait_record(traced_stack.a2a, lambda r: r.get("trace_id") == trace_id)
    assert (record["message"], record["level"], record["span_id"]) == ("request refused", "INFO", span_id)
    assert record["status"] == response.status_code
    assert record["code"] == response.json()["error"]["code"]
