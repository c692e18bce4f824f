"""Clusters: one per vLLM instance (the others as failover), the ext_proc and A2A replicas with their health
checks, the benchmarks' balanced baseline fleet and the Gateway API Inference Extension ORIGINAL_DST pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extproc.config import DESTINATION_ENDPOINT_HEADER
from extproc.envoy_config._options import (
    A2A_CLUSTER,
    A2A_HEALTH_INTERVAL_S,
    A2A_HEALTH_PATH,
    BASELINE_CLUSTER,
    EXTPROC_CLUSTER,
    EXTPROC_HEALTH_INTERVAL_S,
    GIE_CLUSTER,
    Endpoint,
    EnvoyOptions,
    address,
    duration,
)
from extproc.envoy_config._security import tls_socket


def cluster(
    name: str, endpoints: Sequence[Endpoint], *, http2: bool = False,
    failover: Sequence[tuple[str, Endpoint]] = (),
) -> dict[str, Any]:
    locality_endpoints: list[dict[str, Any]] = [
        {"lb_endpoints": [{"endpoint": {"address": address(e), "hostname": name}} for e in endpoints]}
    ]
    if failover:
        # The other instances, at priority 1: used only when this instance is ejected (outlier detection) or by
        # a retry (previous_priorities), so a request that hits a just-died instance is not lost.
        locality_endpoints.append({
            "priority": 1,
            "lb_endpoints": [{"endpoint": {"address": address(e), "hostname": other}} for other, e in failover],
        })
    result: dict[str, Any] = {
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
        result["outlier_detection"] = {
            "consecutive_gateway_failure": 2,
            "consecutive_5xx": 5,
            "interval": "1s",
            "base_ejection_time": "2s",
            "max_ejection_percent": 100,
        }
    if http2:
        result["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return result


def gie_cluster() -> dict[str, Any]:
    result = cluster(GIE_CLUSTER, [])
    del result["load_assignment"]  # ORIGINAL_DST hosts come from each request's header
    result.update({
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT_HEADER},
    })
    return result


def _baseline_cluster(options: EnvoyOptions, lb_policy: str) -> dict[str, Any]:
    fleet = cluster(BASELINE_CLUSTER, [])
    fleet["lb_policy"] = lb_policy
    fleet["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": address(e), "hostname": n}} for n, e in options.backends]}]
    return fleet


def _extproc_cluster(options: EnvoyOptions) -> dict[str, Any]:
    extproc = cluster(EXTPROC_CLUSTER, options.extproc, http2=True)
    # gRPC health checks: a replica that reports NOT_SERVING (draining on SIGTERM) or stops answering
    # gets no new streams within one interval.
    extproc["health_checks"] = [{
        "timeout": "0.5s",
        "interval": duration(EXTPROC_HEALTH_INTERVAL_S),
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "no_traffic_interval": duration(EXTPROC_HEALTH_INTERVAL_S),
        "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
    }]
    extproc["outlier_detection"] = {"consecutive_gateway_failure": 1, "consecutive_5xx": 1, "interval": "1s",
                                    "base_ejection_time": "1s", "max_ejection_percent": 50}
    if options.upstream_tls is not None:
        extproc["transport_socket"] = tls_socket(options.upstream_tls, options.upstream_tls.extproc_san,
                                                 http2=True)
    return extproc


def _a2a_cluster(options: EnvoyOptions) -> dict[str, Any]:
    a2a = cluster(A2A_CLUSTER, options.a2a)
    # A replica that shuts down or loses its store answers 503 on /healthz and gets no new requests.
    a2a["health_checks"] = [{
        "timeout": "0.5s", "interval": duration(A2A_HEALTH_INTERVAL_S), "unhealthy_threshold": 1,
        "healthy_threshold": 1, "no_traffic_interval": duration(A2A_HEALTH_INTERVAL_S),
        "http_health_check": {"path": A2A_HEALTH_PATH},
    }]
    if options.upstream_tls is not None:
        a2a["transport_socket"] = tls_socket(options.upstream_tls, options.upstream_tls.a2a_san, http2=False)
    return a2a


def _peers(options: EnvoyOptions, name: str) -> list[tuple[str, Endpoint]]:
    """The instances a request for ``name`` may be retried on: the others of its failover group (all others
    without groups, or when ``name`` is in none)."""
    group = next((g for g in options.failover_groups if name in g), None)
    return [(n, e) for n, e in options.backends if n != name and (group is None or n in group)]


def clusters(options: EnvoyOptions) -> list[dict[str, Any]]:
    result = [cluster(name, [endpoint], failover=_peers(options, name)) for name, endpoint in options.backends]
    if options.baseline_lb_policy is not None:
        result.append(_baseline_cluster(options, options.baseline_lb_policy))
    elif options.ext_proc_enabled:
        result.append(_extproc_cluster(options))
        if options.gie:
            result.append(gie_cluster())
    if options.a2a:
        result.append(_a2a_cluster(options))
    if options.strict_dns:
        for item in result:
            if item["type"] == "STATIC":
                item["type"] = "STRICT_DNS"
    return result
