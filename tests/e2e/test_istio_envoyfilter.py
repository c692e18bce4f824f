"""The Istio EnvoyFilter and the deployment configs against the real Envoy, ext_proc, A2A and simulators.

No Istio control plane runs here: ``istio_bootstrap`` builds what istiod would give the ingress gateway for
envoy/istio/gateway.yaml (routes named after the VirtualService, clusters named ``outbound|port||host``) and
applies envoy/istio/envoyfilter.yaml's patches. The ext_proc server takes EXTPROC_BACKENDS from
envoy/istio/extproc-env.yaml (the Istio cluster names; only the URLs point at the local simulators) through the
environment, as in the Deployment.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2a_service.client import A2AClient
from benchmarks.demo import run_workflow
from benchmarks.stack import Process, Stack, envoy_binary, spawn, wait_for_line
from extproc.config import parse_backends
from extproc.envoy_config import Endpoint, EnvoyOptions, to_yaml
from tests.conftest import stack_options
from tests.manifests_support import (
    ENVOY_DIR,
    EXTPROC_CLUSTER,
    INSTANCES,
    SVC,
    all_docs,
    exposition_names,
    find,
    gateway_envoy_yaml,
    istio_backends,
    istio_bootstrap,
    istio_cluster,
    istio_resources,
    promql_metric_names,
    promql_name_regexes,
)

pytestmark = pytest.mark.e2e

A2A_CLUSTER = istio_cluster(f"a2a.{SVC}", 8090)
SMALL = {"model": "m", "prompt": "x", "max_tokens": 2}


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def bootstrap_for(ports: dict[str, int]) -> dict[str, object]:
    envoy_filter, virtual_service = istio_resources()
    return istio_bootstrap(envoy_filter, virtual_service, ports)


def placeholder_ports() -> dict[str, int]:
    names = [EXTPROC_CLUSTER, A2A_CLUSTER, *(b.cluster for b in parse_backends(istio_backends()))]
    return {name: 10000 + i for i, name in enumerate(names)}


def test_real_envoy_accepts_the_patched_istio_gateway_and_the_standalone_config(tmp_path: Path) -> None:
    istio = tmp_path / "istio-gateway.yaml"
    istio.write_text(yaml.safe_dump(bootstrap_for(placeholder_ports())))
    standalone = tmp_path / "standalone.yaml"
    standalone.write_text(yaml.safe_load((ENVOY_DIR / "k8s" / "gateway-config.yaml").read_text())["data"]["envoy.yaml"])
    assert standalone.read_text() == gateway_envoy_yaml()
    for path in (istio, standalone):
        result = envoy_validate(path)
        assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stderr[-2000:]
    # The check has teeth: a misspelt field in one of the inserted filters is refused.
    broken = bootstrap_for(placeholder_ports())
    hcm = broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]  # type: ignore[index]
    ext_proc = next(f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    ext_proc["typed_config"]["processing_mode"]["request_body_mod"] = "BUFFERED"
    istio.write_text(yaml.safe_dump(broken))
    assert envoy_validate(istio).returncode != 0


def test_assembled_gateway_has_the_filters_in_order_and_the_cluster_header_route() -> None:
    config = bootstrap_for(placeholder_ports())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[index]
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.header_mutation", "envoy.filters.http.ext_proc", "workflow.ext_proc.observer",
        "envoy.filters.http.router"]
    routes = {r["name"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}
    assert "cluster" not in routes["routed-by-extproc"]["route"]  # the oneof was replaced, not doubled
    assert routes["routed-by-extproc"]["route"]["cluster_header"] == "x-upstream-cluster"
    assert routes["a2a"]["route"]["cluster"] == A2A_CLUSTER


# --- the gateway running ---------------------------------------------------------------------------------------
class IstioGateway:
    def __init__(self, stack: Stack, clusters: dict[str, str]) -> None:
        self.stack = stack
        self.clusters = clusters  # Istio cluster name -> simulator name
        self.url = self.admin_url = ""
        # The generator's standalone gateway over the same servers (its stat names differ: see the dashboard).
        self.standalone_url = self.standalone_admin_url = ""
        self.processes: list[Process] = []

    @property
    def extproc_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.extprocs[0].ports['metrics']}"

    @property
    def a2a_url(self) -> str:
        assert self.stack.a2a is not None
        return f"http://127.0.0.1:{self.stack.a2a.ports['http']}"

    def start_envoy(self, name: str, config_text: str) -> tuple[str, str]:
        path = self.stack.run_dir / f"{name}.yaml"
        path.write_text(config_text)
        admin_path = self.stack.run_dir / f"{name}-admin-address"
        argv = [envoy_binary(), "-c", str(path), "--admin-address-path", str(admin_path), "--concurrency", "1",
                "--use-dynamic-base-id", "--log-level", "warning"]
        process = spawn(name, argv, self.stack.run_dir)
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while not admin_path.exists() or not admin_path.read_text().strip():
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{process.log_tail()}")
            time.sleep(0.05)
        admin = f"http://127.0.0.1:{admin_path.read_text().strip().rpartition(':')[2]}"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{admin}/ready", timeout=1).status_code == 200:
                    listeners = httpx.get(f"{admin}/listeners?format=json", timeout=1).json()
                    port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    return f"http://127.0.0.1:{port}", admin
            time.sleep(0.05)
        raise TimeoutError(f"{name} not ready:\n{process.log_tail()}")


@pytest.fixture(scope="module")
def gateway() -> Iterator[IstioGateway]:
    stack = Stack(stack_options())
    gateway = IstioGateway(stack, {})
    try:
        stack.start_redis()
        for name in INSTANCES:
            stack.start_simulator(name)
        a2a = stack.start_a2a()
        names = [b.cluster for b in parse_backends(istio_backends())]
        gateway.clusters = dict(zip(names, INSTANCES, strict=True))
        backends = ",".join(f"{c}=http://127.0.0.1:{stack.backends[i]}" for c, i in gateway.clusters.items())
        env = {"EXTPROC_HOST": "127.0.0.1", "EXTPROC_GRPC_PORT": "0", "EXTPROC_METRICS_PORT": "0",
               "EXTPROC_BACKENDS": backends, "EXTPROC_STORE": str(stack.redis_url),
               "EXTPROC_A2A_URL": f"127.0.0.1:{a2a.ports['grpc']}", "EXTPROC_LOG_LEVEL": "warning",
               # Nothing to drain at teardown: stop at once.
               "EXTPROC_DRAIN_DELAY": "0", "EXTPROC_GRACE_PERIOD": "0.5"}
        extproc = spawn("extproc-istio", [sys.executable, "-m", "extproc"], stack.run_dir, env=env)
        stack.extprocs.append(extproc)
        match = wait_for_line(extproc, r"EXTPROC_LISTENING grpc=(\d+) metrics=(\d+)")
        extproc.ports.update(grpc=int(match.group(1)), metrics=int(match.group(2)))
        ports = {EXTPROC_CLUSTER: extproc.ports["grpc"], A2A_CLUSTER: a2a.ports["http"],
                 **{c: stack.backends[i] for c, i in gateway.clusters.items()}}
        gateway.url, gateway.admin_url = gateway.start_envoy("envoy-istio", yaml.safe_dump(bootstrap_for(ports)))
        standalone = EnvoyOptions(
            backends=tuple((c, Endpoint("127.0.0.1", stack.backends[i])) for c, i in gateway.clusters.items()),
            extproc=(Endpoint("127.0.0.1", extproc.ports["grpc"]),), a2a=(Endpoint("127.0.0.1", a2a.ports["http"]),),
            listen_address="127.0.0.1", listen_port=0, admin_port=0)
        gateway.standalone_url, gateway.standalone_admin_url = gateway.start_envoy("envoy-standalone",
                                                                                   to_yaml(standalone))
        yield gateway
    finally:
        for process in gateway.processes:
            process.stop()
        stack.stop()


def _successes(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))


def _sample(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted + " "))


async def test_workflows_route_through_istio_named_clusters(gateway: IstioGateway) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async def served() -> dict[str, float]:
            return {name: _successes((await client.get(f"{gateway.stack.simulator_url(name)}/metrics")).text)
                    for name in INSTANCES}

        chosen: list[str] = []
        for index in range(2):
            workflow_id = f"istio-{uuid.uuid4().hex[:8]}-{index}"
            before = await served()
            steps = await run_workflow(client, gateway.url, workflow_id, max_tokens=8)
            after = await served()
            assert [s.status for s in steps] == [200] * len(steps)
            moved = {name: after[name] - before[name] for name in INSTANCES if after[name] != before[name]}
            assert len(moved) == 1 and next(iter(moved.values())) == len(steps), moved  # one instance per workflow
            chosen.append(next(iter(moved)))
            assert all(s.cached_tokens > 0 for s in steps[1:])  # the instance's prefix cache was reused
        metrics = (await client.get(f"{gateway.extproc_metrics_url}/metrics")).text
    for cluster, name in gateway.clusters.items():
        assert cluster.startswith("outbound|8000||") and cluster.endswith(f"{name}.{SVC}")
    # The router's decisions name Istio's clusters, and each new workflow went where the router said.
    new = {c: _sample(metrics, "extproc_routing_decisions_total", instance=c, reason="new_workflow")
           for c in gateway.clusters}
    assert sum(new.values()) == 2
    for name in chosen:
        cluster = next(c for c, n in gateway.clusters.items() if n == name)
        assert new[cluster] >= 1
        assert _sample(metrics, "extproc_routing_decisions_total", instance=cluster, reason="affinity") >= 2


async def test_a2a_route_skips_ext_proc(gateway: IstioGateway) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async def streams() -> float:
            return _sample((await client.get(f"{gateway.extproc_metrics_url}/metrics")).text, "extproc_streams_total")

        before = await streams()
        workflow_id = f"istio-a2a-{uuid.uuid4().hex[:8]}"
        async with A2AClient(gateway.url) as a2a:
            await a2a.send(workflow_id, "planner", "coder", {"task": "write"})
            received = await a2a.receive(workflow_id, "coder", timeout=5)
        assert [d.message.json() for d in received] == [{"task": "write"}]
        assert await streams() == before
        # An LLM request on the same gateway does open streams (router + observer): the counter is live.
        response = await client.post(f"{gateway.url}/v1/completions", json=SMALL)
        assert response.status_code == 200
        assert await streams() >= before + 1


async def test_the_manifests_probes_answer_on_the_running_servers(gateway: IstioGateway) -> None:
    docs = all_docs()
    extproc = find(docs, "Deployment", "extproc")["spec"]["template"]["spec"]["containers"][0]
    a2a = find(docs, "Deployment", "a2a")["spec"]["template"]["spec"]["containers"][0]
    async with httpx.AsyncClient(timeout=10) as client:
        live = await client.get(gateway.extproc_metrics_url + extproc["livenessProbe"]["httpGet"]["path"])
        ready = await client.get(gateway.a2a_url + a2a["readinessProbe"]["httpGet"]["path"])
    assert live.status_code == 200 and ready.status_code == 200 and ready.json() == {"status": "ok"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.stack.extprocs[0].ports['grpc']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (extproc["readinessProbe"]["grpc"]["service"], "no.such.Service"):
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                status = answer.status
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                status = None
            expected = health_pb2.HealthCheckResponse.SERVING if service != "no.such.Service" else None
            assert status == expected, service


async def test_every_dashboard_metric_is_exported(gateway: IstioGateway) -> None:
    """Every name the dashboard's PromQL reads is exported by a running server; Envoy's names (which depend on
    the HCM stat prefix) are matched on both the Istio-shaped gateway and the standalone generator's Envoy."""
    async with httpx.AsyncClient(timeout=30) as client:
        # Labelled error counters have no series before their first event: cause one of each.
        bad = await client.post(f"{gateway.url}/v1/completions",
                                json={**SMALL, "workflow_metadata": {"workflow_id": "bad/id", "agent_id": "a"}})
        assert bad.status_code == 400 and "error" in bad.json()
        queue = f"{gateway.url}/v1/workflows/dash-{uuid.uuid4().hex[:8]}/messages"
        message = {"source_agent": "a", "target_agent": "b", "payload": {}}
        codes = [(await client.post(queue, json=message)).status_code for _ in range(21)]  # the queue holds 20
        assert codes == [200] * 20 + [429]
        ok = await client.post(f"{gateway.url}/v1/completions",
                               json={**SMALL, "workflow_metadata": {"workflow_id": f"dash-{uuid.uuid4().hex[:8]}",
                                                                    "agent_id": "a"}})
        assert ok.status_code == 200
        standalone = await client.post(f"{gateway.standalone_url}/v1/completions", json=SMALL)
        assert standalone.status_code == 200
        sources = {
            "ext_proc": f"{gateway.extproc_metrics_url}/metrics",
            "a2a": f"{gateway.a2a_url}/metrics",
            "envoy (Istio-shaped)": f"{gateway.admin_url}/stats/prometheus",
            "envoy (standalone)": f"{gateway.standalone_admin_url}/stats/prometheus",
            "vllm": f"{gateway.stack.simulator_url(INSTANCES[0])}/metrics",
        }
        exported = {source: exposition_names((await client.get(url)).text) for source, url in sources.items()}
    dashboard = json.loads((ENVOY_DIR / "grafana" / "workflow-router.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    regexes = sorted({r for e in exprs for r in promql_name_regexes(e)})
    available = set().union(*exported.values())
    print(f"dashboard: {len(exprs)} queries, {len(used)} metric names, {len(regexes)} Envoy name regexes; exported: "
          + ", ".join(f"{source} {len(names)}" for source, names in exported.items()))
    assert len(used) >= 30 and len(regexes) >= 5
    assert used <= available, sorted(used - available)
    for source in ("envoy (Istio-shaped)", "envoy (standalone)"):
        for regex in regexes:
            assert any(re.fullmatch(regex, name) for name in exported[source]), (source, regex)
