"""Access-log mode (``--response-observation access-log``): the director's side of it (a request's load ends with its
router stream, its status comes with its access log entry, in either order, once), the entry's facts as
``extproc/handlers/access_log.py`` reads them, and the Envoy config that produces them (validated by Envoy)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import orjson
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from benchmarks.stack import envoy_binary
from extproc.config import (
    OBSERVE_BODY_HEADER,
    ROUTE_ID_HEADER,
    SERVED_BY_HEADER,
    WORKFLOW_ID_HEADER,
    Backend,
    Settings,
)
from extproc.envoy_config import Endpoint, EnvoyOptions, render, to_yaml
from extproc.envoy_config._options import OBSERVER_FILTER
from extproc.handlers.access_log import logged_response
from extproc.reporting import NullReporter
from extproc.requestcontrol.types import LoggedResponse
from extproc.server import Router, build_router

INSTANCES = ("a", "b", "c")
PROMPT = "summarise the incident report and list the follow-ups. " * 20


def router(fraction: float = 0.0, mode: str = "access-log") -> Router:
    settings = Settings(backends=tuple(Backend(i) for i in INSTANCES), response_observation=mode,
                        observe_stream_bodies=fraction)
    return build_router(settings, NullReporter())


def send(r: Router, path: str = "/v1/completions", stream: bool = False) -> tuple[str, dict[str, str]]:
    """Route one request; returns ``(instance, the headers the plan sets)``."""
    director = r.director
    request = director.start({":path": path})
    body = orjson.dumps({"model": "m", "prompt": PROMPT, "max_tokens": 8, "stream": stream,
                         "workflow_metadata": {"workflow_id": "wf"}}) if path != "/v1/models" else None
    plan = asyncio.run(director.route(request, director.parse(request, body), 0.0))
    return plan.instance, dict(plan.headers)


def entry_of(instance: str, headers: dict[str, str], status: int = 200, served_by: str | None = None
             ) -> LoggedResponse:
    return LoggedResponse(headers[ROUTE_ID_HEADER], instance, headers.get(WORKFLOW_ID_HEADER), None, "rid",
                          "/v1/completions", status, served_by or instance, 0.25)


def outstanding(r: Router) -> int:
    return sum(r.endpoints.outstanding.values())


@pytest.mark.parametrize("router_stream_first", [True, False])
def test_a_logged_response_is_released_and_completed_once_in_either_order(router_stream_first: bool) -> None:
    r = router()
    instance, headers = send(r)
    assert OBSERVE_BODY_HEADER not in headers  # not in the sample: no observer stream will come
    assert outstanding(r) == 1
    r.director.inflight._sweep(1e9)  # far past observe_within: still counted (claimed)
    assert outstanding(r) == 1 and r.director.inflight.abandoned == 0
    entry = entry_of(instance, headers)
    if router_stream_first:
        r.director.router_ended(headers[ROUTE_ID_HEADER])
        assert outstanding(r) == 0  # the load ends with the HTTP stream, before the entry arrives
        r.director.logged(entry)
    else:
        r.director.logged(entry)
        assert outstanding(r) == 0
        r.director.router_ended(headers[ROUTE_ID_HEADER])
    observation = r.director.stream_observation
    assert observation.estimated._value.get() == 1  # its usage: the router's estimate
    assert observation.estimated_prompt._value.get() > 0
    assert outstanding(r) == 0 and len(r.director._unread) == 0


def test_a_retried_away_entry_counts_against_the_instance_picked() -> None:
    r = router()
    failures = []
    for _ in range(3):
        instance, headers = send(r)
        other = next(i for i in INSTANCES if i != instance)
        r.director.router_ended(headers[ROUTE_ID_HEADER])
        r.director.logged(entry_of(instance, headers, served_by=other))
        failures.append(instance)
    (victim,) = set(failures)  # the workflow stays where its prompt is cached
    assert r.director.passive_health.failures[victim] == 3
    assert victim not in r.endpoints.healthy  # FAILURES_TO_MARK_DOWN: held down


def test_the_sample_and_responses_requests_keep_their_observer_stream() -> None:
    r = router(fraction=0.5)
    marked = [OBSERVE_BODY_HEADER in send(r)[1] for _ in range(4)]
    assert marked.count(True) == 2
    assert OBSERVE_BODY_HEADER in send(r, "/v1/responses")[1]


def test_requests_off_the_llm_paths_end_with_their_router_stream_too() -> None:
    r = router()
    _, headers = send(r, "/v1/models")
    assert outstanding(r) == 1
    r.director.router_ended(headers[ROUTE_ID_HEADER])
    assert outstanding(r) == 0


def test_in_observer_stream_mode_non_streamed_responses_wait_for_their_observer() -> None:
    r = router(mode="observer-stream")
    _, headers = send(r)
    assert OBSERVE_BODY_HEADER not in headers
    r.director.router_ended(headers[ROUTE_ID_HEADER])
    assert outstanding(r) == 1  # the observer stream ends it


# --- the entry, as Envoy's http_grpc logger sends it ----------------------------------------------------------
def _entry(**request_headers: str) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.request.path = "/v1/chat/completions?x=1"
    entry.request.request_id = "req-1"
    for key, value in request_headers.items():
        entry.request.request_headers[key.replace("_", "-")] = value
    entry.response.response_code.value = 200
    entry.response.response_headers[SERVED_BY_HEADER] = "b"
    entry.common_properties.time_to_last_downstream_tx_byte.FromMilliseconds(1500)
    entry.common_properties.duration.FromMilliseconds(1600)
    return entry


@pytest.mark.parametrize(("entry", "expected"), [
    (_entry(), None),  # no route id: not routed by us
    (_entry(x_workflow_route_id="r-1", x_upstream_cluster="a", x_workflow_id="wf", x_agent_id="planner"),
     LoggedResponse("r-1", "a", "wf", "planner", "req-1", "/v1/chat/completions", 200, "b", 1.5)),
    (_entry(x_workflow_route_id="r-2", x_upstream_cluster="c"),
     LoggedResponse("r-2", "c", None, None, "req-1", "/v1/chat/completions", 200, "b", 1.5)),
])
def test_an_entry_becomes_plain_facts(entry: accesslog_pb2.HTTPAccessLogEntry, expected: LoggedResponse | None
                                      ) -> None:
    assert logged_response(entry, "x-upstream-cluster") == expected


def test_without_the_last_byte_time_the_duration_stands_in_and_no_answer_is_status_0() -> None:
    entry = _entry(x_workflow_route_id="r-3", x_upstream_cluster="a")
    entry.common_properties.ClearField("time_to_last_downstream_tx_byte")
    entry.response.ClearField("response_code")
    del entry.response.response_headers[SERVED_BY_HEADER]
    found = logged_response(entry, "x-upstream-cluster")
    assert found is not None and (found.wall_s, found.status, found.served_by) == (1.6, 0, None)


# --- the Envoy config ---------------------------------------------------------------------------------------
def _options(mode: str) -> EnvoyOptions:
    return EnvoyOptions(backends=(("vllm-1", Endpoint("127.0.0.1", 8101)), ("vllm-2", Endpoint("127.0.0.1", 8102))),
                        response_observation=mode)


def test_access_log_mode_disables_the_observer_on_unmarked_routes_and_logs_them() -> None:
    config = render(_options("access-log"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    llm = [r for r in routes if r["name"].startswith("routed-by-extproc")]
    observed = [r for r in llm if any(h["name"] == OBSERVE_BODY_HEADER for h in r["match"]["headers"])]
    unobserved = [r for r in llm if r not in observed]
    assert observed and len(observed) == len(unobserved)
    assert all(r["typed_per_filter_config"][OBSERVER_FILTER]["disabled"] for r in unobserved)
    assert all(OBSERVER_FILTER not in r.get("typed_per_filter_config", {}) for r in observed)
    assert all(routes.index(o) < routes.index(u) for o, u in zip(observed, unobserved, strict=True))
    (logger,) = hcm["access_log"]
    assert logger["name"] == "envoy.access_loggers.http_grpc"
    assert ROUTE_ID_HEADER in logger["typed_config"]["additional_request_headers_to_log"]
    default = render(_options("observer-stream"))
    assert "access_log" not in default["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]


def test_access_log_mode_is_refused_in_gie_mode() -> None:
    with pytest.raises(ValueError, match="GIE"):
        EnvoyOptions(backends=(), gie=True, response_observation="access-log")


def test_access_log_config_passes_envoy_validate(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(_options("access-log")))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
