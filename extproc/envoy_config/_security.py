"""Security pieces: the jwt_authn filter, the two local_ratelimit buckets, and the upstream mTLS sockets."""

from __future__ import annotations

from typing import Any

from extproc.envoy_config._options import (
    A2A_RATELIMIT_FILTER,
    JWT_FILTER,
    JWT_PROVIDER,
    LLM_RATELIMIT_FILTER,
    EnvoyOptions,
    JwtOptions,
    RateLimit,
    UpstreamTls,
    duration,
)


def jwt_filter(jwt: JwtOptions) -> dict[str, Any]:
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


def ratelimit_filter(name: str, limit: RateLimit) -> dict[str, Any]:
    if limit.max_tokens < 1 or limit.tokens_per_fill < 1 or limit.fill_interval_s <= 0:
        raise ValueError(f"rate limit of {name}: tokens must be >= 1 and the fill interval > 0")
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": name.replace(".", "_"),
            "token_bucket": {"max_tokens": limit.max_tokens, "tokens_per_fill": limit.tokens_per_fill,
                             "fill_interval": duration(limit.fill_interval_s)},
            "filter_enabled": {**always, "runtime_key": f"{name}.enabled"},
            "filter_enforced": {**always, "runtime_key": f"{name}.enforced"},
            # x-ratelimit-limit / -remaining / -reset on every response, so clients can back off early.
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        },
    }


def security_filters(options: EnvoyOptions) -> list[dict[str, Any]]:
    """The filters that go before all others, in order: authentication first, so an unauthenticated request
    costs neither a rate-limit token nor a routing decision."""
    security: list[dict[str, Any]] = []
    if options.jwt is not None:
        security.append(jwt_filter(options.jwt))
    if options.llm_rate_limit is not None:
        security.append(ratelimit_filter(LLM_RATELIMIT_FILTER, options.llm_rate_limit))
    if options.a2a_rate_limit is not None:
        security.append(ratelimit_filter(A2A_RATELIMIT_FILTER, options.a2a_rate_limit))
    return security


def disabled_filter() -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}


def one_bucket_per_route(routes: list[dict[str, Any]], security: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The routes with the other kind's rate-limit filter disabled: A2A routes draw only from the A2A bucket,
    all others only from the LLM one."""
    security_names = {f["name"] for f in security}
    result = list(routes)
    for index, route in enumerate(result):
        other = LLM_RATELIMIT_FILTER if route.get("name") == "a2a" else A2A_RATELIMIT_FILTER
        if other in security_names:
            result[index] = {**route, "typed_per_filter_config": {**route.get("typed_per_filter_config", {}),
                                                                   other: disabled_filter()}}
    return result


def tls_socket(tls: UpstreamTls, san: str, *, http2: bool) -> dict[str, Any]:
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
