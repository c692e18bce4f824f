"""Where the director reports routed and completed requests (to the A2A service's workflow statistics).

The director calls ``routed``/``completed`` on the hot path, so implementations must not block: they enqueue
and return. ``start``/``stop`` bracket the server's life; ``collector`` exposes the reporter's own counters.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client.registry import Collector

from extproc.metadata import WorkflowMetadata
from extproc.requestcontrol.types import Decision
from extproc.usage import Usage


class Reporter(Protocol):
    def routed(
        self, request_id: str, decision: Decision, metadata: WorkflowMetadata | None, elapsed: float
    ) -> None: ...

    def completed(
        self, request_id: str, workflow_id: str, agent_id: str | None, instance: str, usage: Usage | None,
        status: int,
    ) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def collector(self) -> Collector | None: ...


class NullReporter:
    """Used when no A2A service is configured."""

    def routed(
        self, request_id: str, decision: Decision, metadata: WorkflowMetadata | None, elapsed: float
    ) -> None:
        return None

    def completed(
        self, request_id: str, workflow_id: str, agent_id: str | None, instance: str, usage: Usage | None,
        status: int,
    ) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def collector(self) -> Collector | None:
        return None
