"""Property test: any interleaving of sends, receives (with and without leases), acks, cancelled receives,
clock jumps, sweeps and deletions never delivers a message twice in at-most-once mode, never delivers an
expired or acknowledged message, keeps batches in FIFO order, and never loses a message: every copy sent
is always accounted for as delivered, acknowledged, expired, dropped, queued or in flight."""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from a2a_service import (
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    QueueCore,
    QueueFullError,
    SendRequest,
    Settings,
    TooManyAgentsError,
)

AGENTS = ("a", "b", "c")
WF = "wf"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        ids = itertools.count(1)
        self.core = QueueCore(
            Settings(max_message_queue_size=4, max_messages_cap=100), clock=self.clock, new_id=lambda: str(next(ids))
        )
        self.sent_copies = 0
        self.at_most_once_delivered = 0  # deliveries that removed the message
        self.final: set[tuple[str, str]] = set()  # (agent, id): removed by delivery or ack; never again
        self.leased: set[tuple[str, str]] = set()  # delivered with a lease, not yet final

    @rule(
        source=st.sampled_from(AGENTS),
        to=st.sampled_from((*AGENTS, "*")),
        ttl=st.sampled_from((None, 0.5, 3.0, 40.0)),
    )
    def send(self, source: str, to: str, ttl: float | None) -> None:
        try:
            result = self.core.send(SendRequest(WF, source, to, "t", b"{}", ttl))
        except QueueFullError:
            return
        assert source not in result.delivered_to or to == source  # no broadcast to oneself
        self.sent_copies += len(result.delivered_to)

    def _check_batch(self, agent: str, out: list) -> None:
        order = [int(d.message.message_id) for d in out]
        assert order == sorted(order), "batch not in FIFO order"
        for d in out:
            assert d.message.expires_at > self.clock.now, "expired message delivered"
            assert (agent, d.message.message_id) not in self.final, "message delivered twice"

    @rule(agent=st.sampled_from(AGENTS), n=st.integers(1, 5), lease=st.sampled_from((None, None, 2.0, 10.0)))
    def receive(self, agent: str, n: int, lease: float | None) -> None:
        out = self.core.receive(WF, agent, n, lease)
        self._check_batch(agent, out)
        for d in out:
            key = (agent, d.message.message_id)
            if lease is None:
                self.final.add(key)
                self.leased.discard(key)
                self.at_most_once_delivered += 1
            else:
                self.leased.add(key)

    @rule(agent=st.sampled_from(AGENTS), n=st.integers(1, 5), lease=st.sampled_from((None, 5.0)))
    def receive_then_cancel(self, agent: str, n: int, lease: float | None) -> None:
        """A waiting receiver was handed messages but went away: they are put back."""
        out = self.core.receive(WF, agent, n, lease)
        self._check_batch(agent, out)
        self.core.restore(WF, agent, out)

    @precondition(lambda self: bool(self.leased))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        agent, message_id = data.draw(st.sampled_from(sorted(self.leased)))
        try:
            result = self.core.ack(WF, agent, [message_id, "never-sent"])
        except NotFoundError:  # the workflow was deleted meanwhile
            self.leased.clear()
            return
        assert "never-sent" in result.not_found
        if message_id in result.acked:
            self.final.add((agent, message_id))
        self.leased.discard((agent, message_id))

    @rule(seconds=st.sampled_from((0.1, 1.0, 2.5, 11.0, 60.0)))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def sweep(self) -> None:
        self.core.sweep(self.core.workflow_ids())

    @rule()
    def delete(self) -> None:
        with contextlib.suppress(NotFoundError):
            self.core.delete_workflow(WF)
        self.leased.clear()

    @invariant()
    def every_copy_is_accounted_for(self) -> None:
        stats = self.core.stats()
        m = stats.messages
        assert m.sent == self.sent_copies
        accounted = (
            self.at_most_once_delivered + m.acked + m.expired + m.dropped + stats.queued_messages
            + stats.in_flight_messages
        )  # fmt: skip
        assert accounted == m.sent, (accounted, m)
        self.core.check_invariants()


TestQueueProperties = QueueMachine.TestCase
TestQueueProperties.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    derandomize=True,  # deterministic in CI; widen locally with HYPOTHESIS_PROFILE if needed
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- model-based: the queue against a plain reference model -----------------------------------------------------
# The machine above checks accounting; this one predicts *which* messages each call returns or refuses, from a
# model simple enough to be obviously right: a list of entries per agent, scanned in full on every call.

MODEL_AGENTS = ("a", "a", "b", "b", "c", "d")  # "d" is one more than the agent limit below
QUEUE_LIMIT = 3
BATCH_CAP = 5
AGENT_LIMIT = 3
SIZE_LIMIT = 64


class _ModelEntry:
    def __init__(self, message_id: str, seq: int, expires_at: float) -> None:
        self.message_id = message_id
        self.seq = seq
        self.expires_at = expires_at
        self.lease_deadline: float | None = None
        self.delivery_count = 0


class QueueModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        ids = itertools.count(1)
        settings_ = Settings(
            max_message_queue_size=QUEUE_LIMIT, max_messages_cap=BATCH_CAP, max_agents_per_workflow=AGENT_LIMIT,
            max_message_size=SIZE_LIMIT, workflow_ttl=1e9,
        )
        self.core = QueueCore(settings_, clock=self.clock, new_id=lambda: str(next(ids)))
        self.ids_issued = 0
        self.seq = 0
        self.exists = False
        self.queues: dict[str, list[_ModelEntry]] = {}  # insertion order = order agents became known
        self.leased_ever: set[tuple[str, str]] = set()
        self.gone: set[tuple[str, str]] = set()  # delivered at-most-once or acknowledged: never again

    # --- model helpers
    def _live(self, entry: _ModelEntry) -> bool:
        return entry.expires_at > self.clock.now

    def _deliverable(self, agent: str) -> list[_ModelEntry]:
        now = self.clock.now
        ready = [e for e in self.queues.get(agent, []) if self._live(e)
                 and (e.lease_deadline is None or e.lease_deadline <= now)]
        return sorted(ready, key=lambda e: e.seq)

    def _size_after_purge(self, agent: str) -> int:
        # A leased entry still inside its lease counts even past its TTL: only an expired lease frees it.
        now = self.clock.now
        return sum(1 for e in self.queues.get(agent, [])
                   if self._live(e) or (e.lease_deadline is not None and e.lease_deadline > now))

    def _ensure(self, agents: tuple[str, ...]) -> bool:
        new = [a for a in dict.fromkeys(agents) if a not in self.queues]
        if len(self.queues) + len(new) > AGENT_LIMIT:
            return False
        self.exists = True
        for agent in new:
            self.queues[agent] = []
        return True

    # --- rules
    @rule(source=st.sampled_from(MODEL_AGENTS), to=st.sampled_from((*MODEL_AGENTS, "*")),
          ttl=st.sampled_from((None, None, 0.5, 3.0, 40.0)))
    def send(self, source: str, to: str, ttl: float | None) -> None:
        agents = (source,) if to == "*" else (source, to)
        fits = self._ensure(agents)
        targets = [a for a in self.queues if a != source] if to == "*" else [to]
        full = [a for a in targets if self._size_after_purge(a) >= QUEUE_LIMIT] if fits else []
        try:
            result = self.core.send(SendRequest(WF, source, to, "t", b"{}", ttl))
        except TooManyAgentsError:
            assert not fits
            return
        except QueueFullError as error:
            assert full and full[0] in str(error), (full, error)
            return
        assert fits and not full, (fits, full)
        self.ids_issued += 1
        assert result.message_id == str(self.ids_issued)
        assert list(result.delivered_to) == targets
        expires = self.clock.now + (300.0 if ttl is None else ttl)
        assert result.expires_at == expires
        for agent in targets:
            self.seq += 1
            self.queues[agent].append(_ModelEntry(result.message_id, self.seq, expires))

    @rule(kind=st.integers(0, 4), bad=st.sampled_from(("", ".", "a b", "x" * 257, "\u00e9", "*x")),
          ttl=st.sampled_from((0.0, -1.0, math.inf, math.nan, 8 * 24 * 3600.0)))
    def send_refused(self, kind: int, bad: str, ttl: float) -> None:
        """Bad input is refused before it touches any queue (the invariant checks nothing changed)."""
        fields = [WF, "a", "b", "t"]
        if kind < 3:
            fields[kind] = bad
        request = SendRequest(*fields, payload=b"{}", ttl=ttl if kind == 3 else None)
        if kind == 4:
            request = SendRequest(WF, "a", "b", "t", b'"' + b"x" * SIZE_LIMIT + b'"', None)
        with pytest.raises(MessageTooLargeError if kind == 4 else InvalidRequestError):
            self.core.send(request)

    def _receive(self, agent: str, n: int, lease: float | None) -> tuple[list, list[_ModelEntry]]:
        fits = self._ensure((agent,))
        expected = self._deliverable(agent)[:n] if fits else []
        try:
            out = self.core.receive(WF, agent, n, lease)
        except TooManyAgentsError:
            assert not fits
            return [], []
        assert fits
        got = [(d.message.message_id, d.delivery_count, d.lease_expires_at) for d in out]
        want = [(e.message_id, e.delivery_count + 1, None if lease is None else self.clock.now + lease)
                for e in expected]
        assert got == want, (got, want)
        for d in out:
            assert (agent, d.message.message_id) not in self.gone, "delivered twice"
        return out, expected

    @rule(agent=st.sampled_from(MODEL_AGENTS), n=st.integers(1, BATCH_CAP),
          lease=st.sampled_from((None, 2.0, 10.0)))
    def receive(self, agent: str, n: int, lease: float | None) -> None:
        _, expected = self._receive(agent, n, lease)
        for entry in expected:
            entry.delivery_count += 1
            if lease is None:
                self.queues[agent].remove(entry)
                self.gone.add((agent, entry.message_id))
            else:
                entry.lease_deadline = self.clock.now + lease
                self.leased_ever.add((agent, entry.message_id))

    @rule(agent=st.sampled_from(MODEL_AGENTS), n=st.integers(1, BATCH_CAP), lease=st.sampled_from((None, 5.0)))
    def receive_then_cancel(self, agent: str, n: int, lease: float | None) -> None:
        """A receiver that went away: the messages go back as if never handed out (model unchanged)."""
        out, expected = self._receive(agent, n, lease)
        for entry in expected:
            entry.lease_deadline = None  # an expired lease that receive requeued is released too
        self.core.restore(WF, agent, out)

    @rule(agent=st.sampled_from(MODEL_AGENTS), n=st.sampled_from((0, -1, BATCH_CAP + 1)))
    def receive_bad_batch(self, agent: str, n: int) -> None:
        with pytest.raises(InvalidRequestError):
            self.core.receive(WF, agent, n, None)

    @rule(agent=st.sampled_from(MODEL_AGENTS), data=st.data())
    def ack(self, agent: str, data: st.DataObject) -> None:
        candidates = sorted({e.message_id for e in self.queues.get(agent, [])} | {"never-sent", "1"})
        chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
        if not self.exists:
            with pytest.raises(NotFoundError):
                self.core.ack(WF, agent, chosen)
            return
        result = self.core.ack(WF, agent, chosen)
        assert sorted([*result.acked, *result.not_found]) == sorted(chosen)
        entries = {e.message_id: e for e in self.queues.get(agent, [])}
        now = self.clock.now
        for message_id in chosen:
            entry = entries.get(message_id)
            if entry is None or entry.delivery_count == 0:
                assert message_id in result.not_found  # never delivered, already final, or another agent's
                continue
            inside_lease = entry.lease_deadline is not None and entry.lease_deadline > now
            if self._live(entry) or inside_lease:
                assert message_id in result.acked, (message_id, result)
            # Past its TTL and its lease, the entry may or may not have been purged yet: either answer is fine,
            # and either way it is gone for good.
            self.queues[agent].remove(entry)
            self.gone.add((agent, message_id))

    @rule(seconds=st.sampled_from((0.1, 1.0, 2.5, 11.0, 60.0)))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(seconds=st.sampled_from((2.5, 11.0)))
    def advance_past_a_lease(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def sweep(self) -> None:
        self.core.sweep(self.core.workflow_ids())

    @rule()
    def delete(self) -> None:
        if self.exists:
            dropped = self.core.delete_workflow(WF).dropped_messages
            assert dropped >= sum(self._size_after_purge(a) for a in self.queues)
        else:
            with pytest.raises(NotFoundError):
                self.core.delete_workflow(WF)
        self.exists = False
        self.queues.clear()

    @invariant()
    def agents_and_counters_agree(self) -> None:
        assert self.core.workflow_exists(WF) == self.exists
        if self.exists:
            status = self.core.status(WF)
            assert list(status.agents) == list(self.queues)
            for agent, q in status.queues.items():
                # Lazy purging may keep expired entries counted for a while; live ones are always counted.
                assert q.queued + q.in_flight >= self._size_after_purge(agent)
        self.core.check_invariants()


TestQueueModel = QueueModelMachine.TestCase
TestQueueModel.settings = settings(
    max_examples=150, stateful_step_count=60, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
