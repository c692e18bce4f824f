"""Kubernetes discovery (extproc/discovery/_kubernetes.py) against a fake API server that replays API responses
(tests/fixtures/kubernetes/: PodList, watch events, a 410 Expired): list, then watch; a pod joins when it is
Running with an IP and Ready, leaves when it is deleted or terminating; bookmarks move the resource version; an
expired watch lists again; the bearer token is sent; the label selector is passed.

Not run against a real API server: none can be installed here (docs/kubernetes.md). The fixtures follow the
API's shapes but were written by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from extproc.config import Backend
from extproc.discovery import KubernetesPods, KubernetesSource, backends_from_pods

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeAPIServer:
    """Serves GET /api/v1/namespaces/llm/pods: the list, then a watch streaming the recorded events, then a watch
    answering 410 Expired (the client must list again: the second list), then watches that stay open."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.lists = 0
        self.watches = 0
        self.release = asyncio.Event()

    async def pods(self, request: Request) -> Response:
        self.requests.append({**request.query_params, "authorization": request.headers.get("authorization", "")})
        if request.query_params.get("watch") != "1":
            self.lists += 1
            return JSONResponse(load("pods-list.json" if self.lists == 1 else "pods-relist.json"))
        self.watches += 1
        if self.watches == 1:
            lines = (FIXTURES / "pods-watch.jsonl").read_text().splitlines()
        elif self.watches == 2:
            lines = [json.dumps(load("watch-expired.json"))]
        else:
            lines = []

        async def stream() -> AsyncIterator[bytes]:
            for line in lines:
                yield line.encode() + b"\n"
                await asyncio.sleep(0.01)
            if self.watches >= 3:
                await self.release.wait()  # a watch that stays open until the test ends

        return StreamingResponse(stream(), media_type="application/json")


@contextlib.asynccontextmanager
async def serve(api: FakeAPIServer) -> AsyncIterator[str]:
    app = Starlette(routes=[Route("/api/v1/namespaces/llm/pods", api.pods)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        api.release.set()
        server.should_exit = True
        await task


def names(backends: Sequence[Backend]) -> list[str]:
    return [b.cluster for b in backends]


async def test_list_then_watch_then_relist_after_expiry(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    api = FakeAPIServer()
    applied: list[tuple[Backend, ...]] = []
    async with serve(api) as url:
        source = KubernetesSource("llm", "app=vllm", 8000, api_url=url, token_file=str(token))
        pods = KubernetesPods(source, lambda backends: applied.append(tuple(backends)))
        initial = await pods.initial()
        assert names(initial) == ["vllm-0", "vllm-1"]  # vllm-2 is not Ready yet
        assert initial[0] == Backend("vllm-0", "http://10.1.0.10:8000")
        await pods.start()
        for _ in range(200):
            if api.lists >= 2 and api.watches >= 3:
                break
            await asyncio.sleep(0.02)
        await pods.stop()
    # vllm-2 turned Ready (joins); vllm-3 was Pending without an IP (ignored); vllm-0 started terminating (leaves
    # at once, before its DELETED event); after the 410 the relist shows vllm-3 running.
    assert [names(b) for b in applied] == [["vllm-0", "vllm-1", "vllm-2"], ["vllm-1", "vllm-2"],
                                           ["vllm-1", "vllm-2", "vllm-3"]]
    watch = [r for r in api.requests if r.get("watch") == "1"]
    assert watch[0]["resourceVersion"] == "1000"  # from the list
    assert watch[1]["resourceVersion"] == "1005"  # the last event's (the bookmark's 1003 was passed)
    assert watch[2]["resourceVersion"] == "1300"  # the relist's
    assert all(r["labelSelector"] == "app=vllm" and r["authorization"] == "Bearer s3cret" for r in api.requests)
    assert pods.errors == 0


@pytest.mark.parametrize(("patch", "ready"), [
    ({}, True),
    ({"status": {"phase": "Pending"}}, False),
    ({"status": {"podIP": ""}}, False),
    ({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, False),
    ({"metadata": {"deletionTimestamp": "2026-12-07T10:05:00Z"}}, False),
])
def test_which_pods_count(patch: dict[str, dict[str, object]], ready: bool) -> None:
    pod = load("pods-list.json")["items"][0]
    for key, fields in patch.items():
        pod[key] = {**pod[key], **fields}
    assert bool(backends_from_pods({"p": pod}, 8000)) is ready


async def test_initial_gives_up_with_a_clear_error_when_nothing_answers() -> None:
    source = KubernetesSource("llm", "app=vllm", api_url="http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(ValueError, match="Kubernetes discovery"):
        await KubernetesPods(source, lambda _: None).initial(wait=0.3)


class FakeSliceServer:
    """GET /apis/discovery.k8s.io/v1/namespaces/llm/endpointslices: the list, then the recorded watch events."""

    def __init__(self) -> None:
        self.watches = 0
        self.release = asyncio.Event()
        self.requests: list[dict[str, str]] = []

    async def slices(self, request: Request) -> Response:
        self.requests.append(dict(request.query_params))
        if request.query_params.get("watch") != "1":
            return JSONResponse(load("endpointslices-list.json"))
        self.watches += 1
        lines = (FIXTURES / "endpointslices-watch.jsonl").read_text().splitlines() if self.watches == 1 else []

        async def stream() -> AsyncIterator[bytes]:
            for line in lines:
                yield line.encode() + b"\n"
                await asyncio.sleep(0.01)
            await self.release.wait()

        return StreamingResponse(stream(), media_type="application/json")


async def test_endpointslices_list_then_watch() -> None:
    api = FakeSliceServer()
    applied: list[list[str]] = []
    app = Starlette(routes=[Route("/apis/discovery.k8s.io/v1/namespaces/llm/endpointslices", api.slices)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        source = KubernetesSource("llm", "kubernetes.io/service-name=vllm", 8000, "endpointslices", api_url=url)
        pods = KubernetesPods(source, lambda backends: applied.append(names(backends)))
        initial = await pods.initial()
        assert initial == (Backend("vllm-0", "http://10.1.0.10:8000"), Backend("vllm-1", "http://10.1.0.11:8000"))
        await pods.start()
        for _ in range(200):
            if len(applied) >= 4:
                break
            await asyncio.sleep(0.02)
        await pods.stop()
    finally:
        api.release.set()
        server.should_exit = True
        await task
    # vllm-2 turns ready; a second slice adds vllm-3; vllm-0 terminates (ready false); the second slice goes.
    assert applied == [["vllm-0", "vllm-1", "vllm-2"], ["vllm-0", "vllm-1", "vllm-2", "vllm-3"],
                       ["vllm-1", "vllm-2", "vllm-3"], ["vllm-1", "vllm-2"]]
    assert api.requests[0]["labelSelector"] == "kubernetes.io/service-name=vllm"
    assert api.requests[1]["resourceVersion"] == "2000"


def test_slices_without_conditions_count_as_ready_and_ipv6_is_bracketed() -> None:
    from extproc.discovery import backends_from_slices

    slices = {"s": {"endpoints": [{"addresses": ["fd00::1"]}, {"addresses": ["10.0.0.9"],
                                                                 "conditions": {"ready": False}}]}}
    assert backends_from_slices(slices, 8000) == (Backend("fd00::1", "http://[fd00::1]:8000"),)
