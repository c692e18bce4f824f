"""Workflow identity from the keys clients already send, in one documented precedence.

| # | source (label)        | where                                             | workflow id             |
|---|-----------------------|---------------------------------------------------|-------------------------|
| 1 | `workflow_metadata`   | the body's ``workflow_metadata.workflow_id``      | as sent                 |
| 2 | `workflow_header`     | the ``x-workflow-id`` header                      | as sent                 |
| 3 | `prompt_cache_key`    | the body's ``prompt_cache_key`` (chat, completions, responses) | ``pck:<key>``   |
| 4 | `previous_response`   | the workflow of the response ``previous_response_id`` names   | the chain's     |
| 5 | `session_header`      | a session header (``x-session-id`` by default)    | ``session:<value>``     |
| 6 | `trace_id`            | the W3C ``traceparent`` trace id (opt-in)         | ``trace:<trace id>``    |
| - | `none`                | nothing: routed by prefix and load                |                         |

The first source present wins as a whole; each has a flag (``--identity-*``). Derived ids are prefixed by their
source so that equal keys of different sources never meet, and a key outside the A2A id charset (or too long
once prefixed) is replaced by a hash of itself: the id stays a valid A2A workflow id. A response chain that
starts without any key gets ``resp:<first response id>`` as its workflow (the observer records it).

Independently of the identity, a request whose ``previous_response_id`` is known is *pinned* to the instance
that holds that response (the only one that can answer): see ``Director.route``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from a2a_service.tracecontext import parse_traceparent
from extproc.config import ID_CHARSET, MAX_ID_LENGTH
from extproc.metadata import WorkflowMetadata


class IdentitySource(StrEnum):
    WORKFLOW_METADATA = "workflow_metadata"
    WORKFLOW_HEADER = "workflow_header"
    PROMPT_CACHE_KEY = "prompt_cache_key"
    PREVIOUS_RESPONSE = "previous_response"
    SESSION_HEADER = "session_header"
    TRACE_ID = "trace_id"
    NONE = "none"


SOURCES = tuple(IdentitySource)
_ID = re.compile(f"[{ID_CHARSET}]+")


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """One switch per source (``workflow_metadata`` is always on: it is this router's own protocol)."""

    workflow_header: bool = True
    prompt_cache_key: bool = True
    previous_response: bool = True
    session_header: str | None = "x-session-id"  # None: off
    trace_id: bool = False


def derived_id(prefix: str, key: str) -> str:
    """``prefix:key`` when that is a valid A2A id, else ``prefix:h<blake2b-128 of key>``."""
    candidate = f"{prefix}:{key}"
    if len(candidate) <= MAX_ID_LENGTH and _ID.fullmatch(key) is not None:
        return candidate
    return f"{prefix}:h{hashlib.blake2b(key.encode('utf-8', 'surrogatepass'), digest_size=16).hexdigest()}"


def chain_workflow(response_id: str) -> str:
    """The workflow of a response chain that began without any other key."""
    return derived_id("resp", response_id)


def resolve(
    config: IdentityConfig,
    metadata: WorkflowMetadata | None,
    from_body: bool,
    prompt_cache_key: str | None,
    chain_workflow_id: str | None,
    session: str | None,
    traceparent: str | None,
) -> tuple[WorkflowMetadata | None, IdentitySource]:
    """The request's workflow and the source it came from. ``metadata``/``from_body``: what the parser found
    (the body's ``workflow_metadata``, else the ``x-workflow-id`` header); a body object with ``workflow_id:
    null`` (``from_body`` and no metadata) means no workflow, and nothing else fills in."""
    if from_body:
        return metadata, IdentitySource.WORKFLOW_METADATA if metadata is not None else IdentitySource.NONE
    if metadata is not None and config.workflow_header:
        return metadata, IdentitySource.WORKFLOW_HEADER
    if prompt_cache_key and config.prompt_cache_key:
        return WorkflowMetadata(derived_id("pck", prompt_cache_key)), IdentitySource.PROMPT_CACHE_KEY
    if chain_workflow_id and config.previous_response:
        return WorkflowMetadata(chain_workflow_id), IdentitySource.PREVIOUS_RESPONSE
    if session and config.session_header is not None:
        value = session.strip()
        if value:
            return WorkflowMetadata(derived_id("session", value)), IdentitySource.SESSION_HEADER
    if traceparent and config.trace_id:
        trace = parse_traceparent(traceparent)  # None for an invalid or all-zero trace id (W3C)
        if trace is not None:
            return WorkflowMetadata(f"trace:{trace.trace_id}"), IdentitySource.TRACE_ID
    return None, IdentitySource.NONE


class IdentityMetrics:
    """``extproc_identity_source_total{source}``: requests routed per identity source (pre-bound children)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        counter = Counter("extproc_identity_source", "Routed requests by the source of their workflow identity "
                          "(docs/clients.md)", ["source"], registry=registry)
        self.by_source = {source: counter.labels(source.value) for source in SOURCES}

    def count(self, source: IdentitySource) -> None:
        self.by_source[source].inc()
