"""Every default and limit of the A2A service, and the ``Settings`` built from CLI flags / env vars.

Precedence: command-line flag > environment variable (``A2A_*``, listed in ``--help``) > default below.

Identifiers (workflow ids, agent ids, message types, request ids) are 1..256 characters from
``[A-Za-z0-9._:@-]`` and must not be ``.`` or ``..``. ``/`` is excluded because ids appear as URL path
segments (Envoy and Starlette decode ``%2F`` before routing), and ``*`` is reserved for broadcast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8090
DEFAULT_GRPC_PORT = 50051

DEFAULT_MAX_MESSAGE_QUEUE_SIZE = 1000  # messages per (workflow, agent) queue, queued + leased
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024  # bytes of encoded JSON payload
# An HTTP body may exceed the payload limit by this much (ids, type, ttl, JSON punctuation); bodies larger
# than max_message_size + allowance are refused from Content-Length before they are read.
ENVELOPE_ALLOWANCE = 4 * 1024
DEFAULT_MESSAGE_TTL = 300.0  # seconds
MAX_MESSAGE_TTL = 7 * 24 * 3600.0
# Receive defaults and limits are the upstream workflow API's (vllm-project/production-stack PR #625,
# docs/compatibility.md): a longer wait or a larger batch than the limit is refused (422), not shortened.
DEFAULT_RECEIVE_TIMEOUT = 1.0  # seconds a receive waits on an empty queue when the caller does not say
DEFAULT_RECEIVE_TIMEOUT_CAP = 30.0  # the longest wait a receive may ask for
DEFAULT_MAX_MESSAGES = 100  # per receive when the caller does not say
DEFAULT_MAX_MESSAGES_CAP = 1000  # the largest batch a receive may ask for
# A receive stops adding messages once their payloads total this much (the first always goes), so a
# batch of large messages does not become a 100 MiB response.
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024
DEFAULT_VISIBILITY_TIMEOUT = 30.0  # lease length for ack=true receives
MAX_VISIBILITY_TIMEOUT = 12 * 3600.0
DEFAULT_JSON_MAX_DEPTH = 32  # nesting depth of a payload (a scalar is depth 0, {} or [] depth 1)
DEFAULT_MAX_WORKFLOWS = 1000
DEFAULT_MAX_AGENTS_PER_WORKFLOW = 1000
DEFAULT_WORKFLOW_TTL = 3600.0  # a workflow without activity for this long is removed with its queues
DEFAULT_CLEANUP_INTERVAL = 1.0  # seconds between background sweeps
# The router reports requests in batches (extproc/a2a_reporter.py, every 50 ms): a status read of a workflow
# with requests routed but not yet reported complete waits up to this long for their completion reports, so
# that a status read right after a response counts it (docs/compatibility.md, "accounting lag").
DEFAULT_STATUS_SETTLE = 0.25
DEFAULT_MAX_ACK_IDS = 1000  # message ids per ack call
DEFAULT_MAX_RECORDS_PER_BATCH = 10_000
DEFAULT_SHUTDOWN_GRACE = 3.0  # seconds in-flight requests get after SIGTERM
# Seconds after SIGTERM during which the service still serves everything but reports not ready (/healthz 503,
# gRPC health NOT_SERVING), so a load balancer's health check (Envoy's: every second) moves new requests to other
# replicas before this one refuses them. 0 (default): a single replica, nothing to move to.
DEFAULT_DRAIN_DELAY = 0.0
DEFAULT_LOG_LEVEL = "info"
DEFAULT_STORE = "memory"  # or redis://host:port/db: queues and statistics shared by several replicas
DEFAULT_REDIS_PREFIX = "a2a:"  # every Redis key (and the wake-up channel) starts with this
# Longest a Redis call may take (connect, wait for a pooled connection, answer) before the request answers
# 503 store_unavailable. Also redis-py's socket_timeout: no command of this service blocks server-side
# (long-polls wait in this process, woken through pub/sub), so a read never legitimately takes longer.
DEFAULT_REDIS_TIMEOUT = 2.0
DEFAULT_REDIS_POOL_SIZE = 64  # pooled Redis connections per process (commands in flight at once)
STORE_URL_SCHEMES = ("redis://", "rediss://", "unix://")

ID_MIN_LENGTH = 1
ID_MAX_LENGTH = 256
ID_CHARSET = "A-Za-z0-9._:@-"
BROADCAST_TARGET = "*"
# Room for framing and the non-payload fields of a gRPC request on top of the payload limit, so that an
# oversized payload gets our own "message_too_large" error instead of gRPC's transport-level refusal.
GRPC_MESSAGE_OVERHEAD = 64 * 1024

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# W3C Trace Context headers: passed through untouched, parsed only to put the trace id in our logs.
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

# ---------------------------------------------------------------------- authentication (docs/security.md)
AUTH_MODES = ("none", "jwt")
DEFAULT_AUTH = "none"  # the local demo and the tests run without tokens
# Verification algorithms are this fixed list (flag), never the token header's choice. HS* verify with the
# shared secret, the others with the public key.
DEFAULT_AUTH_ALGORITHMS = "HS256"
SUPPORTED_AUTH_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
    "EdDSA",
)  # fmt: skip
DEFAULT_AUTH_AUDIENCE = "a2a-service"  # the "aud" every token must carry: tokens for other services are refused
DEFAULT_AUTH_TOKEN_TTL = 3600.0  # seconds an issued agent token lives when the admin does not say
MAX_AUTH_TOKEN_TTL = 7 * 24 * 3600.0
AUTH_CLOCK_LEEWAY = 5.0  # seconds of clock skew tolerated on exp/nbf/iat between replicas and minters
MIN_AUTH_SECRET_BYTES = 32  # HS256 keys shorter than the hash output are brute-forceable (RFC 7518 3.2)
MIN_ADMIN_TOKEN_LENGTH = 16
AUTH_HEADER = "authorization"
CLAIM_WORKFLOW = "workflow_id"
CLAIM_AGENT = "agent_id"
CLAIM_ROLE = "role"
AUTH_ROLES = ("agent", "router", "admin")  # router: may only RecordRequests (the ext_proc reporter)


@dataclass(slots=True, frozen=True)
class Settings:
    """Service configuration. Build with ``Settings.from_args`` or directly (tests); call ``validate``."""

    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    max_message_queue_size: int = DEFAULT_MAX_MESSAGE_QUEUE_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    default_message_ttl: float = DEFAULT_MESSAGE_TTL
    max_message_ttl: float = MAX_MESSAGE_TTL
    default_receive_timeout: float = DEFAULT_RECEIVE_TIMEOUT
    receive_timeout_cap: float = DEFAULT_RECEIVE_TIMEOUT_CAP
    default_max_messages: int = DEFAULT_MAX_MESSAGES
    max_messages_cap: int = DEFAULT_MAX_MESSAGES_CAP
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    max_visibility_timeout: float = MAX_VISIBILITY_TIMEOUT
    json_max_depth: int = DEFAULT_JSON_MAX_DEPTH
    max_workflows: int = DEFAULT_MAX_WORKFLOWS
    max_agents_per_workflow: int = DEFAULT_MAX_AGENTS_PER_WORKFLOW
    workflow_ttl: float = DEFAULT_WORKFLOW_TTL
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL
    status_settle: float = DEFAULT_STATUS_SETTLE
    max_ack_ids: int = DEFAULT_MAX_ACK_IDS
    max_records_per_batch: int = DEFAULT_MAX_RECORDS_PER_BATCH
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    drain_delay: float = DEFAULT_DRAIN_DELAY
    log_level: str = DEFAULT_LOG_LEVEL
    store: str = DEFAULT_STORE
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    redis_pool_size: int = DEFAULT_REDIS_POOL_SIZE
    # -- authentication (see _AUTH_FLAGS); secrets are kept out of repr() so they never reach a log line
    auth: str = DEFAULT_AUTH
    auth_secret: str = field(default="", repr=False)
    auth_secret_file: str = ""
    auth_public_key_file: str = ""
    auth_algorithms: str = DEFAULT_AUTH_ALGORITHMS
    auth_audience: str = DEFAULT_AUTH_AUDIENCE
    auth_token_ttl: float = DEFAULT_AUTH_TOKEN_TTL
    admin_token: str = field(default="", repr=False)
    admin_token_file: str = ""
    # -- TLS of both ports (see _TLS_FLAGS; docs/envoy-security.md); empty = plaintext
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""

    @property
    def max_body_size(self) -> int:
        """Largest HTTP request body read at all (payload limit + envelope allowance)."""
        return self.max_message_size + ENVELOPE_ALLOWANCE

    @property
    def default_timeout(self) -> float:
        """The wait of a receive that names none: the default, within the limit (which may be set lower)."""
        return min(self.default_receive_timeout, self.receive_timeout_cap)

    def validate(self) -> Settings:
        """Raise ``ValueError`` naming the first invalid setting; return ``self`` for chaining."""
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be 0..65535 (0 = any free port), got {port}")
        positive = (
            "max_message_queue_size", "max_message_size", "default_message_ttl", "max_message_ttl",
            "receive_timeout_cap", "default_max_messages", "max_messages_cap", "max_batch_bytes",
            "visibility_timeout", "max_visibility_timeout", "json_max_depth", "max_workflows",
            "max_agents_per_workflow", "workflow_ttl", "cleanup_interval", "max_ack_ids", "max_records_per_batch",
            "redis_timeout", "redis_pool_size",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("default_receive_timeout", "shutdown_grace", "drain_delay", "status_settle"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.default_message_ttl > self.max_message_ttl:
            raise ValueError("default_message_ttl must be <= max_message_ttl")
        if self.default_max_messages > self.max_messages_cap:
            raise ValueError("default_max_messages must be <= max_messages_cap")
        if self.visibility_timeout > self.max_visibility_timeout:
            raise ValueError("visibility_timeout must be <= max_visibility_timeout")
        if self.store != "memory" and not self.store.startswith(STORE_URL_SCHEMES):
            raise ValueError(f"store must be 'memory' or a redis://host:port/db URL, got {self.store!r}")
        if not self.redis_prefix or any(c.isspace() for c in self.redis_prefix) or len(self.redis_prefix) > 64:
            raise ValueError("redis_prefix must be 1..64 characters without whitespace")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        _validate_auth(self)
        _validate_tls(self)
        return self

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Parse CLI flags (``argv``, default ``sys.argv[1:]``) over env vars (default ``os.environ``)."""
        parser = build_parser(os.environ if env is None else env)
        ns = parser.parse_args(argv)
        try:
            return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)}).validate()
        except ValueError as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits


# (field, flag help, type) — the flag is --field-with-dashes, the env var A2A_FIELD_UPPER.
_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("host", "address both servers bind", str),
    ("http_port", "HTTP/JSON API port (0 = any free port)", int),
    ("grpc_port", "gRPC API port (0 = any free port)", int),
    ("max_message_queue_size", "messages per agent queue (queued + leased); a full queue answers 429", int),
    ("max_message_size", "bytes of encoded JSON payload; larger answers 413", int),
    ("default_message_ttl", "seconds a message lives when the sender gives no ttl", float),
    ("max_message_ttl", "largest ttl a sender may ask for, seconds", float),
    ("default_receive_timeout", "long-poll wait when the receiver gives no timeout, seconds", float),
    ("receive_timeout_cap", "longest long-poll wait a receiver may ask for, seconds (longer: 422)", float),
    ("default_max_messages", "messages per receive when the receiver does not say", int),
    ("max_messages_cap", "largest batch a receiver may ask for (larger: 422)", int),
    ("max_batch_bytes", "payload bytes per receive batch (the first message always goes)", int),
    ("visibility_timeout", "lease of an ack=true receive, seconds", float),
    ("max_visibility_timeout", "longest lease a receiver may ask for, seconds", float),
    ("json_max_depth", "deepest payload nesting accepted", int),
    ("max_workflows", "concurrent workflows; a new one beyond answers 429", int),
    ("max_agents_per_workflow", "agents known per workflow; a new one beyond answers 429", int),
    ("workflow_ttl", "seconds without activity after which a workflow and its queues are removed", float),
    ("cleanup_interval", "seconds between background sweeps (expiry, leases, idle workflows)", float),
    ("status_settle", "seconds a workflow status read waits for requests routed but not yet reported complete "
     "(0: answer at once)", float),
    ("max_ack_ids", "message ids per ack call", int),
    ("max_records_per_batch", "request records per RecordRequests call", int),
    ("shutdown_grace", "seconds in-flight requests get after SIGTERM", float),
    ("drain_delay", "seconds after SIGTERM of full service while reporting not ready (/healthz 503), so load "
     "balancers move new requests to other replicas first; set it above their health-check interval", float),
    ("log_level", f"one of {', '.join(LOG_LEVELS)}", str),
    (
        "store",
        "where queues and statistics live: 'memory' (this process) or redis://host:port/db (shared by "
        "every replica using the same URL and prefix; needs the [redis] extra)",
        str,
    ),
    ("redis_prefix", "prefix of every Redis key and of the wake-up channel (isolates deployments and tests)", str),
    ("redis_timeout", "seconds a Redis call may take before the request answers 503 store_unavailable", float),
    ("redis_pool_size", "Redis connections per process (commands in flight at once; long-polls hold none)", int),
)

_AUTH_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("auth", f"bearer-token authentication: {' or '.join(AUTH_MODES)} (docs/security.md)", str),
    ("auth_secret", "HS256/384/512 key of agent tokens (prefer the _FILE form or the env var: command lines "
     f"are visible to other local users); at least {MIN_AUTH_SECRET_BYTES} bytes", str),
    ("auth_secret_file", "file holding the HS* key (surrounding whitespace stripped)", str),
    ("auth_public_key_file", "PEM public key verifying RS*/PS*/ES*/EdDSA tokens minted elsewhere", str),
    ("auth_algorithms", f"comma-separated JWT algorithms accepted (of {', '.join(SUPPORTED_AUTH_ALGORITHMS)})",
     str),
    ("auth_audience", "the 'aud' claim every token must carry (and issued tokens get)", str),
    ("auth_token_ttl", "seconds an issued agent token lives when the admin does not ask for less", float),
    ("admin_token", f"opaque admin bearer token, at least {MIN_ADMIN_TOKEN_LENGTH} characters (prefer the "
     "_FILE form or the env var)", str),
    ("admin_token_file", "file holding the admin token", str),
)  # fmt: skip


def _validate_auth(s: Settings) -> None:
    """Checks that need no file reads; the key files are read (and checked) when the server starts."""
    if s.auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, got {s.auth!r}")
    if not 0 < s.auth_token_ttl <= MAX_AUTH_TOKEN_TTL:
        raise ValueError(f"auth_token_ttl must be > 0 and <= {MAX_AUTH_TOKEN_TTL:g}, got {s.auth_token_ttl}")
    if s.auth == "none":
        return
    algorithms = auth_algorithms(s)
    if not algorithms:
        raise ValueError("auth_algorithms must name at least one algorithm")
    unknown = [a for a in algorithms if a not in SUPPORTED_AUTH_ALGORITHMS]
    if unknown:
        raise ValueError(f"auth_algorithms: unsupported {', '.join(unknown)}")
    if s.auth_secret and s.auth_secret_file:
        raise ValueError("give auth_secret or auth_secret_file, not both")
    if s.admin_token and s.admin_token_file:
        raise ValueError("give admin_token or admin_token_file, not both")
    has_secret = bool(s.auth_secret or s.auth_secret_file)
    if any(a.startswith("HS") for a in algorithms) and not has_secret:
        raise ValueError("--auth jwt with an HS* algorithm needs --auth-secret-file (or A2A_AUTH_SECRET)")
    if any(not a.startswith("HS") for a in algorithms) and not s.auth_public_key_file:
        raise ValueError("--auth jwt with RS*/PS*/ES*/EdDSA algorithms needs --auth-public-key-file")
    if not s.auth_audience:
        raise ValueError("auth_audience must not be empty")


def auth_algorithms(s: Settings) -> tuple[str, ...]:
    return tuple(a.strip() for a in s.auth_algorithms.split(",") if a.strip())


_TLS_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("tls_cert_file", "serve HTTP (https) and gRPC over TLS with this PEM certificate", str),
    ("tls_key_file", "PEM private key of --tls-cert-file", str),
    ("tls_client_ca_file", "require client certificates signed by this PEM CA on both ports (mTLS)", str),
)


def _validate_tls(s: Settings) -> None:
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ValueError("tls_cert_file and tls_key_file go together")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")


def env_var(field: str) -> str:
    return "A2A_" + field.upper()


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workflow-a2a",
        description="Agent-to-agent message queues and workflow status/stats over HTTP and gRPC.",
        epilog="Every flag can also be set with the environment variable shown in brackets.",
    )
    defaults = Settings()
    for name, text, typ in (*_FLAGS, *_AUTH_FLAGS, *_TLS_FLAGS):
        var = env_var(name)
        raw = env.get(var)
        default = getattr(defaults, name)
        if raw is not None:
            try:
                default = typ(raw)
            except ValueError:
                parser.error(f"{var}={raw!r} is not a valid {typ.__name__}")
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=typ,
            default=default,
            help=f"{text} [{var}] (default: {getattr(defaults, name)})",
        )
    return parser
