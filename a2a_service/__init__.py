"""Agent-to-agent message queues and workflow status/stats, over HTTP (FastAPI) and gRPC.

Importing the package is light (no FastAPI, uvicorn, grpc, httpx or redis): the server, the app factory,
the clients and the Redis store are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._stores._memory import MemoryStore
from ._stores._protocol import Store
from ._stores._queue import QueueCore
from ._types import (
    AckResult,
    DeleteResult,
    Delivery,
    Message,
    MessageCounters,
    QueueStatus,
    RecordKind,
    RecordResult,
    RequestRecord,
    SendRequest,
    SendResult,
    SystemStats,
    WorkflowStatus,
)
from .config import Settings
from .errors import (
    A2AError,
    InvalidRequestError,
    MalformedJSONError,
    MessageTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    QueueFullError,
    ResourceExhaustedError,
    StoreUnavailableError,
    TooManyAgentsError,
    TooManyWorkflowsError,
    UnauthenticatedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from ._server import A2AServer
    from ._stores._redis import RedisStore
    from ._transports._http import create_app
    from .client import A2AClient, A2AGrpcClient

__all__ = [
    "A2AClient",
    "A2AError",
    "A2AGrpcClient",
    "A2AServer",
    "AckResult",
    "DeleteResult",
    "Delivery",
    "InvalidRequestError",
    "MalformedJSONError",
    "MemoryStore",
    "Message",
    "MessageCounters",
    "MessageTooLargeError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueCore",
    "QueueFullError",
    "QueueStatus",
    "RecordKind",
    "RecordResult",
    "RedisStore",
    "RequestRecord",
    "ResourceExhaustedError",
    "SendRequest",
    "SendResult",
    "Settings",
    "Store",
    "StoreUnavailableError",
    "SystemStats",
    "TooManyAgentsError",
    "TooManyWorkflowsError",
    "UnauthenticatedError",
    "UnavailableError",
    "WorkflowStatus",
    "create_app",
]

_LAZY = {
    "A2AClient": ".client",
    "A2AGrpcClient": ".client",
    "A2AServer": "._server",
    "RedisStore": "._stores._redis",
    "create_app": "._transports._http",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'a2a_service' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
