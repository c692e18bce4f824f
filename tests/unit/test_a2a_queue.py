"""Table tests of the pure queue logic (``a2a_service._stores._queue.QueueCore``): no asyncio, injected clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from a2a_service import (
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    QueueCore,
    QueueFullError,
    SendRequest,
    Settings,
    TooManyAgentsError,
    TooManyWorkflowsError,
)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**overrides: object) -> tuple[QueueCore, FakeClock]:
    clock = FakeClock()
    counter = itertools.count(1)
    settings = replace(Settings(), **overrides).validate()  # type: ignore[arg-type]
    return QueueCore(settings, clock=clock, new_id=lambda: f"m{next(counter)}"), clock


def send(
    core: QueueCore, target: str = "b", *, source: str = "a", wf: str = "wf", payload: bytes = b"{}", ttl=None
) -> str:
    return core.send(SendRequest(wf, source, target, "data", payload, ttl)).message_id


def ids(deliveries: list) -> list[str]:
    return [d.message.message_id for d in deliveries]


def test_fifo_per_queue_and_batches():
    core, _ = make()
    sent = [send(core, payload=f'{{"n":{i}}}'.encode()) for i in range(5)]
    assert ids(core.receive("wf", "b", 2)) == sent[:2]
    assert ids(core.receive("wf", "b", 10)) == sent[2:]
    assert core.receive("wf", "b", 10) == []
    core.check_invariants()


def test_at_most_once_receive_removes_and_counts():
    core, _ = make()
    send(core)
    [delivery] = core.receive("wf", "b", 10)
    assert delivery.delivery_count == 1 and delivery.lease_expires_at is None
    assert core.receive("wf", "b", 10) == []
    st = core.status("wf")
    assert (st.messages.sent, st.messages.delivered, st.queued_messages) == (1, 1, 0)


def test_delivered_message_carries_what_was_sent():
    core, clock = make()
    message_id = core.send(SendRequest("wf", "a", "b", "task.result", b'{"x":[1,2]}', 60.0)).message_id
    [d] = core.receive("wf", "b", 1)
    m = d.message
    assert (m.message_id, m.workflow_id, m.source_agent, m.target_agent, m.message_type) == (
        message_id, "wf", "a", "b", "task.result",
    )  # fmt: skip
    assert m.json() == {"x": [1, 2]}
    assert (m.created_at, m.expires_at) == (clock.now, clock.now + 60.0)


@pytest.mark.parametrize(
    ("ttl", "wait", "delivered"),
    [
        (10.0, 9.999, True),
        (10.0, 10.0, False),  # expiry is inclusive: at expires_at the message is gone
        (10.0, 11.0, False),
        (None, 299.0, True),  # default TTL 300 s
        (None, 300.0, False),
    ],
)
def test_ttl_expiry_is_never_delivered_and_is_counted(ttl, wait, delivered):
    core, clock = make()
    send(core, ttl=ttl)
    clock.advance(wait)
    out = core.receive("wf", "b", 10)
    assert bool(out) is delivered
    st = core.status("wf")
    assert st.messages.expired == (0 if delivered else 1)
    assert core.stats().messages.expired == st.messages.expired
    core.check_invariants()


def test_expired_messages_in_the_middle_are_skipped():
    core, clock = make()
    keep1 = send(core, ttl=100)
    send(core, ttl=5)
    keep2 = send(core, ttl=100)
    clock.advance(10)
    assert ids(core.receive("wf", "b", 10)) == [keep1, keep2]
    assert core.status("wf").messages.expired == 1


def test_sweep_expires_without_a_receive():
    core, clock = make()
    send(core, ttl=5)
    send(core, ttl=50)
    clock.advance(6)
    report = core.sweep(core.workflow_ids())
    assert report.expired_messages == 1
    assert core.status("wf").queued_messages == 1
    core.check_invariants()


def test_full_queue_refuses_with_queue_full_and_counts():
    core, _ = make(max_message_queue_size=2)
    send(core)
    send(core)
    with pytest.raises(QueueFullError) as err:
        send(core)
    assert err.value.http_status == 429 and err.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert err.value.param == "target_agent" and err.value.code == "queue_full"
    assert core.stats().rejected_by_code == {"queue_full": 1}
    assert core.status("wf").messages.rejected == 1
    # Another agent's queue is independent.
    send(core, "c")
    # Receiving frees room.
    core.receive("wf", "b", 1)
    send(core)
    core.check_invariants()


def test_full_queue_of_expired_messages_makes_room_on_send():
    core, clock = make(max_message_queue_size=2)
    send(core, ttl=1)
    send(core, ttl=1)
    clock.advance(2)
    send(core)  # purges the two expired messages instead of refusing
    assert core.status("wf").messages.expired == 2
    assert core.status("wf").queued_messages == 1


def test_leased_messages_count_against_the_queue_size():
    core, _ = make(max_message_queue_size=1)
    send(core)
    core.receive("wf", "b", 1, visibility_timeout=30)
    with pytest.raises(QueueFullError):
        send(core)


def test_payload_over_size_limit_is_message_too_large():
    core, _ = make(max_message_size=10)
    send(core, payload=b'"123456"')  # 8 bytes
    with pytest.raises(MessageTooLargeError) as err:
        send(core, payload=b'"123456789"')  # 11 bytes
    assert err.value.http_status == 413 and err.value.param == "payload"
    assert core.stats().rejected_by_code == {"message_too_large": 1}


def test_lease_ack_and_redelivery_after_visibility_timeout():
    core, clock = make()
    first = send(core)
    second = send(core)
    [d1, _d2] = core.receive("wf", "b", 10, visibility_timeout=30)
    assert (d1.delivery_count, d1.lease_expires_at) == (1, clock.now + 30)
    assert core.receive("wf", "b", 10, visibility_timeout=30) == []  # leased: invisible
    assert core.status("wf").in_flight_messages == 2
    assert core.ack("wf", "b", [first]).acked == (first,)
    clock.advance(30)
    [again] = core.receive("wf", "b", 10, visibility_timeout=30)
    assert again.message.message_id == second and again.delivery_count == 2
    st = core.status("wf").messages
    assert (st.redelivered, st.acked, st.delivered) == (1, 1, 3)
    core.check_invariants()


def test_redelivered_messages_keep_fifo_order_before_newer_ones():
    core, clock = make()
    a = send(core)
    b = send(core)
    core.receive("wf", "b", 1, visibility_timeout=10)  # leases a
    core.receive("wf", "b", 1, visibility_timeout=5)  # leases b, shorter lease
    c = send(core)
    clock.advance(11)
    assert ids(core.receive("wf", "b", 10)) == [a, b, c]
    core.check_invariants()


@pytest.mark.parametrize(
    ("action", "acked"),
    [
        ("leased", True),
        ("lease_expired_not_yet_redelivered", True),  # a late ack still prevents the redelivery
        ("never_delivered", False),
        ("unknown_id", False),
    ],
)
def test_ack_table(action, acked):
    core, clock = make()
    message_id = send(core)
    if action in ("leased", "lease_expired_not_yet_redelivered"):
        core.receive("wf", "b", 1, visibility_timeout=5)
    if action == "lease_expired_not_yet_redelivered":
        clock.advance(6)
        core.requeue_expired_leases("wf", "b")
    target = "nope" if action == "unknown_id" else message_id
    result = core.ack("wf", "b", [target])
    assert (result.acked == (target,)) is acked
    assert (result.not_found == (target,)) is not acked
    if acked:
        clock.advance(100)
        assert core.receive("wf", "b", 10) == []
    core.check_invariants()


def test_ack_of_unknown_workflow_is_not_found():
    core, _ = make()
    with pytest.raises(NotFoundError):
        core.ack("nope", "b", ["m1"])


def test_message_expiring_while_leased_is_not_redelivered():
    core, clock = make()
    send(core, ttl=10)
    core.receive("wf", "b", 1, visibility_timeout=30)
    clock.advance(31)
    assert core.receive("wf", "b", 1) == []
    assert core.status("wf").messages.expired == 1


def test_broadcast_reaches_every_known_agent_but_the_sender():
    core, _ = make()
    core.receive("wf", "planner", 1)  # known by polling
    send(core, "coder")  # a and coder become known
    result = core.send(SendRequest("wf", "a", "*", "data", b"{}"))
    assert sorted(result.delivered_to) == ["coder", "planner"]
    assert core.receive("wf", "a", 10) == []  # the sender does not get its own broadcast
    [p] = core.receive("wf", "planner", 10)
    assert p.message.target_agent == "*"
    assert len(core.receive("wf", "coder", 10)) == 2
    assert core.status("wf").messages.sent == 3  # per recipient queue


def test_broadcast_with_no_other_agents_delivers_to_nobody():
    core, _ = make()
    result = core.send(SendRequest("wf", "alone", "*", "data", b"{}"))
    assert result.delivered_to == ()


def test_broadcast_is_all_or_nothing_when_a_queue_is_full():
    core, _ = make(max_message_queue_size=1)
    send(core, "b")
    core.receive("wf", "c", 1)
    with pytest.raises(QueueFullError):
        core.send(SendRequest("wf", "a", "*", "data", b"{}"))
    assert core.receive("wf", "c", 10) == []
    core.check_invariants()


def test_workflows_are_isolated():
    core, _ = make()
    send(core, "b", wf="wf-a")
    assert core.receive("wf-b", "b", 10) == []
    assert len(core.receive("wf-a", "b", 10)) == 1
    assert core.status("wf-b").messages.delivered == 0


def test_max_workflows_and_max_agents():
    core, _ = make(max_workflows=2, max_agents_per_workflow=3)
    send(core, wf="w1")
    send(core, wf="w2")
    with pytest.raises(TooManyWorkflowsError):
        send(core, wf="w3")
    with pytest.raises(TooManyWorkflowsError):
        core.receive("w3", "b", 1)
    core.delete_workflow("w1")
    send(core, wf="w3")
    send(core, "c", wf="w3")  # a, b, c
    with pytest.raises(TooManyAgentsError) as err:
        send(core, "d", wf="w3")
    assert err.value.http_status == 429 and err.value.code == "too_many_agents"
    assert core.status("w3").active_agents == 3


def test_batch_bytes_limit_always_returns_the_first_message():
    core, _ = make(max_batch_bytes=10)
    big = send(core, payload=b'"' + b"x" * 20 + b'"')
    small1 = send(core, payload=b"1")
    small2 = send(core, payload=b"2")
    assert ids(core.receive("wf", "b", 10)) == [big]
    assert ids(core.receive("wf", "b", 10)) == [small1, small2]


def test_restore_puts_undelivered_messages_back_in_order():
    core, _ = make()
    sent = [send(core) for _ in range(3)]
    taken = core.receive("wf", "b", 2)
    core.restore("wf", "b", taken)
    again = core.receive("wf", "b", 10)
    assert ids(again) == sent
    assert [d.delivery_count for d in again] == [1, 1, 1]
    assert core.status("wf").messages.delivered == 3
    core.check_invariants()


def test_restore_releases_leases():
    core, _ = make()
    sent = send(core)
    taken = core.receive("wf", "b", 1, visibility_timeout=30)
    core.restore("wf", "b", taken)
    assert core.status("wf").in_flight_messages == 0
    assert ids(core.receive("wf", "b", 1)) == [sent]


def test_delete_workflow_drops_messages_and_stats():
    core, _ = make()
    send(core)
    send(core)
    core.receive("wf", "b", 1, visibility_timeout=30)
    assert core.delete_workflow("wf").dropped_messages == 2
    with pytest.raises(NotFoundError) as err:
        core.status("wf")
    assert err.value.http_status == 404 and err.value.param == "workflow_id"
    stats = core.stats()
    assert (stats.messages.dropped, stats.active_workflows, stats.workflows_deleted) == (2, 0, 1)
    with pytest.raises(NotFoundError):
        core.delete_workflow("wf")
    core.check_invariants()


def test_idle_workflows_are_removed_by_the_sweep():
    core, clock = make(workflow_ttl=100)
    send(core, wf="idle")
    send(core, wf="busy")
    clock.advance(60)
    core.receive("busy", "b", 1)  # activity
    clock.advance(40)
    report = core.sweep(core.workflow_ids())
    assert report.workflows_expired == ("idle",)
    assert core.workflow_ids() == ["busy"]
    assert core.stats().messages.dropped == 1
    core.check_invariants()


def test_sweep_reports_queues_whose_leases_expired():
    core, clock = make()
    send(core)
    core.receive("wf", "b", 1, visibility_timeout=5)
    assert core.sweep(["wf"]).ready_queues == ()
    clock.advance(5)
    report = core.sweep(["wf"])
    assert report.ready_queues == (("wf", "b"),) and report.redelivered == 1
    assert core.has_ready("wf", "b")


def test_next_lease_deadline_skips_acked_leases():
    core, clock = make()
    first = send(core)
    send(core)
    core.receive("wf", "b", 1, visibility_timeout=5)
    core.receive("wf", "b", 1, visibility_timeout=9)
    assert core.next_lease_deadline("wf", "b") == clock.now + 5
    core.ack("wf", "b", [first])
    assert core.next_lease_deadline("wf", "b") == clock.now + 9


@pytest.mark.parametrize(
    ("field", "request_", "param"),
    [
        ("workflow_id", SendRequest("", "a", "b", "t", b"{}"), "workflow_id"),
        ("workflow_id", SendRequest("a/b", "a", "b", "t", b"{}"), "workflow_id"),
        ("source_agent", SendRequest("wf", "*", "b", "t", b"{}"), "source_agent"),
        ("source_agent", SendRequest("wf", "x" * 257, "b", "t", b"{}"), "source_agent"),
        ("target_agent", SendRequest("wf", "a", "b c", "t", b"{}"), "target_agent"),
        ("target_agent", SendRequest("wf", "a", "..", "t", b"{}"), "target_agent"),
        ("message_type", SendRequest("wf", "a", "b", "", b"{}"), "message_type"),
        ("ttl", SendRequest("wf", "a", "b", "t", b"{}", 0.0), "ttl"),
        ("ttl", SendRequest("wf", "a", "b", "t", b"{}", float("nan")), "ttl"),
        ("ttl", SendRequest("wf", "a", "b", "t", b"{}", 10**9), "ttl"),
    ],
)
def test_send_validation_names_the_field(field, request_, param):
    core, _ = make()
    with pytest.raises(InvalidRequestError) as err:
        core.send(request_)
    assert err.value.param == param and err.value.http_status == 422, field
    assert core.workflow_ids() == []  # an invalid send leaves no workflow behind


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (("wf", "b", 0), "max_messages"),
        (("wf", "b", 1001), "max_messages"),
        (("wf", "*", 1), "agent_id"),
        (("bad id", "b", 1), "workflow_id"),
        (("wf", "b", 1, 0.0), "visibility_timeout"),
    ],
)
def test_receive_validation_names_the_field(args, param):
    core, _ = make()
    with pytest.raises(InvalidRequestError) as err:
        core.receive(*args)
    assert err.value.param == param


def test_stats_aggregate_across_workflows():
    core, _ = make()
    send(core, wf="w1")
    send(core, wf="w2")
    send(core, "c", wf="w2")
    core.receive("w2", "b", 1, visibility_timeout=10)
    stats = core.stats()
    assert (stats.active_workflows, stats.queues, stats.queued_messages, stats.in_flight_messages) == (2, 5, 2, 1)
    assert (stats.messages.sent, stats.messages.delivered, stats.workflows_created) == (3, 1, 2)
