"""Where the servicer reports routed and completed requests (to the A2A service's workflow statistics).

The servicer calls these on the hot path, so implementations must not block: they enqueue and return.
"""

from __future__ import annotations

from typing import Protocol

from extproc.metadata import WorkflowMetadata
from extproc.routing.policy import Decision
from extproc.usage import Usage


class Reporter(Protocol):
    def routed(
        self, request_id: str, decision: Decision, metadata: WorkflowMetadata | None, elapsed: float
    ) -> None: ...

    def completed(
        self, request_id: str, workflow_id: str, agent_id: str | None, instance: str, usage: Usage | None,
        status: int,
    ) -> None: ...


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
