"""HTTP filters of the workflow router (header scrub, the ext_proc router and observer, Envoy's router) and the
local reply config that turns Envoy's own errors into JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extproc.config import (
    DESTINATION_ENDPOINT_HEADER,
    OBSERVE_BODY_HEADER,
    OBSERVER_CLOSE_DELAY_S,
    PER_TRY_TIMEOUT_HEADER,
    STREAM_IDLE_HEADER,
)
from extproc.envoy_config._options import (
    EXTPROC_CLUSTER,
    JSON_ERROR_CODES,
    JWT_ERROR_CODES,
    OBSERVER_FILTER,
    REQUEST_BODY_MODES,
    ROUTER_FILTER,
    EnvoyOptions,
    duration,
)

ENVOY_ROUTER = "envoy.filters.http.router"


def local_reply_config(codes: Sequence[int] = JSON_ERROR_CODES) -> dict[str, Any]:
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


def json_error_codes(options: EnvoyOptions) -> tuple[int, ...]:
    codes = JSON_ERROR_CODES + (JWT_ERROR_CODES if options.jwt is not None else ())
    if options.request_body_mode == "full-duplex":
        # Envoy buffers no body then, so a 413 can only be the ext_proc server's own JSON answer (over
        # --max-request-body-bytes): mapping it would wrap that JSON into another error's message.
        codes = tuple(code for code in codes if code != 413)
    return codes


def _header_mutation_filter(options: EnvoyOptions) -> dict[str, Any]:
    # A client-sent cluster header is removed before ext_proc runs, so only our decision can pick a cluster; the
    # same for the request's deadline (per-try timeout) and stream-idle route.
    removed_headers = [{"remove": h} for h in (options.cluster_header, PER_TRY_TIMEOUT_HEADER, STREAM_IDLE_HEADER,
                                                 OBSERVE_BODY_HEADER)]
    if options.gie:
        # A client-chosen destination would let anyone make Envoy connect to any ip:port.
        removed_headers.append({"remove": DESTINATION_ENDPOINT_HEADER})
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": removed_headers},
        },
    }


def _router_filter(options: EnvoyOptions) -> dict[str, Any]:
    return {
        "name": ROUTER_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
                             "timeout": duration(options.message_timeout_s)},
            "failure_mode_allow": options.failure_mode_allow,
            "message_timeout": duration(options.message_timeout_s),
            # The answer sets Envoy's per-try timeout header (x-envoy-upstream-rq-per-try-timeout-ms), which the
            # default rules refuse (x-envoy-*): requestcontrol/deadline.py.
            "mutation_rules": {"allow_envoy": True},
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
    }


def _observer_filter() -> dict[str, Any]:
    # Sees each response end (load accounting) and its usage (cached tokens); Envoy does not wait for it. Envoy
    # holds an observability-mode stream open for deferred_close_timeout after the HTTP stream and drops what it
    # did not deliver by then (OBSERVER_CLOSE_DELAY_S). A response whose body it does not see (streams, see
    # _routes._observer_without_body) ends with its router stream (Director.router_ended).
    return {
        "name": OBSERVER_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}},
            "observability_mode": True,
            "deferred_close_timeout": duration(OBSERVER_CLOSE_DELAY_S),
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
    }


def http_filters(options: EnvoyOptions) -> list[dict[str, Any]]:
    """The filter chain after the security filters (see _security.security_filters)."""
    envoy_router = {
        "name": ENVOY_ROUTER,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    filters = [_header_mutation_filter(options), _router_filter(options)]
    if options.observer:
        filters.append(_observer_filter())
    if not options.ext_proc_enabled or options.baseline_lb_policy is not None:
        return [envoy_router]
    return [*filters, envoy_router]
