"""The Envoy config options the resilience suite relies on: the opt-in per-try idle timeout and the fallback
marker header (rendering only; the scenarios run them in a real Envoy)."""

from __future__ import annotations

from typing import Any

import yaml

from extproc.config import FALLBACK_HEADER
from extproc.envoy_config import Endpoint, EnvoyOptions, main, to_yaml

BACKENDS = (("vllm-1", Endpoint("127.0.0.1", 8101)), ("vllm-2", Endpoint("127.0.0.1", 8102)))


def routes(options: EnvoyOptions) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(to_yaml(options))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {r["name"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}


def test_per_try_idle_timeout_is_off_by_default_and_set_on_both_llm_routes() -> None:
    default = routes(EnvoyOptions(backends=BACKENDS, a2a=(Endpoint("127.0.0.1", 8090),)))
    # Only the stream-idle routes a stream's deadline selects (x-router-stream-idle-s, requestcontrol/deadline.py)
    # carry one by default; every other route has none.
    assert all("per_try_idle_timeout" not in r["route"].get("retry_policy", {}) for name, r in default.items()
               if "-stream-idle-" not in name)
    assert any("-stream-idle-" in name for name in default)
    chaos = routes(EnvoyOptions(backends=BACKENDS, a2a=(Endpoint("127.0.0.1", 8090),), per_try_idle_timeout_s=1.5))
    for name in ("routed-by-extproc", "fallback"):
        assert chaos[name]["route"]["retry_policy"]["per_try_idle_timeout"] == "1.5s"
        assert "reset" in chaos[name]["route"]["retry_policy"]["retry_on"]  # a per-try timeout is a local reset
    # Long-polls are not LLM generations: no idle timeout, and only requests that never reached a replica are
    # retried (a send that reached one may have been queued).
    a2a_retry = chaos["a2a"]["route"]["retry_policy"]
    assert "per_try_idle_timeout" not in a2a_retry and a2a_retry["retry_on"] == "connect-failure,refused-stream"


def test_only_the_fallback_route_marks_its_responses() -> None:
    found = routes(EnvoyOptions(backends=BACKENDS))
    def marked(name: str) -> bool:
        return any(h["header"]["key"] == FALLBACK_HEADER for h in found[name]["response_headers_to_add"])
    assert marked("fallback") and not marked("routed-by-extproc")


def test_generator_flag(capsys: Any) -> None:
    main(["--per-try-idle-timeout", "120"])
    assert "per_try_idle_timeout: 120s" in capsys.readouterr().out
