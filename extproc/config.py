"""Every default, header name and limit of the ext_proc server, and its Settings.

One source of truth: the CLI, the Envoy config generator, the stack launcher and the tests read these names.
Every flag has an environment-variable equivalent (``EXTPROC_`` + the flag name upper-cased, dashes as
underscores), so the server can be configured from a Kubernetes manifest without a command line.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from a2a_service.config import ID_CHARSET as ID_CHARSET
from a2a_service.config import ID_MAX_LENGTH
from a2a_service.config import TRACEPARENT_HEADER as TRACEPARENT_HEADER
from a2a_service.config import TRACESTATE_HEADER as TRACESTATE_HEADER

ENV_PREFIX = "EXTPROC_"

# --- wire names ---------------------------------------------------------------------------------------------
DEFAULT_CLUSTER_HEADER = "x-upstream-cluster"
WORKFLOW_ID_HEADER = "x-workflow-id"
AGENT_ID_HEADER = "x-agent-id"
SERVED_BY_HEADER = "x-served-by"
# On responses of the fallback route (ext_proc did not answer, failure_mode_allow): served without affinity.
FALLBACK_HEADER = "x-router-fallback"
# Set by the router stream, read back by the observer stream of the same HTTP request.
ROUTE_ID_HEADER = "x-workflow-route-id"
METADATA_FIELD = "workflow_metadata"
# Gateway API Inference Extension (endpoint-picker protocol): the chosen instance's ip:port travels in this
# request header AND under this key in dynamic metadata namespace "envoy.lb" (gateways read either one).
DESTINATION_ENDPOINT_HEADER = "x-gateway-destination-endpoint"
DESTINATION_METADATA_NAMESPACE = "envoy.lb"
DESTINATION_MODES = ("cluster-header", "endpoint")
# Per-request deadlines (requestcontrol/deadline.py, docs/resilience.md): Envoy's per-try timeout header (the
# router filter's mutation_rules allow ext_proc to set x-envoy-* headers), and the header naming the stream-idle
# route (one route per bucket, each with that per_try_idle_timeout; extproc/envoy_config/_routes.py).
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"
# Set on a request pinned to the instance holding its previous response: Envoy's retry elsewhere (a connection
# refused by a dead instance) would only meet another instance's "Response with id ... not found".
MAX_RETRIES_HEADER = "x-envoy-max-retries"
STREAM_IDLE_HEADER = "x-router-stream-idle-s"
STREAM_IDLE_BUCKETS_S = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# Streamed responses on the stream-idle routes reach the observer without their body (its per-route processing
# mode; the end of the response is the end of its observer stream), except those the router marks with this
# header: a sample (their usage is exact and measures the estimate of the others) and Responses-API streams
# (their first event names the response id). docs/observability.md, "Streamed responses".
OBSERVE_BODY_HEADER = "x-router-observe-body"
DEFAULT_OBSERVE_STREAM_BODIES = 0.01  # one stream in 100 (benchmarks/gateway_overhead.py --streams)
# How the ext_proc server learns how each response ended (docs/observability.md, "Response observation"):
# "observer-stream": the observer filter opens a gRPC stream for every request; "access-log": only the requests
# the router marks (OBSERVE_BODY_HEADER: the --observe-stream-bodies sample, Responses-API requests) have one,
# the others end with their router stream and Envoy's gRPC access logger reports their status in batches.
RESPONSE_OBSERVATIONS = ("observer-stream", "access-log")
ACCESS_LOG_NAME = "workflow-router"
# Envoy's gRPC access logger sends what it buffered this often, or sooner once this many bytes are buffered.
ACCESS_LOG_FLUSH_S = 0.05
ACCESS_LOG_BUFFER_BYTES = 16 * 1024
# Envoy closes an observer stream (observability mode) this long after its HTTP stream ended (the filter's
# deferred_close_timeout; Envoy's default is 5 s). Messages not yet delivered by then are lost, so it leaves the
# last body chunk of a response time to arrive (0.1 s lost some on a loaded machine). The end of a stream whose
# body the observer does not read is its router stream's end (Director.router_ended); the observer stream's end
# (this much later) stands in only when that router stream ran on another replica.
OBSERVER_CLOSE_DELAY_S = 1.0
DEFAULT_DEADLINE_FLOOR_S = 10.0
DEFAULT_DEADLINE_MULTIPLIER = 3.0
DEFAULT_DEADLINE_MAX_TOKENS = 4096
# Paths whose JSON body is parsed for routing; any other path is routed on headers only.
LLM_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages"})
# Workflow identity from keys clients already send (extproc/requestcontrol/identity.py, docs/clients.md).
DEFAULT_SESSION_HEADER = "x-session-id"  # vllm-router's consistent_hash hashes this header
DEFAULT_RESPONSE_ID_TTL_S = 3600.0
DEFAULT_MAX_RESPONSE_IDS = 100_000

# --- defaults -----------------------------------------------------------------------------------------------
DEFAULT_HOST = "0.0.0.0"
DEFAULT_GRPC_PORT = 9002
DEFAULT_METRICS_PORT = 9190
DEFAULT_WORKFLOW_TTL_S = 3600.0
DEFAULT_MAX_WORKFLOWS = 1000
DEFAULT_STORE_TIMEOUT_S = 0.25
DEFAULT_BATCHING_PREFERENCE = 0.8
DEFAULT_BACKENDS = "vllm-1,vllm-2,vllm-3"
DEFAULT_GRACE_S = 5.0
DEFAULT_DRAIN_DELAY_S = 1.0
DEFAULT_POLL_INTERVAL_S = 0.1
DEFAULT_POLL_TIMEOUT_S = 0.5
DEFAULT_PREFIX_CAPACITY_BLOCKS = 31_250
# Precise cache view from vLLM's KV events (docs/kv-events.md): the servers' block size and hash algorithm, and
# the index's bound in (instance, block) pairs (~100 bytes each).
DEFAULT_KV_BLOCK_SIZE = 16
DEFAULT_KV_HASH_ALGO = "sha256_cbor"
DEFAULT_KV_INDEX_MAX_BLOCKS = 1_000_000
# Consecutive failed attempts after which an instance is marked down: responses 502/503/504, or responses another
# instance served after Envoy retried away from it (connect failure, reset, per-try idle timeout: a hang).
FAILURES_TO_MARK_DOWN = 3
# A passively marked-down instance stays down this long even if its /health answers (a hung engine often still
# does); then the next successful poll brings it back.
PASSIVE_HOLD_DOWN_S = 5.0

# Dynamic fleets (extproc/discovery/): how often the endpoints file is re-read, the vLLM pods' port.
DEFAULT_ENDPOINTS_FILE_INTERVAL_S = 0.5
DEFAULT_K8S_PORT = 8000
K8S_RESOURCES = ("pods", "endpointslices")

# --- limits -------------------------------------------------------------------------------------------------
# Workflow and agent ids follow the A2A service's rules (ID_CHARSET, MAX_ID_LENGTH, imported above): they become
# URL segments and stats keys there, so every id the router accepts is one the A2A service accepts too.
MAX_ID_LENGTH = ID_MAX_LENGTH
# A buffered request body arrives as one gRPC message: above Envoy's buffer limit (16 MiB by default) with room,
# so Envoy's 413 is what a client meets first. Larger messages end the stream (Envoy then fails open).
DEFAULT_MAX_GRPC_MESSAGE_BYTES = 256 * 1024 * 1024
# A FULL_DUPLEX_STREAMED body is not buffered by Envoy (its buffer limit does not apply): the server accumulates
# the chunks itself and refuses a larger body with a 413, at the buffered path's bound (Envoy's default limit).
DEFAULT_MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024
# Concurrent ext_proc streams per gRPC connection (each HTTP request holds one or two); Envoy multiplexes all of a
# worker's streams over few connections, so this is the bound that matters.
DEFAULT_MAX_CONCURRENT_STREAMS = 10_000
# Expired workflows are popped from the front of the LRU at most this many per request: amortised O(1).
EXPIRY_POPS_PER_REQUEST = 8


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream instance: the Envoy cluster name and, when known, its base URL (for health/metrics)."""

    cluster: str
    url: str | None = None


def parse_backends(spec: str) -> tuple[Backend, ...]:
    """Parse ``name[=url],name[=url],...`` into backends; names must be unique and non-empty."""
    backends: list[Backend] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, url = item.partition("=")
        backends.append(Backend(name.strip(), url.strip() or None))
    names = [b.cluster for b in backends]
    if not names:
        raise ValueError("at least one backend is required")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"backend names must be unique and non-empty: {spec!r}")
    return tuple(backends)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    backends: tuple[Backend, ...] = field(default_factory=lambda: parse_backends(DEFAULT_BACKENDS))
    cluster_header: str = DEFAULT_CLUSTER_HEADER
    workflow_ttl: float = DEFAULT_WORKFLOW_TTL_S
    max_workflows: int = DEFAULT_MAX_WORKFLOWS
    batching_preference: float = DEFAULT_BATCHING_PREFERENCE
    scheduling_config: str | None = None  # YAML/JSON profiles (extproc/scheduling/profiles.py); None = defaults
    scorer_weights: str = ""  # name=weight,... overriding the profiles' scorer weights
    priority_scheduling: bool = False  # set vLLM's `priority` from the workflow's attained service
    priority_half_life: float = 60.0
    keep_workflow_metadata: bool = False
    a2a_url: str | None = None
    store: str = "memory"
    store_timeout: float = DEFAULT_STORE_TIMEOUT_S  # a Redis claim slower than this is decided locally
    kv_index: str = "local"
    lmcache_url: str | None = None
    lmcache_instance_map: str = ""
    lmcache_timeout: float = 0.05
    tokenizer: str = "approx"  # how the KV index tokenizes like the backends (extproc/tokenization/_factory.py)
    kv_events: str = ""  # name=tcp://host:port[;replay=URL][;topic=T],... (extproc/datastore/kv_events.py)
    kv_block_size: int = DEFAULT_KV_BLOCK_SIZE
    kv_hash_algo: str = DEFAULT_KV_HASH_ALGO
    kv_hash_seed: str | None = None  # the PYTHONHASHSEED of the vLLM servers
    kv_index_max_blocks: int = DEFAULT_KV_INDEX_MAX_BLOCKS
    poll_interval: float = DEFAULT_POLL_INTERVAL_S
    poll_timeout: float = DEFAULT_POLL_TIMEOUT_S
    prefix_routing: bool = True
    prefix_capacity_blocks: int = DEFAULT_PREFIX_CAPACITY_BLOCKS
    grace_period: float = DEFAULT_GRACE_S
    drain_delay: float = DEFAULT_DRAIN_DELAY_S
    max_grpc_message_bytes: int = DEFAULT_MAX_GRPC_MESSAGE_BYTES
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    log_level: str = "info"
    event_loop: str = "auto"  # auto: uvloop where installed (uvicorn[standard] brings it), else asyncio's own
    gc_freeze: bool = False  # move what startup allocated out of the collector's reach (gc.freeze)
    gc_threshold: tuple[int, int, int] | None = None  # gc.set_threshold; None = Python's (700, 10, 10)
    # --- Gateway API Inference Extension and mTLS (docs/gateway-api.md, docs/envoy-security.md) ---
    destination_mode: str = "cluster-header"
    tls_cert_file: str | None = None  # serve ext_proc gRPC over TLS with this certificate ...
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # ... and require client certificates signed by this CA
    a2a_tls_ca_file: str | None = None  # speak TLS to the A2A service (--a2a-url), trusting this CA ...
    a2a_tls_cert_file: str | None = None  # ... presenting this client certificate (A2A requires mTLS)
    a2a_tls_key_file: str | None = None
    # --- A2A authentication (docs/security.md): the reporter's bearer token, from a file or EXTPROC_A2A_TOKEN
    a2a_token_file: str | None = None
    a2a_token: str | None = field(default=None, repr=False)
    # --- per-request deadlines (docs/resilience.md) ---
    deadline_floor: float = DEFAULT_DEADLINE_FLOOR_S
    deadline_multiplier: float = DEFAULT_DEADLINE_MULTIPLIER
    deadline_max_tokens: int = DEFAULT_DEADLINE_MAX_TOKENS
    # --- dynamic fleet (extproc/discovery/, docs/kubernetes.md): the instances come from a watched file or from
    # the Kubernetes API instead of --backends ---
    endpoints_file: str | None = None
    endpoints_file_interval: float = DEFAULT_ENDPOINTS_FILE_INTERVAL_S
    k8s_label_selector: str | None = None
    k8s_namespace: str = "default"
    k8s_port: int = DEFAULT_K8S_PORT
    k8s_resource: str = "pods"  # or "endpointslices"
    k8s_api_url: str | None = None
    k8s_token_file: str | None = None
    k8s_ca_file: str | None = None

    @property
    def dynamic_fleet(self) -> bool:
        return self.endpoints_file is not None or self.k8s_label_selector is not None
    observe_stream_bodies: float = DEFAULT_OBSERVE_STREAM_BODIES
    response_observation: str = RESPONSE_OBSERVATIONS[0]
    # --- workflow identity sources (docs/clients.md) ---
    identity_workflow_header: bool = True
    identity_prompt_cache_key: bool = True
    identity_previous_response: bool = True
    identity_session_header: str = DEFAULT_SESSION_HEADER  # "" = off
    identity_trace_id: bool = False
    response_id_ttl: float = DEFAULT_RESPONSE_ID_TTL_S
    max_response_ids: int = DEFAULT_MAX_RESPONSE_IDS

    def validate(self) -> Settings:
        if self.workflow_ttl <= 0:
            raise ValueError("--workflow-ttl must be > 0")
        if self.max_workflows < 1:
            raise ValueError("--max-workflows must be >= 1")
        if not 0.0 <= self.batching_preference <= 1.0:
            raise ValueError("--batching-preference must be within 0.0..1.0")
        from extproc.scheduling.profiles import parse_weights  # syntax only; the file is read at start

        parse_weights(self.scorer_weights)
        if self.priority_half_life <= 0:
            raise ValueError("--priority-half-life must be > 0")
        if self.store != "memory" and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--store must be 'memory' or a redis:// URL")
        if self.kv_index not in ("local", "lmcache"):
            raise ValueError("--kv-index must be 'local' or 'lmcache'")
        if self.kv_index == "lmcache" and not self.lmcache_url:
            raise ValueError("--kv-index lmcache needs --lmcache-url")
        from extproc.tokenization import parse_tokenizer_spec  # syntax only; files are read at start

        parse_tokenizer_spec(self.tokenizer)
        self._validate_kv_events()
        if self.poll_interval <= 0 or self.poll_timeout <= 0:
            raise ValueError("--poll-interval and --poll-timeout must be > 0")
        if self.max_grpc_message_bytes < 1024 or self.max_concurrent_streams < 1:
            raise ValueError("--max-grpc-message-bytes must be >= 1024 and --max-concurrent-streams >= 1")
        if self.prefix_capacity_blocks < 1:
            raise ValueError("--prefix-capacity-blocks must be >= 1")
        if self.max_request_body_bytes < 1:
            raise ValueError("--max-request-body-bytes must be >= 1")
        if not self.cluster_header or self.cluster_header.lower() != self.cluster_header:
            raise ValueError("--cluster-header must be a non-empty lower-case header name")
        self._validate_gie_and_tls()
        if self.deadline_floor < 0 or self.deadline_multiplier < 1 or self.deadline_max_tokens < 1:
            raise ValueError("--deadline-floor must be >= 0, --deadline-multiplier >= 1, --deadline-max-tokens >= 1")
        self._validate_discovery()
        if not 0 <= self.observe_stream_bodies <= 1:
            raise ValueError("--observe-stream-bodies must be between 0 and 1")
        if self.response_observation not in RESPONSE_OBSERVATIONS:
            raise ValueError(f"--response-observation must be one of {', '.join(RESPONSE_OBSERVATIONS)}")
        if self.store_timeout <= 0:
            raise ValueError("--store-timeout must be > 0")
        if self.response_id_ttl <= 0 or self.max_response_ids < 1:
            raise ValueError("--response-id-ttl must be > 0 and --max-response-ids >= 1")
        if self.identity_session_header.lower() != self.identity_session_header:
            raise ValueError("--identity-session-header must be a lower-case header name (or empty: off)")
        return self

    def _validate_discovery(self) -> None:
        if self.endpoints_file is not None and self.k8s_label_selector is not None:
            raise ValueError("--endpoints-file and --k8s-label-selector are two fleet sources: choose one")
        if self.dynamic_fleet and self.destination_mode != "endpoint":
            raise ValueError("a dynamic fleet (--endpoints-file, --k8s-label-selector) needs --destination-mode "
                             "endpoint: Envoy's ORIGINAL_DST cluster reaches any ip:port, static clusters do not")
        if self.dynamic_fleet and (self.kv_events or self.kv_index != "local"):
            raise ValueError("--kv-events and --kv-index lmcache name a static fleet; not with a dynamic one")
        if self.k8s_resource not in K8S_RESOURCES:
            raise ValueError(f"--k8s-resource must be one of {', '.join(K8S_RESOURCES)}")
        if self.endpoints_file_interval <= 0 or not 0 < self.k8s_port < 65536:
            raise ValueError("--endpoints-file-interval must be > 0 and --k8s-port a port number")

    def _validate_kv_events(self) -> None:
        if self.kv_block_size < 1 or self.kv_index_max_blocks < 1:
            raise ValueError("--kv-block-size and --kv-index-max-blocks must be >= 1")
        if self.kv_hash_algo != DEFAULT_KV_HASH_ALGO:
            raise ValueError(f"--kv-hash-algo must be {DEFAULT_KV_HASH_ALGO!r} (the servers' prefix-caching hash)")
        if self.kv_events:
            from extproc.datastore.kv_events import parse_kv_events_spec

            unknown = sorted(set(parse_kv_events_spec(self.kv_events)) - {b.cluster for b in self.backends})
            if unknown:
                raise ValueError(f"--kv-events names instances that are not backends: {', '.join(unknown)}")
            if self.kv_hash_seed is None:
                raise ValueError("--kv-events needs --kv-hash-seed (the PYTHONHASHSEED the vLLM servers run with)")

    def _validate_gie_and_tls(self) -> None:
        if self.destination_mode not in DESTINATION_MODES:
            raise ValueError(f"--destination-mode must be one of {', '.join(DESTINATION_MODES)}")
        if self.destination_mode == "endpoint" and not self.dynamic_fleet:  # a dynamic fleet's: checked as it comes
            destination_endpoints(self.backends)  # raises naming the backend without an ip:port URL
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        if (self.a2a_tls_cert_file is None) != (self.a2a_tls_key_file is None):
            raise ValueError("--a2a-tls-cert-file and --a2a-tls-key-file go together")
        if self.a2a_tls_cert_file is not None and self.a2a_tls_ca_file is None:
            raise ValueError("--a2a-tls-cert-file needs --a2a-tls-ca-file")


def destination_endpoints(backends: Sequence[Backend]) -> dict[str, str]:
    """``ip:port`` of each backend's URL, the value an ORIGINAL_DST cluster connects to (Envoy does not resolve
    names there, so the host must be an IP literal, e.g. a pod IP)."""
    found: dict[str, str] = {}
    for backend in backends:
        parsed = urllib.parse.urlsplit(backend.url or "")
        try:
            host = ipaddress.ip_address(parsed.hostname or "")
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"--destination-mode endpoint needs name=http://IP:PORT for every backend; "
                             f"{backend.cluster!r} has {backend.url!r}") from None
        found[backend.cluster] = f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
    return found


def _env(name: str, default: object) -> str | None:
    value = os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
    return value if value is not None else (None if default is None else str(default))


def _gc_threshold(text: str) -> tuple[int, int, int]:
    """``G0,G1,G2`` for gc.set_threshold: three integers, the first >= 1."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1:
        raise argparse.ArgumentTypeError(f"expected three integers G0,G1,G2 with G0 >= 1, got {text!r}")
    g0, g1, g2 = (int(p) for p in parts)
    return g0, g1, g2


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    return text.strip().lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workflow-extproc",
        description="Envoy ext_proc server: workflow-aware routing of OpenAI-compatible LLM requests. "
        f"Every flag can also be set with an environment variable {ENV_PREFIX}<FLAG> "
        f"(e.g. {ENV_PREFIX}WORKFLOW_TTL=600).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default=_env("host", DEFAULT_HOST), help="address to bind the gRPC and metrics servers")
    add("--grpc-port", type=int, default=_env("grpc-port", DEFAULT_GRPC_PORT), help="ext_proc gRPC port (0 = any)")
    add("--metrics-port", type=int, default=_env("metrics-port", DEFAULT_METRICS_PORT),
        help="Prometheus /metrics HTTP port (0 = any)")
    add("--backends", default=_env("backends", DEFAULT_BACKENDS),
        help="comma-separated Envoy cluster names of the vLLM instances, each optionally =base_url")
    add("--cluster-header", default=_env("cluster-header", DEFAULT_CLUSTER_HEADER),
        help="request header that carries the chosen cluster to Envoy's cluster_header route")
    add("--workflow-ttl", type=float, default=_env("workflow-ttl", DEFAULT_WORKFLOW_TTL_S),
        help="seconds of inactivity after which a workflow's instance assignment is forgotten")
    add("--max-workflows", type=int, default=_env("max-workflows", DEFAULT_MAX_WORKFLOWS),
        help="workflows remembered at most; the least recently used one is evicted beyond it")
    add("--batching-preference", type=float, default=_env("batching-preference", DEFAULT_BATCHING_PREFERENCE),
        help="0.0-1.0: how strongly workflow affinity wins over load balance")
    add("--scheduling-config", default=_env("scheduling-config", None),
        help="YAML/JSON file of scheduling profiles: filters, scorers with weights, picker, plugin parameters "
        "(docs/architecture.md; default: the built-in profiles)")
    add("--scorer-weights", default=_env("scorer-weights", ""),
        help="name=weight,... overriding scorer weights in every profile (e.g. prefix=3,queue=2,kv-headroom=2)")
    add("--priority-scheduling", type=_bool, nargs="?", const=True,
        default=_bool(_env("priority-scheduling", False) or ""),
        help="set vLLM's per-request `priority` from the workflow's least attained service (the servers must run "
        "with --scheduling-policy priority: under fcfs vLLM refuses a non-zero priority)")
    add("--priority-half-life", type=float, default=_env("priority-half-life", 60.0),
        help="seconds after which a workflow's attained service counts half (--priority-scheduling)")
    add("--keep-workflow-metadata", type=_bool, nargs="?", const=True,
        default=_bool(_env("keep-workflow-metadata", False) or ""),
        help="forward workflow_metadata to the backend instead of stripping it from the body")
    add("--a2a-url", default=_env("a2a-url", None),
        help="gRPC address (host:port) of the A2A service to report routed requests to; unset = no reports")
    add("--store", default=_env("store", "memory"),
        help="where workflow assignments live: 'memory' (this replica only) or redis://host:port/db (shared by "
        "all replicas; needs the [redis] extra)")
    add("--store-timeout", type=float, default=_env("store-timeout", DEFAULT_STORE_TIMEOUT_S), metavar="SECONDS",
        help="a shared-store (Redis) claim not answered within this is decided by this replica alone (counted in "
        "extproc_registry_degraded_total); Redis is treated as down after 3 in a row")
    add("--kv-index", default=_env("kv-index", "local"), choices=["local", "lmcache"],
        help="prefix index of the fallback for requests without metadata: 'local' (learned from this server's "
        "decisions) or 'lmcache' (ask an LMCache controller which instance holds the longest cached prefix)")
    add("--lmcache-url", default=_env("lmcache-url", None), help="LMCache controller HTTP URL")
    add("--lmcache-instance-map", default=_env("lmcache-instance-map", ""),
        help="lmcache_instance_id=cluster,... (default: instance ids are the cluster names)")
    add("--lmcache-timeout", type=float, default=_env("lmcache-timeout", 0.05),
        help="seconds a controller lookup may take before the local prefix index decides instead")
    add("--tokenizer", default=_env("tokenizer", "approx"),
        help="how --kv-index lmcache computes the backends' token ids: 'approx' (the simulator's ~4 chars/token), "
        "'hf:DIR' or 'hf:tokenizer.json[,config=tokenizer_config.json]' (the model's own tokenizer and chat "
        "template, local files) or 'vllm:URL[,model=NAME][,timeout=S]' (an instance's POST /tokenize)")
    add("--kv-events", default=_env("kv-events", ""),
        help="vLLM KV-event publishers for the precise cache view: name=tcp://host:port[;replay=tcp://host:port]"
        "[;topic=T],... (the servers' --kv-events-config endpoint, replay_endpoint and topic; docs/kv-events.md)")
    add("--kv-block-size", type=int, default=_env("kv-block-size", DEFAULT_KV_BLOCK_SIZE),
        help="the servers' KV block size in tokens (vLLM --block-size)")
    add("--kv-hash-algo", default=_env("kv-hash-algo", DEFAULT_KV_HASH_ALGO),
        help=f"the servers' --prefix-caching-hash-algo (only {DEFAULT_KV_HASH_ALGO} is reproduced)")
    add("--kv-hash-seed", default=_env("kv-hash-seed", None),
        help="the PYTHONHASHSEED the vLLM servers run with (their first block hash derives from it)")
    add("--kv-index-max-blocks", type=int, default=_env("kv-index-max-blocks", DEFAULT_KV_INDEX_MAX_BLOCKS),
        help="(instance, block) pairs the KV-event index holds at most (~100 bytes each); oldest dropped beyond")
    add("--poll-interval", type=float, default=_env("poll-interval", DEFAULT_POLL_INTERVAL_S),
        help="seconds between scrapes of each backend's /health and /metrics (backends need =url)")
    add("--poll-timeout", type=float, default=_env("poll-timeout", DEFAULT_POLL_TIMEOUT_S),
        help="seconds before a scrape counts as failed (instance marked down)")
    add("--prefix-routing", type=_bool, nargs="?", const=True, default=_bool(_env("prefix-routing", True) or ""),
        help="route requests without workflow metadata by prompt-prefix match + load (false: least-loaded)")
    add("--prefix-capacity-blocks", type=int,
        default=_env("prefix-capacity-blocks", DEFAULT_PREFIX_CAPACITY_BLOCKS),
        help="prefix-index blocks remembered per instance (LRU; ~140 bytes each)")
    add("--grace-period", type=float, default=_env("grace-period", DEFAULT_GRACE_S),
        help="seconds in-flight streams may take to finish on SIGTERM")
    add("--drain-delay", type=float, default=_env("drain-delay", DEFAULT_DRAIN_DELAY_S),
        help="seconds to keep serving after SIGTERM while reporting NOT_SERVING, so Envoy's health checks move "
        "new streams to other replicas first")
    add("--max-grpc-message-bytes", type=int, default=_env("max-grpc-message-bytes", DEFAULT_MAX_GRPC_MESSAGE_BYTES),
        help="largest ext_proc message (a buffered body) accepted; keep it above Envoy's buffer limit")
    add("--max-concurrent-streams", type=int, default=_env("max-concurrent-streams", DEFAULT_MAX_CONCURRENT_STREAMS),
        help="concurrent ext_proc streams per gRPC connection from Envoy")
    add("--max-request-body-bytes", type=int, default=_env("max-request-body-bytes", DEFAULT_MAX_REQUEST_BODY_BYTES),
        help="largest request body accumulated from FULL_DUPLEX_STREAMED chunks (Envoy does not buffer them); "
        "beyond: 413")
    add("--log-level", default=_env("log-level", "info"), choices=["debug", "info", "warning", "error"])
    add("--event-loop", default=_env("event-loop", "auto"), choices=["auto", "uvloop", "asyncio"],
        help="the asyncio event loop: uvloop cut the ext_proc CPU per request by ~8%% in "
        "benchmarks/gateway_overhead.py; auto = uvloop where installed")
    add("--gc-freeze", type=_bool, nargs="?", const=True, default=_bool(_env("gc-freeze", False) or ""),
        help="after startup, gc.freeze() what is allocated so far: full collections stop traversing it "
        "(extproc_gc_pause_seconds shows the pauses)")
    add("--gc-threshold", type=_gc_threshold, default=_env("gc-threshold", None), metavar="G0,G1,G2",
        help="the collector's thresholds (gc.set_threshold), e.g. 10000,10,10: fewer, longer young collections; "
        "default Python's 700,10,10 (benchmarks/gateway_gc.py measures both)")
    add("--destination-mode", default=_env("destination-mode", "cluster-header"), choices=list(DESTINATION_MODES),
        help="how the chosen instance is named to Envoy: 'cluster-header' (its cluster name in --cluster-header) "
        f"or 'endpoint' (its ip:port in {DESTINATION_ENDPOINT_HEADER} and dynamic metadata "
        f"{DESTINATION_METADATA_NAMESPACE}, as a Gateway API Inference Extension endpoint picker answers)")
    add("--tls-cert-file", default=_env("tls-cert-file", None), help="serve gRPC over TLS with this PEM certificate")
    add("--tls-key-file", default=_env("tls-key-file", None), help="PEM private key of --tls-cert-file")
    add("--tls-client-ca-file", default=_env("tls-client-ca-file", None),
        help="require client certificates signed by this PEM CA (mTLS)")
    add("--a2a-tls-ca-file", default=_env("a2a-tls-ca-file", None),
        help="report to the A2A service over TLS, trusting this PEM CA")
    add("--a2a-tls-cert-file", default=_env("a2a-tls-cert-file", None),
        help="client certificate presented to the A2A service (when it requires mTLS)")
    add("--a2a-tls-key-file", default=_env("a2a-tls-key-file", None), help="PEM private key of --a2a-tls-cert-file")
    add("--a2a-token-file", default=_env("a2a-token-file", None),
        help="file holding the bearer token (router JWT or admin token) sent with reports when the A2A service "
        f"runs with --auth jwt; or put the token itself in {ENV_PREFIX}A2A_TOKEN")
    add("--deadline-floor", type=float, default=_env("deadline-floor", DEFAULT_DEADLINE_FLOOR_S),
        help="seconds: the shortest per-request deadline (Envoy's per-try timeout, set per request: a request not "
        "answered by then is retried once on another instance); 0 = no deadlines")
    add("--deadline-multiplier", type=float, default=_env("deadline-multiplier", DEFAULT_DEADLINE_MULTIPLIER),
        help="deadline = max(--deadline-floor, this x the expected duration: TTFT + max_tokens x ITL, the "
        "instance's recent means in wall seconds); streams: idle bound from the same floor and multiplier")
    add("--deadline-max-tokens", type=int, default=_env("deadline-max-tokens", DEFAULT_DEADLINE_MAX_TOKENS),
        help="max_tokens assumed for the deadline of a request that sets none")
    add("--endpoints-file", default=_env("endpoints-file", None),
        help="YAML/JSON file listing the instances ({endpoints: [{name, url: http://IP:PORT}]}), re-read while "
        "serving (a mounted ConfigMap); replaces --backends; a file that does not parse keeps the last good fleet; "
        "needs --destination-mode endpoint (docs/kubernetes.md)")
    add("--endpoints-file-interval", type=float,
        default=_env("endpoints-file-interval", DEFAULT_ENDPOINTS_FILE_INTERVAL_S),
        help="seconds between reads of --endpoints-file")
    add("--k8s-label-selector", default=_env("k8s-label-selector", None),
        help="discover the instances as the ready pods this label selector picks (e.g. app=vllm), watched through "
        "the Kubernetes API; replaces --backends; needs --destination-mode endpoint and RBAC get/list/watch on pods")
    add("--k8s-namespace", default=_env("k8s-namespace", "default"), help="namespace of the discovered pods")
    add("--k8s-port", type=int, default=_env("k8s-port", DEFAULT_K8S_PORT),
        help="the vLLM port of the discovered pods")
    add("--k8s-resource", default=_env("k8s-resource", "pods"), choices=list(K8S_RESOURCES),
        help="what --k8s-label-selector selects: 'pods' (ready pods, as an InferencePool) or 'endpointslices' "
        "(ready endpoints of the slices, e.g. kubernetes.io/service-name=vllm)")
    add("--k8s-api-url", default=_env("k8s-api-url", None),
        help="Kubernetes API server URL (default: in-cluster, from KUBERNETES_SERVICE_HOST and the service account)")
    add("--k8s-token-file", default=_env("k8s-token-file", None),
        help="bearer token file for the API server (default in-cluster: the service account's)")
    add("--k8s-ca-file", default=_env("k8s-ca-file", None),
        help="CA bundle of the API server (default in-cluster: the service account's)")
    add("--observe-stream-bodies", type=float,
        default=_env("observe-stream-bodies", DEFAULT_OBSERVE_STREAM_BODIES), metavar="FRACTION",
        help="share of streamed responses whose body the observer reads (exact usage; the others' usage is "
             "estimated and their end is their observer stream's end, so the observer's cost does not grow with "
             "output tokens); 1 reads every stream. With --response-observation access-log: of every response")
    add("--response-observation", default=_env("response-observation", RESPONSE_OBSERVATIONS[0]),
        choices=list(RESPONSE_OBSERVATIONS),
        help="how the server learns each response's end and status: 'observer-stream' (the observer filter's gRPC "
             "stream per request) or 'access-log' (only the --observe-stream-bodies sample has an observer stream; "
             "the others end with their router stream and Envoy's gRPC access log reports them in batches; "
             "render Envoy's config with the same option)")
    add("--identity-workflow-header", type=_bool, nargs="?", const=True,
        default=_bool(_env("identity-workflow-header", True) or ""),
        help=f"workflow identity from the {WORKFLOW_ID_HEADER} header (precedence 2, after workflow_metadata)")
    add("--identity-prompt-cache-key", type=_bool, nargs="?", const=True,
        default=_bool(_env("identity-prompt-cache-key", True) or ""),
        help="workflow identity from the body's prompt_cache_key (OpenAI's cache-routing key; precedence 3)")
    add("--identity-previous-response", type=_bool, nargs="?", const=True,
        default=_bool(_env("identity-previous-response", True) or ""),
        help="workflow identity from the previous_response_id chain (precedence 4); follow-ups are pinned to the "
        "instance holding their previous response either way")
    add("--identity-session-header", default=_env("identity-session-header", DEFAULT_SESSION_HEADER),
        help="header naming a session (precedence 5; vllm-router's consistent_hash key); empty = off")
    add("--identity-trace-id", type=_bool, nargs="?", const=True,
        default=_bool(_env("identity-trace-id", False) or ""),
        help="workflow identity from the W3C traceparent trace id (precedence 6; all-zero ids are invalid and "
        "ignored): one agent run when the framework is OpenTelemetry-instrumented")
    add("--response-id-ttl", type=float, default=_env("response-id-ttl", DEFAULT_RESPONSE_ID_TTL_S),
        help="seconds a stored response's id stays mapped to its instance after its last use")
    add("--max-response-ids", type=int, default=_env("max-response-ids", DEFAULT_MAX_RESPONSE_IDS),
        help="response ids remembered at most (~200 bytes each); the least recently used is dropped beyond")
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    ns = build_parser().parse_args(argv)
    return Settings(
        host=ns.host,
        grpc_port=ns.grpc_port,
        metrics_port=ns.metrics_port,
        backends=parse_backends(ns.backends),
        cluster_header=ns.cluster_header.lower(),
        workflow_ttl=ns.workflow_ttl,
        max_workflows=ns.max_workflows,
        batching_preference=ns.batching_preference,
        scheduling_config=ns.scheduling_config or None,
        scorer_weights=ns.scorer_weights,
        priority_scheduling=ns.priority_scheduling,
        priority_half_life=ns.priority_half_life,
        keep_workflow_metadata=ns.keep_workflow_metadata,
        a2a_url=ns.a2a_url or None,
        store=ns.store,
        store_timeout=ns.store_timeout,
        kv_index=ns.kv_index,
        lmcache_url=ns.lmcache_url,
        lmcache_instance_map=ns.lmcache_instance_map,
        lmcache_timeout=ns.lmcache_timeout,
        tokenizer=ns.tokenizer,
        kv_events=ns.kv_events,
        kv_block_size=ns.kv_block_size,
        kv_hash_algo=ns.kv_hash_algo,
        kv_hash_seed=ns.kv_hash_seed or None,
        kv_index_max_blocks=ns.kv_index_max_blocks,
        poll_interval=ns.poll_interval,
        poll_timeout=ns.poll_timeout,
        prefix_routing=ns.prefix_routing,
        prefix_capacity_blocks=ns.prefix_capacity_blocks,
        grace_period=ns.grace_period,
        drain_delay=ns.drain_delay,
        max_grpc_message_bytes=ns.max_grpc_message_bytes,
        max_concurrent_streams=ns.max_concurrent_streams,
        max_request_body_bytes=ns.max_request_body_bytes,
        log_level=ns.log_level,
        event_loop=ns.event_loop,
        gc_freeze=ns.gc_freeze,
        gc_threshold=ns.gc_threshold,
        destination_mode=ns.destination_mode,
        tls_cert_file=ns.tls_cert_file,
        tls_key_file=ns.tls_key_file,
        tls_client_ca_file=ns.tls_client_ca_file,
        a2a_tls_ca_file=ns.a2a_tls_ca_file,
        a2a_tls_cert_file=ns.a2a_tls_cert_file,
        a2a_tls_key_file=ns.a2a_tls_key_file,
        a2a_token_file=ns.a2a_token_file or None,
        a2a_token=os.environ.get(ENV_PREFIX + "A2A_TOKEN") or None,
        deadline_floor=ns.deadline_floor,
        deadline_multiplier=ns.deadline_multiplier,
        deadline_max_tokens=ns.deadline_max_tokens,
        endpoints_file=ns.endpoints_file or None,
        endpoints_file_interval=ns.endpoints_file_interval,
        k8s_label_selector=ns.k8s_label_selector or None,
        k8s_namespace=ns.k8s_namespace,
        k8s_port=ns.k8s_port,
        k8s_resource=ns.k8s_resource,
        k8s_api_url=ns.k8s_api_url or None,
        k8s_token_file=ns.k8s_token_file or None,
        k8s_ca_file=ns.k8s_ca_file or None,
        observe_stream_bodies=ns.observe_stream_bodies,
        response_observation=ns.response_observation,
        identity_workflow_header=ns.identity_workflow_header,
        identity_prompt_cache_key=ns.identity_prompt_cache_key,
        identity_previous_response=ns.identity_previous_response,
        identity_session_header=(ns.identity_session_header or "").strip().lower(),
        identity_trace_id=ns.identity_trace_id,
        response_id_ttl=ns.response_id_ttl,
        max_response_ids=ns.max_response_ids,
    ).validate()
