"""The director: the steps of one request, on plain data.

Router stream: ``start`` (headers → a :class:`Request`, or a ``BadRequest``) → ``route`` (body → parse once →
prefix blocks / external KV lookup → workflow table → scheduler → cross-replica consensus → in-flight count →
:class:`RoutePlan`) → accounting (metrics, A2A report, debug log). Observer stream: ``observed`` (the route id
read back) → ``completed`` (in-flight count, passive health, usage metrics, A2A report).

Workflow affinity is state here (the workflow table: which instance a workflow has) and rules in the scheduler
(the ``workflow-affinity`` filter and scorer decide whether the workflow stays there).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from a2a_service.tracecontext import parse_traceparent
from extproc.config import (
    AGENT_ID_HEADER,
    LLM_PATHS,
    MAX_RETRIES_HEADER,
    OBSERVE_BODY_HEADER,
    OBSERVER_CLOSE_DELAY_S,
    ROUTE_ID_HEADER,
    STREAM_IDLE_HEADER,
    TRACEPARENT_HEADER,
    WORKFLOW_ID_HEADER,
    Settings,
    destination_endpoints,
)
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.inflight import InFlight
from extproc.datastore.prefix_index import CHARS_PER_TOKEN, TOKENS_PER_BLOCK, PrefixIndex, block_hashes
from extproc.datastore.response_ids import ResponseIds, SharedResponseIds, response_id_from_chunk, whole_response
from extproc.datastore.shared_assignments import RedisAssignments
from extproc.datastore.workflows import WorkflowTable
from extproc.errors import BadRequest, PreviousResponseUnavailable
from extproc.metadata import (
    RESPONSES_PATH,
    RoutingInput,
    WorkflowMetadata,
    metadata_from_headers,
    parse_llm_body,
    with_field,
)
from extproc.metrics import Metrics
from extproc.reporting import Reporter
from extproc.requestcontrol.consensus import Consensus
from extproc.requestcontrol.deadline import Deadlines
from extproc.requestcontrol.fleet import MODELS_PATH, adapter_blocks, affinity_key, check_model, models_answer
from extproc.requestcontrol.identity import IdentityConfig, IdentityMetrics, chain_workflow, resolve
from extproc.requestcontrol.passive_health import PassiveHealth
from extproc.requestcontrol.priority import decayed, service, vllm_priority
from extproc.requestcontrol.stream_observation import MAX_PENDING, Estimate, StreamObservation, estimated_usage
from extproc.requestcontrol.types import Decision, LoggedResponse, Request, Response, RoutePlan
from extproc.scheduling.framework import Scheduler, SchedulingRequest
from extproc.usage import Usage, extract_usage

log = logging.getLogger("extproc")


class KVIndex(Protocol):
    async def cached_fractions(self, prompt_text: str, messages: list[Any] | None) -> dict[str, float] | None:
        """Per instance, the share of the prompt it holds (None: no answer; the router's own index decides)."""
        ...


class PreciseView(Protocol):
    async def cached_tokens(self, prompt_text: str, messages: list[Any] | None
                            ) -> tuple[int, dict[str, int | None]] | None:
        """``(prompt tokens, {instance: leading tokens it holds, None without a live event stream})`` as the
        backends tokenize and hash them (vLLM's KV events); None when the prompt could not be tokenized."""
        ...


def trace_fields(traceparent: str | None) -> dict[str, str]:
    trace = parse_traceparent(traceparent) if traceparent is not None else None
    return trace.log_fields() if trace is not None else {}


def _bounded_put(entries: OrderedDict[str, Any], key: str, value: Any) -> None:
    entries[key] = value
    if len(entries) > MAX_PENDING:
        entries.popitem(last=False)


class Director:
    def __init__(
        self,
        settings: Settings,
        endpoints: Endpoints,
        workflows: WorkflowTable,
        scheduler: Scheduler,
        inflight: InFlight,
        metrics: Metrics,
        reporter: Reporter,
        *,
        clock: Callable[[], float] = time.monotonic,
        assignments: RedisAssignments | None = None,
        kv_index: KVIndex | None = None,
        prefix_index: PrefixIndex | None = None,
        precise: PreciseView | None = None,
    ) -> None:
        self.precise = precise
        self.endpoints = endpoints
        self.prefix_index = prefix_index
        self.workflows = workflows
        self.scheduler = scheduler
        self.inflight = inflight
        self.metrics = metrics
        self.reporter = reporter
        self.clock = clock
        self.kv_index = kv_index
        self.consensus = Consensus(assignments, workflows, endpoints) if assignments is not None else None
        self.passive_health = PassiveHealth(endpoints)
        self.deadlines = Deadlines.from_settings(settings.deadline_floor, settings.deadline_multiplier,
                                                 settings.deadline_max_tokens, endpoints.instances)
        endpoints.on_publish.append(self.deadlines.learner.scraped)
        endpoints.on_publish.append(self.deadlines.forget)
        self.strip_metadata = not settings.keep_workflow_metadata
        self.priority_scheduling = settings.priority_scheduling
        self.priority_half_life = settings.priority_half_life
        # A plugin that weighs what each instance holds of a workflow's prompt (``needs_prompt``: the cost model,
        # the workflow-affinity filter's cache lead) needs every prompt's text, metadata or not.
        self.prompt_always = precise is not None or any(
            getattr(plugin, "needs_prompt", False) for profile in scheduler.profiles.values()
            for plugin in (*profile.filters, *(weighted.scorer for weighted in profile.scorers)))
        self.cluster_header = settings.cluster_header
        self.prefix_routing = settings.prefix_routing
        self.destinations: dict[str, str] | None = (
            destination_endpoints(settings.backends) if settings.destination_mode == "endpoint" else None)
        # Workflow identity from the keys clients already send (requestcontrol/identity.py), and the stored
        # responses' instances (datastore/response_ids.py; shared through Redis with --store redis://).
        self.identity = IdentityConfig(settings.identity_workflow_header, settings.identity_prompt_cache_key,
                                       settings.identity_previous_response, settings.identity_session_header or None,
                                       settings.identity_trace_id)
        self.identity_metrics = IdentityMetrics(metrics.registry)
        self.response_ids = ResponseIds(settings.response_id_ttl, settings.max_response_ids)
        self.shared_response_ids = (SharedResponseIds(assignments.url, ttl=settings.response_id_ttl,
                                                      prefix=assignments.prefix)
                                    if assignments is not None else None)
        metrics.registry.register(self.response_ids.collector(self.shared_response_ids))
        # Header names each stream reads (the handler extracts only these).
        self.router_headers = frozenset({":path", WORKFLOW_ID_HEADER, AGENT_ID_HEADER, "x-request-id",
                                         TRACEPARENT_HEADER, ":method"} | ({self.identity.session_header}
                                                                if self.identity.session_header else set()))
        self.observer_headers = frozenset({ROUTE_ID_HEADER, settings.cluster_header, WORKFLOW_ID_HEADER,
                                           AGENT_ID_HEADER, "x-request-id", ":path", STREAM_IDLE_HEADER,
                                           OBSERVE_BODY_HEADER})
        # Streams on the stream-idle routes reach the observer without their body unless marked (a sample).
        self.stream_observation = StreamObservation(settings.observe_stream_bodies, metrics.registry)
        # Unread streams between their routing and their end: route id -> the observer's Response once it began
        # (None before), and the route ids whose router stream already ended (their observer had not seen the
        # response headers yet). Both bounded like the estimates (MAX_PENDING).
        self._unread: OrderedDict[str, Response | None] = OrderedDict()
        self._ended_early: OrderedDict[str, float] = OrderedDict()
        # Access-log mode: only marked requests have an observer stream; the others end with their router
        # stream and their status comes from Envoy's access log (``logged``).
        self.access_log = settings.response_observation == "access-log"

    # --- router stream -------------------------------------------------------------------------------------
    def start(self, headers: Mapping[str, str]) -> Request:
        """The request as its headers describe it; raises ``BadRequest`` for invalid workflow headers."""
        request = Request(
            path=headers.get(":path", "").partition("?")[0],
            request_id=headers.get("x-request-id", ""),
            traceparent=headers.get(TRACEPARENT_HEADER),  # never invented here (docs/troubleshooting.md)
            header_metadata=None,
            session=headers.get(self.identity.session_header) if self.identity.session_header else None,
        )
        try:
            request.header_metadata = metadata_from_headers(headers.get(WORKFLOW_ID_HEADER),
                                                            headers.get(AGENT_ID_HEADER))
        except BadRequest as error:
            self.refused(request, error)
            raise
        if request.path == MODELS_PATH and headers.get(":method", "GET") == "GET" and self._models_known():
            raise models_answer(self.endpoints)  # the fleet's union, answered by the gateway (not an error)
        return request

    def _models_known(self) -> bool:
        endpoints = self.endpoints
        return any(endpoints.live(i).models is not None for i in endpoints.candidates())

    def parse(self, request: Request, body: bytes | None) -> RoutingInput:
        """The routing facts of the body (parsed once); raises ``BadRequest`` naming the offending field."""
        if body is None or request.path not in LLM_PATHS:
            return RoutingInput(request.header_metadata)
        try:
            routing = parse_llm_body(body, request.header_metadata, strip_metadata=self.strip_metadata,
                                  prompt_always=self.prompt_always, path=request.path)
            check_model(self.endpoints, routing.model)  # 404 model_not_found: no healthy instance serves it
        except BadRequest as error:
            self.refused(request, error)
            raise
        return routing

    async def route(self, request: Request, routing: RoutingInput, started: float) -> RoutePlan:
        """Choose the instance. Suspends only for an external KV lookup or to agree on a new or moved workflow
        with the other replicas, or to read a response id another replica recorded. Raises
        ``PreviousResponseUnavailable`` when the instance holding the previous response is gone or down."""
        now = self.clock()
        pinned, chain = None, None
        if routing.previous_response_id is not None:
            pinned, chain = await self._previous_response(request, routing.previous_response_id, now)
        metadata, source = resolve(self.identity, routing.metadata, routing.from_body, routing.prompt_cache_key,
                                   chain, request.session, request.traceparent)
        prompt = routing.prompt_text
        blocks = block_hashes(prompt) if self.prefix_routing and prompt else ()
        if blocks and routing.model is not None:  # an adapter's cache is its own (vLLM hashes its name in)
            blocks = adapter_blocks(self.endpoints, routing.model, blocks)
        cached = (await self.kv_index.cached_fractions(prompt, routing.messages)
                  if self.kv_index is not None and prompt else None)
        prompt_tokens = len(prompt) // CHARS_PER_TOKEN
        precise = None
        if self.precise is not None and prompt:
            found = await self.precise.cached_tokens(prompt, routing.messages)
            if found is not None:
                prompt_tokens, precise = found
        decision = self.decide(metadata, now, blocks, cached, prompt_tokens, precise, pinned, model=routing.model,
                               identity_source=source.value)
        if self.consensus is not None and decision.workflow_id is not None and pinned is None:
            decision = await self.consensus.agree(decision, now)
        instance = decision.instance
        request.instance = instance
        route_id = request.route_id = self.inflight.start(instance, now, decision.prefill_tokens)
        headers = [(self.cluster_header, instance), (ROUTE_ID_HEADER, route_id)]
        if pinned is not None:
            headers.append((MAX_RETRIES_HEADER, "0"))
        if decision.workflow_id is not None and metadata is not None:
            # The observer stream (and the backend's logs) learn the workflow from these headers.
            headers.append((WORKFLOW_ID_HEADER, decision.workflow_id))
            if metadata.agent_id is not None:
                headers.append((AGENT_ID_HEADER, metadata.agent_id))
        destination = self.destinations[instance] if self.destinations is not None else None
        body = routing.rewritten_body
        if self.priority_scheduling and routing.raw is not None:
            priority = self._priority(decision, metadata, now)
            body = with_field(body if body is not None else routing.raw, "priority", priority)
        if request.path == RESPONSES_PATH and routing.store and routing.raw is not None:
            body = self._stored_response(routing, body, instance, decision.workflow_id, now)
        if request.path in LLM_PATHS:  # Envoy's per-try timeout (and a stream's idle route) for this request
            deadline_headers = self.deadlines.headers(instance, routing.max_tokens, routing.stream)
            headers += deadline_headers  # shared: never mutated
            if len(deadline_headers) > 1 or self.access_log:  # the observer may not read its body
                self._observe_response(request, route_id, routing, prompt_tokens, decision.prefill_tokens, headers)
        elif self.access_log:
            self._unobserved(route_id)
        plan = RoutePlan(instance, tuple(headers), body, destination)
        self.identity_metrics.count(source)
        self._account(decision, metadata, request, time.perf_counter() - started)
        return plan

    def _observe_response(self, request: Request, route_id: str, routing: RoutingInput, prompt_tokens: int,
                        prefill_tokens: float, headers: list[tuple[str, str]]) -> None:
        """Mark the stream (in access-log mode: any response) for the observer to read (a sample; Responses-API
        responses: they name the response id) and keep the router's estimate of its usage
        (requestcontrol/stream_observation.py)."""
        observation = self.stream_observation
        if request.path == RESPONSES_PATH or observation.read_body():
            headers.append((OBSERVE_BODY_HEADER, "1"))
        else:
            self._unobserved(route_id)
        if prompt_tokens:  # the prompt was read (prefix routing, a tokenizer): its cached share was predicted
            estimate = Estimate(prompt_tokens, max(0, prompt_tokens - round(prefill_tokens)), routing.max_tokens)
        else:  # routed on its metadata alone: the body's length stands in for the prompt's
            estimate = Estimate(len(routing.raw or b"") // CHARS_PER_TOKEN, None, routing.max_tokens)
        observation.expect(route_id, estimate)

    def _unobserved(self, route_id: str) -> None:
        """A request whose body the observer does not read: its end is its router stream's end. In access-log
        mode no observer stream will claim its in-flight entry either, so it is claimed here."""
        _bounded_put(self._unread, route_id, None)
        if self.access_log:
            self.inflight.observe(route_id)

    def _stored_response(self, routing: RoutingInput, body: bytes | None, instance: str, workflow_id: str | None,
                         now: float) -> bytes | None:
        """A Responses request that will be stored: its response id is known before it runs (vLLM's response id
        is the request's ``request_id``, ``ResponsesResponse.from_request``), so a follow-up sent as soon as the
        answer arrives finds its instance here (the observer's learning from the response could come later).
        The router names the request id when the client did not; returns the body to forward."""
        response_id = routing.request_id
        if response_id is None:
            response_id = f"resp_{uuid.uuid4().hex}"
            body = with_field(body if body is not None else routing.raw or b"{}", "request_id", response_id)
        workflow_id = workflow_id or chain_workflow(response_id)
        self.response_ids.learn(response_id, instance, workflow_id, now)
        if self.shared_response_ids is not None:
            self.shared_response_ids.publish(response_id, instance, workflow_id)
        return body

    async def _previous_response(self, request: Request, response_id: str, now: float
                                 ) -> tuple[str | None, str | None]:
        """``(instance holding the previous response, its chain's workflow)``; ``(None, None)`` when unknown here
        and in the shared store (the request is routed by its other sources; the backend answers its own 404)."""
        ids = self.response_ids
        entry = ids.get(response_id, now)
        if entry is not None:
            instance, workflow_id = entry.instance, entry.workflow_id
        else:
            shared = await self.shared_response_ids.lookup(response_id) if self.shared_response_ids else None
            if shared is None:
                ids.unknown += 1
                return None, None
            instance, workflow_id = shared
            ids.learn(response_id, instance, workflow_id, now)
        if instance not in self.endpoints.healthy:
            ids.lost += 1
            error = PreviousResponseUnavailable(response_id, instance, removed=instance not in self.endpoints)
            self.refused(request, error)
            raise error
        ids.pinned += 1
        return instance, workflow_id

    def decide(self, metadata: WorkflowMetadata | None, now: float, blocks: Sequence[int] = (),
               cached_fraction: Mapping[str, float] | None = None, prompt_tokens: int = 0,
               precise: Mapping[str, int | None] | None = None, pinned: str | None = None,
               model: str | None = None, identity_source: str = "") -> Decision:
        """Pick the instance with the scheduler and keep the workflow table and the prefix index in step (pure,
        synchronous). ``prompt_tokens``: the prompt's length (estimated from its text when no tokenizer ran);
        ``precise``: the tokens each instance holds per its KV events (None: no live stream for it); ``pinned``:
        the only instance that can answer (it holds the request's previous response), whatever the load;
        ``identity_source``: where a workflow's identity came from (the A2A workflow status shows it)."""
        index = self.prefix_index
        matched = index.match(blocks) if index is not None and blocks else None
        cached_tokens: dict[str, int] | None = None
        if cached_fraction:
            cached_tokens = {i: round(f * prompt_tokens) for i, f in cached_fraction.items()}
        elif matched is not None:
            cached_tokens = {i: min(prompt_tokens, count * TOKENS_PER_BLOCK) for i, count in matched.items()}
        if precise:  # what the instances report beats any estimate; the estimate stays for the others
            cached_tokens = dict(cached_tokens or {})
            for instance, tokens in precise.items():
                if tokens is not None:
                    cached_tokens[instance] = tokens
            if not cached_fraction and prompt_tokens:
                cached_fraction = {i: min(1.0, t / prompt_tokens) for i, t in cached_tokens.items()}
        workflows = self.workflows
        if metadata is None or not metadata.wants_affinity:
            workflows.expire(now)
            instance = pinned if pinned is not None else self.scheduler.schedule(SchedulingRequest(
                prompt_blocks=blocks, cached_fraction=cached_fraction, prompt_tokens=prompt_tokens,
                cached_tokens=cached_tokens, model=model)).instance
            if cached_fraction:
                prefix = round(cached_fraction.get(instance, 0.0) * len(blocks)) if blocks else int(
                    cached_fraction.get(instance, 0.0) > 0)
            else:
                prefix = matched[instance] if matched is not None else 0
            return Decision(instance, None, False, False, False, prefix_blocks=prefix,
                            prefill_tokens=self._learned(instance, blocks, prompt_tokens, cached_tokens))
        workflow_id = metadata.workflow_id
        key = affinity_key(workflow_id, model)  # one instance per (workflow, model)
        keyed = key if model is not None else None  # Decision.affinity_key
        entry = workflows.get(key, now)
        home = entry.instance if entry is not None and entry.instance in self.endpoints.healthy else None
        # With replicas sharing assignments a replica's prefix index holds only what it routed (and learns its own
        # pick before the replicas agree), so it cannot tell that another instance holds as much: unknown, pinned.
        continues: bool | None = None
        if (home is not None and entry is not None and matched is not None and entry.last_blocks
                and self.consensus is None):
            last = entry.last_blocks
            continues = last <= len(blocks) and blocks[last - 1] == entry.last_hash and matched.get(home, 0) >= last
        instance = pinned if pinned is not None else self.scheduler.schedule(SchedulingRequest(
            workflow_id, home, metadata.workflow_priority, blocks, cached_fraction, prompt_tokens,
            cached_tokens, model=model, continues_on_home=continues)).instance
        prefill = self._learned(instance, blocks, prompt_tokens, cached_tokens)
        if entry is not None and home is not None:
            if instance == home:
                assigned = entry
                decision = Decision(home, workflow_id, True, False, False, affinity_key=keyed,
                                    prefill_tokens=prefill, identity_source=identity_source)
            else:
                assigned = workflows.assign(key, instance, now)
                decision = Decision(instance, workflow_id, False, False, False, rebalanced=True, previous=home,
                                    affinity_key=keyed, prefill_tokens=prefill, identity_source=identity_source)
        else:
            previous = entry.instance if entry is not None else None
            assigned = workflows.assign(key, instance, now)
            decision = Decision(instance, workflow_id, False, previous is None, previous is not None,
                                previous=previous, affinity_key=keyed, prefill_tokens=prefill,
                                identity_source=identity_source)
        assigned.requests += 1
        if blocks:
            assigned.last_blocks, assigned.last_hash = len(blocks), blocks[-1]
        return decision

    def _learned(self, instance: str, blocks: Sequence[int], prompt_tokens: int,
                 cached_tokens: Mapping[str, int] | None) -> int:
        """The chosen instance now holds this prompt (the prefix index learns it); returns the prompt's uncached
        tokens, which queue there as prefill work until its response starts."""
        if self.prefix_index is not None and blocks:
            self.prefix_index.learn(instance, blocks)
        if not prompt_tokens:
            return 0
        cached = cached_tokens.get(instance, 0) if cached_tokens is not None else 0
        return max(0, prompt_tokens - cached)

    def _priority(self, decision: Decision, metadata: WorkflowMetadata | None, now: float) -> int:
        """Least attained service first: a request of a workflow that has had little service runs early."""
        if decision.workflow_id is None or metadata is None:
            return 0  # a request of its own is a program that has had no service yet
        entry = self.workflows.peek(decision.affinity_key or decision.workflow_id)
        if entry is None:
            return 0
        attained = decayed(entry.attained, entry.attained_at, now, self.priority_half_life)
        return vllm_priority(attained, metadata.workflow_priority)

    def refused(self, request: Request, error: BadRequest) -> None:
        """A bad request is answered with its 4xx by the handler; nothing reaches a backend."""
        self.metrics.bad_request(error.code)
        log.info("bad request", extra={"status": error.status, "code": error.code, "param": error.param,
                                       "path": request.path, "request_id": request.request_id,
                                       **trace_fields(request.traceparent)})

    def _account(self, decision: Decision, metadata: WorkflowMetadata | None, request: Request,
                 elapsed: float) -> None:
        metrics = self.metrics
        metrics.routing_latency.observe(elapsed)
        if decision.workflow_id is not None:
            metrics.total_requests.inc()
            self.reporter.routed(request.request_id, decision, metadata, elapsed)
        reason = decision.reason
        metrics.decisions[decision.instance, reason].inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("routed", extra={"instance": decision.instance, "reason": reason,
                                       "workflow_id": decision.workflow_id, "path": request.path,
                                       "routing_us": round(elapsed * 1e6, 1), **trace_fields(request.traceparent)})

    # --- observer stream -----------------------------------------------------------------------------------
    def observed(self, headers: Mapping[str, str]) -> Response:
        """The observer stream of a routed request began (its request headers carry what the router set)."""
        route_id = headers.get(ROUTE_ID_HEADER)
        if route_id is not None:
            self.inflight.observe(route_id)
        response = Response(route_id, headers.get(self.cluster_header) or "", headers.get(WORKFLOW_ID_HEADER),
                            headers.get(AGENT_ID_HEADER), headers.get("x-request-id", ""), started=self.clock(),
                            path=headers.get(":path", "").partition("?")[0],
                            body_read=STREAM_IDLE_HEADER not in headers or OBSERVE_BODY_HEADER in headers)
        if route_id is not None and route_id in self._unread:
            self._unread[route_id] = response
        return response

    def router_ended(self, route_id: str) -> None:
        """A router stream ended, i.e. its HTTP stream did. For a stream whose body the observer does not read
        that is the response's end: complete it now, or when its observer has seen the response headers."""
        if route_id not in self._unread:
            return
        if self.access_log:  # its status comes with its access log entry (``logged``); its load ends now
            del self._unread[route_id]
            self.inflight.finish(route_id)
            return
        response = self._unread[route_id]
        if response is not None and response.status:
            del self._unread[route_id]
            self.completed(response, b"", self.clock())
        else:
            _bounded_put(self._ended_early, route_id, self.clock())

    def logged(self, entry: LoggedResponse) -> None:
        """Envoy's access log reported a response the observer did not see (access-log mode). Its router stream
        has normally ended before (the load released there); if not, it is released here."""
        now = self.clock()
        self._unread.pop(entry.route_id, None)
        response = Response(entry.route_id, entry.instance, entry.workflow_id, entry.agent_id, entry.request_id,
                            status=entry.status, served_by=entry.served_by, started=now - entry.wall_s,
                            path=entry.path, body_read=False)
        self.completed(response, b"", now)

    def bodyless_headers(self, response: Response) -> bool:
        """The observer saw an unread stream's response headers: True when its router stream had already ended
        (it is completed here, as of that end)."""
        route_id = response.route_id
        ended = self._ended_early.pop(route_id, None) if route_id is not None else None
        if ended is None:
            return False
        self._unread.pop(route_id, None)  # type: ignore[arg-type]
        self.completed(response, b"", ended)
        return True

    def response_started(self, response: Response, first_chunk: bytes = b"") -> None:
        """The response's first bytes: its prompt has been computed (a streamed response's first token)."""
        if response.route_id is not None:
            self.inflight.prefilled(response.route_id)
        if first_chunk:
            self.learn_response_id(response, first_chunk)

    def _wall(self, response: Response) -> float:
        """The response's wall duration: to its router stream's end for an unread stream (``ended_at``), else
        to now; an unread stream completed by its observer stream's end instead (the router stream ended on
        another replica) ended ``OBSERVER_CLOSE_DELAY_S`` before (Envoy's deferred close)."""
        if response.ended_at is not None:
            return max(0.0, response.ended_at - response.started)
        wall = self.clock() - response.started
        return wall if response.body_read else max(0.0, wall - OBSERVER_CLOSE_DELAY_S)

    def _stream_usage(self, response: Response, reported: Usage | None) -> Usage | None:
        """A stream's usage: the reported one where the observer read the body (the estimate measured against
        it), else the router's estimate (requestcontrol/stream_observation.py)."""
        observation = self.stream_observation
        estimate = observation.take(response.route_id)
        if estimate is None or response.status != 200:
            return reported
        ttft, itl = self.deadlines.learner.wall_latencies(response.instance)
        estimated = estimated_usage(estimate, self._wall(response), ttft, itl,
                                    observation.cached_share(response.instance))
        if reported is not None:
            observation.compare(estimated, reported)
            return reported
        if response.body_read:
            return None  # read, and it carried no usage (no stream_options.include_usage): nothing to report
        observation.estimated.inc()
        observation.estimated_prompt.inc(estimated.prompt_tokens)
        observation.estimated_cached.inc(estimated.cached_tokens)
        return estimated

    def learn_response_id(self, response: Response, chunk: bytes) -> None:
        """Record which instance holds a Responses-API response, from the chunk that carries its id: a JSON body
        (its first member) or a stream's first event (``response.created``). Once per response; cheap for
        other paths (one comparison)."""
        if response.path != RESPONSES_PATH or response.response_id is not None or response.status != 200:
            return
        response_id = response_id_from_chunk(chunk)
        if response_id is None:
            return
        response.response_id = response_id
        served = response.served_by
        instance = served if served is not None and served in self.endpoints else response.instance
        if instance not in self.endpoints:
            return
        workflow_id = response.workflow_id or chain_workflow(response_id)
        self.response_ids.learn(response_id, instance, workflow_id, self.clock())
        if self.shared_response_ids is not None:
            self.shared_response_ids.publish(response_id, instance, workflow_id)

    def completed(self, response: Response, body_tail: bytes, ended: float | None = None) -> None:
        """The response ended (or the stream was cut): release, check health, count usage, report. ``ended``:
        when an unread stream's router stream ended (its end), if before now."""
        response.done = True
        if ended is not None:
            response.ended_at = ended
        if response.route_id is not None:
            self.inflight.finish(response.route_id)
            if not response.body_read:
                self._unread.pop(response.route_id, None)
                self._ended_early.pop(response.route_id, None)
        if response.response_id is None and response.path == RESPONSES_PATH and whole_response(body_tail):
            self.learn_response_id(response, body_tail)  # a JSON body the first chunk did not carry whole
        reported = extract_usage(body_tail) if response.status == 200 else None
        if reported is not None:
            self.stream_observation.reported(response.instance, reported)
        usage = self._stream_usage(response, reported)
        instance = response.instance
        served = response.served_by
        # In endpoint-picker mode x-served-by is an ip:port, not a cluster name: no retry signal there.
        retried_away = served is not None and served != instance and self.destinations is None
        if instance in self.endpoints:
            self.passive_health.record(instance, response.status, retried_away)
            if response.status == 200 and not retried_away:  # the instance's wall clock, for its deadlines
                self.deadlines.learner.served(instance, self._wall(response))
        if usage is not None:
            holder = served if served is not None and retried_away and served in self.endpoints else instance
            if usage is reported:  # the backend's own figures (an estimate counts in stream_observation.py)
                self.metrics.usage(holder, usage)
            if self.prefix_index is not None:  # the generated tokens fill the holder's KV too
                self.prefix_index.occupy(holder, usage.completion_tokens // TOKENS_PER_BLOCK)
        if usage is not None and response.workflow_id is not None and self.priority_scheduling:
            entry = self.workflows.peek(response.workflow_id)
            if entry is not None:
                now = self.clock()
                entry.attained = decayed(entry.attained, entry.attained_at, now, self.priority_half_life) + service(
                    usage.prompt_tokens, usage.completion_tokens)
                entry.attained_at = now
        if response.workflow_id is not None:
            self.reporter.completed(response.request_id, response.workflow_id, response.agent_id, instance, usage,
                                    response.status)
