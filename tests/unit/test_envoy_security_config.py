"""Pure parts of the security and Gateway API Inference Extension options: the generator's output shape, the
ext_proc / A2A settings and the endpoint-picker answer (the e2e tests run them through a real Envoy)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from a2a_service.config import Settings as A2ASettings
from extproc.config import (
    DESTINATION_ENDPOINT_HEADER,
    Settings,
    destination_endpoints,
    parse_backends,
    settings_from_args,
)
from extproc.envoy_config import (
    A2A_RATELIMIT_FILTER,
    GIE_CLUSTER,
    JWT_FILTER,
    LLM_RATELIMIT_FILTER,
    Endpoint,
    EnvoyOptions,
    JwtOptions,
    RateLimit,
    UpstreamTls,
    render,
)
from extproc.envoy_config import main as envoy_config_main
from extproc.handlers.messages import destination

BACKENDS = (("vllm-1", Endpoint("127.0.0.1", 8101)), ("vllm-2", Endpoint("127.0.0.1", 8102)))
BASE = EnvoyOptions(backends=BACKENDS, a2a=(Endpoint("127.0.0.1", 8090),))
JWT = JwtOptions("https://issuer", ("aud",), jwks='{"keys": []}')


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in hcm(config)["route_config"]["virtual_hosts"][0]["routes"]}


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def reply_codes(config: dict[str, Any]) -> list[int]:
    return [m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]
            for m in hcm(config)["local_reply_config"]["mappers"] if "status_code_filter" in m["filter"]]


def test_defaults_add_nothing() -> None:
    config = render(BASE)
    text = yaml.safe_dump(config)
    for word in ("jwt_authn", "local_ratelimit", "transport_socket", "ORIGINAL_DST", DESTINATION_ENDPOINT_HEADER):
        assert word not in text
    assert 401 not in reply_codes(config) and 403 not in reply_codes(config)


def test_security_filters_run_first_in_order_with_separate_buckets() -> None:
    config = render(EnvoyOptions(backends=BACKENDS, a2a=BASE.a2a, jwt=JWT, llm_rate_limit=RateLimit(10, 10, 1.0),
                                 a2a_rate_limit=RateLimit(3, 1, 0.5)))
    names = [f["name"] for f in hcm(config)["http_filters"]]
    assert names[:4] == [JWT_FILTER, LLM_RATELIMIT_FILTER, A2A_RATELIMIT_FILTER, "envoy.filters.http.header_mutation"]
    jwt = hcm(config)["http_filters"][0]["typed_config"]
    provider = jwt["providers"]["workflow"]
    assert provider["forward"] is True and provider["audiences"] == ["aud"] and provider["local_jwks"] == {
        "inline_string": '{"keys": []}'}
    assert jwt["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "workflow"}}]
    a2a_bucket = hcm(config)["http_filters"][2]["typed_config"]["token_bucket"]
    assert a2a_bucket == {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "0.5s"}
    by_name = routes(config)
    disabled = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    assert by_name["a2a"]["typed_per_filter_config"][LLM_RATELIMIT_FILTER] == disabled
    assert A2A_RATELIMIT_FILTER not in by_name["a2a"]["typed_per_filter_config"]
    for llm_route in ("routed-by-extproc", "fallback"):
        assert by_name[llm_route]["typed_per_filter_config"] == {A2A_RATELIMIT_FILTER: disabled}
    assert {401, 403, 429} <= set(reply_codes(config))


def test_one_bucket_alone_disables_nothing_else() -> None:
    config = render(EnvoyOptions(backends=BACKENDS, a2a=BASE.a2a, llm_rate_limit=RateLimit(1, 1)))
    assert "typed_per_filter_config" not in routes(config)["fallback"]
    assert LLM_RATELIMIT_FILTER in routes(config)["a2a"]["typed_per_filter_config"]


@pytest.mark.parametrize("jwt", [JwtOptions("i", ("a",)), JwtOptions("i", ("a",), jwks="{}", jwks_file="f"),
                                 JwtOptions("", ("a",), jwks="{}"), JwtOptions("i", (), jwks="{}")])
def test_incomplete_jwt_provider_is_refused(jwt: JwtOptions) -> None:
    with pytest.raises(ValueError, match="JWT provider"):
        render(EnvoyOptions(backends=BACKENDS, jwt=jwt))


def test_upstream_tls_only_on_extproc_and_a2a() -> None:
    tls = UpstreamTls("/c.pem", "/k.pem", "/ca.pem", extproc_san="ep.ns.svc", a2a_san="a2a.ns.svc")
    found = clusters(render(EnvoyOptions(backends=BACKENDS, a2a=BASE.a2a, upstream_tls=tls)))
    assert "transport_socket" not in found["vllm-1"]
    for name, san, alpn in (("extproc", "ep.ns.svc", ["h2"]), ("a2a", "a2a.ns.svc", None)):
        context = found[name]["transport_socket"]["typed_config"]
        assert context["sni"] == san
        common = context["common_tls_context"]
        assert common["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": san}}]
        assert common["tls_certificates"][0]["certificate_chain"] == {"filename": "/c.pem"}
        assert common.get("alpn_protocols") == alpn


def test_gie_mode_routes_by_the_destination_header_to_original_dst() -> None:
    config = render(EnvoyOptions(backends=BACKENDS, gie=True))
    pool = clusters(config)[GIE_CLUSTER]
    assert pool["type"] == "ORIGINAL_DST" and pool["lb_policy"] == "CLUSTER_PROVIDED"
    assert pool["original_dst_lb_config"] == {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT_HEADER}
    assert "load_assignment" not in pool
    routed = routes(config)["routed-by-extproc"]
    assert routed["match"]["headers"] == [{"name": DESTINATION_ENDPOINT_HEADER, "present_match": True}]
    assert routed["route"]["cluster"] == GIE_CLUSTER
    assert routes(config)["fallback"]["route"]["weighted_clusters"]  # ext_proc down: still served
    removed = hcm(config)["http_filters"][0]["typed_config"]["mutations"]["request_mutations"]
    assert {"remove": DESTINATION_ENDPOINT_HEADER} in removed


def test_generator_flags(capsys: pytest.CaptureFixture[str]) -> None:
    envoy_config_main(["--jwt-issuer", "i", "--jwt-audience", "a", "--jwt-audience", "b", "--jwt-jwks", "{}",
                       "--llm-rate-limit", "7/2.5", "--a2a-rate-limit", "3", "--upstream-tls-cert", "c",
                       "--upstream-tls-key", "k", "--upstream-tls-ca", "ca", "--gie"])
    config = yaml.safe_load(capsys.readouterr().out)
    filters = {f["name"]: f["typed_config"] for f in hcm(config)["http_filters"]}
    assert filters[JWT_FILTER]["providers"]["workflow"]["audiences"] == ["a", "b"]
    assert filters[LLM_RATELIMIT_FILTER]["token_bucket"] == {"max_tokens": 7, "tokens_per_fill": 7,
                                                             "fill_interval": "2.5s"}
    assert filters[A2A_RATELIMIT_FILTER]["token_bucket"]["fill_interval"] == "1s"
    assert "transport_socket" in clusters(config)["extproc"] and GIE_CLUSTER in clusters(config)


@pytest.mark.parametrize("argv", [["--llm-rate-limit", "0"], ["--llm-rate-limit", "x/1"],
                                  ["--a2a-rate-limit", "5/0"], ["--jwt-issuer", "i"],
                                  ["--jwt-issuer", "i", "--jwt-audience", "a"], ["--upstream-tls-cert", "c"]])
def test_generator_refuses_incomplete_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        envoy_config_main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_destination_endpoints_from_backend_urls() -> None:
    backends = parse_backends("a=http://10.1.2.3:8000,b=http://[fd00::1]:9000,c=http://10.1.2.4")
    assert destination_endpoints(backends) == {"a": "10.1.2.3:8000", "b": "[fd00::1]:9000", "c": "10.1.2.4:80"}


@pytest.mark.parametrize("spec", ["a=http://vllm-a:8000", "a", "a=http://10.0.0.1:notaport"])
def test_endpoint_mode_needs_ip_urls(spec: str) -> None:
    with pytest.raises(ValueError, match="'a'"):
        Settings(backends=parse_backends(spec), destination_mode="endpoint").validate()
    Settings(backends=parse_backends(spec)).validate()  # the cluster-header mode needs no addresses


def test_destination_mode_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args([]).destination_mode == "cluster-header"
    monkeypatch.setenv("EXTPROC_DESTINATION_MODE", "endpoint")
    monkeypatch.setenv("EXTPROC_TLS_CERT_FILE", "/cert.pem")
    monkeypatch.setenv("EXTPROC_TLS_KEY_FILE", "/key.pem")
    settings = settings_from_args(["--backends", "a=http://127.0.0.1:8101"])
    assert (settings.destination_mode, settings.tls_cert_file, settings.tls_key_file) == (
        "endpoint", "/cert.pem", "/key.pem")


@pytest.mark.parametrize("fields", [{"tls_cert_file": "c"}, {"tls_client_ca_file": "ca"},
                                    {"a2a_tls_cert_file": "c", "a2a_tls_key_file": "k"}, {"a2a_tls_key_file": "k"},
                                    {"destination_mode": "dns"}])
def test_extproc_tls_settings_come_in_complete_sets(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings(**fields).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", [{"tls_cert_file": "c"}, {"tls_key_file": "k"}, {"tls_client_ca_file": "ca"}])
def test_a2a_tls_settings_come_in_complete_sets(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="tls_"):
        A2ASettings(**fields).validate()  # type: ignore[arg-type]


def test_a2a_tls_flags_and_environment() -> None:
    settings = A2ASettings.from_args(["--tls-cert-file", "c", "--tls-key-file", "k"],
                                     env={"A2A_TLS_CLIENT_CA_FILE": "ca"})
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == ("c", "k", "ca")


def test_picker_answer_shape() -> None:
    option, metadata = destination("10.0.0.7:8000")
    assert (option.header.key, option.header.raw_value, option.header.value) == (
        DESTINATION_ENDPOINT_HEADER, b"10.0.0.7:8000", "")  # raw_value only: both set is an Envoy error
    inner = metadata.fields["envoy.lb"].struct_value.fields
    assert list(inner) == [DESTINATION_ENDPOINT_HEADER]
    assert inner[DESTINATION_ENDPOINT_HEADER].string_value == "10.0.0.7:8000"
