"""Send, receive and ack over HTTP: the request logic of the hot routes, on raw ASGI ``scope``/``receive``."""

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from starlette.types import Receive, Scope, Send

from .._stores._protocol import Store
from .._types import Delivery
from .._validation import sanitize_for_log
from ..config import Settings
from ..errors import A2AError, InvalidRequestError, MessageTooLargeError, UnauthenticatedError, UnavailableError
from . import _wire
from ._auth import Action, Authenticator, Principal, authorize, www_authenticate

log = logging.getLogger("a2a_service.http")


class HotPaths:
    """Send, receive and ack: the request logic, on raw ASGI ``scope``/``receive``.

    Called by the FastAPI routes and, before FastAPI's middleware stack, by ``dispatch`` (the fast path).
    The fast path exists because that stack (error/exception middlewares, exit stacks, dependency
    solving) cost about two thirds of the CPU of a send: measured on this 2-core machine, 5.5k sends/s
    through FastAPI against 17k/s through ``dispatch``. Both paths run the same functions below.
    """

    def __init__(self, store: Store, settings: Settings, auth: Authenticator | None = None) -> None:
        self.store = store
        self.settings = settings
        self.max_body = settings.max_body_size
        self.auth = auth  # None: --auth none, every call allowed

    def principal(self, scope: Scope) -> Principal:
        """The caller, from its bearer token; ``UnauthenticatedError`` when missing or invalid."""
        assert self.auth is not None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        return self.auth.authenticate(header)

    def check(self, scope: Scope, action: Action, workflow_id: str | None = None, agent: str | None = None) -> None:
        if self.auth is not None:
            authorize(self.principal(scope), action, workflow_id, agent)

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, refused with 413 from Content-Length before reading when it is too large."""
        max_body = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    raise InvalidRequestError("invalid Content-Length", param="content-length")
                if int(value) > max_body:
                    raise MessageTooLargeError(
                        f"body is {int(value)} bytes; the limit is {max_body} "
                        f"({self.settings.max_message_size} of payload plus envelope)",
                        param="body",
                    )
                break
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = bytearray(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequestError("client disconnected while sending the body", param="body")
            chunks += message.get("body", b"")
            if len(chunks) > max_body:
                raise MessageTooLargeError(f"body exceeds the limit of {max_body} bytes", param="body")
            if not message.get("more_body", False):
                return bytes(chunks)

    async def send(self, workflow_id: str, scope: Scope, receive: Receive) -> bytes:
        # Authenticated before the body is read; the sender is known only once it is parsed.
        principal = self.principal(scope) if self.auth is not None else None
        if self.store.closing:  # accepted now, a message could be dropped with a memory store
            raise UnavailableError("shutting down: send to another replica")
        try:
            request = _wire.parse_send(await self.read_body(scope, receive), workflow_id, self.settings)
        except A2AError as exc:
            await self.store.note_rejected(exc.code, workflow_id)
            raise
        if principal is not None:
            authorize(principal, Action.SEND, workflow_id, request.source_agent)
        return _wire.encode_send_result(workflow_id, await self.store.send(request))

    async def receive(self, workflow_id: str, agent_id: str, scope: Scope, receive: Receive) -> bytes:
        self.check(scope, Action.RECEIVE, workflow_id, agent_id)
        p = _wire.parse_receive_query(scope["query_string"].decode("latin-1"), self.settings)
        store = self.store
        out = await store.receive(
            workflow_id, agent_id, max_messages=p.max_messages, timeout=0.0, visibility_timeout=p.visibility_timeout
        )
        if not out and p.timeout > 0 and not store.closing:
            poll = store.receive(
                workflow_id,
                agent_id,
                max_messages=p.max_messages,
                timeout=p.timeout,
                visibility_timeout=p.visibility_timeout,
            )
            out = await _unless_disconnected(receive, poll)
        return _wire.encode_deliveries(out, _wire.may_have_more(out, p.max_messages, self.settings))

    async def ack(self, workflow_id: str, agent_id: str, scope: Scope, receive: Receive) -> bytes:
        self.check(scope, Action.ACK, workflow_id, agent_id)
        ids = _wire.parse_ack(await self.read_body(scope, receive), self.settings)
        return _wire.encode(await self.store.ack(workflow_id, agent_id, ids))

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve ``scope`` if it is one of the hot routes (same paths and methods as the FastAPI routes)."""
        path: str = scope["path"]
        if not path.startswith("/v1/workflows/"):
            return False
        parts = path.split("/")  # "", "v1", "workflows", {workflow_id}, ...
        n = len(parts)
        method = scope["method"]
        status = 200  # also for a send: upstream's status code (docs/compatibility.md)
        if n == 5 and parts[4] == "messages" and method == "POST" and parts[3]:
            call = self.send(parts[3], scope, receive)
        elif n in (7, 8) and parts[4] == "agents" and parts[6] == "messages" and parts[3] and parts[5]:
            if n == 7 and method == "GET":
                call = self.receive(parts[3], parts[5], scope, receive)
            elif n == 8 and parts[7] == "ack" and method == "POST":
                call = self.ack(parts[3], parts[5], scope, receive)
            else:
                return False
        else:
            return False
        headers = [(b"content-type", b"application/json")]
        try:
            body = await call
        except A2AError as exc:
            status, body = exc.http_status, _wire.encode(exc.to_json())
            if status in (429, 503):
                headers.append((b"retry-after", b"1"))
            elif isinstance(exc, UnauthenticatedError):
                headers.append((b"www-authenticate", www_authenticate(exc).encode()))
            if status < 500:
                log_refused(exc, path)
        except Exception:
            log.exception("unexpected error", extra={"path": sanitize_for_log(path, 200)})
            status, body = 500, _wire.encode(A2AError("internal error").to_json())
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


async def _unless_disconnected(receive: Receive, poll: Coroutine[Any, Any, list[Delivery]]) -> list[Delivery]:
    """Run the long-poll, but cancel it (putting back anything it took) if the client goes away, so that a
    dead connection never swallows at-most-once messages."""
    polling = asyncio.ensure_future(poll)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((polling, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not polling.done():
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        return []
    return polling.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def log_refused(exc: A2AError, path: str) -> None:
    """A 4xx answer at info level (with the caller's trace id when it sent a traceparent)."""
    if log.isEnabledFor(logging.INFO):
        log.info("request refused", extra={"status": exc.http_status, "code": exc.code, "param": exc.param,
                                           "path": sanitize_for_log(path, 200)})
