"""What the generator renders from: the option value classes, their defaults and the names they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extproc.config import DEFAULT_CLUSTER_HEADER, DEFAULT_GRPC_PORT, RESPONSE_OBSERVATIONS

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
    # "access-log": the observer runs only on requests the router marks for a body read (a sample); the others'
    # end and status reach the ext_proc server through Envoy's gRPC access logger, in batches. The ext_proc
    # server must run with the same --response-observation.
    response_observation: str = RESPONSE_OBSERVATIONS[0]
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
    # A mixed fleet: instances serving the same models, as groups of backend names. An instance's failover
    # endpoints (priority 1, used by retries) are then only the others of its group, so a retry never reaches an
    # instance that would answer 404 for the request's model. Empty: every other instance.
    failover_groups: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.response_observation not in RESPONSE_OBSERVATIONS:
            raise ValueError(f"response_observation must be one of {', '.join(RESPONSE_OBSERVATIONS)}")
        if self.access_log and self.gie:
            raise ValueError("response_observation 'access-log' is not available in GIE mode")

    @property
    def access_log(self) -> bool:
        """Responses reach the ext_proc server through the gRPC access log (those the observer does not read)."""
        return self.observer and self.response_observation == "access-log"


def duration(seconds: float) -> str:
    return f"{seconds:g}s"


def address(endpoint: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}
