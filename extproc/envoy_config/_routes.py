"""Routes: A2A messages to the A2A replicas, LLM requests to the cluster the ext_proc server picked, a
weighted fallback when it did not answer, and the benchmarks' baseline route; with the retry policies."""

from __future__ import annotations

from typing import Any

from extproc.config import (
    DESTINATION_ENDPOINT_HEADER,
    FALLBACK_HEADER,
    OBSERVE_BODY_HEADER,
    SERVED_BY_HEADER,
    STREAM_IDLE_BUCKETS_S,
    STREAM_IDLE_HEADER,
)
from extproc.envoy_config._options import (
    A2A_CLUSTER,
    A2A_ROUTE_PREFIX,
    A2A_ROUTE_TIMEOUT_S,
    BASELINE_CLUSTER,
    GIE_CLUSTER,
    OBSERVER_FILTER,
    RETRIES,
    ROUTER_FILTER,
    EnvoyOptions,
    duration,
)


def retry_policy(per_try_idle_timeout_s: float | None = None) -> dict[str, Any]:
    # Retry only failures where the instance is gone (connection refused/reset), on another priority, i.e.
    # another instance: a dead instance costs a retry, not a failed request. A reset after the response
    # started is not retried by Envoy (the client sees the cut stream). A per-try (idle) timeout is a local
    # reset, which "reset" retries too: a hung instance costs one idle timeout, not the request.
    policy: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,reset",
        "num_retries": RETRIES,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
                "PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        },
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                             "PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": 5,
    }
    if per_try_idle_timeout_s is not None:
        policy["per_try_idle_timeout"] = duration(per_try_idle_timeout_s)
    return policy


def _a2a_route() -> dict[str, Any]:
    return {
        "name": "a2a",
        "match": {"prefix": A2A_ROUTE_PREFIX},
        # Only failures where the request never reached a replica are retried (on another one): a send that
        # reached one may have been queued, and repeating it would duplicate the message.
        "route": {"cluster": A2A_CLUSTER, "timeout": duration(A2A_ROUTE_TIMEOUT_S),
                  "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": RETRIES,
                                   "retry_host_predicate": [{
                                       "name": "envoy.retry_host_predicates.previous_hosts",
                                       "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry."
                                                        "host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                   "host_selection_retry_max_attempts": 5}},
        # Agent messages are not LLM requests: no buffering, no routing decision.
        "typed_per_filter_config": {
            name: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            }
            for name in (ROUTER_FILTER, OBSERVER_FILTER)
        },
    }


def _observer_off() -> dict[str, Any]:
    """Access-log mode: no observer stream on this route (the access log reports the response)."""
    return {OBSERVER_FILTER: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}}


def _routed_route(options: EnvoyOptions, served_by: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The route of a request the ext_proc server routed (it set the cluster header); with the access log, two:
    the requests the router marked keep the observer, the others run without it."""
    if options.gie:
        # The picker's ip:port picks an ORIGINAL_DST host. No retry policy: there is no other priority, and a
        # retry would go to the same address; the picker moves the workflow on its next request instead.
        return [{
            "name": "routed-by-extproc",
            "match": {"prefix": "/", "headers": [{"name": DESTINATION_ENDPOINT_HEADER, "present_match": True}]},
            "route": {"cluster": GIE_CLUSTER, "timeout": duration(options.upstream_timeout_s)},
            "response_headers_to_add": [{**served_by[0], "header": {"key": SERVED_BY_HEADER,
                                                                     "value": "%UPSTREAM_HOST%"}}],
        }]
    match: list[dict[str, Any]] = [{"name": options.cluster_header, "present_match": True}]
    route = {"cluster_header": options.cluster_header, "timeout": duration(options.upstream_timeout_s),
             "retry_policy": retry_policy(options.per_try_idle_timeout_s)}
    # Without the access log the observer reads every non-streamed response: one route.
    return _by_observation("routed-by-extproc", match, route, served_by,
                           _observer_off() if options.access_log else None)


def _by_observation(name: str, match: list[dict[str, Any]], route: dict[str, Any], served_by: list[dict[str, Any]],
                    unread: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One route, or two when the observer does not read every response (``unread``: its per-route config for
    the requests the router did not mark): first the marked ones (``OBSERVE_BODY_HEADER``), which keep the
    observer's own mode, then the others."""
    plain = {"name": name, "match": {"prefix": "/", "headers": match}, "route": route,
             "response_headers_to_add": served_by}
    if unread is None:
        return [plain]
    observed = {**plain, "name": f"{name}-observed",
                "match": {"prefix": "/", "headers": [*match, {"name": OBSERVE_BODY_HEADER, "present_match": True}]}}
    return [observed, {**plain, "typed_per_filter_config": unread}]


def _observer_without_body() -> dict[str, Any]:
    """The observer's per-route mode on a stream's route: request and response headers, no response body (the
    router stream's end is the response's end: Director.router_ended), so a stream costs the observer the same
    few messages whatever its length."""
    return {OBSERVER_FILTER: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        "overrides": {"processing_mode": {
            "request_header_mode": "SEND", "response_header_mode": "SEND", "request_body_mode": "NONE",
            "response_body_mode": "NONE", "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"}},
    }}


def _stream_idle_routes(options: EnvoyOptions, served_by: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One route per idle bucket: the ext_proc names the bucket of a streamed request (a stream's response starts
    at once, so the per-try timeout no longer applies; a stream silent for this long is dead: its attempt is
    reset, retried elsewhere if nothing was sent yet, else cut). requestcontrol/deadline.py picks the bucket.
    With the observer, each bucket has two routes: streams the router marked (``OBSERVE_BODY_HEADER``) keep the
    observer's body mode, the others reach it without their body (``_observer_without_body``), or not at all
    in access-log mode (``_observer_off``)."""
    found: list[dict[str, Any]] = []
    for bucket in STREAM_IDLE_BUCKETS_S:
        idle = bucket if options.per_try_idle_timeout_s is None else min(bucket, options.per_try_idle_timeout_s)
        match: list[dict[str, Any]] = [{"name": options.cluster_header, "present_match": True},
                                       {"name": STREAM_IDLE_HEADER, "string_match": {"exact": f"{bucket:g}"}}]
        route = {"cluster_header": options.cluster_header, "timeout": duration(options.upstream_timeout_s),
                 "retry_policy": retry_policy(idle)}
        unread = (_observer_off() if options.access_log else _observer_without_body()) if options.observer else None
        found += _by_observation(f"routed-by-extproc-stream-idle-{bucket:g}s", match, route, served_by, unread)
    return found


def _fallback_route(options: EnvoyOptions, served_by: list[dict[str, Any]]) -> dict[str, Any]:
    # Reached only when the ext_proc server did not answer (failure_mode_allow): no affinity, but served.
    return {
        "name": "fallback",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {"clusters": [{"name": n, "weight": 1} for n, _ in options.backends]},
            "timeout": duration(options.upstream_timeout_s),
            "retry_policy": retry_policy(options.per_try_idle_timeout_s),
        },
        "response_headers_to_add": [*served_by, {"header": {"key": FALLBACK_HEADER, "value": "true"},
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }


def _baseline_route(options: EnvoyOptions, served_by: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "baseline",
        "match": {"prefix": "/"},
        "route": {"cluster": BASELINE_CLUSTER, "timeout": duration(options.upstream_timeout_s)},
        "response_headers_to_add": served_by,
    }


def routes(options: EnvoyOptions) -> list[dict[str, Any]]:
    # The upstream host's name (= its cluster's name, see _clusters.cluster) exists only once a host was picked,
    # so local replies (our 400s, Envoy's 503s) carry no misleading x-served-by. One list shared by the routes
    # (the YAML shows it once, as an anchor).
    served_by = [{"header": {"key": SERVED_BY_HEADER, "value": "%UPSTREAM_HOST_NAME%"},
                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "keep_empty_value": False}]
    result: list[dict[str, Any]] = list(options.extra_routes)
    if options.a2a:
        result.append(_a2a_route())
    if not options.gie:
        result += _stream_idle_routes(options, served_by)
    result += [*_routed_route(options, served_by), _fallback_route(options, served_by)]
    if options.baseline_lb_policy is not None:
        result = [r for r in result if r["name"] == "a2a"] + [_baseline_route(options, served_by)]
    return result
