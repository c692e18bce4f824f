"""A mixed fleet's Envoy clusters: an instance's failover endpoints (priority 1, used by retries) are only the
instances serving the same models, so a retry never reaches an instance that answers 404 for the request's
model (extproc/envoy_config/_clusters.py, --failover-groups; the stack derives the groups from --models)."""

from __future__ import annotations

from typing import Any

from extproc.envoy_config import Endpoint, EnvoyOptions
from extproc.envoy_config._cli import build_parser
from extproc.envoy_config._clusters import clusters

BACKENDS = tuple((f"vllm-{i}", Endpoint("127.0.0.1", 8100 + i)) for i in range(1, 5))


def failover(options: EnvoyOptions) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for c in clusters(options):
        endpoints: list[dict[str, Any]] = c.get("load_assignment", {}).get("endpoints", [])
        if c["name"].startswith("vllm-"):
            found[c["name"]] = [e["endpoint"]["hostname"] for p in endpoints if p.get("priority") == 1
                                for e in p["lb_endpoints"]]
    return found


def test_without_groups_every_other_instance_is_a_failover() -> None:
    assert failover(EnvoyOptions(backends=BACKENDS))["vllm-1"] == ["vllm-2", "vllm-3", "vllm-4"]


def test_groups_keep_retries_within_a_model() -> None:
    options = EnvoyOptions(backends=BACKENDS, failover_groups=(("vllm-1", "vllm-2"), ("vllm-3", "vllm-4")))
    assert failover(options) == {"vllm-1": ["vllm-2"], "vllm-2": ["vllm-1"], "vllm-3": ["vllm-4"],
                                 "vllm-4": ["vllm-3"]}


def test_an_instance_alone_in_its_group_has_no_failover() -> None:
    options = EnvoyOptions(backends=BACKENDS[:3], failover_groups=(("vllm-1",), ("vllm-2", "vllm-3")))
    assert failover(options)["vllm-1"] == []


def test_cli_flag() -> None:
    ns = build_parser().parse_args(["--failover-groups", "vllm-1,vllm-2; vllm-3,vllm-4"])
    assert ns.failover_groups == (("vllm-1", "vllm-2"), ("vllm-3", "vllm-4"))
