"""The HTTP front of one simulated vLLM server (Starlette), separate from the engine model.

vLLM's endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both also as SSE with
``"stream": true``), ``POST /v1/responses`` (with a per-process store) and the Anthropic-compatible
``POST /v1/messages`` (``responses.py``), ``GET /v1/models``, ``GET /health`` (200, empty body), ``GET /metrics``,
``POST /reset_prefix_cache``. Simulator endpoints for tests and benchmarks: ``GET /sim/requests`` (the last N
request bodies received), ``GET /sim/stats``, ``POST /sim/reset`` (prefix cache, recorded requests, stats),
``GET|POST /sim/faults`` (``{"slowdown": float, "hang": bool, "fail_rate": float}``). Every response carries
``x-sim-instance: <name>``. Invalid input gets a 400 in OpenAI's error format, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .block_hash import make_hasher
from .config import INSTANCE_HEADER, SimConfig
from .driver import AsyncEngine, RequestHandle, StepObserver
from .engine import Engine, EngineRequest, SeqState
from .errors import BadRequestError, SimulatorError
from .lora import AdapterNotFoundError, LoRAModule, LoRASlots, ModelNotFoundError
from .metrics import CONTENT_TYPE, SimMetrics
from .protocol import (
    ParsedRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    parse_chat,
    parse_completion,
    parse_tokenize,
    sse,
    tokenize_response,
    usage,
)
from .responses import ResponseStore, create_message, create_response

if TYPE_CHECKING:
    from .kv_events import KVEventsPublisher

__all__ = ["Faults", "SimInstance", "create_app"]

log = logging.getLogger(__name__)

# Request headers never recorded by /sim/requests.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_DONE = b"data: [DONE]\n\n"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> Response:
    return JSONResponse(error_body(message, type_, param), status_code=status)


def _sim_error(exc: SimulatorError) -> Response:
    return _error(exc.status, exc.message, exc.type, exc.param)


@dataclass(slots=True)
class Faults:
    slowdown: float = 1.0  # multiplies every engine step
    hang: bool = False  # new inference requests never get an answer
    fail_rate: float = 0.0  # fraction of inference requests answered with 500 (seeded RNG)

    def update(self, body: Any) -> None:
        """Apply a partial update; raises :class:`BadRequestError` and changes nothing on invalid input."""
        if not isinstance(body, dict):
            raise BadRequestError("the request body must be a JSON object", None)
        unknown = set(body) - {"slowdown", "hang", "fail_rate"}
        if unknown:
            raise BadRequestError(f"unknown fault fields: {sorted(unknown)}", sorted(unknown)[0])
        slowdown, hang, fail_rate = (
            body.get("slowdown", self.slowdown),
            body.get("hang", self.hang),
            body.get("fail_rate", self.fail_rate),
        )
        if isinstance(slowdown, bool) or not isinstance(slowdown, int | float) or slowdown <= 0:
            raise BadRequestError("'slowdown' must be a positive number", "slowdown")
        if not isinstance(hang, bool):
            raise BadRequestError("'hang' must be a boolean", "hang")
        if isinstance(fail_rate, bool) or not isinstance(fail_rate, int | float) or not 0 <= fail_rate <= 1:
            raise BadRequestError("'fail_rate' must be a number in [0, 1]", "fail_rate")
        self.slowdown, self.hang, self.fail_rate = float(slowdown), hang, float(fail_rate)


@dataclass(slots=True)
class _Totals:
    requests: int = 0  # inference requests received (including rejected ones)
    rejected: int = 0  # 4xx/5xx answered without running
    completed: int = 0
    aborted: int = 0
    prompt_tokens: int = 0  # of completed requests
    cached_tokens: int = 0
    completion_tokens: int = 0


class SimInstance:
    """Everything one simulated server owns: engine, step loop, metrics, recorded requests, faults."""

    def __init__(self, config: SimConfig, rng: random.Random | None = None) -> None:
        self.config = config.validate()
        self.rng = rng if rng is not None else random.Random(config.seed)
        hasher = make_hasher(
            config.prefix_caching_hash_algo,
            seed=config.hash_seed,
            fallback_seed=f"vllm-sim:{config.seed}".encode(),
        )
        kv_events = config.kv_events if config.kv_events is not None and config.kv_events.active else None
        self.engine = Engine(
            config.profile,
            rng=self.rng,
            scheduling_policy=config.scheduling_policy,
            hasher=hasher,
            record_kv_events=kv_events is not None,
        )
        self.lora = (LoRASlots(config.max_loras, config.lora_load_s, config.time_scale)
                     if config.lora_modules or config.enable_lora else None)
        self.adapters: dict[str, LoRAModule] = {m.name: m for m in config.lora_modules}  # served now
        self.metrics = SimMetrics(self.engine, config.model_name, self.lora)
        self._kv_events_config = kv_events
        self.kv_events: KVEventsPublisher | None = None
        self.driver: AsyncEngine | None = None
        self.faults = Faults()
        self.recorded: deque[dict[str, Any]] = deque(maxlen=config.max_recorded_requests)
        self.totals = _Totals()
        self._id_prefix = f"{self.rng.getrandbits(32):08x}"
        self._next_id = 0
        self._hung: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        if self.kv_events is None and self._kv_events_config is not None:
            from .kv_events import KVEventsPublisher  # pyzmq and msgspec only when events are on

            self.kv_events = KVEventsPublisher(
                self.engine.kv,
                self._kv_events_config,
                encoding=self.config.kv_events_encoding,
                int_hashes=self.config.kv_events_int_hashes,
            )
        if self.driver is None:
            observers: list[StepObserver] = [self.metrics]
            if self.kv_events is not None:
                observers.append(self.kv_events)
            self.driver = AsyncEngine(self.engine, time_scale=self.config.time_scale, observers=observers)
        self.driver.start()

    async def stop(self) -> None:
        for fut in self._hung:
            if not fut.done():
                fut.set_result(None)
        if self.driver is not None:
            await self.driver.stop()
        if self.kv_events is not None:
            self.kv_events.shutdown()
            self.kv_events = None

    # --- helpers ------------------------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}-{self._id_prefix}{self._next_id:08x}"

    def record(self, request: Request, body: Any) -> None:
        if self.recorded.maxlen == 0:
            return
        headers = {k: v for k, v in request.headers.items() if k not in _SECRET_HEADERS}
        self.recorded.append({"time": time.time(), "path": request.url.path, "body": body, "headers": headers})

    def stats(self) -> dict[str, Any]:
        e = self.engine
        kv = e.kv
        return {
            "instance": self.config.name,
            "model": self.config.model_name,
            "time_scale": self.config.time_scale,
            "sim_time": self.driver.now() if self.driver is not None else 0.0,
            **asdict(self.totals),
            "num_running": e.num_running,
            "num_waiting": e.num_waiting,
            "num_pending": e.num_pending,
            "kv_cache_usage": kv.usage(),
            "num_gpu_blocks": e.profile.num_gpu_blocks,
            "block_size": e.profile.block_size,
            "cached_blocks": kv.num_cached_blocks,
            "free_blocks": kv.num_free_blocks,
            "prefix_cache_queries": kv.stats.queries,
            "prefix_cache_hits": kv.stats.hits,
            "faults": asdict(self.faults),
        }

    def reset_prefix_cache(self) -> int:
        dropped = self.engine.reset_prefix_cache()
        if self.kv_events is not None:
            self.kv_events.flush()  # AllBlocksCleared goes out now, not with the next step
        return dropped

    def reset(self) -> dict[str, Any]:
        dropped = self.reset_prefix_cache()
        self.recorded.clear()
        self.totals = _Totals()
        return {"reset": True, "dropped_cached_blocks": dropped}

    def _account(self, state: SeqState) -> None:
        t = self.totals
        t.completed += 1
        t.prompt_tokens += state.num_prompt_tokens
        t.cached_tokens += state.num_cached_tokens
        t.completion_tokens += state.num_output

    def served_adapter(self, model: str | None) -> str | None:
        """The LoRA adapter a request names (None: a base model); raises ModelNotFoundError for a model this
        server does not serve (only with explicit served names or adapters: benchmarks/simulator/lora.py)."""
        if model is None or not self.config.strict_models or model in self.config.base_model_names:
            return None
        if model in self.adapters:
            return model
        raise ModelNotFoundError(model)

    def load_adapter(self, body: Any) -> str:
        """vLLM's runtime load (vllm/entrypoints/openai/models/serving.py ``load_lora_adapter``); raises
        SimulatorError with vLLM's status and message."""
        name, path = (body.get("lora_name"), body.get("lora_path")) if isinstance(body, dict) else (None, None)
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise BadRequestError("Both 'lora_name' and 'lora_path' must be provided.", None)
        if name in self.adapters and body.get("load_inplace") is not True:
            raise BadRequestError(f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                  "adapter in place, set 'load_inplace' to True.", None)
        if name in self.config.base_model_names:
            raise BadRequestError(f"'{name}' is a served model name", "lora_name")
        self.adapters[name] = LoRAModule(name, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_adapter(self, body: Any) -> str:
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequestError("'lora_name' needs to be provided to unload a LoRA adapter.", None)
        if self.adapters.pop(name, None) is None:
            raise AdapterNotFoundError(name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def model_cards(self) -> list[dict[str, Any]]:
        """``/v1/models`` as vLLM lists it (vllm/entrypoints/openai/models/serving.py): each served name, then
        each adapter with ``root`` = its path and ``parent`` = its base model."""
        created = int(time.time())
        card = {"object": "model", "created": created, "owned_by": "vllm", "permission": []}
        cards = [{"id": name, **card, "root": self.config.profile.model, "parent": None,
                  "max_model_len": self.engine.max_model_len} for name in self.config.base_model_names]
        cards += [{"id": m.name, **card, "root": m.path, "parent": m.base_model_name or self.config.model_name,
                   "max_model_len": None} for m in self.adapters.values()]
        return cards

    # --- inference ----------------------------------------------------------------------------------------
    async def generate(self, request: Request, kind: str) -> Response:
        self.totals.requests += 1
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.totals.rejected += 1
            return _error(400, f"invalid JSON body: {exc}", param=None)
        self.record(request, body)
        try:
            parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
        except BadRequestError as exc:
            self.totals.rejected += 1
            return _sim_error(exc)

        faults = self.faults
        if faults.fail_rate and self.rng.random() < faults.fail_rate:
            self.totals.rejected += 1
            return _error(500, "injected fault", "internal_server_error")
        if faults.hang:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hung.add(fut)
            try:
                await fut  # until the client goes away or the server stops
            finally:
                self._hung.discard(fut)
            return _error(503, "the server is shutting down", "service_unavailable")

        rid = self.new_id("chatcmpl" if kind == "chat" else "cmpl")
        driver = self.driver
        if driver is None:
            return _error(503, "the engine is not running", "service_unavailable")
        try:
            adapter = self.served_adapter(parsed.model)
        except SimulatorError as exc:
            self.totals.rejected += 1
            return _sim_error(exc)
        if adapter is None:
            return await self._run(driver, parsed, rid, kind)
        assert self.lora is not None
        await self.lora.acquire(adapter)  # waits for a slot and loads the adapter when it is not in one
        try:
            response = await self._run(driver, parsed, rid, kind, adapter)
        except BaseException:
            await self.lora.release(adapter)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = self.lora.holding(adapter, response.body_iterator)  # type: ignore[arg-type]  # starlette types it as a union of str/bytes iterators
        else:
            await self.lora.release(adapter)
        return response

    async def _run(self, driver: AsyncEngine, parsed: ParsedRequest, rid: str, kind: str,
                   adapter: str | None = None) -> Response:
        try:
            handle = driver.submit(
                EngineRequest(rid, parsed.prompt_token_ids, parsed.max_tokens, parsed.seed, parsed.priority, adapter)
            )
        except SimulatorError as exc:
            self.totals.rejected += 1
            return _sim_error(exc)
        model = parsed.model or self.config.model_name
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(
                self._stream(handle, parsed, rid, created, model),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            state = await handle.result()
        except SimulatorError as exc:
            return _sim_error(exc)
        except asyncio.CancelledError:
            driver.abort(rid)
            raise
        self._account(state)
        use = usage(state.num_prompt_tokens, state.num_output, state.num_cached_tokens)
        if parsed.tool_call is not None:  # the simulator's scripted tool call (responses.scripted_tool_call)
            answer = chat_response(rid, created, model, "", "tool_calls", use)
            answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"chatcmpl-tool-{rid[-8:]}", "type": "function",
                "function": {"name": parsed.tool_call, "arguments": "{}"}}]}
            return JSONResponse(answer)
        build = chat_response if kind == "chat" else completion_response
        return JSONResponse(build(rid, created, model, state.output_text(), state.finish_reason or "length", use))

    async def _stream(
        self, handle: RequestHandle, parsed: ParsedRequest, rid: str, created: int, model: str
    ) -> AsyncIterator[bytes]:
        chat = parsed.kind == "chat"
        state = handle.state
        dumps = orjson.dumps
        first = chat
        try:
            async for delta, last in handle.stream():
                if first:
                    # vLLM sends the role chunk on the first engine output, i.e. together with the first token,
                    # not at admission (vllm/entrypoints/openai/serving_chat.py, chat_completion_stream_generator).
                    first = False
                    yield sse(dumps(chat_chunk(rid, created, model, {"role": "assistant", "content": ""}, None)))
                reason = (state.finish_reason or "length") if last else None
                if chat:
                    chunk = chat_chunk(rid, created, model, {"content": delta}, reason)
                else:
                    chunk = completion_chunk(rid, created, model, delta, reason)
                yield sse(dumps(chunk))
            self._account(state)
            if parsed.include_usage:
                use = usage(state.num_prompt_tokens, state.num_output, state.num_cached_tokens)
                build = chat_chunk if chat else completion_chunk
                yield sse(dumps(build(rid, created, model, None, None, use)))
            yield _DONE
        except SimulatorError as exc:
            yield sse(dumps(error_body(exc.message, exc.type, exc.param)))
            yield _DONE
        finally:
            if not state.finished and self.driver is not None:
                self.totals.aborted += 1
                self.driver.abort(rid)


class _InstanceHeader:
    """Pure ASGI middleware adding ``x-sim-instance`` to every response (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (INSTANCE_HEADER.encode(), name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(config: SimConfig, *, rng: random.Random | None = None) -> Starlette:
    """The ASGI app of one instance; ``app.state.sim`` is its :class:`SimInstance`. The engine loop starts
    and stops with the app's lifespan (uvicorn runs it; in tests use ``asgi-lifespan`` or uvicorn)."""
    sim = SimInstance(config, rng)

    async def completions(request: Request) -> Response:
        return await sim.generate(request, "completion")

    async def chat_completions(request: Request) -> Response:
        return await sim.generate(request, "chat")

    responses_store = ResponseStore()  # this process's stored responses (benchmarks/simulator/responses.py)

    async def responses(request: Request) -> Response:
        return await create_response(sim, responses_store, request)

    async def messages(request: Request) -> Response:
        return await create_message(sim, request)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": sim.model_cards()})

    async def health(request: Request) -> Response:
        if sim.driver is None or not sim.driver.running:
            return Response(status_code=503)
        return Response(status_code=200)

    async def metrics(request: Request) -> Response:
        return Response(sim.metrics.exposition(), media_type=CONTENT_TYPE)

    async def tokenize(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"invalid JSON body: {exc}")
        try:
            ids, token_strs = parse_tokenize(body)
        except BadRequestError as exc:
            return _sim_error(exc)
        return JSONResponse(tokenize_response(ids, token_strs, sim.engine.max_model_len))

    async def reset_prefix_cache(request: Request) -> Response:
        sim.reset_prefix_cache()
        return Response(status_code=200)

    async def sim_requests(request: Request) -> Response:
        items = list(sim.recorded)
        limit = request.query_params.get("limit")
        if limit is not None:
            if not limit.isdigit():
                return _error(400, "'limit' must be a non-negative integer", param="limit")
            items = items[len(items) - int(limit) :] if int(limit) else []
        path = request.query_params.get("path")
        if path is not None:
            items = [r for r in items if r["path"] == path]
        return JSONResponse(items)

    async def sim_stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def sim_reset(request: Request) -> Response:
        return JSONResponse(sim.reset())

    async def sim_faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body() or b"{}")
            except orjson.JSONDecodeError as exc:
                return _error(400, f"invalid JSON body: {exc}")
            try:
                sim.faults.update(body)
            except BadRequestError as exc:
                return _sim_error(exc)
            sim.engine.slowdown = sim.faults.slowdown
            log.info("faults updated", extra={"faults": asdict(sim.faults), "instance": config.name})
        return JSONResponse(asdict(sim.faults))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found_error", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return _error(exc.status_code, str(exc.detail), kind)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal error", "internal_server_error")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        Route("/sim/requests", sim_requests, methods=["GET"]),
        Route("/sim/stats", sim_stats, methods=["GET"]),
        Route("/sim/reset", sim_reset, methods=["POST"]),
        Route("/sim/faults", sim_faults, methods=["GET", "POST"]),
    ]
    if config.runtime_lora_updating and sim.lora is not None:  # vLLM registers them only then

        async def lora_update(request: Request) -> Response:
            try:
                body = orjson.loads(await request.body() or b"{}")
            except orjson.JSONDecodeError as exc:
                return _error(400, f"invalid JSON body: {exc}")
            update = sim.load_adapter if request.url.path.endswith("/load_lora_adapter") else sim.unload_adapter
            try:
                return Response(update(body), status_code=200)
            except SimulatorError as exc:
                return _sim_error(exc)

        routes += [Route("/v1/load_lora_adapter", lora_update, methods=["POST"]),
                   Route("/v1/unload_lora_adapter", lora_update, methods=["POST"])]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.sim = sim
    app.state.responses = responses_store
    app.add_middleware(_InstanceHeader, name=config.name)
    return app
