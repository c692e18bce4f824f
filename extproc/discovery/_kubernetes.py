"""Kubernetes discovery: the vLLM pods (or EndpointSlices) a label selector picks, listed and then watched through
the API server.

- ``--k8s-resource pods`` (default; what production-stack's service discovery and a Gateway API InferencePool
  do): the pods matching ``--k8s-label-selector`` in ``--k8s-namespace`` are the fleet; a pod counts once it is
  Running, has an IP, its ``Ready`` condition is True and it is not being deleted; its instance is
  ``http://<podIP>:<--k8s-port>``, named after the pod.
- ``--k8s-resource endpointslices``: the EndpointSlices the selector picks (usually
  ``kubernetes.io/service-name=<a Service>``, as kube-proxy reads them); every endpoint whose ``ready``
  condition is not false counts, named after its pod (``targetRef``) or its address.

The watch (``GET …?labelSelector=…&watch=1&resourceVersion=RV``) is the API server's stream of ``{"type":
ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}`` lines; a ``410 Gone`` (the resource version expired) or a
dropped stream lists again. The RBAC it needs: ``get``, ``list``, ``watch`` on ``pods`` (or
``endpointslices`` of ``discovery.k8s.io``) in that namespace (envoy/k8s-discovery/rbac.yaml).

Plain httpx, no client library: in a pod the API server is ``https://$KUBERNETES_SERVICE_HOST:
$KUBERNETES_SERVICE_PORT`` with the service account's token and CA
(``/var/run/secrets/kubernetes.io/serviceaccount/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from extproc.config import Backend

log = logging.getLogger("extproc.discovery")

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
WATCH_TIMEOUT_S = 290  # the API server ends each watch after this (timeoutSeconds); it is opened again
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # backoff after failed list/watch attempts


def _ready(pod: Mapping[str, Any]) -> bool:
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def backends_from_slices(slices: Mapping[str, Mapping[str, Any]], port: int) -> tuple[Backend, ...]:
    """The ready endpoints of EndpointSlices (discovery.k8s.io/v1), in name order (pure). A ``ready`` condition
    that is absent counts as ready (the API's rule for unknown)."""
    found: dict[str, Backend] = {}
    for slice_name in sorted(slices):
        for endpoint in slices[slice_name].get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            target = (endpoint.get("targetRef") or {}).get("name")
            for index, address in enumerate(endpoint.get("addresses") or ()):
                name = str(target) if target and index == 0 else str(address)
                found.setdefault(name, Backend(name, _url(str(address), port)))
    return tuple(found[name] for name in sorted(found))


def backends_from_pods(pods: Mapping[str, Mapping[str, Any]], port: int) -> tuple[Backend, ...]:
    """The ready pods' backends, in name order (pure)."""
    found: list[Backend] = []
    for name in sorted(pods):
        pod = pods[name]
        if _ready(pod):
            ip = pod["status"]["podIP"]
            host = f"[{ip}]" if ":" in ip else ip
            found.append(Backend(name, f"http://{host}:{port}"))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class KubernetesSource:
    """Where the API server is and what to select (``--k8s-*`` flags)."""

    namespace: str
    label_selector: str
    port: int = 8000
    resource: str = "pods"  # or "endpointslices"
    api_url: str | None = None  # None: in-cluster (KUBERNETES_SERVICE_HOST/PORT)
    token_file: str | None = None  # None: the service account's token in-cluster, no token elsewhere
    ca_file: str | None = None  # None: the service account's CA in-cluster

    def client(self) -> httpx.AsyncClient:
        url = self.api_url
        token_file, ca_file = self.token_file, self.ca_file
        if url is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ValueError("Kubernetes discovery outside a pod needs --k8s-api-url")
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            token_file = token_file or f"{SERVICE_ACCOUNT}/token"
            ca_file = ca_file or f"{SERVICE_ACCOUNT}/ca.crt"
        headers = {"accept": "application/json"}
        if token_file:
            with open(token_file, encoding="utf-8") as file:
                headers["authorization"] = f"Bearer {file.read().strip()}"
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        return httpx.AsyncClient(base_url=url, headers=headers, verify=verify,
                                 timeout=httpx.Timeout(10.0, read=WATCH_TIMEOUT_S + 30.0))

    @property
    def path(self) -> str:
        if self.resource == "endpointslices":
            return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def backends(self, objects: Mapping[str, Mapping[str, Any]]) -> tuple[Backend, ...]:
        if self.resource == "endpointslices":
            return backends_from_slices(objects, self.port)
        return backends_from_pods(objects, self.port)


class _Gone(Exception):
    """The watch's resource version expired (410): list again."""


class KubernetesPods:
    """Lists the selected pods (``initial``), then watches them and calls ``apply`` with every changed fleet of
    ready pods. Reconnects with backoff; an empty fleet is not applied (the last one stays)."""

    def __init__(self, source: KubernetesSource, apply: Callable[[Sequence[Backend]], object]) -> None:
        self.source = source
        self.apply = apply
        self.pods: dict[str, Mapping[str, Any]] = {}
        self.resource_version = ""
        self.lists = 0
        self.events = 0
        self.errors = 0
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied: tuple[Backend, ...] = ()

    async def initial(self, wait: float = 60.0) -> tuple[Backend, ...]:
        """The ready pods at start, waiting up to ``wait`` seconds for at least one; ValueError otherwise."""
        self._client = self._client or self.source.client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        attempt = 0
        while True:
            try:
                await self._list()
                backends = self.source.backends(self.pods)
                if backends:
                    self._applied = backends
                    return backends
                problem = "no ready pod matches the selector yet"
            except (httpx.HTTPError, ValueError) as error:
                problem = str(error) or type(error).__name__
            if loop.time() > deadline:
                raise ValueError(f"Kubernetes discovery ({self.source.namespace}, {self.source.label_selector!r}): "
                                 f"{problem}")
            log.warning("waiting for Kubernetes pods", extra={"problem": problem})
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1

    async def _list(self) -> None:
        assert self._client is not None
        response = await self._client.get(self.source.path, params={"labelSelector": self.source.label_selector})
        if response.status_code != 200:
            raise ValueError(f"listing {self.source.resource}: HTTP {response.status_code}: {response.text[:200]}")
        body = response.json()
        items = body.get("items")
        if not isinstance(items, list):
            raise ValueError(f"listing {self.source.resource}: no 'items' list")
        self.pods = {item["metadata"]["name"]: item for item in items}
        self.resource_version = str(body.get("metadata", {}).get("resourceVersion", ""))
        self.lists += 1

    async def _watch(self) -> None:
        assert self._client is not None
        params = {"labelSelector": self.source.label_selector, "watch": "1", "allowWatchBookmarks": "true",
                  "resourceVersion": self.resource_version, "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        async with self._client.stream("GET", self.source.path, params=params) as response:
            if response.status_code == 410:
                raise _Gone
            if response.status_code != 200:
                raise ValueError(f"watching {self.source.resource}: HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if line.strip():
                    self.handle(json.loads(line))

    def handle(self, event: Mapping[str, Any]) -> None:
        """One watch event (pure but for ``apply``)."""
        kind, obj = event.get("type"), event.get("object") or {}
        metadata = obj.get("metadata") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        if metadata.get("resourceVersion"):
            self.resource_version = str(metadata["resourceVersion"])
        if kind == "BOOKMARK":
            return
        self.events += 1
        name = metadata.get("name")
        if not isinstance(name, str):
            return
        if kind == "DELETED":
            self.pods.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.pods[name] = obj
        self._publish()

    def _publish(self) -> None:
        backends = self.source.backends(self.pods)
        if backends and backends != self._applied:
            self._applied = backends
            self.apply(backends)
        elif not backends and self._applied:
            log.error("no ready pod matches the selector: keeping the last fleet",
                      extra={"selector": self.source.label_selector})

    async def start(self) -> None:
        self._client = self._client or self.source.client()
        self._task = asyncio.create_task(self._run(), name="kubernetes-discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._watch()  # ends when the API server closes it (timeoutSeconds): watch again
                failures = 0
            except _Gone:
                await self._relist()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # never let discovery die: the fleet would silently freeze
                self.errors += 1
                log.warning("Kubernetes watch failed; listing again", extra={"error": str(error) or repr(error)})
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                await self._relist()

    async def _relist(self) -> None:
        try:
            await self._list()
        except (httpx.HTTPError, ValueError) as error:
            self.errors += 1
            log.warning("Kubernetes list failed", extra={"error": str(error)})
            return
        self._publish()
