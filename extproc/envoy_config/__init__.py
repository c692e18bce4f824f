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

Modules, by concern: ``_options`` (the option value classes, defaults and shared names), ``_routes``,
``_filters`` (ext_proc router/observer, JSON local replies), ``_security`` (jwt_authn, local_ratelimit, upstream
TLS), ``_clusters``, ``_listeners`` (listener, admin, overload manager; ``render``/``to_yaml``), ``_cli``.
"""

from extproc.envoy_config._cli import build_parser, main
from extproc.envoy_config._listeners import render, to_yaml
from extproc.envoy_config._options import (
    A2A_CLUSTER,
    A2A_HEALTH_INTERVAL_S,
    A2A_HEALTH_PATH,
    A2A_RATELIMIT_FILTER,
    A2A_ROUTE_PREFIX,
    A2A_ROUTE_TIMEOUT_S,
    BASELINE_CLUSTER,
    DEFAULT_ADMIN_PORT,
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_LISTEN_PORT,
    DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    DEFAULT_MESSAGE_TIMEOUT_S,
    DEFAULT_UPSTREAM_TIMEOUT_S,
    EXTPROC_CLUSTER,
    EXTPROC_HEALTH_INTERVAL_S,
    GIE_CLUSTER,
    JSON_ERROR_CODES,
    JWT_ERROR_CODES,
    JWT_FILTER,
    JWT_PROVIDER,
    LLM_RATELIMIT_FILTER,
    OBSERVER_FILTER,
    REQUEST_BODY_MODES,
    RETRIES,
    ROUTER_FILTER,
    Endpoint,
    EnvoyOptions,
    JwtOptions,
    RateLimit,
    UpstreamTls,
)

__all__ = [
    "A2A_CLUSTER",
    "A2A_HEALTH_INTERVAL_S",
    "A2A_HEALTH_PATH",
    "A2A_RATELIMIT_FILTER",
    "A2A_ROUTE_PREFIX",
    "A2A_ROUTE_TIMEOUT_S",
    "BASELINE_CLUSTER",
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_BUFFER_LIMIT",
    "DEFAULT_LISTEN_PORT",
    "DEFAULT_MAX_DOWNSTREAM_CONNECTIONS",
    "DEFAULT_MESSAGE_TIMEOUT_S",
    "DEFAULT_UPSTREAM_TIMEOUT_S",
    "EXTPROC_CLUSTER",
    "EXTPROC_HEALTH_INTERVAL_S",
    "GIE_CLUSTER",
    "JSON_ERROR_CODES",
    "JWT_ERROR_CODES",
    "JWT_FILTER",
    "JWT_PROVIDER",
    "LLM_RATELIMIT_FILTER",
    "OBSERVER_FILTER",
    "REQUEST_BODY_MODES",
    "RETRIES",
    "ROUTER_FILTER",
    "Endpoint",
    "EnvoyOptions",
    "JwtOptions",
    "RateLimit",
    "UpstreamTls",
    "build_parser",
    "main",
    "render",
    "to_yaml",
]
