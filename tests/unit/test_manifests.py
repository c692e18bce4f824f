"""The deployment files under envoy/ (Kubernetes, Istio, Grafana, Prometheus), checked offline.

Kubernetes kinds are validated against the official JSON schemas shipped by kubernetes-validate; Istio kinds,
kustomizations, the dashboard and the scrape config are checked for structure and for agreement with the code
(flags, ports, health services, cluster names, the Envoy config generator). promtool checks run when it is
installed. What needs a running Envoy or servers is in tests/e2e/test_istio_envoyfilter.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from a2a_service.config import Settings as A2ASettings
from a2a_service.config import env_var as a2a_env_var
from extproc.config import ENV_PREFIX, build_parser, parse_backends, settings_from_args
from extproc.envoy_config import Endpoint, EnvoyOptions, render
from tests.manifests_support import (
    ENVOY_DIR,
    EXTPROC_CLUSTER,
    INSTANCES,
    NAMESPACE,
    REPO,
    SVC,
    VLLM_PORT,
    all_docs,
    find,
    gateway_configmap_text,
    istio_cluster,
    istio_resources,
    load_docs,
    manifest_files,
)

try:  # the dev extra's kubernetes-validate: only the schema tests need it
    import kubernetes_validate.utils as kubernetes_validate
except ImportError:  # pragma: no cover
    kubernetes_validate = None
needs_schemas = pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate not installed")

K8S_VERSIONS = ("1.30", "1.37")  # oldest supported (gRPC probes, sleep-free preStop) and newest shipped schema
ISTIO_KINDS = {"EnvoyFilter": ("networking.istio.io/v1alpha3",),
               "Gateway": ("networking.istio.io/v1beta1", "networking.istio.io/v1"),
               "VirtualService": ("networking.istio.io/v1beta1", "networking.istio.io/v1")}
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
DASHBOARD = ENVOY_DIR / "grafana" / "workflow-router.json"
PROMETHEUS = ENVOY_DIR / "prometheus.yml"
OUR_IMAGE = "workflow-router:0.1.0"


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in all_docs() if d["kind"] not in ISTIO_KINDS and d["kind"] != "Kustomization"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any], configmap: dict[str, Any] | None = None) -> dict[str, str]:
    env = {item["name"]: item["value"] for item in container(deployment).get("env", [])}
    return {**(configmap["data"] if configmap else {}), **env}


def overlay_configmap(overlay: str) -> dict[str, Any]:
    return load_docs(ENVOY_DIR / overlay / "extproc-env.yaml")[0]


# --- every manifest ------------------------------------------------------------------------------------------
def test_every_manifest_parses_and_names_itself() -> None:
    files = manifest_files()
    assert len(files) >= 12
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


@needs_schemas
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_kinds_match_the_official_schema(version: str) -> None:
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                                        "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the bad field
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


@needs_schemas
def test_schema_validation_catches_a_bad_field() -> None:
    deployment = find(all_docs(), "Deployment", "extproc")
    container(deployment)["readinessProbe"]["grpcPort"] = 9002
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_istio_kinds_have_their_required_fields() -> None:
    docs = [d for d in all_docs() if d["kind"] in ISTIO_KINDS]
    assert sorted(d["kind"] for d in docs) == ["EnvoyFilter", "Gateway", "VirtualService"]
    for doc in docs:
        assert doc["apiVersion"] in ISTIO_KINDS[doc["kind"]]
    gateway = find(docs, "Gateway", "workflow-router")
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}
    assert all({"port", "hosts"} <= s.keys() and s["port"]["protocol"] == "HTTP" for s in gateway["spec"]["servers"])
    vs = find(docs, "VirtualService", "workflow-router")
    assert vs["spec"]["gateways"] == [f"{NAMESPACE}/workflow-router"]
    assert [h["name"] for h in vs["spec"]["http"]] == ["a2a", "routed-by-extproc", "fallback"]
    envoy_filter = find(docs, "EnvoyFilter", "workflow-router")
    # The filter must live where the gateway runs and select it (or it silently applies to nothing).
    assert envoy_filter["metadata"]["namespace"] == "istio-system"
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == gateway["spec"]["selector"]
    for patch in envoy_filter["spec"]["configPatches"]:
        assert patch["applyTo"] in {"LISTENER", "NETWORK_FILTER", "HTTP_FILTER", "HTTP_ROUTE"}
        assert patch["match"]["context"] == "GATEWAY"
        assert patch["patch"]["operation"] in {"MERGE", "INSERT_BEFORE"}
        assert isinstance(patch["patch"]["value"], dict)


def test_every_manifest_belongs_to_exactly_one_kustomization() -> None:
    kustomizations = sorted(p for p in manifest_files() if p.name == "kustomization.yaml")
    assert sorted(p.parent.relative_to(ENVOY_DIR).as_posix() for p in kustomizations) == ["istio", "k8s", "k8s/base"]
    referenced: list[Path] = []
    for path in kustomizations:
        doc = load_docs(path)[0]
        assert doc["apiVersion"] == KUSTOMIZE_API and doc["kind"] == "Kustomization"
        for resource in doc["resources"]:
            target = (path.parent / resource).resolve()
            assert target.exists(), f"{path}: {resource} missing"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists()
            else:
                assert target.parent == path.parent, "kustomize refuses files outside its root"
                referenced.append(target)
    plain = [p.resolve() for p in manifest_files() if p.name != "kustomization.yaml"]
    assert sorted(referenced) == sorted(plain)


def test_selectors_and_named_ports_line_up() -> None:
    docs = all_docs()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for service in (d for d in docs if d["kind"] == "Service"):
        pods = [d for d in deployments if service["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {service['metadata']['name']} selects no Deployment"
        for pod in pods:
            port_names = {p["name"] for p in container(pod)["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
    for deployment in deployments:
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_our_containers_are_locked_down() -> None:
    ours = [d for d in all_docs() if d["kind"] == "Deployment" and not d["metadata"]["name"].startswith("vllm")]
    assert len(ours) == 4  # ext_proc, A2A, Redis, the standalone gateway
    for deployment in ours:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        c = container(deployment)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= c["resources"].keys() and "memory" in c["resources"]["limits"]
        assert {"readinessProbe", "livenessProbe"} <= c.keys()


# --- ext_proc and A2A: env vars, probes, shutdown timing -----------------------------------------------------
@pytest.mark.parametrize("overlay", ["k8s", "istio"])
def test_extproc_is_configured_by_env_vars_the_server_accepts(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = find(all_docs(), "Deployment", "extproc")
    assert deployment["spec"]["replicas"] == 2
    c = container(deployment)
    assert c["image"] == OUR_IMAGE and c["command"] == ["workflow-extproc"] and "args" not in c
    assert c["envFrom"] == [{"configMapRef": {"name": "extproc-env"}}]
    env = env_of(deployment, overlay_configmap(overlay))
    flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings[0].startswith("--")} - {"--help"}
    known = {ENV_PREFIX + f[2:].upper().replace("-", "_") for f in flags}
    assert set(env) <= known, set(env) - known
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_from_args([])  # the same path the container takes: no flags, env only
    assert settings.grpc_port == 9002 and settings.metrics_port == 9190 and settings.host == "0.0.0.0"
    assert settings.store.startswith("redis://redis.workflow-router.svc.cluster.local:6379")
    assert settings.a2a_url == f"a2a.{SVC}:50051"
    expected = INSTANCES if overlay == "k8s" else tuple(istio_cluster(f"{n}.{SVC}", VLLM_PORT) for n in INSTANCES)
    assert tuple(b.cluster for b in settings.backends) == expected
    assert [b.url for b in settings.backends] == [f"http://{n}.{SVC}:{VLLM_PORT}" for n in INSTANCES]

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc-extproc": settings.grpc_port, "http-metrics": settings.metrics_port}
    # The server registers health for "" and the ext_proc service; draining flips both to NOT_SERVING.
    assert c["readinessProbe"]["grpc"] == {"port": settings.grpc_port,
                                           "service": "envoy.service.ext_proc.v3.ExternalProcessor"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "http-metrics"}
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + settings.drain_delay + settings.grace_period


def test_a2a_is_configured_by_env_vars_the_server_accepts() -> None:
    deployment = find(all_docs(), "Deployment", "a2a")
    c = container(deployment)
    assert c["image"] == OUR_IMAGE and c["command"] == ["workflow-a2a"] and "args" not in c
    env = env_of(deployment)
    assert all(name.startswith("A2A_") for name in env)
    settings = A2ASettings.from_args([], env=env)  # unknown or malformed values exit here
    assert {a2a_env_var(f) for f in ("host", "http_port", "grpc_port", "store")} <= env.keys()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "tcpSocket" in c["livenessProbe"]  # /healthz fails while Redis is down: no restart storm
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_grace
    service = find(all_docs(), "Service", "a2a")
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}


def test_extproc_services_speak_grpc() -> None:
    for name in ("extproc", "extproc-headless"):
        port = find(all_docs(), "Service", name)["spec"]["ports"][0]
        assert port["name"] == "grpc-extproc" and port["appProtocol"] == "grpc" and port["port"] == 9002
    assert find(all_docs(), "Service", "extproc-headless")["spec"]["clusterIP"] == "None"


def test_dockerfile_builds_a_non_root_image_with_the_entry_points() -> None:
    text = (ENVOY_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'pip install ".[redis]"' in text
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and int(user.group(1)) != 0
    scripts = (REPO / "pyproject.toml").read_text()
    for deployment in (d for d in all_docs() if d["kind"] == "Deployment" and container(d)["image"] == OUR_IMAGE):
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.group(1))
        assert f'{container(deployment)["command"][0]} = "' in scripts


# --- Envoy configs -------------------------------------------------------------------------------------------
def test_standalone_gateway_config_is_the_generators_output() -> None:
    assert (ENVOY_DIR / "k8s" / "gateway-config.yaml").read_text() == gateway_configmap_text(), \
        "run `python -m tests.manifests_support`"
    config = yaml.safe_load(yaml.safe_load(gateway_configmap_text())["data"]["envoy.yaml"])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert {c["type"] for c in clusters.values()} == {"STRICT_DNS"}
    assert set(INSTANCES) <= clusters.keys()
    address = clusters["extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": f"extproc-headless.{SVC}", "port_value": 9002}
    names = [b.cluster for b in parse_backends(overlay_configmap("k8s")["data"]["EXTPROC_BACKENDS"])]
    assert names == list(INSTANCES)
    gateway = find(all_docs(), "Deployment", "gateway")
    ports = {p["name"]: p["containerPort"] for p in container(gateway)["ports"]}
    assert ports == {"http": config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
                     "http-admin": config["admin"]["address"]["socket_address"]["port_value"]}


def test_strict_dns_is_off_by_default() -> None:
    config = render(EnvoyOptions(backends=(("vllm-1", Endpoint("127.0.0.1", 1)),)))
    assert {c["type"] for c in config["static_resources"]["clusters"]} == {"STATIC"}


def _generator_hcm() -> dict[str, Any]:
    config = render(EnvoyOptions(backends=(("vllm-1", Endpoint("127.0.0.1", 1)),), a2a=(Endpoint("127.0.0.1", 2),)))
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def test_envoyfilter_inserts_the_generators_filters_before_the_router() -> None:
    envoy_filter, _vs = istio_resources()
    hcm = _generator_hcm()
    inserted = [p["patch"]["value"] for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    for patch in (p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"):
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
        assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    expected = json.loads(json.dumps(hcm["http_filters"][:-1]).replace(
        '"cluster_name": "extproc"', f'"cluster_name": {json.dumps(EXTPROC_CLUSTER)}'))
    assert inserted == expected
    assert sum(f["name"] == "envoy.filters.http.ext_proc" for f in inserted) == 1
    merged = next(p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "NETWORK_FILTER")
    assert merged["patch"]["value"]["typed_config"]["local_reply_config"] == hcm["local_reply_config"]


def test_envoyfilter_routes_by_the_cluster_header_and_skips_a2a() -> None:
    envoy_filter, vs = istio_resources()
    generated = {r["name"]: r for r in _generator_hcm()["route_config"]["virtual_hosts"][0]["routes"]}
    patches = {p["match"]["routeConfiguration"]["vhost"]["route"]["name"]: p["patch"]["value"]
               for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE"}
    assert set(patches) <= {h["name"] for h in vs["spec"]["http"]}
    routed = patches["routed-by-extproc"]["route"]
    assert routed["cluster_header"] == generated["routed-by-extproc"]["route"]["cluster_header"]
    assert routed["retry_policy"] == generated["routed-by-extproc"]["route"]["retry_policy"]
    assert patches["a2a"]["typed_per_filter_config"] == generated["a2a"]["typed_per_filter_config"]
    header = next(h for h in vs["spec"]["http"] if h["name"] == "routed-by-extproc")["match"][0]["headers"]
    assert list(header) == [routed["cluster_header"]]
    listener = next(p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "LISTENER")
    limit = listener["patch"]["value"]["per_connection_buffer_limit_bytes"]
    assert limit == EnvoyOptions(backends=()).buffer_limit_bytes


def test_istio_backends_are_the_clusters_istio_generates_for_the_virtual_service() -> None:
    _ef, vs = istio_resources()
    backends = parse_backends(overlay_configmap("istio")["data"]["EXTPROC_BACKENDS"])  # accepts the | names
    fallback = next(h for h in vs["spec"]["http"] if h["name"] == "fallback")["route"]
    destinations = [istio_cluster(d["destination"]["host"], d["destination"]["port"]["number"]) for d in fallback]
    assert [b.cluster for b in backends] == destinations
    assert sum(d["weight"] for d in fallback) == 100
    services = {d["metadata"]["name"] for d in all_docs() if d["kind"] == "Service"}
    assert {b.cluster.rpartition("|")[2].split(".")[0] for b in backends} <= services
    assert istio_cluster(f"extproc.{SVC}", 9002) == EXTPROC_CLUSTER


# --- Grafana and Prometheus ----------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_has_the_schema_basics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"title", "uid", "schemaVersion", "panels", "templating", "time"} <= dashboard.keys()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["type"] in {"timeseries", "stat", "gauge"} and panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids))
        assert all(t["expr"].strip() and t["datasource"] == panel["datasource"] for t in panel["targets"])
    text = " ".join(dashboard_exprs())
    for wanted in ("workflow_routing_latency_bucket", 'reason="failover"', "extproc_cached_tokens_total",
                   "extproc_prompt_tokens_total", "extproc_instance_load", "extproc_instance_healthy",
                   "workflow_message_queue_size", "extproc_registry_degraded_total", "extproc_reports_dropped_total",
                   "ext_proc_streams_started", "ext_proc_failure_mode_allowed"):
        assert wanted in text, wanted


def test_dashboard_jobs_exist_in_the_scrape_config() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs))
    used = set(re.findall(r'job="([^"]+)"', " ".join(dashboard_exprs())))
    assert used and used <= set(jobs)


def test_scrape_config_targets_the_manifests_ports() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["workflow-extproc"]["honor_labels"] is True  # keeps the router's own `instance` label
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    docs = all_docs()
    for job in jobs.values():
        if "kubernetes_sd_configs" not in job:
            continue
        for sd in job["kubernetes_sd_configs"]:
            assert sd["role"] == "pod" and sd["namespaces"]["names"] == [NAMESPACE]
        keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
        app, port = keep["__meta_kubernetes_pod_label_app"], keep["__meta_kubernetes_pod_container_port_name"]
        pods = [d for d in docs
                if d["kind"] == "Deployment" and d["spec"]["template"]["metadata"]["labels"]["app"] == app]
        assert pods, job["job_name"]
        assert all(port in {p["name"] for p in container(d)["ports"]} for d in pods), job["job_name"]
    static = [t for c in jobs["vllm"]["static_configs"] for t in c["targets"]]
    assert static == [f"{n}.{SVC}:{VLLM_PORT}" for n in INSTANCES]


PROMTOOL = shutil.which("promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    result = _promtool("check", "config", str(PROMETHEUS))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian's Prometheus build leaves out Kubernetes discovery: check the rest with static placeholders.
        config = yaml.safe_load(PROMETHEUS.read_text())
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["placeholder:80"]}]
        stripped = tmp_path / "prometheus.yml"
        stripped.write_text(yaml.safe_dump(config))
        result = _promtool("check", "config", str(stripped))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    assert _promtool("check", "config", str(broken)).returncode != 0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Each query as a recording rule: `promtool check rules` parses its PromQL.
    exprs = [e.replace("$__rate_interval", "5m") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
    broken = {"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(rate(x[5m])"}]}]}
    path.write_text(yaml.safe_dump(broken))
    assert _promtool("check", "rules", str(path)).returncode != 0
