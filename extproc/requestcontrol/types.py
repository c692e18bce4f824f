"""Plain data the handler and the director exchange, and the decision the reporter records."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.metadata import WorkflowMetadata


@dataclass(frozen=True, slots=True)
class Decision:
    instance: str
    workflow_id: str | None
    affinity_hit: bool  # the request went to the instance its workflow already had
    new_workflow: bool
    failover: bool  # the workflow's instance was down and it moved
    rebalanced: bool = False  # the workflow's instance was over the load bound and it moved
    prefix_blocks: int = 0  # no-metadata requests: leading blocks the chosen instance was sent before
    previous: str | None = None  # failover/rebalance: the instance the workflow moved away from
    prefill_tokens: int = 0  # the prompt's tokens the chosen instance must compute (estimated)
    # The workflow table's key when it is not the workflow id: one entry per (workflow, model), so a workflow's
    # agents on different models each keep their own instance (requestcontrol/fleet.affinity_key).
    affinity_key: str | None = None
    identity_source: str = ""  # where the workflow's identity came from (requestcontrol/identity.py), reported

    @property
    def reason(self) -> str:
        """The label of ``extproc_routing_decisions_total``."""
        if self.workflow_id is None:
            return "prefix" if self.prefix_blocks else "no_metadata"
        if self.affinity_hit:
            return "affinity"
        if self.failover:
            return "failover"
        return "rebalance" if self.rebalanced else "new_workflow"


@dataclass(slots=True)
class Request:
    """One request on the router stream, from its headers to its route."""

    path: str
    request_id: str
    traceparent: str | None  # the client's, parsed only when a log line needs its ids
    header_metadata: WorkflowMetadata | None
    instance: str | None = None
    route_id: str | None = None
    session: str | None = None  # the session header's value (an identity source; requestcontrol/identity.py)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Where the request goes and what changes on its way (the handler turns it into an ext_proc answer)."""

    instance: str
    headers: tuple[tuple[str, str], ...]  # request headers to set (the cluster header first)
    body: bytes | None = None  # the body to forward instead (workflow_metadata stripped); None = unchanged
    destination: str | None = None  # endpoint-picker mode: the instance's ip:port


@dataclass(slots=True)
class Response:
    """What the observer stream saw of one request's response."""

    route_id: str | None
    instance: str
    workflow_id: str | None
    agent_id: str | None
    request_id: str
    status: int = 0
    served_by: str | None = None  # the cluster whose host answered (differs after a retry elsewhere)
    started: float = 0.0  # the director's clock when the request went upstream (its observed wall duration)
    path: str = ""  # the request's path (a Responses-API response's id is learned: datastore/response_ids.py)
    response_id: str | None = None  # once learned
    body_read: bool = True  # False: a stream whose body the observer does not see (its end: Director.router_ended)
    done: bool = False  # completed (Director.completed ran)
    ended_at: float | None = None  # an unread stream: when its router stream (its HTTP stream) ended


@dataclass(frozen=True, slots=True)
class LoggedResponse:
    """One response as Envoy's access log reported it (access-log mode: the requests the observer did not see)."""

    route_id: str
    instance: str  # the cluster the router picked
    workflow_id: str | None
    agent_id: str | None
    request_id: str
    path: str
    status: int  # 0: no response (the client went away, or the stream was cut before its headers)
    served_by: str | None  # the cluster whose host answered
    wall_s: float  # from the request's start to its response's last byte
