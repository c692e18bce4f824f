"""``envoy-config``: the command-line parser and ``main``, which prints the rendered YAML."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from extproc.config import DEFAULT_GRPC_PORT, DESTINATION_ENDPOINT_HEADER, RESPONSE_OBSERVATIONS
from extproc.envoy_config._listeners import to_yaml
from extproc.envoy_config._options import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_LISTEN_PORT,
    DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    DEFAULT_MESSAGE_TIMEOUT_S,
    DEFAULT_UPSTREAM_TIMEOUT_S,
    REQUEST_BODY_MODES,
    Endpoint,
    EnvoyOptions,
    JwtOptions,
    RateLimit,
    UpstreamTls,
)


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


def _groups(text: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(n.strip() for n in group.split(",") if n.strip()) for group in text.split(";") if group.strip())


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
    parser.add_argument("--failover-groups", type=_groups, default=(),
                        help="instances serving the same models, e.g. 'vllm-1,vllm-2;vllm-3,vllm-4': a retry stays "
                        "in the instance's group (default: any other instance)")
    parser.add_argument("--response-observation", choices=list(RESPONSE_OBSERVATIONS),
                        default=RESPONSE_OBSERVATIONS[0],
                        help="'access-log': the observer filter runs only on the requests the router marks, the "
                        "others are reported by Envoy's gRPC access log (run ext_proc with the same option)")
    parser.add_argument("--admin-address", default="127.0.0.1",
                        help="address of the admin API (0.0.0.0 lets Prometheus scrape /stats/prometheus)")
    _add_security_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    options = EnvoyOptions(
        backends=ns.backends,
        failover_groups=ns.failover_groups,
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
        response_observation=ns.response_observation,
    )
    sys.stdout.write(to_yaml(options))

