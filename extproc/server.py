"""Process shell: the gRPC server (ext_proc + health), the metrics endpoint, signals and draining."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import disable_created_metrics, start_http_server

from extproc.config import Settings, destination_endpoints
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.inflight import InFlight
from extproc.datastore.poller import BackendPoller
from extproc.datastore.precise_cache import PreciseCacheView, build_precise_view
from extproc.datastore.prefix_index import PrefixIndex
from extproc.datastore.shared_assignments import RedisAssignments
from extproc.datastore.workflows import WorkflowTable
from extproc.discovery import EndpointsFile, Fleet, KubernetesPods, KubernetesSource
from extproc.handlers.access_log import AccessLogServicer
from extproc.handlers.server import ExtProcServicer
from extproc.kv_index import LMCacheIndex, build_kv_index
from extproc.metrics import Metrics
from extproc.reporting import NullReporter, Reporter
from extproc.requestcontrol.director import Director
from extproc.scheduling.profiles import build_scheduler, load_config, parse_weights
from extproc.scheduling.registry import PluginContext

log = logging.getLogger("extproc")


@dataclass(slots=True)
class Router:
    """The routing core of one server, wired: datastore, scheduler, director and the ext_proc servicer."""

    endpoints: Endpoints
    workflows: WorkflowTable
    prefix_index: PrefixIndex | None
    inflight: InFlight
    metrics: Metrics
    director: Director
    servicer: ExtProcServicer


def build_router(settings: Settings, reporter: Reporter, *, assignments: RedisAssignments | None = None,
                 kv_index: LMCacheIndex | None = None, precise: PreciseCacheView | None = None) -> Router:
    """Everything a request touches, without I/O (tests and the decision-time benchmark call it directly).
    Raises ``ValueError`` for a bad scheduling config."""
    instances = [b.cluster for b in settings.backends]
    endpoints = Endpoints(instances)
    workflows = WorkflowTable(settings.workflow_ttl, settings.max_workflows)
    prefix_index = PrefixIndex(instances, settings.prefix_capacity_blocks) if settings.prefix_routing else None
    if prefix_index is not None:
        endpoints.on_down.append(prefix_index.forget)  # a dead instance's cache is gone
    config = load_config(settings.scheduling_config) if settings.scheduling_config else None
    scheduler = build_scheduler(endpoints, PluginContext(settings.batching_preference, prefix_index), config,
                                parse_weights(settings.scorer_weights))
    inflight = InFlight(endpoints)
    metrics = Metrics(instances)
    metrics.watch(endpoints, workflows, inflight, prefix_index, scheduler.stats)
    if prefix_index is not None:
        endpoints.on_publish.append(prefix_index.capacities_from)  # forget what each instance's KV cannot hold
    director = Director(settings, endpoints, workflows, scheduler, inflight, metrics, reporter,
                        assignments=assignments, kv_index=kv_index, prefix_index=prefix_index, precise=precise)
    if precise is not None:
        endpoints.on_down.append(precise.forget)  # a down instance's cache is gone
        metrics.registry.register(precise.collector())
    # Instances that join later (extproc/discovery/) get their per-instance state here.
    endpoints.on_added.append(metrics.add_instance)
    endpoints.on_added.append(director.passive_health.add)
    if prefix_index is not None:
        endpoints.on_added.append(prefix_index.add)
    servicer = ExtProcServicer(director, metrics, settings.max_request_body_bytes)
    return Router(endpoints, workflows, prefix_index, inflight, metrics, director, servicer)


@dataclass(slots=True)
class Running:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    router: Router
    reporter: Reporter
    poller: BackendPoller
    assignments: RedisAssignments | None
    kv_index: LMCacheIndex | None
    precise: PreciseCacheView | None
    grpc_port: int
    metrics_port: int
    discovery: EndpointsFile | KubernetesPods | None = None


async def _discovery(settings: Settings) -> tuple[Settings, EndpointsFile | KubernetesPods | None]:
    """The fleet source (extproc/discovery/) and the settings with its initial fleet as the backends."""
    source: EndpointsFile | KubernetesPods
    try:
        if settings.endpoints_file is not None:
            source = EndpointsFile(settings.endpoints_file, lambda _: None, settings.endpoints_file_interval)
            initial = source.initial()
        elif settings.k8s_label_selector is not None:
            source = KubernetesPods(KubernetesSource(
                settings.k8s_namespace, settings.k8s_label_selector, settings.k8s_port, settings.k8s_resource,
                settings.k8s_api_url, settings.k8s_token_file, settings.k8s_ca_file), lambda _: None)
            initial = await source.initial()
        else:
            return settings, None
        destination_endpoints(initial)  # every instance needs an ip:port for ORIGINAL_DST
    except (ValueError, OSError) as error:  # the start fails with the problem named, not a traceback
        print(f"workflow-extproc: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return dataclasses.replace(settings, backends=initial), source


def build_reporter(settings: Settings) -> Reporter:
    if settings.a2a_url is None:
        return NullReporter()
    from extproc.a2a_reporter import A2AReporter  # imported lazily: only when reporting is on

    return A2AReporter(settings.a2a_url, credentials=a2a_channel_credentials(settings), token=a2a_token(settings),
                       instance_urls={b.cluster: b.url for b in settings.backends if b.url})


def a2a_token(settings: Settings) -> str | None:
    """The reporter's bearer token: the file's content (stripped) or EXTPROC_A2A_TOKEN."""
    if settings.a2a_token_file is not None:
        with open(settings.a2a_token_file, encoding="utf-8") as file:
            return file.read().strip() or None
    return settings.a2a_token


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the ext_proc port (None: plaintext); with a client CA, a client without a certificate signed by
    it is refused during the handshake (mTLS from Envoy)."""
    if settings.tls_cert_file is None:
        return None
    key, cert = _read(settings.tls_key_file), _read(settings.tls_cert_file)
    assert key is not None and cert is not None
    ca = _read(settings.tls_client_ca_file)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def a2a_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    if settings.a2a_tls_ca_file is None:
        return None
    return grpc.ssl_channel_credentials(_read(settings.a2a_tls_ca_file), _read(settings.a2a_tls_key_file),
                                        _read(settings.a2a_tls_cert_file))


async def start(settings: Settings, reporter: Reporter | None = None) -> Running:
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client; the *_created series double the exposition for no use here
    settings, discovery = await _discovery(settings)
    reporter = reporter if reporter is not None else build_reporter(settings)
    assignments = None
    if settings.store != "memory":
        assignments = RedisAssignments(settings.store, ttl=settings.workflow_ttl,
                                       max_workflows=settings.max_workflows, timeout=settings.store_timeout)
    instances = [b.cluster for b in settings.backends]
    kv_index = build_kv_index(settings, instances)
    precise = build_precise_view(settings, instances)
    router = build_router(settings, reporter, assignments=assignments, kv_index=kv_index, precise=precise)
    if precise is not None:
        await precise.start()
    metrics = router.metrics
    if assignments is not None:
        await assignments.start()
        metrics.registry.register(assignments.collector())
    if kv_index is not None:
        metrics.registry.register(kv_index.collector())
    servicer = router.servicer

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_grpc_message_bytes),
            ("grpc.max_send_message_length", settings.max_grpc_message_bytes),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(
        AccessLogServicer(router.director, settings.cluster_header, metrics.registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = server_credentials(settings)
    address = f"{settings.host}:{settings.grpc_port}"
    grpc_port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address,
                                                                                                      credentials)
    await server.start()
    for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    http_server, _thread = start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
    metrics_port = http_server.server_port
    poller = BackendPoller(settings.backends, interval=settings.poll_interval, timeout=settings.poll_timeout,
                           publish=router.endpoints.publish, on_change=router.endpoints.set_healthy,
                           dynamic=discovery is not None)
    await poller.start()
    if discovery is not None:
        urls = getattr(reporter, "set_instance_urls", None)  # the A2A reporter names instances by URL
        fleet = Fleet(router.endpoints, router.director, poller, on_change=None if urls is None else (
            lambda backends: urls({b.cluster: b.url for b in backends if b.url})))
        fleet.backends = settings.backends
        discovery.apply = fleet.apply
        await discovery.start()
    metrics.registry.register(poller.collector())
    await reporter.start()
    reporter_collector = reporter.collector()
    if reporter_collector is not None:
        metrics.registry.register(reporter_collector)
    return Running(server, health_servicer, router, reporter, poller, assignments, kv_index, precise, grpc_port,
                   metrics_port, discovery)


async def serve(settings: Settings) -> None:
    running = await start(settings)
    log.info(
        "ext_proc server listening",
        extra={"grpc_port": running.grpc_port, "metrics_port": running.metrics_port,
               "backends": list(running.router.endpoints.instances),
               "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]},
    )
    unwatch_gc = running.router.metrics.watch_gc()
    if settings.gc_threshold is not None:
        gc.set_threshold(*settings.gc_threshold)
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    # Parent processes (the stack launcher, tests) read the bound ports from this line.
    print(f"EXTPROC_LISTENING grpc={running.grpc_port} metrics={running.metrics_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"drain_delay_s": settings.drain_delay, "grace_period_s": settings.grace_period})
    await running.health.enter_graceful_shutdown()
    # Keep serving while Envoy's health check (every 0.5 s) sees NOT_SERVING and moves new streams away.
    await asyncio.sleep(settings.drain_delay)
    # Streams in flight finish (they take microseconds); new ones are refused, Envoy retries elsewhere or
    # applies failure_mode_allow.
    await running.server.stop(settings.grace_period)
    if running.discovery is not None:
        await running.discovery.stop()
    await running.poller.stop()
    if running.assignments is not None:
        await running.assignments.stop()
    if running.kv_index is not None:
        await running.kv_index.aclose()
    if running.precise is not None:
        await running.precise.stop()
    await running.reporter.stop()
    unwatch_gc()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    from extproc.config import settings_from_args
    from extproc.logs import configure

    try:
        settings = settings_from_args(argv)
        if settings.scheduling_config:  # a bad file fails here, with its problem named, not in a traceback
            build_router(settings, NullReporter())
    except ValueError as exc:
        print(f"workflow-extproc: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(settings.log_level)
    run(serve(settings), settings.event_loop)


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """``asyncio.run`` on uvloop's loop where chosen (``auto``: if installed). grpc.aio runs on either."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise SystemExit("workflow-extproc: error: --event-loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
