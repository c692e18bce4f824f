"""Async clients for the A2A service: ``A2AClient`` (HTTP/JSON, httpx) and ``A2AGrpcClient`` (gRPC).

Both expose the same operations and return the same values (``SendResult``, ``Delivery``, ...); refused
calls raise the ``a2a_service.errors`` classes (``QueueFullError``, ``NotFoundError``, ...) with the
server's ``code`` and ``param``.

    async with A2AClient("http://127.0.0.1:8090") as a2a:
        await a2a.send("wf-1", "planner", "coder", {"task": "write tests"})
        for delivery in await a2a.receive("wf-1", "coder", timeout=5.0):
            print(delivery.message.json())
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx
import orjson

from ._transports import _wire
from ._types import (
    AckResult,
    DeleteResult,
    Delivery,
    RecordResult,
    RequestRecord,
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from .errors import A2AError, UnavailableError, error_from_wire

if TYPE_CHECKING:
    from ._transports._grpc_client import A2AGrpcClient

__all__ = ["A2AClient", "A2AGrpcClient"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
_JSON_HEADERS = {"content-type": "application/json"}


def _seg(value: str) -> str:
    return quote(value, safe="")


def _headers(has_body: bool, auth: dict[str, str] | None) -> dict[str, str] | None:
    if auth is None:
        return _JSON_HEADERS if has_body else None
    return {**_JSON_HEADERS, **auth} if has_body else auth


class A2AClient:
    """HTTP client. ``timeout`` bounds each call on top of the long-poll wait it asks for."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: bearer token (agent JWT or admin token) for services running with ``--auth jwt``."""
        self._timeout = timeout
        self._auth = {"authorization": f"Bearer {token}"} if token else None
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = await self._http.request(
                method,
                path,
                content=orjson.dumps(body) if body is not None else None,
                headers=_headers(body is not None, self._auth),
                params=params,
                timeout=timeout if timeout is not None else self._timeout,
            )
        except httpx.TransportError as exc:
            raise UnavailableError(f"cannot reach the A2A service: {exc!r}", code="unreachable") from exc
        if response.status_code >= 400:
            raise _http_error(response)
        return orjson.loads(response.content)

    async def send(
        self,
        workflow_id: str,
        source_agent: str,
        target_agent: str,
        payload: Any = UNSET,
        *,
        message_type: str | None = None,
        ttl: float | None = None,
    ) -> SendResult:
        """``target_agent="*"`` broadcasts. Omitting ``payload`` sends ``{}``."""
        body: dict[str, Any] = {"source_agent": source_agent, "target_agent": target_agent}
        if payload is not UNSET:
            body["payload"] = payload
        if message_type is not None:
            body["message_type"] = message_type
        if ttl is not None:
            body["ttl"] = ttl
        d = await self._call("POST", f"/v1/workflows/{_seg(workflow_id)}/messages", body=body)
        return SendResult(d["message_id"], tuple(d["delivered_to"]), d["created_at"], d["expires_at"])

    async def receive(
        self,
        workflow_id: str,
        agent_id: str,
        *,
        timeout: float = 0.0,
        max_messages: int = 10,
        ack: bool = False,
        visibility_timeout: float | None = None,
    ) -> list[Delivery]:
        """Long-poll up to ``timeout`` seconds. ``ack=True`` leases the messages (acknowledge with ``ack``)."""
        params: dict[str, Any] = {"timeout": timeout, "max_messages": max_messages}
        if ack:
            params["ack"] = "true"
            if visibility_timeout is not None:
                params["visibility_timeout"] = visibility_timeout
        d = await self._call(
            "GET",
            f"/v1/workflows/{_seg(workflow_id)}/agents/{_seg(agent_id)}/messages",
            params=params,
            timeout=timeout + self._timeout,
        )
        return [_wire.delivery_from_json(m) for m in d["messages"]]

    async def ack(self, workflow_id: str, agent_id: str, message_ids: Sequence[str]) -> AckResult:
        d = await self._call(
            "POST",
            f"/v1/workflows/{_seg(workflow_id)}/agents/{_seg(agent_id)}/messages/ack",
            body={"message_ids": list(message_ids)},
        )
        return AckResult(tuple(d["acked"]), tuple(d["not_found"]))

    async def status(self, workflow_id: str) -> WorkflowStatus:
        return _wire.status_from_json(await self._call("GET", f"/v1/workflows/{_seg(workflow_id)}/status"))

    async def stats(self) -> SystemStats:
        return _wire.stats_from_json(await self._call("GET", "/v1/workflows/stats"))

    async def delete_workflow(self, workflow_id: str) -> DeleteResult:
        d = await self._call("DELETE", f"/v1/workflows/{_seg(workflow_id)}")
        return DeleteResult(d["workflow_id"], d["dropped_messages"])

    async def issue_token(self, workflow_id: str, agent_id: str, *, ttl: float | None = None) -> tuple[str, float]:
        """Admin (construct the client with the admin token): an agent token and its expiry (epoch seconds)."""
        d = await self._call(
            "POST",
            f"/v1/workflows/{_seg(workflow_id)}/agents/{_seg(agent_id)}/token",
            body={} if ttl is None else {"ttl": ttl},
        )
        return str(d["token"]), float(d["expires_at"])

    async def record_requests(self, records: Sequence[RequestRecord]) -> RecordResult:
        d = await self._call(
            "POST", "/v1/workflows/records", body={"records": [_wire.record_to_json(r) for r in records]}
        )
        return RecordResult(d["accepted"], d["rejected"])

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/healthz")
        except httpx.TransportError:
            return False
        return response.status_code == 200


def _http_error(response: httpx.Response) -> A2AError:
    try:
        detail = orjson.loads(response.content)["error"]
        return error_from_wire(
            str(detail.get("message", "")),
            code=detail.get("code"),
            param=detail.get("param"),
            http_status=response.status_code,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = response.text[:200]
        return error_from_wire(f"HTTP {response.status_code}: {text}", http_status=response.status_code)


def __getattr__(name: str) -> Any:
    # The gRPC client needs grpcio and the generated protobuf stubs. Loading them lazily keeps the HTTP client
    # usable where they cannot be installed (e.g. AutoGen's virtualenv, which pins an older protobuf).
    if name in ("A2AGrpcClient", "_grpc_error"):
        from ._transports import _grpc_client

        return getattr(_grpc_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
