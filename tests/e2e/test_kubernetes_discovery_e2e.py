"""Kubernetes discovery end to end, with a fake API server: the ext_proc server lists and watches the pods a label
selector picks (``--k8s-label-selector``, ``--k8s-api-url``) and a real Envoy routes through its ORIGINAL_DST
cluster to the pods' ip:port. The "pods" are simulators on loopback addresses 127.0.0.2 and 127.0.0.3 sharing
one port (as pods share a container port); the fake API server answers the list with one ready pod, then
streams watch events (a second pod becomes ready, the first is deleted) when the test says so.

What this does not show: a real API server's behaviour (none can be installed here; docs/kubernetes.md)."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.simulator.config import INSTANCE_HEADER
from benchmarks.stack import Process, Stack, spawn, wait_for_line
from tests.conftest import TEST_TIME_SCALE, stack_options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"
HOSTS = {"pod-a": "127.0.0.2", "pod-b": "127.0.0.3"}


def pod(name: str, ip: str, rv: int, *, ready: bool = True) -> dict[str, Any]:
    """A pod as the fixtures shape it (tests/fixtures/kubernetes/pods-list.json), renamed and re-addressed."""
    base = json.loads((FIXTURES / "pods-list.json").read_text())["items"][0]
    base["metadata"] = {**base["metadata"], "name": name, "resourceVersion": str(rv)}
    base["status"] = {**base["status"], "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    return base


class FakeAPIServer:
    """GET /api/v1/namespaces/llm/pods: the list (pod-a), then one long watch fed from ``events``."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lists = 0
        self.watches = 0
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def pods(self, request: Request) -> Response:
        assert request.query_params.get("labelSelector") == "app=vllm"
        if request.query_params.get("watch") != "1":
            self.lists += 1
            return JSONResponse({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"},
                                 "items": [pod("pod-a", HOSTS["pod-a"], 100)]})
        self.watches += 1

        async def stream() -> AsyncIterator[bytes]:
            while True:
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.02)
                    continue
                yield json.dumps(event).encode() + b"\n"

        return StreamingResponse(stream(), media_type="application/json")

    def __enter__(self) -> FakeAPIServer:
        app = Starlette(routes=[Route("/api/v1/namespaces/llm/pods", self.pods)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "fake API server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=5)


def shared_port() -> int:
    """A port free on both loopback addresses (the pods' container port)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS["pod-a"], 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as other:
            try:
                other.bind((HOSTS["pod-b"], port))
            except OSError:
                continue
        return port
    raise RuntimeError("no shared free port")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeAPIServer, dict[str, Process]]]:
    run_dir = tmp_path_factory.mktemp("pods")
    port = shared_port()
    pods: dict[str, Process] = {}
    with FakeAPIServer() as api:
        try:
            for name, host in HOSTS.items():
                process = spawn(name, [sys.executable, "-m", "benchmarks.simulator", "--host", host, "--port",
                                       str(port), "--name", name, "--time-scale", str(TEST_TIME_SCALE),
                                       "--served-model-name", "m", "--log-level", "warning"], run_dir)
                pods[name] = process
                wait_for_line(process, r"VLLM_SIM_LISTENING port=(\d+)")
            options = stack_options(with_a2a=False, external_backends={"unused": port}, envoy_extra={"gie": True},
                                    extproc_args=("--destination-mode", "endpoint", "--k8s-label-selector",
                                                  "app=vllm", "--k8s-namespace", "llm", "--k8s-port", str(port),
                                                  "--k8s-api-url", f"http://127.0.0.1:{api.port}"))
            with Stack(options) as stack:
                yield stack, api, pods
        finally:
            for process in pods.values():
                process.stop()


async def send(stack: Stack, client: httpx.AsyncClient, n: int) -> list[str]:
    replies = await asyncio.gather(*(client.post(f"{stack.url}/v1/completions", json={
        "model": "m", "prompt": f"hello {uuid.uuid4().hex}", "max_tokens": 2,
        "workflow_metadata": {"workflow_id": f"k8s-{uuid.uuid4().hex[:8]}"}}) for _ in range(n)))
    assert [r.status_code for r in replies] == [200] * n, [r.text for r in replies if r.status_code != 200][:1]
    return [r.headers[INSTANCE_HEADER] for r in replies]


async def test_pods_that_become_ready_join_and_deleted_pods_leave(
        cluster: tuple[Stack, FakeAPIServer, dict[str, Process]]) -> None:
    stack, api, _ = cluster
    async with httpx.AsyncClient(timeout=30) as client:
        assert set(await send(stack, client, 8)) == {"pod-a"}  # the list had one ready pod
        api.events.put({"type": "ADDED", "object": pod("pod-b", HOSTS["pod-b"], 101, ready=False)})
        api.events.put({"type": "MODIFIED", "object": pod("pod-b", HOSTS["pod-b"], 102)})
        joined = time.monotonic()
        seen: set[str] = set()
        while "pod-b" not in seen:
            assert time.monotonic() - joined < 30, "pod-b never took work"
            seen |= set(await send(stack, client, 4))
        join_s = time.monotonic() - joined
        api.events.put({"type": "DELETED", "object": pod("pod-a", HOSTS["pod-a"], 103)})
        left = time.monotonic()
        while True:
            assert time.monotonic() - left < 30, "pod-a kept getting work"
            if set(await send(stack, client, 8)) == {"pod-b"}:
                break
        leave_s = time.monotonic() - left
    print(f"\nkubernetes discovery: pod-b took work {join_s:.2f} s after it turned ready, pod-a none "
          f"{leave_s:.2f} s after its deletion (lists {api.lists}, watches {api.watches})")
    assert api.lists == 1  # one list, then the watch carried every change
