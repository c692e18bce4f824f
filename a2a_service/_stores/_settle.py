"""A workflow status that waits, briefly, for the router's reports of requests still in flight."""

from __future__ import annotations

import asyncio
import time

from .._types import WorkflowStatus
from ._protocol import Store

POLL_INTERVAL = 0.01  # seconds between status reads while waiting (5 reads per reporter batch interval)


async def settled_status(store: Store, workflow_id: str, settle: float) -> WorkflowStatus:
    """``store.status``, re-read until every routed request is reported complete or ``settle`` seconds passed.

    The router reports ROUTED and COMPLETED records in batches (every 50 ms), so a client that reads the status
    right after its response arrived could otherwise see ``completed_requests`` one short. Requests whose
    ROUTED record has not arrived either are not waited for (nothing says they exist): that bound is the
    reporter's interval plus one RPC (docs/compatibility.md)."""
    status = await store.status(workflow_id)
    if settle <= 0 or status.completed_requests >= status.total_requests:
        return status
    deadline = time.monotonic() + settle
    while status.completed_requests < status.total_requests and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL)
        status = await store.status(workflow_id)
    return status
