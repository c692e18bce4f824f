"""Generate the Envoy configuration for N vLLM instances, the ext_proc server and the A2A service.

``python -m extproc.envoy_config --backends vllm-1=127.0.0.1:8101,... > envoy/envoy.yaml``

Choices (each one is documented in the README's "Envoy configuration" section):
- ext_proc sees request headers (SEND) and the buffered body (BUFFERED); responses are skipped. With headers
  SKIP, Envoy picks the route before the body is seen and a later cluster header is ignored.
- ``failure_mode_allow: true``: if the ext_proc server is down or slow, requests still flow, spread over all
  instances by the fallback route (availability over cache affinity). Bad input is still refused when the
  server is up.
- ``message_timeout`` 1 s: a routing decision takes microseconds; the bound only matters when the ext_proc
  server is stuck, and then failure_mode_allow lets the request through.
- The listener's buffer limit bounds a buffered body: 16 MiB by default (a 128k-token prompt is ~0.5 MB of
  JSON; raise it for multi-megabyte contexts). Bigger bodies get a 413 JSON error.
- A client-sent cluster header is removed before ext_proc runs, so only our decision can pick a cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from extproc.config import DEFAULT_CLUSTER_HEADER, DEFAULT_GRPC_PORT, SERVED_BY_HEADER

DEFAULT_LISTEN_PORT = 8001
DEFAULT_ADMIN_PORT = 9901
DEFAULT_BUFFER_LIMIT = 16 * 1024 * 1024
DEFAULT_MESSAGE_TIMEOUT_S = 1.0
DEFAULT_UPSTREAM_TIMEOUT_S = 300.0
A2A_ROUTE_PREFIX = "/v1/workflows"
A2A_ROUTE_TIMEOUT_S = 65.0  # above the A2A long-poll cap (30 s) with room to spare
EXTPROC_CLUSTER = "extproc"
BASELINE_CLUSTER = "fleet"
ROUTER_FILTER = "envoy.filters.http.ext_proc"
OBSERVER_FILTER = "workflow.ext_proc.observer"
A2A_CLUSTER = "a2a"
RETRIES = 2
EXTPROC_HEALTH_INTERVAL_S = 0.5
# Gateway-generated errors become JSON like our own 400s: clients parse one error shape.
JSON_ERROR_CODES = (413, 429, 500, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    backends: tuple[tuple[str, Endpoint], ...]
    extproc: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", DEFAULT_GRPC_PORT),)
    a2a: tuple[Endpoint, ...] = ()  # A2A service replicas (HTTP); empty = no /v1/workflows route
    listen_address: str = "0.0.0.0"
    listen_port: int = DEFAULT_LISTEN_PORT
    admin_address: str = "127.0.0.1"
    admin_port: int = DEFAULT_ADMIN_PORT
    cluster_header: str = DEFAULT_CLUSTER_HEADER
    failure_mode_allow: bool = True
    message_timeout_s: float = DEFAULT_MESSAGE_TIMEOUT_S
    buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S
    # False renders the same gateway without our filters (the baseline of benchmarks/gateway_overhead.py).
    ext_proc_enabled: bool = True
    # Baselines for benchmarks: route everything to one "fleet" cluster of all instances balanced by Envoy
    # itself ("ROUND_ROBIN" or "LEAST_REQUEST"); implies no ext_proc.
    baseline_lb_policy: str | None = None
    # The observer filter gives response-end load tracking and usage (cached tokens) accounting; without it
    # load is only the scraped backend figures and the workflow status has no token counts.
    observer: bool = True
    extra_routes: tuple[dict[str, Any], ...] = field(default=())


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _address(endpoint: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


def _cluster(
    name: str, endpoints: Sequence[Endpoint], *, http2: bool = False,
    failover: Sequence[tuple[str, Endpoint]] = (),
) -> dict[str, Any]:
    locality_endpoints: list[dict[str, Any]] = [
        {"lb_endpoints": [{"endpoint": {"address": _address(e), "hostname": name}} for e in endpoints]}
    ]
    if failover:
        # The other instances, at priority 1: used only when this instance is ejected (outlier detection) or by
        # a retry (previous_priorities), so a request that hits a just-died instance is not lost.
        locality_endpoints.append({
            "priority": 1,
            "lb_endpoints": [{"endpoint": {"address": _address(e), "hostname": other}} for other, e in failover],
        })
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": locality_endpoints},
        # Envoy's default of 1024 concurrent requests per cluster is far below an LLM fleet's concurrency.
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000,
                 "max_retries": 1000}
            ]
        },
    }
    if failover:
        cluster["outlier_detection"] = {
            "consecutive_gateway_failure": 2,
            "consecutive_5xx": 5,
            "interval": "1s",
            "base_ejection_time": "2s",
            "max_ejection_percent": 100,
        }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _retry_policy() -> dict[str, Any]:
    # Retry only failures where the instance is gone (connection refused/reset), on another priority, i.e.
    # another instance: a dead instance costs a retry, not a failed request. A reset after the response
    # started is not retried by Envoy (the client sees the cut stream).
    return {
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


def _local_reply_config() -> dict[str, Any]:
    return {
        "mappers": [
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {"op": "EQ", "value": {"default_value": code, "runtime_key": f"_jsonerr{code}"}}
                    }
                },
                "body_format_override": {
                    "json_format": {
                        "error": {
                            "message": "%LOCAL_REPLY_BODY%",
                            "type": "gateway_error",
                            "code": "%RESPONSE_CODE%",
                            "details": "%RESPONSE_CODE_DETAILS%",
                        }
                    }
                },
            }
            for code in JSON_ERROR_CODES
        ]
    }


def render(options: EnvoyOptions) -> dict[str, Any]:
    cluster_names = [name for name, _ in options.backends]
    # The upstream host's name (= its cluster's name, see _cluster) exists only once a host was picked, so
    # local replies (our 400s, Envoy's 503s) carry no misleading x-served-by.
    served_by = [{"header": {"key": SERVED_BY_HEADER, "value": "%UPSTREAM_HOST_NAME%"},
                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "keep_empty_value": False}]
    routes: list[dict[str, Any]] = list(options.extra_routes)
    if options.a2a:
        routes.append({
            "name": "a2a",
            "match": {"prefix": A2A_ROUTE_PREFIX},
            "route": {"cluster": A2A_CLUSTER, "timeout": _duration(A2A_ROUTE_TIMEOUT_S)},
            # Agent messages are not LLM requests: no buffering, no routing decision.
            "typed_per_filter_config": {
                name: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                    "disabled": True,
                }
                for name in (ROUTER_FILTER, OBSERVER_FILTER)
            },
        })
    routes += [
        {
            "name": "routed-by-extproc",
            "match": {"prefix": "/", "headers": [{"name": options.cluster_header, "present_match": True}]},
            "route": {"cluster_header": options.cluster_header, "timeout": _duration(options.upstream_timeout_s),
                      "retry_policy": _retry_policy()},
            "response_headers_to_add": served_by,
        },
        {
            # Reached only when the ext_proc server did not answer (failure_mode_allow): no affinity, but served.
            "name": "fallback",
            "match": {"prefix": "/"},
            "route": {
                "weighted_clusters": {"clusters": [{"name": n, "weight": 1} for n in cluster_names]},
                "timeout": _duration(options.upstream_timeout_s),
                "retry_policy": _retry_policy(),
            },
            "response_headers_to_add": served_by,
        },
    ]
    http_filters = [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": options.cluster_header}]},
            },
        },
        {
            "name": ROUTER_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
                                 "timeout": _duration(options.message_timeout_s)},
                "failure_mode_allow": options.failure_mode_allow,
                "message_timeout": _duration(options.message_timeout_s),
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "request_body_mode": "BUFFERED",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
            },
        },
        {
            # Sees each response end (load accounting) and its usage (cached tokens); Envoy does not wait for it.
            "name": OBSERVER_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}},
                "observability_mode": True,
                "failure_mode_allow": True,
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SEND",
                    "request_body_mode": "NONE",
                    "response_body_mode": "STREAMED",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]
    if options.baseline_lb_policy is not None:
        routes = [r for r in routes if r["name"] == "a2a"] + [{
            "name": "baseline",
            "match": {"prefix": "/"},
            "route": {"cluster": BASELINE_CLUSTER, "timeout": _duration(options.upstream_timeout_s)},
            "response_headers_to_add": served_by,
        }]
    if not options.observer:
        http_filters = [f for f in http_filters if f["name"] != OBSERVER_FILTER]
    if not options.ext_proc_enabled or options.baseline_lb_policy is not None:
        http_filters = [f for f in http_filters if f["name"] == "envoy.filters.http.router"]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "route_config": {
            "name": "llm",
            "virtual_hosts": [{
                "name": "llm",
                "domains": ["*"],
                "routes": routes,
            }],
        },
        "http_filters": http_filters,
        "local_reply_config": _local_reply_config(),
    }
    clusters = [
        _cluster(name, [endpoint], failover=[(n, e) for n, e in options.backends if n != name])
        for name, endpoint in options.backends
    ]
    if options.baseline_lb_policy is not None:
        fleet = _cluster(BASELINE_CLUSTER, [])
        fleet["lb_policy"] = options.baseline_lb_policy
        fleet["load_assignment"]["endpoints"] = [{"lb_endpoints": [
            {"endpoint": {"address": _address(e), "hostname": n}} for n, e in options.backends]}]
        clusters.append(fleet)
    elif options.ext_proc_enabled:
        extproc = _cluster(EXTPROC_CLUSTER, options.extproc, http2=True)
        # gRPC health checks: a replica that reports NOT_SERVING (draining on SIGTERM) or stops answering
        # gets no new streams within one interval.
        extproc["health_checks"] = [{
            "timeout": "0.5s",
            "interval": _duration(EXTPROC_HEALTH_INTERVAL_S),
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "no_traffic_interval": _duration(EXTPROC_HEALTH_INTERVAL_S),
            "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
        }]
        extproc["outlier_detection"] = {"consecutive_gateway_failure": 1, "consecutive_5xx": 1, "interval": "1s",
                                        "base_ejection_time": "1s", "max_ejection_percent": 50}
        clusters.append(extproc)
    if options.a2a:
        clusters.append(_cluster(A2A_CLUSTER, options.a2a))
    return {
        "admin": {"address": _address(Endpoint(options.admin_address, options.admin_port))},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": _address(Endpoint(options.listen_address, options.listen_port)),
                "per_connection_buffer_limit_bytes": options.buffer_limit_bytes,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }


def to_yaml(options: EnvoyOptions) -> str:
    header = "# Generated by `python -m extproc.envoy_config`; edit the generator, not this file.\n"
    return header + yaml.safe_dump(render(options), sort_keys=False, width=120)


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return Endpoint(host, int(port))


def _backends(text: str) -> tuple[tuple[str, Endpoint], ...]:
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=host:port, got {item!r}")
        pairs.append((name, _endpoint(address)))
    return tuple(pairs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the Envoy configuration for the workflow router.")
    parser.add_argument("--backends", type=_backends,
                        default=_backends("vllm-1=127.0.0.1:8101,vllm-2=127.0.0.1:8102,vllm-3=127.0.0.1:8103"),
                        help="name=host:port,... of the vLLM instances (each becomes an Envoy cluster)")
    parser.add_argument("--extproc", type=_endpoint, action="append",
                        help=f"host:port of an ext_proc server (repeatable; default 127.0.0.1:{DEFAULT_GRPC_PORT})")
    parser.add_argument("--a2a", type=_endpoint, action="append",
                        help="host:port of an A2A service replica's HTTP API (repeatable; default 127.0.0.1:8090)")
    parser.add_argument("--listen-port", type=int, default=DEFAULT_LISTEN_PORT)
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    parser.add_argument("--buffer-limit-bytes", type=int, default=DEFAULT_BUFFER_LIMIT)
    parser.add_argument("--message-timeout", type=float, default=DEFAULT_MESSAGE_TIMEOUT_S)
    parser.add_argument("--failure-mode-deny", action="store_true",
                        help="answer 500 instead of routing without affinity when ext_proc is unavailable")
    ns = parser.parse_args(argv)
    options = EnvoyOptions(
        backends=ns.backends,
        extproc=tuple(ns.extproc or (Endpoint("127.0.0.1", DEFAULT_GRPC_PORT),)),
        a2a=tuple(ns.a2a or (_endpoint("127.0.0.1:8090"),)),
        listen_port=ns.listen_port,
        admin_port=ns.admin_port,
        buffer_limit_bytes=ns.buffer_limit_bytes,
        message_timeout_s=ns.message_timeout,
        failure_mode_allow=not ns.failure_mode_deny,
    )
    sys.stdout.write(to_yaml(options))


if __name__ == "__main__":
    main()
