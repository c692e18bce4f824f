"""envoy/k8s-discovery/: the RBAC, the extproc patch and the endpoints ConfigMap validate against the official
Kubernetes schemas (kubernetes-validate, offline), grant exactly what discovery reads, name flags that exist, and
the ConfigMap's file is one the router accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import ENV_PREFIX, build_parser
from extproc.discovery import parse_endpoints

DIR = Path(__file__).resolve().parents[2] / "envoy" / "k8s-discovery"

try:
    import kubernetes_validate.utils as kubernetes_validate
except ImportError:  # pragma: no cover
    kubernetes_validate = None


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DIR / name).read_text()) if d]


@pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate not installed")
@pytest.mark.parametrize("name", ["rbac.yaml", "endpoints-file.yaml"])
def test_manifests_validate(name: str) -> None:
    for doc in docs(name):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_role_grants_get_list_watch_on_pods_and_endpointslices_only() -> None:
    role = next(d for d in docs("rbac.yaml") if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    binding = next(d for d in docs("rbac.yaml") if d["kind"] == "RoleBinding")
    account = next(d for d in docs("rbac.yaml") if d["kind"] == "ServiceAccount")
    patch = docs("extproc-discovery.yaml")[0]["spec"]["template"]["spec"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"] == patch["serviceAccountName"]


def test_patch_env_names_real_flags() -> None:
    flags = {ENV_PREFIX + a.dest.upper() for a in build_parser()._actions if a.dest != "help"}
    env = docs("extproc-discovery.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"] for e in env} <= flags


def test_configmap_file_parses() -> None:
    config = docs("endpoints-file.yaml")[0]
    assert [b.cluster for b in parse_endpoints(config["data"]["endpoints.yaml"])] == ["vllm-1", "vllm-2"]
