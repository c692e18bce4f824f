"""What the Redis store sends to its Lua scripts and reads back: pure functions, no I/O.

Message bodies are ``"created|expires|source|target|type|payload"`` (ids never contain ``|``); replies are the
scripts' arrays (see ``_redis_lua``). Statistics come back as flat Redis hashes and are turned into the same
``WorkflowStatus`` / ``SystemStats`` values as the memory store's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._types import (
    Delivery,
    Message,
    MessageCounters,
    QueueStatus,
    RecordKind,
    RequestRecord,
    SystemStats,
    WorkflowStatus,
    ratio,
)
from ..config import Settings
from ..errors import A2AError, NotFoundError, QueueFullError, TooManyAgentsError, TooManyWorkflowsError
from ._checks import check_record
from ._redis_lua import RECORD_FIELDS


def encode_body(m: Message) -> bytes:
    head = f"{m.created_at!r}|{m.expires_at!r}|{m.source_agent}|{m.target_agent}|{m.message_type}|"
    return head.encode() + m.payload


def release_args(deliveries: Sequence[Delivery]) -> list[Any]:
    """The ``release`` script's per-message arguments."""
    args: list[Any] = []
    for d in deliveries:
        m = d.message
        args += [m.message_id, d.delivery_count, d.sequence, repr(m.expires_at), len(m.payload), encode_body(m)]
    return args


def decode_deliveries(res: Sequence[Any], workflow_id: str, lease_deadline: float | None) -> list[Delivery]:
    """The messages of a ``receive`` reply (``[ok, next_lease, id, count, seq, body, ...]``)."""
    out: list[Delivery] = []
    for i in range(2, len(res), 4):
        message_id, count, seq, body = res[i : i + 4]
        created, expires, source, target, message_type, payload = body.split(b"|", 5)
        message = Message(
            message_id=message_id.decode(),
            workflow_id=workflow_id,
            source_agent=source.decode(),
            target_agent=target.decode(),
            message_type=message_type.decode(),
            payload=payload,
            created_at=float(created),
            expires_at=float(expires),
        )
        out.append(Delivery(message, int(count), lease_deadline, int(seq)))
    return out


def flat_hash(items: Sequence[bytes]) -> dict[str, bytes]:
    return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}


def decode_status(workflow_id: str, res: Sequence[Any]) -> WorkflowStatus:
    """A ``status`` reply: ``[workflow hash, agents, queue sizes (pending, leased per agent)]``."""
    h = flat_hash(res[0])
    agents = tuple(a.decode() for a in res[1])
    sizes = res[2]

    def n(field: str) -> int:
        return int(h.get(field, 0))

    total = n("total_requests")
    pending, leased = n("pending"), n("leased")
    instance = h.get("assigned_instance")
    return WorkflowStatus(
        workflow_id=workflow_id,
        active_agents=len(agents),
        agents=agents,
        total_requests=total,
        affinity_hits=n("affinity_hits"),
        affinity_hit_rate=ratio(n("affinity_hits"), total),
        failovers=n("failovers"),
        completed_requests=n("completed_requests"),
        failed_requests=n("failed_requests"),
        cache_hits=n("cache_hits"),
        cache_hit_rate=ratio(n("cache_hits"), total),
        cached_token_rate=ratio(n("cached_tokens"), n("prompt_tokens")),
        prompt_tokens=n("prompt_tokens"),
        cached_tokens=n("cached_tokens"),
        avg_routing_latency_seconds=float(h.get("latency_sum", 0.0)) / total if total else 0.0,
        assigned_instance=instance.decode() if instance is not None else None,
        model_instances={k[len("model:"):]: value.decode() for k, value in h.items() if k.startswith("model:")},
        identity_source=h["identity_source"].decode() if "identity_source" in h else "",
        created_at=float(h["created_at"]),
        last_updated=float(h["last_updated"]),
        queued_messages=pending - leased,
        in_flight_messages=leased,
        queues={
            a: QueueStatus(int(sizes[2 * i]) - int(sizes[2 * i + 1]), int(sizes[2 * i + 1]))
            for i, a in enumerate(agents)
        },
        messages=MessageCounters(
            n("sent"), n("delivered"), n("acked"), n("redelivered"), n("expired"), n("rejected"), n("dropped")
        ),
    )


def decode_stats(res: Sequence[Any], now: float, max_workflows: int) -> SystemStats:
    """A ``stats`` reply: ``[stats hash, rejected-by-code hash, active workflows]``."""
    h = flat_hash(res[0])
    rejected = {code: int(count) for code, count in flat_hash(res[1]).items()}

    def n(field: str) -> int:
        return int(h.get(field, 0))

    total, prompt = n("total_requests"), n("prompt_tokens")
    return SystemStats(
        active_workflows=int(res[2]),
        max_workflows=max_workflows,
        workflows_created=n("workflows_created"),
        workflows_expired=n("workflows_expired"),
        workflows_deleted=n("workflows_deleted"),
        total_requests=total,
        affinity_hits=n("affinity_hits"),
        affinity_hit_rate=ratio(n("affinity_hits"), total),
        completed_requests=n("completed_requests"),
        cache_hits=n("cache_hits"),
        cache_hit_rate=ratio(n("cache_hits"), total),
        cached_token_rate=ratio(n("cached_tokens"), prompt),
        prompt_tokens=prompt,
        cached_tokens=n("cached_tokens"),
        records_rejected=n("records_rejected"),
        queues=n("queues"),
        queued_messages=n("pending") - n("leased"),
        in_flight_messages=n("leased"),
        messages=MessageCounters(
            n("sent"),
            n("delivered"),
            n("acked"),
            n("redelivered"),
            n("expired"),
            sum(rejected.values()),
            n("dropped"),
        ),
        rejected_by_code=rejected,
        uptime_seconds=max(0.0, now - float(h.get("started_at", now))),
    )


class _Aggregate:
    """The router records of one (workflow, agent) in one batch, summed."""

    __slots__ = (
        "affinity_hits", "cache_hits", "cached_tokens", "completed", "failed", "failovers", "identity_source",
        "instance", "instance_index", "latency", "prompt_tokens", "records", "routed",
    )  # fmt: skip

    def __init__(self) -> None:
        self.records = self.routed = self.affinity_hits = self.failovers = 0
        self.completed = self.failed = self.prompt_tokens = self.cached_tokens = self.cache_hits = 0
        self.latency = 0.0
        self.instance_index = -1
        self.instance = ""
        self.identity_source = ""  # of the record at instance_index

    def add(self, rec: RequestRecord, index: int) -> None:
        self.records += 1
        if rec.kind is RecordKind.ROUTED:
            self.routed += 1
            self.affinity_hits += rec.affinity_hit
            self.failovers += rec.failover
            self.latency += rec.routing_latency_seconds
            if rec.instance:
                self.instance_index, self.instance = index, rec.instance
                self.identity_source = rec.identity_source
        else:
            self.completed += 1
            self.failed += rec.status_code >= 400
            self.prompt_tokens += rec.prompt_tokens
            self.cached_tokens += rec.cached_tokens
            self.cache_hits += rec.cached_tokens > 0


def record_args(records: Sequence[RequestRecord]) -> tuple[int, list[Any]]:
    """Validate router records and sum them per (workflow, agent, model), in order of first appearance (so limits
    refuse the same records as in the memory store): the number of invalid records and the ``record``
    script's per-group arguments (``RECORD_FIELDS`` each)."""
    groups: dict[tuple[str, str, str], _Aggregate] = {}
    invalid = 0
    for index, rec in enumerate(records):
        try:
            check_record(rec)
        except A2AError:
            invalid += 1
            continue
        model = rec.model if rec.kind is RecordKind.ROUTED else ""
        agg = groups.get((rec.workflow_id, rec.agent_id, model))
        if agg is None:
            agg = groups[(rec.workflow_id, rec.agent_id, model)] = _Aggregate()
        agg.add(rec, index)
    args: list[Any] = []
    for (workflow_id, agent_id, model), g in groups.items():
        args += [
            workflow_id, agent_id, g.records, g.routed, g.affinity_hits, g.failovers, repr(g.latency),
            g.completed, g.failed, g.prompt_tokens, g.cached_tokens, g.cache_hits, g.instance_index, g.instance,
            model, g.identity_source,
        ]  # fmt: skip
    assert len(args) == RECORD_FIELDS * len(groups)
    return invalid, args


def not_found(workflow_id: str) -> NotFoundError:
    return NotFoundError(f"workflow {workflow_id!r} not found", param="workflow_id", code="workflow_not_found")


def refusal(res: Sequence[bytes], workflow_id: str, s: Settings) -> A2AError:
    """The error of a script's ``["E", code, detail]`` reply (the same errors the memory store raises)."""
    code, detail = res[1].decode(), res[2].decode()
    if code == "too_many_workflows":
        return TooManyWorkflowsError(f"the service already holds {s.max_workflows} workflows", param="workflow_id")
    if code == "too_many_agents":
        return TooManyAgentsError(
            f"workflow {workflow_id!r} already has {detail} agents (limit {s.max_agents_per_workflow})",
            param="agent_id",
        )
    if code == "queue_full":
        return QueueFullError(
            f"queue of agent {detail!r} is full ({s.max_message_queue_size} messages)", param="target_agent"
        )
    if code == "workflow_not_found":
        return not_found(workflow_id)
    return A2AError(f"unexpected store answer {code!r}")


def describe(exc: BaseException) -> str:
    text = str(exc) or "no answer in time"
    return f"{type(exc).__name__}: {text[:200]}"
