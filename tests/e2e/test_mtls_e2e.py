"""mTLS between Envoy and the ext_proc / A2A services, and from the ext_proc reporter to A2A, with a real Envoy
and certificates this test makes (docs/envoy-security.md)."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2a_service.client import A2AClient
from benchmarks.demo import wait_for_status
from benchmarks.stack import Stack
from extproc.envoy_config import UpstreamTls
from tests.conftest import stack_options
from tests.e2e.pki import CertFiles, CertificateAuthority

CONTEXT = " ".join(f"row {i}: region {i % 5} sold {i * 3} units." for i in range(60))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory)
    return {"ca": ca.path, "envoy": ca.issue("envoy"), "extproc": ca.issue("extproc"), "a2a": ca.issue("a2a"),
            "other_ca": CertificateAuthority(directory, "other-ca").issue("stranger")}


@pytest.fixture(scope="module")
def tls_stack(pki: dict[str, object]) -> Iterator[Stack]:
    ca, envoy, extproc, a2a = (pki[k] for k in ("ca", "envoy", "extproc", "a2a"))
    assert isinstance(envoy, CertFiles) and isinstance(extproc, CertFiles) and isinstance(a2a, CertFiles)
    server = ("--tls-client-ca-file", str(ca))
    options = stack_options(
        instances=2,
        extproc_args=("--tls-cert-file", str(extproc.cert), "--tls-key-file", str(extproc.key), *server,
                      # the reporter's own client certificate towards A2A
                      "--a2a-tls-ca-file", str(ca), "--a2a-tls-cert-file", str(extproc.cert),
                      "--a2a-tls-key-file", str(extproc.key)),
        a2a_args=("--max-message-queue-size", "20", "--tls-cert-file", str(a2a.cert), "--tls-key-file", str(a2a.key),
                  *server),
        envoy_extra={"upstream_tls": UpstreamTls(str(envoy.cert), str(envoy.key), str(ca))},
    )
    with Stack(options) as running:
        wait_extproc_healthy(running)
        yield running


def wait_extproc_healthy(stack: Stack, timeout: float = 10.0) -> None:
    """A guard: a request sent before Envoy's first (TLS) health check of ext_proc passed would bypass the
    router (failure_mode_allow) and make the affinity assertions flaky on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clusters = httpx.get(f"{stack.admin_url}/clusters", timeout=5).text
        if any(line.startswith("extproc::") and line.endswith("::health_flags::healthy")
               for line in clusters.splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError("Envoy never saw the TLS ext_proc server healthy")


def envoy_stats(stack: Stack) -> dict[str, int]:
    text = httpx.get(f"{stack.admin_url}/stats", timeout=5).text
    return {name: int(value) for name, _, value in (line.partition(": ") for line in text.splitlines())
            if value.isdigit()}


def completion(workflow_id: str, step: int) -> dict[str, object]:
    return {"model": "m", "prompt": f"{CONTEXT}\nstep {step}", "max_tokens": 4,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": f"agent-{step}"}}


async def test_requests_are_routed_by_the_mtls_extproc(tls_stack: Stack) -> None:
    run = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(timeout=30) as client:
        served = []
        for index in range(3):
            responses = [await client.post(f"{tls_stack.url}/v1/completions", json=completion(f"m-{run}-{index}", s))
                         for s in range(4)]
            assert [r.status_code for r in responses] == [200] * 4, responses[-1].text
            served.append({r.headers["x-served-by"] for r in responses})
    assert all(len(s) == 1 for s in served), served  # affinity: every decision came from ext_proc
    stats = envoy_stats(tls_stack)
    assert stats["cluster.extproc.ssl.handshake"] >= 1
    assert stats["http.ingress.ext_proc.failure_mode_allowed"] == 0  # no request bypassed the router
    assert stats["http.ingress.ext_proc.streams_started"] >= 12


async def test_a2a_messages_and_router_reports_over_mtls(tls_stack: Stack) -> None:
    workflow_id = f"m-a2a-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        for step in range(2):
            r = await client.post(f"{tls_stack.url}/v1/completions", json=completion(workflow_id, step))
            assert r.status_code == 200, r.text
    async with A2AClient(tls_stack.url) as a2a:
        await a2a.send(workflow_id, "collector", "analyzer", {"ok": True})
        received = await a2a.receive(workflow_id, "analyzer", timeout=5)
        # The ext_proc reporter reached A2A's gRPC port over mTLS: the routed requests are in the status.
        status = await wait_for_status(a2a, workflow_id, completed=2)
    assert [d.message.json() for d in received] == [{"ok": True}]
    assert status.completed_requests == 2 and status.total_requests == 2
    assert envoy_stats(tls_stack)["cluster.a2a.ssl.handshake"] >= 1


def _grpc_health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_clients_without_a_trusted_certificate_are_refused(tls_stack: Stack, pki: dict[str, object]) -> None:
    ca_path, envoy, stranger = pki["ca"], pki["envoy"], pki["other_ca"]
    assert isinstance(ca_path, Path) and isinstance(envoy, CertFiles) and isinstance(stranger, CertFiles)
    ca = ca_path.read_bytes()
    good = grpc.ssl_channel_credentials(ca, envoy.key.read_bytes(), envoy.cert.read_bytes())
    refused = {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(ca),
        "certificate of another CA": grpc.ssl_channel_credentials(ca, stranger.key.read_bytes(),
                                                                  stranger.cert.read_bytes()),
    }
    assert tls_stack.a2a is not None
    for port in (tls_stack.extprocs[0].ports["grpc"], tls_stack.a2a.ports["grpc"]):
        assert _grpc_health(port, good) == health_pb2.HealthCheckResponse.SERVING  # the control
        for name, credentials in refused.items():
            with pytest.raises(grpc.RpcError):
                _grpc_health(port, credentials)
                pytest.fail(f"{name} was accepted on gRPC port {port}")

    https = f"https://127.0.0.1:{tls_stack.a2a.ports['http']}/healthz"
    with_cert = ssl.create_default_context(cafile=str(ca_path))
    with_cert.load_cert_chain(str(envoy.cert), str(envoy.key))
    assert httpx.get(https, verify=with_cert, timeout=5).status_code == 200  # the control
    with pytest.raises(httpx.TransportError):
        httpx.get(https.replace("https://", "http://"), timeout=5)
    with pytest.raises(httpx.TransportError):
        httpx.get(https, verify=ssl.create_default_context(cafile=str(ca_path)), timeout=5)
    foreign = ssl.create_default_context(cafile=str(ca_path))
    foreign.load_cert_chain(str(stranger.cert), str(stranger.key))
    with pytest.raises(httpx.TransportError):
        httpx.get(https, verify=foreign, timeout=5)
