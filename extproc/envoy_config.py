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

from extproc.config import (
    DEFAULT_CLUSTER_HEADER,
    DEFAULT_GRPC_PORT,
    DESTINATION_ENDPOINT_HEADER,
    FALLBACK_HEADER,
    SERVED_BY_HEADER,
)

DEFAULT_LISTEN_PORT = 8001
DEFAULT_ADMIN_PORT = 9901
DEFAULT_BUFFER_LIMIT = 16 * 1024 * 1024
DEFAULT_MESSAGE_TIMEOUT_S = 1.0
DEFAULT_UPSTREAM_TIMEOUT_S = 300.0
A2A_ROUTE_PREFIX = "/v1/workflows"
A2A_ROUTE_TIMEOUT_S = 65.0  # above the A2A long-poll cap (30 s) with room to spare
A2A_HEALTH_PATH = "/healthz"  # 503 while the replica shuts down or cannot reach its store
A2A_HEALTH_INTERVAL_S = 1.0
# Envoy warns about (and a hostile client can exhaust) an unbounded number of downstream connections.
DEFAULT_MAX_DOWNSTREAM_CONNECTIONS = 50_000
EXTPROC_CLUSTER = "extproc"
BASELINE_CLUSTER = "fleet"
ROUTER_FILTER = "envoy.filters.http.ext_proc"
OBSERVER_FILTER = "workflow.ext_proc.observer"
A2A_CLUSTER = "a2a"
RETRIES = 2
EXTPROC_HEALTH_INTERVAL_S = 0.5
# Gateway-generated errors become JSON like our own 400s: clients parse one error shape.
JSON_ERROR_CODES = (413, 429, 500, 502, 503, 504)
# jwt_authn's own answers (401 missing/invalid token, 403 audience not allowed), rendered only when it is on.
JWT_ERROR_CODES = (401, 403)
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "workflow"
# Two local_ratelimit filters, one bucket each: the A2A one is disabled on LLM routes and vice versa, so a
# client cannot pick a route (e.g. by sending the cluster header) to draw from another bucket.
LLM_RATELIMIT_FILTER = "workflow.ratelimit.llm"
A2A_RATELIMIT_FILTER = "workflow.ratelimit.a2a"
# Gateway API Inference Extension mode: one ORIGINAL_DST cluster; the ext_proc answer names the ip:port.
GIE_CLUSTER = "inference-pool"
REQUEST_BODY_MODES = {"buffered": "BUFFERED", "full-duplex": "FULL_DUPLEX_STREAMED"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class JwtOptions:
    """One JWT provider: tokens must be signed by a key of the JWKS and carry this issuer and an audience."""

    issuer: str
    audiences: tuple[str, ...]
    jwks: str | None = None  # inline JWKS JSON
    jwks_file: str | None = None  # or a file Envoy reads at start


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket shared by all of one Envoy's workers: ``max_tokens`` requests at once, refilled by
    ``tokens_per_fill`` every ``fill_interval_s``."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """mTLS from Envoy to the ext_proc and A2A clusters: Envoy's client certificate, the CA that signed the
    servers' certificates, and the subject alt names (DNS) each server's certificate must carry."""

    cert_file: str
    key_file: str
    ca_file: str
    extproc_san: str = "extproc"
    a2a_san: str = "a2a"


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
    # Endpoints are DNS names (e.g. Kubernetes Services): STRICT_DNS clusters resolve them and follow changes;
    # STATIC clusters accept only IP addresses.
    strict_dns: bool = False
    jwt: JwtOptions | None = None  # require a valid JWT on every route (before any routing decision)
    llm_rate_limit: RateLimit | None = None
    a2a_rate_limit: RateLimit | None = None
    upstream_tls: UpstreamTls | None = None
    # Gateway API Inference Extension mode: the ext_proc server (--destination-mode endpoint) answers with
    # x-gateway-destination-endpoint = ip:port, routed by an ORIGINAL_DST cluster.
    gie: bool = False
    # Per-attempt idle timeout of LLM routes (None = off): a hung instance's attempt is reset and retried on
    # another instance. Non-streaming responses send nothing until the generation ends, so it must exceed
    # the longest legitimate non-streaming request (streaming: the longest prefill / gap between chunks).
    per_try_idle_timeout_s: float | None = None
    # Envoy-wide bound on open client connections (overload manager); beyond it new connections are refused.
    max_downstream_connections: int = DEFAULT_MAX_DOWNSTREAM_CONNECTIONS
    # "full-duplex": the router filter streams the body (FULL_DUPLEX_STREAMED, as gateways configure it for an
    # InferencePool) instead of buffering it; the ext_proc server notices it per stream (docs/gateway-api.md).
    request_body_mode: str = "buffered"


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


def _retry_policy(per_try_idle_timeout_s: float | None = None) -> dict[str, Any]:
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
        policy["per_try_idle_timeout"] = _duration(per_try_idle_timeout_s)
    return policy


def _local_reply_config(codes: Sequence[int] = JSON_ERROR_CODES) -> dict[str, Any]:
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
            for code in codes
        ] + [{
            # Envoy's HTTP/1 codec refuses broken framing (bad content-length, chunked + content-length, a garbage
            # request line) before any route or filter runs, as a text/plain 400. Such a reply has no :path
            # (the request never parsed); our own 400s from ext_proc have one and already carry their JSON.
            "filter": {"and_filter": {"filters": [
                {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 400,
                                                                             "runtime_key": "_jsonerr400"}}}},
                {"header_filter": {"header": {"name": ":path", "present_match": False}}},
            ]}},
            "body_format_override": {"json_format": {"error": {
                "message": "malformed HTTP request: %LOCAL_REPLY_BODY%", "type": "invalid_request_error",
                "code": "%RESPONSE_CODE%", "details": "%RESPONSE_CODE_DETAILS%"}}},
        }]
    }


def _json_error_codes(options: EnvoyOptions) -> tuple[int, ...]:
    codes = JSON_ERROR_CODES + (JWT_ERROR_CODES if options.jwt is not None else ())
    if options.request_body_mode == "full-duplex":
        # Envoy buffers no body then, so a 413 can only be the ext_proc server's own JSON answer (over
        # --max-request-body-bytes): mapping it would wrap that JSON into another error's message.
        codes = tuple(code for code in codes if code != 413)
    return codes


def _jwt_filter(jwt: JwtOptions) -> dict[str, Any]:
    if (jwt.jwks is None) == (jwt.jwks_file is None):
        raise ValueError("a JWT provider needs exactly one of an inline JWKS or a JWKS file")
    if not jwt.issuer or not jwt.audiences:
        raise ValueError("a JWT provider needs an issuer and at least one audience")
    local_jwks = {"inline_string": jwt.jwks} if jwt.jwks is not None else {"filename": jwt.jwks_file}
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {JWT_PROVIDER: {
                "issuer": jwt.issuer,
                "audiences": list(jwt.audiences),
                # Kept on the request: the A2A service (and the backends) may read the caller's identity.
                "forward": True,
                "local_jwks": local_jwks,
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}],
        },
    }


def _ratelimit_filter(name: str, limit: RateLimit) -> dict[str, Any]:
    if limit.max_tokens < 1 or limit.tokens_per_fill < 1 or limit.fill_interval_s <= 0:
        raise ValueError(f"rate limit of {name}: tokens must be >= 1 and the fill interval > 0")
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": name.replace(".", "_"),
            "token_bucket": {"max_tokens": limit.max_tokens, "tokens_per_fill": limit.tokens_per_fill,
                             "fill_interval": _duration(limit.fill_interval_s)},
            "filter_enabled": {**always, "runtime_key": f"{name}.enabled"},
            "filter_enforced": {**always, "runtime_key": f"{name}.enforced"},
            # x-ratelimit-limit / -remaining / -reset on every response, so clients can back off early.
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        },
    }


def _disabled_filter() -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}


def _tls_socket(tls: UpstreamTls, san: str, *, http2: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificates": [{"certificate_chain": {"filename": tls.cert_file},
                              "private_key": {"filename": tls.key_file}}],
        "validation_context": {
            "trusted_ca": {"filename": tls.ca_file},
            # A certificate from the same CA issued to another service is not accepted in this one's place.
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}],
        },
    }
    if http2:
        common["alpn_protocols"] = ["h2"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common,
            "sni": san,
        },
    }


def _gie_cluster() -> dict[str, Any]:
    cluster = _cluster(GIE_CLUSTER, [])
    del cluster["load_assignment"]  # ORIGINAL_DST hosts come from each request's header
    cluster.update({
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT_HEADER},
    })
    return cluster


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
            # Only failures where the request never reached a replica are retried (on another one): a send that
            # reached one may have been queued, and repeating it would duplicate the message.
            "route": {"cluster": A2A_CLUSTER, "timeout": _duration(A2A_ROUTE_TIMEOUT_S),
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
        })
    routes += [
        {
            "name": "routed-by-extproc",
            "match": {"prefix": "/", "headers": [{"name": options.cluster_header, "present_match": True}]},
            "route": {"cluster_header": options.cluster_header, "timeout": _duration(options.upstream_timeout_s),
                      "retry_policy": _retry_policy(options.per_try_idle_timeout_s)},
            "response_headers_to_add": served_by,
        },
        {
            # Reached only when the ext_proc server did not answer (failure_mode_allow): no affinity, but served.
            "name": "fallback",
            "match": {"prefix": "/"},
            "route": {
                "weighted_clusters": {"clusters": [{"name": n, "weight": 1} for n in cluster_names]},
                "timeout": _duration(options.upstream_timeout_s),
                "retry_policy": _retry_policy(options.per_try_idle_timeout_s),
            },
            "response_headers_to_add": [*served_by, {"header": {"key": FALLBACK_HEADER, "value": "true"},
                                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        },
    ]
    removed_headers = [{"remove": options.cluster_header}]
    if options.gie:
        # The picker's ip:port picks an ORIGINAL_DST host. No retry policy: there is no other priority, and a
        # retry would go to the same address; the picker moves the workflow on its next request instead.
        routed = next(r for r in routes if r["name"] == "routed-by-extproc")
        routed["match"]["headers"] = [{"name": DESTINATION_ENDPOINT_HEADER, "present_match": True}]
        routed["route"] = {"cluster": GIE_CLUSTER, "timeout": _duration(options.upstream_timeout_s)}
        routed["response_headers_to_add"] = [{**served_by[0], "header": {"key": SERVED_BY_HEADER,
                                                                          "value": "%UPSTREAM_HOST%"}}]
        # A client-chosen destination would let anyone make Envoy connect to any ip:port.
        removed_headers.append({"remove": DESTINATION_ENDPOINT_HEADER})
    http_filters = [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": removed_headers},
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
                    "request_body_mode": REQUEST_BODY_MODES[options.request_body_mode],
                    "response_body_mode": "NONE",
                    # Envoy refuses FULL_DUPLEX_STREAMED without trailers SEND (they may end the body).
                    "request_trailer_mode": "SEND" if options.request_body_mode == "full-duplex" else "SKIP",
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
    # Authentication first: an unauthenticated request costs neither a rate-limit token nor a routing decision.
    security: list[dict[str, Any]] = []
    if options.jwt is not None:
        security.append(_jwt_filter(options.jwt))
    if options.llm_rate_limit is not None:
        security.append(_ratelimit_filter(LLM_RATELIMIT_FILTER, options.llm_rate_limit))
    if options.a2a_rate_limit is not None:
        security.append(_ratelimit_filter(A2A_RATELIMIT_FILTER, options.a2a_rate_limit))
    http_filters = security + http_filters
    security_names = {f["name"] for f in security}
    for index, route in enumerate(routes):
        other = LLM_RATELIMIT_FILTER if route.get("name") == "a2a" else A2A_RATELIMIT_FILTER
        if other in security_names:
            routes[index] = {**route, "typed_per_filter_config": {**route.get("typed_per_filter_config", {}),
                                                                   other: _disabled_filter()}}
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
        "local_reply_config": _local_reply_config(_json_error_codes(options)),
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
        if options.upstream_tls is not None:
            extproc["transport_socket"] = _tls_socket(options.upstream_tls, options.upstream_tls.extproc_san,
                                                      http2=True)
        clusters.append(extproc)
        if options.gie:
            clusters.append(_gie_cluster())
    if options.a2a:
        a2a = _cluster(A2A_CLUSTER, options.a2a)
        # A replica that shuts down or loses its store answers 503 on /healthz and gets no new requests.
        a2a["health_checks"] = [{
            "timeout": "0.5s", "interval": _duration(A2A_HEALTH_INTERVAL_S), "unhealthy_threshold": 1,
            "healthy_threshold": 1, "no_traffic_interval": _duration(A2A_HEALTH_INTERVAL_S),
            "http_health_check": {"path": A2A_HEALTH_PATH},
        }]
        if options.upstream_tls is not None:
            a2a["transport_socket"] = _tls_socket(options.upstream_tls, options.upstream_tls.a2a_san, http2=False)
        clusters.append(a2a)
    if options.strict_dns:
        for cluster in clusters:
            if cluster["type"] == "STATIC":
                cluster["type"] = "STRICT_DNS"
    return {
        "admin": {"address": _address(Endpoint(options.admin_address, options.admin_port))},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                "DownstreamConnectionsConfig",
                "max_active_downstream_connections": options.max_downstream_connections,
            },
        }]},
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


def _rate_limit(text: str) -> RateLimit:
    """``N`` (N requests per second) or ``N/SECONDS`` (a bucket of N refilled every SECONDS)."""
    tokens, _, interval = text.partition("/")
    try:
        limit = RateLimit(int(tokens), int(tokens), float(interval) if interval else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N/SECONDS, got {text!r}") from None
    if limit.max_tokens < 1 or limit.fill_interval_s <= 0:
        raise argparse.ArgumentTypeError(f"expected N >= 1 and SECONDS > 0, got {text!r}")
    return limit


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    sec = parser.add_argument_group("security and Gateway API Inference Extension (docs/envoy-security.md, "
                                    "docs/gateway-api.md)")
    sec.add_argument("--jwt-issuer", help="require a JWT with this issuer on every route")
    sec.add_argument("--jwt-audience", action="append", help="accepted audience (repeatable)")
    sec.add_argument("--jwt-jwks-file", help="JWKS file with the keys that sign valid tokens")
    sec.add_argument("--jwt-jwks", help="the JWKS inline (JSON) instead of a file")
    sec.add_argument("--llm-rate-limit", type=_rate_limit,
                     help="token bucket of the LLM routes: N (per second) or N/SECONDS; over it: 429")
    sec.add_argument("--a2a-rate-limit", type=_rate_limit, help="token bucket of the A2A routes, likewise")
    sec.add_argument("--upstream-tls-cert", help="Envoy's client certificate (PEM) for mTLS to ext_proc and A2A")
    sec.add_argument("--upstream-tls-key", help="its private key (PEM)")
    sec.add_argument("--upstream-tls-ca", help="CA (PEM) that signed the ext_proc and A2A server certificates")
    sec.add_argument("--extproc-san", default="extproc", help="DNS SAN the ext_proc server certificate must carry")
    sec.add_argument("--a2a-san", default="a2a", help="DNS SAN the A2A server certificate must carry")
    sec.add_argument("--gie", action="store_true",
                     help="Gateway API Inference Extension mode: an ORIGINAL_DST cluster routed by the "
                     f"{DESTINATION_ENDPOINT_HEADER} header (run ext_proc with --destination-mode endpoint)")
    sec.add_argument("--request-body-mode", choices=list(REQUEST_BODY_MODES), default="buffered",
                     help="how the router ext_proc filter gets the request body: buffered (one message) or "
                     "full-duplex (FULL_DUPLEX_STREAMED chunks, as gateways configure an endpoint picker)")


def _security_options(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    found: dict[str, Any] = {"llm_rate_limit": ns.llm_rate_limit, "a2a_rate_limit": ns.a2a_rate_limit,
                             "gie": ns.gie, "request_body_mode": ns.request_body_mode}
    if ns.jwt_issuer or ns.jwt_audience or ns.jwt_jwks_file or ns.jwt_jwks:
        if not (ns.jwt_issuer and ns.jwt_audience) or bool(ns.jwt_jwks_file) == bool(ns.jwt_jwks):
            parser.error("JWT needs --jwt-issuer, --jwt-audience and one of --jwt-jwks-file / --jwt-jwks")
        found["jwt"] = JwtOptions(ns.jwt_issuer, tuple(ns.jwt_audience), jwks=ns.jwt_jwks,
                                  jwks_file=ns.jwt_jwks_file)
    tls = (ns.upstream_tls_cert, ns.upstream_tls_key, ns.upstream_tls_ca)
    if any(tls):
        if not all(tls):
            parser.error("mTLS needs --upstream-tls-cert, --upstream-tls-key and --upstream-tls-ca")
        found["upstream_tls"] = UpstreamTls(*tls, extproc_san=ns.extproc_san, a2a_san=ns.a2a_san)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="envoy-config",
                                     description="Print the Envoy configuration for the workflow router.")
    parser.add_argument("--backends", type=_backends,
                        default="vllm-1=127.0.0.1:8101,vllm-2=127.0.0.1:8102,vllm-3=127.0.0.1:8103",  # type applies
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
    parser.add_argument("--upstream-timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT_S, metavar="SECONDS",
                        help="longest an LLM request may take upstream (the whole generation); beyond: 504")
    parser.add_argument("--per-try-idle-timeout", type=float, default=None, metavar="SECONDS",
                        help="reset an LLM request attempt after this long without upstream bytes and retry it on "
                        "another instance (default off; must exceed the longest non-streaming generation)")
    parser.add_argument("--max-downstream-connections", type=int, default=DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
                        help="open client connections Envoy accepts at most (overload manager); beyond: refused")
    parser.add_argument("--strict-dns", action="store_true",
                        help="resolve endpoint host names through DNS (STRICT_DNS clusters), e.g. Kubernetes Services")
    parser.add_argument("--admin-address", default="127.0.0.1",
                        help="address of the admin API (0.0.0.0 lets Prometheus scrape /stats/prometheus)")
    _add_security_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    options = EnvoyOptions(
        backends=ns.backends,
        **_security_options(ns, parser),
        extproc=tuple(ns.extproc or (Endpoint("127.0.0.1", DEFAULT_GRPC_PORT),)),
        a2a=tuple(ns.a2a or (_endpoint("127.0.0.1:8090"),)),
        listen_port=ns.listen_port,
        admin_port=ns.admin_port,
        buffer_limit_bytes=ns.buffer_limit_bytes,
        message_timeout_s=ns.message_timeout,
        failure_mode_allow=not ns.failure_mode_deny,
        upstream_timeout_s=ns.upstream_timeout,
        per_try_idle_timeout_s=ns.per_try_idle_timeout,
        max_downstream_connections=ns.max_downstream_connections,
        strict_dns=ns.strict_dns,
        admin_address=ns.admin_address,
    )
    sys.stdout.write(to_yaml(options))


if __name__ == "__main__":
    main()
