"""Cross-replica agreement on a workflow's instance, through the shared assignment store (Redis).

The local workflow table stays the hot-path cache: an affinity hit costs no round trip (an entry older than the
store's ``revalidate_after`` is re-read in the background). A new or moved workflow is claimed atomically; if
another replica decided first, this one follows it (cluster-wide affinity). Concurrent requests of a workflow
being claimed wait for the claim instead of taking this replica's provisional choice as an affinity hit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine

from extproc.datastore.endpoints import Endpoints
from extproc.datastore.shared_assignments import RedisAssignments
from extproc.datastore.workflows import WorkflowTable
from extproc.requestcontrol.types import Decision


def _followed(decision: Decision, winner: str) -> Decision:
    return dataclasses.replace(decision, instance=winner, affinity_hit=True, new_workflow=False, failover=False,
                               rebalanced=False, previous=None)


class Consensus:
    def __init__(self, store: RedisAssignments, workflows: WorkflowTable, endpoints: Endpoints) -> None:
        self.store = store
        self.workflows = workflows
        self.endpoints = endpoints
        self._claiming: dict[str, asyncio.Future[str]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def agree(self, decision: Decision, now: float) -> Decision:
        store = self.store
        workflow_id = decision.affinity_key or decision.workflow_id  # one claim per (workflow, model)
        assert workflow_id is not None
        store.touch(workflow_id)
        entry = self.workflows.peek(workflow_id)
        if entry is None:  # evicted from the local table by this very decision (max-workflows of 1)
            return decision
        pending = self._claiming.get(workflow_id)
        if pending is not None:
            winner = await asyncio.shield(pending)
            return decision if winner == decision.instance else _followed(decision, winner)
        if decision.affinity_hit:
            if now - entry.synced_at > store.revalidate_after:
                entry.synced_at = now
                self._spawn(self._revalidate(workflow_id))
            return decision
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claiming[workflow_id] = future
        winner = decision.instance  # what waiters get if this stream is cancelled mid-claim
        try:
            winner = await store.claim(workflow_id, decision.instance, decision.previous)
            if winner != decision.instance and winner not in self.endpoints.healthy:
                # Another replica chose an instance this one sees as down: move it, once, atomically.
                winner = await store.claim(workflow_id, decision.instance, winner)
        finally:
            del self._claiming[workflow_id]
            future.set_result(winner)
        entry.synced_at = now
        if winner == decision.instance:
            return decision
        entry.instance = winner  # another replica decided first: follow it
        return _followed(decision, winner)

    async def _revalidate(self, workflow_id: str) -> None:
        entry = self.workflows.peek(workflow_id)
        if entry is None:
            return
        current = await self.store.lookup(workflow_id)
        if current is None and self.store.available:
            # Expired or evicted cluster-wide while this replica kept using it: register it again.
            current = await self.store.claim(workflow_id, entry.instance, None)
        if current is not None and current != entry.instance and current in self.endpoints.healthy:
            entry.instance = current

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
