"""The gRPC server of one service process: the A2A servicer plus ``grpc.health.v1``, TLS, and an interceptor
that refuses undecodable request bytes with INVALID_ARGUMENT."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_aio  # what grpc_health.v1.health re-exports as `aio`
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .._stores._protocol import Store
from ..config import GRPC_MESSAGE_OVERHEAD, Settings
from ..v1 import a2a_pb2_grpc as pb_grpc
from ._grpc import SERVICE_NAME, A2AServicer

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

# grpc_health ships no annotations: give its registration function the signature it has.
_add_health_servicer: Callable[[Any, grpc.aio.Server], None] = health_pb2_grpc.add_HealthServicer_to_server


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS of the gRPC port (None: plaintext); with a client CA, callers without a certificate it signed are
    refused in the handshake (mTLS)."""
    if not settings.tls_cert_file:
        return None
    with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
        pair = (key.read(), cert.read())
    ca = None
    if settings.tls_client_ca_file:
        with open(settings.tls_client_ca_file, "rb") as file:
            ca = file.read()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _RefuseUndecodable(grpc.aio.ServerInterceptor):
    """Bytes that are no valid request message: INVALID_ARGUMENT naming the type, instead of grpc.aio's UNKNOWN
    (it decodes before any handler runs, so ``_translate`` never sees the error). Handlers are wrapped once
    per method, not per call."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(details)
        if handler is None:
            return None  # unknown method: not cached, so made-up method names cannot grow the cache
        if handler.request_deserializer is not None and not handler.request_streaming:
            handler = self._wrap(handler)
        self._wrapped[method] = handler
        return handler

    @staticmethod
    def _wrap(handler: Any) -> Any:
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as exc:  # protobuf's DecodeError, or anything a codec raises
                return _Undecodable(f"request is not a valid message: {exc}")

        if handler.response_streaming and inspect.isasyncgenfunction(handler.unary_stream):
            stream = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                async for item in stream(request, context):
                    yield item

            return handler._replace(request_deserializer=safe_decode, unary_stream=unary_stream)
        # Unary, or streaming through context.write() (Subscribe, health's Watch): a coroutine either way.
        field = "unary_stream" if handler.response_streaming else "unary_unary"
        unary = getattr(handler, field)
        if not inspect.iscoroutinefunction(unary):
            return handler

        async def unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await unary(request, context)

        return handler._replace(request_deserializer=safe_decode, **{field: unary_unary})


class GrpcServer:
    """The gRPC server of one service process (A2A service + grpc.health.v1)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.server = grpc.aio.server(
            interceptors=[_RefuseUndecodable()],
            options=[
                ("grpc.so_reuseport", 0),  # fail loudly if the port is taken instead of sharing it
                ("grpc.max_receive_message_length", settings.max_message_size + GRPC_MESSAGE_OVERHEAD),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_A2AServiceServicer_to_server(A2AServicer(store, settings), self.server)
        self.health = health_aio.HealthServicer()
        _add_health_servicer(self.health, self.server)
        self._address = format_address(settings.host, settings.grpc_port)
        self._credentials = server_credentials(settings)
        self.port = 0

    async def start(self) -> int:
        try:
            self.port = (self.server.add_insecure_port(self._address) if self._credentials is None
                         else self.server.add_secure_port(self._address, self._credentials))
        except RuntimeError as exc:  # grpc reports a taken port this way
            raise OSError(f"cannot bind gRPC port {self._address}: {exc}") from exc
        if not self.port:
            raise OSError(f"cannot bind gRPC port {self._address}")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
