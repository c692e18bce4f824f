"""Gateway overhead: Envoy with our ext_proc filters vs the same Envoy without them, and vllm-router, in one run.

Backends are a second Envoy answering a fixed completion JSON (``direct_response``), so the gateway, not the
backend, is the bottleneck. The same closed-loop load generator drives every gateway with the same requests
(each carries ``workflow_metadata``; ext_proc parses it, routes, strips it), alternated in each round: Envoy
alone, Envoy + ext_proc (with the observer stream per request, the default; with ``--response-observation
access-log``, where only a sample has one and Envoy's gRPC access log reports the rest; and without the observer
filter), and vllm-router (the ``vllm-router`` PyPI
binary, ``benchmarks/peers.py``) with its ``cache_aware`` and ``round_robin`` policies in front of the same
backends; a row says "skipped" when vllm-router is not installed. vllm-router's ``cache_aware`` asks every worker
for the prompt's token ids on each request (``/v1/completions/render``, then vLLM's ``/tokenize``): the fixed
backends answer ``/render`` 404 and ``/tokenize`` a vLLM TokenizeResponse, as the simulator does, so it routes
on token ids; the bench prints the backend requests each gateway caused per request, and warns on non-200
answers and on what vllm-router's log (WARN/ERROR) and metrics (failed circuit-breaker outcomes, requests routed
without token ids) report. Per gateway: req/s, p50/p99 latency, and the CPU time per request of all its
processes (Envoy + ext_proc, or vllm-router), with the ext_proc's own line.

Then each gateway but the no-observer one again, open loop at one fixed rate, half the Envoy + ext_proc
saturation rate just measured (``benchmarks/loadgen.py`` ``run_open_loop``: requests on a fixed schedule over
the same number of connections, latency from each request's scheduled send time so that queueing is not hidden;
late and dropped requests counted): p50/p99 per gateway, and what Envoy + ext_proc adds over Envoy alone.

The in-process routing decision time (parse + route + build the answer, via the servicer's synchronous core) is
measured at 1k, 10k and 100k active workflows. ``--replicas-compare``: one vs two ext_proc processes sharing their
state in Redis, in both response-observation modes.

Streamed responses (``--streams``): a streaming backend (``benchmarks/stream_backend.py``, one SSE event per token)
behind the same gateway, 16- and 256-token streams, with the observer reading every stream's body (as before
requestcontrol/stream_observation.py), with the default sample, with none read, and in access-log mode; the figure
is the ext_proc process's own CPU
time per request (``/proc/<pid>/stat``, less its idle CPU rate measured just before: backend polls). Long
prompts (``--long-prompts``): 2 KB and 400 KB prompts at low
concurrency, the added p50/p99 over Envoy alone.

Prints figures; asserts nothing. ``--quick`` runs a few seconds per measurement (``make test`` runs it with
``--duration 0.5``: tests/e2e/test_benchmarks_quick.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import yaml

from benchmarks.loadgen import LoadResult, http_request, run_load, run_open_loop
from benchmarks.peers import prefix_decisions, start_vllm_router, vllm_router_binary
from benchmarks.simulator.protocol import tokenize_response
from benchmarks.simulator.tokenizer import encode
from benchmarks.stack import Process, Stack, StackOptions, envoy_binary, spawn

T = TypeVar("T")

FIXED_COMPLETION = orjson.dumps({
    "id": "cmpl-bench", "object": "text_completion", "model": "bench",
    "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 64, "completion_tokens": 1, "total_tokens": 65,
              "prompt_tokens_details": {"cached_tokens": 48}},
}).decode()


def _prompt(agent: int, workflow: int) -> str:
    return f"Agent {agent} of workflow {workflow}: " + "summarize the quarterly figures. " * 20


# vllm-router's cache_aware asks a worker for the prompt's token ids (POST /v1/completions/render, then vLLM's
# POST /tokenize; see benchmarks/peers.py). The fixed backends answer as the simulator does: /render 404, /tokenize
# vLLM's TokenizeResponse (vllm/entrypoints/openai/protocol.py: count, max_model_len, tokens, token_strs), here
# the simulator's ids for one prompt of make_requests(): the same ids for every request, so its radix tree
# matches the whole prompt on one worker (a fixed response cannot depend on the request).
FIXED_TOKENIZE = orjson.dumps(tokenize_response(encode(_prompt(0, 0)), None, 8192)).decode()
NOT_FOUND = '{"detail":"Not Found"}'


def _fixed_backend_config(names: list[str]) -> dict[str, object]:
    listeners = []
    for name in names:
        listeners.append({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
                        {"match": {"path": "/tokenize"},
                         "direct_response": {"status": 200, "body": {"inline_string": FIXED_TOKENIZE}}},
                        {"match": {"path": "/v1/completions/render"},
                         "direct_response": {"status": 404, "body": {"inline_string": NOT_FOUND}}},
                        {"match": {"prefix": "/"},
                         "direct_response": {"status": 200, "body": {"inline_string": FIXED_COMPLETION}}},
                    ], "response_headers_to_add": [
                        {"header": {"key": "content-type", "value": "application/json"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        })
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": listeners}}


def start_fixed_backends(run_dir: Path, names: list[str]) -> tuple[Process, dict[str, int]]:
    config = run_dir / "fixed-backends.yaml"
    config.write_text(yaml.safe_dump(_fixed_backend_config(names)))
    admin_path = run_dir / "fixed-admin"
    process = spawn("fixed-backends", [envoy_binary(), "-c", str(config), "--admin-address-path", str(admin_path),
                                       "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warning"],
                    run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if admin_path.exists() and admin_path.read_text().strip():
            admin = "http://" + admin_path.read_text().strip()
            try:
                listeners = httpx.get(f"{admin}/listeners?format=json", timeout=1).json()["listener_statuses"]
                if len(listeners) == len(names):
                    return process, {item["name"]: int(item["local_address"]["socket_address"]["port_value"])
                                     for item in listeners}
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"fixed backends did not start:\n{process.log_tail()}")


def make_requests(workflows: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    requests = []
    for i in range(2048):
        workflow = rng.randrange(workflows)
        body = orjson.dumps({
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "prompt": _prompt(i % 5, workflow),
            "max_tokens": 16,
            "workflow_metadata": {"workflow_id": f"wf-{workflow}", "agent_id": f"agent-{i % 5}"},
        })
        requests.append(http_request("POST", "/v1/completions", body))
    return requests


IDLE_SAMPLE_S = 2.0
LATE_AFTER_S = 0.002  # open loop: a request sent later than this behind its schedule counts as late
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/<pid>/stat`` utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Gateway:
    """A running gateway under test: where it listens and which processes are it."""

    label: str
    port: int
    proxy_pids: list[int]  # every process of the gateway: Envoy and its ext_proc replicas, or vllm-router
    extproc_pids: list[int] = field(default_factory=list)
    router: Process | None = None  # vllm-router: its log and metrics are checked after a run
    metrics_url: str | None = None
    backend_calls: Callable[[], int] | None = None  # requests the backends have answered so far


@contextlib.contextmanager
def envoy_gateway(ext_proc: bool, backends: dict[str, int], run_dir: Path, replicas: int = 1,
                  redis: str | None = None, observer: bool = True,
                  extproc_args: tuple[str, ...] = (),
                  response_observation: str = "observer-stream") -> Iterator[Gateway]:
    options = StackOptions(listen_port=0, admin_port=0, with_a2a=False, external_backends=backends,
                           ext_proc_enabled=ext_proc, envoy_concurrency=1, log_level="warning",
                           extproc_replicas=replicas, redis=redis, observer=observer, extproc_args=extproc_args,
                           response_observation=response_observation,
                           run_dir=run_dir / (f"extproc-x{replicas}" if ext_proc else "without-extproc"))
    with Stack(options) as stack:
        assert stack.envoy is not None
        extprocs = [p.popen.pid for p in stack.extprocs] if ext_proc else []
        yield Gateway("Envoy + ext_proc" if ext_proc else "Envoy alone", stack.listen_port,
                      [stack.envoy.popen.pid, *extprocs], extprocs)


@contextlib.contextmanager
def vllm_router_gateway(binary: str, policy: str, backends: dict[str, int], run_dir: Path) -> Iterator[Gateway]:
    """``vllm-router --policy policy`` (benchmarks/peers.py starts it) over the same fixed-response backends."""
    workers = [f"http://127.0.0.1:{port}" for port in backends.values()]
    process, url, metrics_url = start_vllm_router(binary, policy, workers, run_dir)
    try:
        yield Gateway(f"vllm-router {policy}", int(url.rpartition(":")[2]), [process.popen.pid], router=process,
                      metrics_url=metrics_url)
    finally:
        process.stop()


def _load_input(requests: list[bytes]) -> Callable[[int], bytes]:
    def make(i: int) -> bytes:
        return requests[i % len(requests)]
    return make


def closed_loop(gateway: Gateway, requests: list[bytes], connections: int, duration: float,
                warm: float = 1.0, idle_sample: float = IDLE_SAMPLE_S) -> tuple[LoadResult, float]:
    """A closed-loop run and the backend requests per request it caused (nan unless ``gateway.backend_calls``).
    ``result.extproc_cpu_us`` = the ext_proc's CPU microseconds per request (less its idle rate),
    ``result.proxy_cpu_us`` = that of all the gateway's processes (Envoy's and vllm-router's idle CPU is
    negligible and not subtracted)."""
    make = _load_input(requests)
    asyncio.run(run_load("127.0.0.1", gateway.port, make, connections=connections, duration=warm))
    pids = gateway.extproc_pids
    # Its CPU while idle (backend polls, reports) is not the requests' cost: measured first, subtracted.
    idle_started, idle_before = time.perf_counter(), sum(process_cpu_seconds(pid) for pid in pids)
    time.sleep(idle_sample if pids else 0)
    idle_rate = (sum(process_cpu_seconds(pid) for pid in pids) - idle_before) / (
        time.perf_counter() - idle_started)
    cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
    proxy_before = sum(process_cpu_seconds(pid) for pid in gateway.proxy_pids)
    calls_before = gateway.backend_calls() if gateway.backend_calls else 0
    result = asyncio.run(run_load("127.0.0.1", gateway.port, make, connections=connections, duration=duration))
    calls = gateway.backend_calls() - calls_before if gateway.backend_calls else float("nan")
    idle = idle_rate * result.duration
    cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before - idle
    proxy = sum(process_cpu_seconds(pid) for pid in gateway.proxy_pids) - proxy_before - idle
    if result.completed:
        result.extproc_cpu_us = cpu / result.completed * 1e6 if pids else float("nan")
        result.proxy_cpu_us = proxy / result.completed * 1e6
    return result, calls / result.completed if result.completed else float("nan")


def open_loop(gateway: Gateway, requests: list[bytes], connections: int, duration: float, rate: float,
              warm: float = 1.0) -> LoadResult:
    """``rate`` requests per second on a fixed schedule (latency from the scheduled time: see loadgen)."""
    make = _load_input(requests)
    asyncio.run(run_load("127.0.0.1", gateway.port, make, connections=connections, duration=warm))
    return asyncio.run(run_open_loop("127.0.0.1", gateway.port, make, rate=rate, duration=duration,
                                     connections=connections, late_after=LATE_AFTER_S))


def measure_gateway(ext_proc: bool, backends: dict[str, int], requests: list[bytes], connections: int,
                    duration: float, run_dir: Path, replicas: int = 1, redis: str | None = None,
                    observer: bool = True, extproc_args: tuple[str, ...] = (),
                    response_observation: str = "observer-stream") -> LoadResult:
    """A closed-loop run through Envoy, with or without the ext_proc (see :func:`closed_loop`)."""
    with envoy_gateway(ext_proc, backends, run_dir, replicas, redis, observer, extproc_args,
                       response_observation) as gateway:
        return closed_loop(gateway, requests, connections, duration)[0]


def vllm_router_problems(gateway: Gateway) -> list[str]:
    """What vllm-router reported wrong during a run: WARN/ERROR lines of its log, non-success circuit-breaker
    outcomes, requests routed without token ids (``missing_tokens``: its /tokenize calls failed)."""
    problems = []
    assert gateway.router is not None
    log = gateway.router.log_path.read_text(errors="replace")[gateway.router.log_offset:]
    bad_lines = [line for line in log.splitlines() if re.search(r"\b(WARN|ERROR)\b", line)]
    if bad_lines:
        problems.append(f"{len(bad_lines)} WARN/ERROR log lines, last: {_ANSI.sub('', bad_lines[-1])[:200]}")
    if gateway.metrics_url:
        try:
            text = httpx.get(gateway.metrics_url, timeout=5).text
        except httpx.HTTPError as exc:
            return [*problems, f"metrics unreadable: {exc}"]
        for line in text.splitlines():
            if (line.startswith("vllm_router_cb_outcomes_total{") and 'outcome="success"' not in line
                    and float(line.rpartition(" ")[2])):
                problems.append(line)
        missing = prefix_decisions(text).get("missing_tokens", 0.0)
        if missing:
            problems.append(f"{missing:.0f} requests routed with no token ids (missing_tokens)")
    return problems


def backend_requests(run_dir: Path) -> int:
    """Requests the fixed-response backends have answered so far (their Envoy's listener stats)."""
    admin = "http://" + (run_dir / "fixed-admin").read_text().strip()
    stats = httpx.get(f"{admin}/stats", params={"filter": r"^http\.vllm-\d+\.downstream_rq_total$"}, timeout=5).text
    return sum(int(line.rpartition(":")[2]) for line in stats.splitlines() if line.strip())


def start_stream_backends(run_dir: Path, names: list[str]) -> tuple[list[Process], dict[str, int]]:
    processes, ports = [], {}
    for name in names:
        port_file = run_dir / f"{name}.port"
        process = spawn(f"stream-{name}", [sys.executable, "-m", "benchmarks.stream_backend", "--port-file",
                                           str(port_file)], run_dir)
        processes.append(process)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or not process.alive():
                raise RuntimeError(f"stream backend did not start:\n{process.log_tail()}")
            time.sleep(0.05)
        ports[name] = int(port_file.read_text())
    return processes, ports


def stream_requests(tokens: int, workflows: int = 200, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [http_request("POST", "/v1/completions", orjson.dumps({
        "model": "bench", "prompt": f"Agent {i % 5} of workflow {w}: " + "summarize the quarterly figures. " * 20,
        "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True},
        "workflow_metadata": {"workflow_id": f"wf-{w}", "agent_id": f"agent-{i % 5}"},
    })) for i, w in ((i, rng.randrange(workflows)) for i in range(512))]


def long_prompt_requests(prompt_bytes: int, count: int = 64) -> list[bytes]:
    filler = "The quarterly figures of the northern region, line by line, with their notes. "
    text = (filler * (prompt_bytes // len(filler) + 1))[:prompt_bytes]
    return [http_request("POST", "/v1/completions", orjson.dumps({
        "model": "bench", "prompt": f"request {i}: {text}", "max_tokens": 16,
        "workflow_metadata": {"workflow_id": f"long-{i % 8}", "agent_id": "reader"},
    })) for i in range(count)]


def _row(label: str, result: LoadResult) -> str:
    cpu = result.extproc_cpu_us
    return (f"{label:<38} {result.rate:>8.0f} {result.percentile(0.5) * 1e3:>8.2f} "
            f"{result.percentile(0.99) * 1e3:>8.2f} {cpu:>12.0f}")


# (label, --observe-stream-bodies, --response-observation) of the streamed-responses section
STREAM_VARIANTS = (("every body read", "1", "observer-stream"), ("1 in 100 read (default)", "0.01", "observer-stream"),
                   ("none read", "0", "observer-stream"), ("access log, 1 in 100 read", "0.01", "access-log"))


def streams_section(run_dir: Path, connections: int, duration: float, report: dict[str, object],
                    rounds: int = 1) -> None:
    """ext_proc CPU per request for 16- and 256-token streams, the observer reading every body vs the sample;
    with several rounds, the medians (a low request rate makes the per-request CPU figure noisy)."""
    names = ["vllm-1", "vllm-2", "vllm-3"]
    processes, backends = start_stream_backends(run_dir, names)
    samples: dict[str, list[dict[str, float]]] = {}
    print(f"\n=== STREAMED RESPONSES (one SSE event per token, 1 ms apart; {connections} connections, {duration:g}s "
          "each) ===")
    print(f"{'gateway / observer':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>12}")
    try:
        for _ in range(rounds):
            for tokens in (16, 256):
                requests = stream_requests(tokens)
                alone = measure_gateway(False, backends, requests, connections, duration, run_dir)
                print(_row(f"{tokens} tokens, Envoy alone", alone))
                for label, fraction, mode in STREAM_VARIANTS:
                    result = measure_gateway(True, backends, requests, connections, duration, run_dir,
                                             extproc_args=("--observe-stream-bodies", fraction),
                                             response_observation=mode)
                    print(_row(f"{tokens} tokens, {label}", result))
                    key = fraction if mode == "observer-stream" else mode
                    samples.setdefault(f"{tokens}/{key}", []).append({
                        "rate": result.rate, "cpu_us": result.extproc_cpu_us, "p50": result.percentile(0.5),
                        "rate_alone": alone.rate})
    finally:
        for process in processes:
            process.stop()
    figures = {key: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
               for key, runs in samples.items()}
    if rounds > 1:
        print(f"medians of {rounds} rounds:")
        for key, figure in figures.items():
            print(f"  {key:<10} req/s {figure['rate']:>6.0f}  CPU us/req {figure['cpu_us']:>6.0f}")
    for key, label in (("1", "every body read"), ("0.01", "default"), ("0", "none read"),
                       ("access-log", "access log")):
        ratio = figures[f"256/{key}"]["cpu_us"] / figures[f"16/{key}"]["cpu_us"]
        print(f"ext_proc CPU per request, 256 / 16 tokens, {label}: {ratio:.2f}x")
    report["streams"] = figures


def long_prompts_section(backends: dict[str, int], run_dir: Path, duration: float,
                         report: dict[str, object]) -> None:
    """Added latency of the ext_proc for 2 KB and 400 KB prompts at low concurrency (4 connections)."""
    print("\n=== LONG PROMPTS (4 connections; added latency over Envoy alone) ===")
    print(f"{'prompt / gateway':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>12}")
    figures: dict[str, dict[str, float]] = {}
    for size in (2_000, 400_000):
        requests = long_prompt_requests(size)
        alone = measure_gateway(False, backends, requests, 4, duration, run_dir)
        with_ = measure_gateway(True, backends, requests, 4, duration, run_dir)
        print(_row(f"{size // 1000} KB, Envoy alone", alone))
        print(_row(f"{size // 1000} KB, Envoy + ext_proc", with_))
        added = (with_.percentile(0.5) - alone.percentile(0.5), with_.percentile(0.99) - alone.percentile(0.99))
        print(f"{size // 1000} KB: added p50 {added[0] * 1e3:.2f} ms, p99 {added[1] * 1e3:.2f} ms")
        figures[str(size)] = {"added_p50": added[0], "added_p99": added[1], "cpu_us": with_.extproc_cpu_us}
    report["long_prompts"] = figures


ROUTER_POLICIES = ("cache_aware", "round_robin")


def _median_p(results: list[LoadResult]) -> tuple[float, float]:
    return (statistics.median(r.percentile(0.5) for r in results),
            statistics.median(r.percentile(0.99) for r in results))


def _warn_bad(label: str, result: LoadResult) -> None:
    bad = sum(v for k, v in result.statuses.items() if k != 200) + result.errors
    if bad:
        print(f"  warning: {label}: {bad} non-200 responses {dict(result.statuses)}, {result.errors} errors")


def overhead_section(ns: argparse.Namespace, names: list[str], requests: list[bytes], duration: float, rounds: int,
                     run_dir: Path, report: dict[str, object]) -> None:
    """Envoy alone, Envoy + ext_proc (with and without the observer filter) and vllm-router (cache_aware,
    round_robin) over the same fixed-response backends, alternated in each round: closed loop (saturation), then
    open loop at half the Envoy + ext_proc saturation rate."""
    warm = 0.1 if ns.quick else 1.0
    binary = vllm_router_binary()
    backend_process, backends = start_fixed_backends(run_dir, names)
    GatewayFactory = Callable[[], contextlib.AbstractContextManager[Gateway]]
    gateways: dict[str, GatewayFactory] = {
        "Envoy alone": lambda: envoy_gateway(False, backends, run_dir),
        "Envoy + ext_proc": lambda: envoy_gateway(True, backends, run_dir),
        "Envoy + ext_proc, access log": lambda: envoy_gateway(True, backends, run_dir,
                                                               response_observation="access-log"),
        "Envoy + ext_proc, no obs.": lambda: envoy_gateway(True, backends, run_dir, observer=False),
    }
    if binary is not None:
        for policy in ROUTER_POLICIES:
            gateways[f"vllm-router {policy}"] = functools.partial(vllm_router_gateway, binary, policy, backends,
                                                                  run_dir)
    closed: dict[str, list[LoadResult]] = {label: [] for label in gateways}
    backend_calls: dict[str, list[float]] = {label: [] for label in gateways}
    problems: dict[str, list[str]] = {}
    opened: dict[str, list[LoadResult]] = {}
    fixed_rate = float("nan")
    try:
        for _ in range(rounds):  # alternate so drifts in machine load hit all sides alike
            for label, factory in gateways.items():
                with factory() as gateway:
                    gateway.backend_calls = functools.partial(backend_requests, run_dir)
                    result, calls = closed_loop(gateway, requests, ns.connections, duration, warm,
                                                idle_sample=0.3 if ns.quick else IDLE_SAMPLE_S)
                    found = vllm_router_problems(gateway) if gateway.router is not None else []
                closed[label].append(result)
                backend_calls[label].append(calls)
                if found:
                    problems.setdefault(label, []).extend(found)
                _warn_bad(label, result)
        # The same rate for every gateway, so their latencies compare: half of what Envoy + ext_proc sustains.
        fixed_rate = statistics.median(r.rate for r in closed["Envoy + ext_proc"]) / 2
        open_labels = [label for label in gateways if label != "Envoy + ext_proc, no obs."]
        opened = {label: [] for label in open_labels}
        if fixed_rate > 0:
            for _ in range(rounds):
                for label in open_labels:
                    with gateways[label]() as gateway:
                        result = open_loop(gateway, requests, ns.connections, duration, fixed_rate, warm)
                        found = vllm_router_problems(gateway) if gateway.router is not None else []
                    opened[label].append(result)
                    if found:
                        problems.setdefault(label, []).extend(found)
                    _warn_bad(f"{label} (fixed rate)", result)
    finally:
        backend_process.stop()
    for label, found in problems.items():
        for problem in dict.fromkeys(found):
            print(f"  warning: {label}: {problem}")

    print("=== GATEWAY OVERHEAD (Envoy --concurrency 1, fixed-response backends, "
          f"{ns.connections} connections, {duration:g}s x {rounds} rounds) ===")
    print(f"{'gateway':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17}")
    figures: dict[str, dict[str, float]] = {}
    for label, results in closed.items():
        p50, p99 = _median_p(results)
        figures[label] = {"rate": statistics.median(r.rate for r in results), "p50": p50, "p99": p99,
                          "proxy_cpu_us": statistics.median(r.proxy_cpu_us for r in results),
                          "backend_requests_per_request": statistics.median(backend_calls[label])}
    rows = list(figures) if binary else [*figures, *(f"vllm-router {policy}" for policy in ROUTER_POLICIES)]
    for label in rows:
        if label not in figures:
            print(f"{label:<30} skipped: vllm-router not installed (pip install -e '.[bench]')")
            continue
        figure = figures[label]
        print(f"{label:<30} {figure['rate']:>9.0f} {figure['p50'] * 1e3:>8.2f} {figure['p99'] * 1e3:>8.2f} "
              f"{figure['proxy_cpu_us']:>17.0f}")
    rate_without, rate_with = figures["Envoy alone"]["rate"], figures["Envoy + ext_proc"]["rate"]
    rate_router = figures["Envoy + ext_proc, no obs."]["rate"]
    rate_logged = figures["Envoy + ext_proc, access log"]["rate"]
    cpu_with = statistics.median(r.extproc_cpu_us for r in closed["Envoy + ext_proc"])
    cpu_logged = statistics.median(r.extproc_cpu_us for r in closed["Envoy + ext_proc, access log"])
    print(f"ext_proc CPU per request: {cpu_with:.0f} us, {cpu_logged:.0f} us with the access log (proxy CPU: the "
          "gateway's processes, Envoy's included)")
    ratio = rate_with / rate_without if rate_without else float("nan")
    print(f"rate ratio (with / without): {ratio:.2f}x; with the access log: "
          f"{rate_logged / rate_without if rate_without else float('nan'):.2f}x; without the observer filter: "
          f"{rate_router / rate_without if rate_without else float('nan'):.2f}x")
    versus: dict[str, float] = {}
    versus_logged: dict[str, float] = {}
    for policy in ROUTER_POLICIES if binary else ():
        peer = figures[f"vllm-router {policy}"]
        versus[policy] = rate_with / peer["rate"] if peer["rate"] else float("nan")
        versus_logged[policy] = rate_logged / peer["rate"] if peer["rate"] else float("nan")
        print(f"Envoy + ext_proc / vllm-router {policy}: {versus[policy]:.2f}x (req/s); with the access log: "
              f"{versus_logged[policy]:.2f}x")
    if binary:
        per = figures["vllm-router cache_aware"]["backend_requests_per_request"]
        print(f"backend requests per request: vllm-router cache_aware {per:.1f} (it asks every worker for token "
              f"ids: /v1/completions/render, 404, then /tokenize), round_robin "
              f"{figures['vllm-router round_robin']['backend_requests_per_request']:.1f}, "
              f"Envoy + ext_proc {figures['Envoy + ext_proc']['backend_requests_per_request']:.1f}")
    report.update(rate_without=rate_without, rate_with=rate_with, ratio=ratio,
                  p_without=(figures["Envoy alone"]["p50"], figures["Envoy alone"]["p99"]),
                  p_with=(figures["Envoy + ext_proc"]["p50"], figures["Envoy + ext_proc"]["p99"]),
                  extproc_cpu_us=cpu_with, rate_router_only=rate_router, rate_access_log=rate_logged,
                  extproc_cpu_us_access_log=cpu_logged, ratio_access_log_over_vllm_router=versus_logged,
                  p_router_only=(figures["Envoy + ext_proc, no obs."]["p50"],
                                 figures["Envoy + ext_proc, no obs."]["p99"]),
                  gateways=figures, vllm_router_problems=problems,
                  vllm_router=({policy: figures[f"vllm-router {policy}"] for policy in ROUTER_POLICIES} if binary
                               else "skipped: vllm-router not installed"),
                  ratio_with_over_vllm_router=versus)

    print(f"\n=== FIXED RATE {fixed_rate:.0f} req/s = half the Envoy + ext_proc saturation rate (open loop over "
          f"{ns.connections} connections, latency from each request's scheduled send; {duration:g}s x {rounds} "
          "rounds) ===")
    if not opened:
        print("skipped: no Envoy + ext_proc saturation rate")
        return
    print(f"{'gateway':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'late':>7} {'dropped':>8}")
    fixed: dict[str, dict[str, float]] = {}
    for label, results in opened.items():
        p50, p99 = _median_p(results)
        fixed[label] = {"rate": statistics.median(r.rate for r in results), "p50": p50, "p99": p99,
                        "scheduled": sum(r.scheduled for r in results), "late": sum(r.late for r in results),
                        "dropped": sum(r.dropped for r in results),
                        "send_lag_p50": statistics.median(
                            statistics.median(r.send_lags) if r.send_lags else float("nan") for r in results)}
        figure = fixed[label]
        print(f"{label:<30} {figure['rate']:>9.0f} {p50 * 1e3:>8.2f} {p99 * 1e3:>8.2f} {figure['late']:>7.0f} "
              f"{figure['dropped']:>8.0f}")
    if not binary:
        for policy in ROUTER_POLICIES:
            print(f"{'vllm-router ' + policy:<30} skipped: vllm-router not installed")
    added = (fixed["Envoy + ext_proc"]["p50"] - fixed["Envoy alone"]["p50"],
             fixed["Envoy + ext_proc"]["p99"] - fixed["Envoy alone"]["p99"])
    print(f"Envoy + ext_proc over Envoy alone: added p50 {added[0] * 1e3:.2f} ms, p99 {added[1] * 1e3:.2f} ms")
    logged = fixed["Envoy + ext_proc, access log"]
    added_logged = (logged["p50"] - fixed["Envoy alone"]["p50"], logged["p99"] - fixed["Envoy alone"]["p99"])
    print(f"Envoy + ext_proc, access log, over Envoy alone: added p50 {added_logged[0] * 1e3:.2f} ms, "
          f"p99 {added_logged[1] * 1e3:.2f} ms")
    lag = statistics.median(figure["send_lag_p50"] for figure in fixed.values())
    print(f"(late: sent > {LATE_AFTER_S * 1e3:g} ms behind schedule, of {fixed['Envoy alone']['scheduled']:.0f} "
          f"per gateway; the load generator's median send lag {lag * 1e3:.2f} ms is in every latency alike)")
    report["fixed_rate"] = {"rate": fixed_rate, "gateways": fixed, "added_p50": added[0], "added_p99": added[1],
                            "added_p50_access_log": added_logged[0], "added_p99_access_log": added_logged[1]}


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the memory-store hot path) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the routing path suspended: it awaited I/O")


def _router(active_workflows: int, assignments: object = None,  # type: ignore[no-untyped-def]
            scheduling_config: str | None = None, index_blocks: int = 0):
    """The ext_proc's router in process. ``index_blocks``: that many block hashes learned by the prefix index
    first, spread over the instances (each instance's capacity raised to hold its share)."""
    from extproc.config import Settings
    from extproc.reporting import NullReporter
    from extproc.server import build_router

    instances = 3
    settings = Settings(max_workflows=active_workflows * 2, scheduling_config=scheduling_config,
                        prefix_capacity_blocks=max(31_250, index_blocks // instances + 1))
    router = build_router(settings, NullReporter(), assignments=assignments)  # type: ignore[arg-type]
    if index_blocks:
        rng = random.Random(2)
        names = list(router.endpoints.instances)
        per = index_blocks // len(names)
        for name in names:
            for start in range(0, per, 4096):  # chains of prompts' blocks, as learn() sees them
                router.prefix_index.learn(name, [rng.getrandbits(32) for _ in range(min(4096, per - start))])
        held = sum(router.prefix_index.size(n) for n in names)
        assert held >= 0.999 * index_blocks, (held, index_blocks)  # a few random 32-bit hashes collide
    return router


def _messages(workflow_ids: list[str]):  # type: ignore[no-untyped-def]
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    headers = pb.ProcessingRequest()
    for key, value in ((":path", "/v1/completions"), (":method", "POST"), ("content-type", "application/json"),
                       ("x-request-id", "bench")):
        header = headers.request_headers.headers.headers.add()
        header.key, header.raw_value = key, value.encode()
    bodies = []
    for workflow_id in workflow_ids:
        message = pb.ProcessingRequest()
        message.request_body.body = orjson.dumps({
            "model": "m", "prompt": "summarize the quarterly figures. " * 20, "max_tokens": 16,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "a"}})
        message.request_body.end_of_stream = True
        bodies.append(message)
    return headers, bodies


async def store_decision_times(store: str, samples: int) -> dict[str, tuple[float, float]]:
    """p50/p99 of one routed request (headers + body messages) through the servicer, awaited on an event loop,
    for a known workflow (affinity: local) and a new one (with Redis: one atomic claim round trip)."""
    from extproc.datastore.shared_assignments import RedisAssignments
    from extproc.handlers.server import Stream

    assignments = None
    if store != "memory":
        assignments = RedisAssignments(store, ttl=3600, max_workflows=1_000_000, prefix=f"bench{time.time_ns()}:")
    router = _router(samples * 2, assignments)
    servicer = router.servicer
    headers, known = _messages([f"known-{i}" for i in range(1000)])
    _, fresh = _messages([f"fresh-{i}" for i in range(samples)])
    for message in known:
        stream = Stream()
        await servicer.handle(headers, stream)
        await servicer.handle(message, stream)
    result = {}
    for label, messages in (("known workflow", [known[i % len(known)] for i in range(samples)]),
                            ("new workflow", fresh)):
        times = []
        for message in messages:
            stream = Stream()
            started = time.perf_counter()
            await servicer.handle(headers, stream)
            await servicer.handle(message, stream)
            times.append(time.perf_counter() - started)
            router.inflight.finish(stream.request.route_id)  # type: ignore[union-attr,arg-type]
        times.sort()
        result[label] = (times[len(times) // 2], times[int(len(times) * 0.99)])
    if assignments is not None:
        await assignments.stop()
    return result


def routing_decision_times(active_workflows: int, samples: int, scheduling_config: str | None = None,
                           index_blocks: int = 0) -> tuple[float, float]:
    """p50/p99 seconds of the servicer's synchronous core for one body message, at N active workflows."""
    from extproc.handlers.server import Stream

    router = _router(active_workflows, scheduling_config=scheduling_config, index_blocks=index_blocks)
    servicer = router.servicer
    headers, bodies = _messages([f"wf-{i}" for i in range(active_workflows)])
    for message in bodies:  # every workflow becomes active
        stream = Stream()
        _drive(servicer.handle(headers, stream))
        _drive(servicer.handle(message, stream))
    assert len(router.workflows) == active_workflows
    rng = random.Random(1)
    times = []
    perf = time.perf_counter
    for _ in range(samples):
        message = bodies[rng.randrange(active_workflows)]
        stream = Stream()
        started = perf()
        _drive(servicer.handle(headers, stream))
        _drive(servicer.handle(message, stream))
        times.append(perf() - started)
        router.inflight.finish(stream.request.route_id)  # type: ignore[union-attr,arg-type]
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds per measurement")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per gateway")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None, help="alternate the gateways this many times")
    parser.add_argument("--redis", default=None,
                        help="redis:// URL: also time routing decisions with the Redis store vs memory")
    parser.add_argument("--replicas-compare", action="store_true",
                        help="also compare the request rate with one vs two ext_proc replicas (Redis store)")
    parser.add_argument("--streams", action="store_true",
                        help="also measure streamed responses (16 and 256 tokens): ext_proc CPU per request")
    parser.add_argument("--long-prompts", action="store_true",
                        help="also measure the added latency for 2 KB and 400 KB prompts")
    parser.add_argument("--cost-model-index", action="store_true",
                        help="also time decisions with the cost-model profile, a 1M-block prefix index, 100k workflows")
    parser.add_argument("--json-out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    duration = ns.duration or (1.5 if ns.quick else 10.0)
    rounds = ns.rounds or (1 if ns.quick else 3)
    run_dir = Path(tempfile_dir())
    names = ["vllm-1", "vllm-2", "vllm-3"]
    requests = make_requests(workflows=200)
    report: dict[str, object] = {"duration_s": duration, "connections": ns.connections, "rounds": rounds}
    overhead_section(ns, names, requests, duration, rounds, run_dir, report)

    print("\n=== ROUTING DECISION TIME (in-process: parse body + route + build response) ===")
    print(f"{'active workflows':>16} {'p50 us':>8} {'p99 us':>8}")
    decision: dict[str, tuple[float, float]] = {}
    for active in (1_000, 10_000, 100_000):
        if ns.quick and active > 10_000:
            break
        p50, p99 = routing_decision_times(active, samples=2_000 if ns.quick else 20_000)
        decision[str(active)] = (p50, p99)
        print(f"{active:>16} {p50 * 1e6:>8.1f} {p99 * 1e6:>8.1f}")
    report["routing_decision_s"] = decision
    if ns.cost_model_index:
        print("\n=== DECISION TIME, COST MODEL (builtin:cost-model), 1M-block prefix index, 100k workflows ===")
        blocks = 1_000_000
        p50, p99 = routing_decision_times(100_000, 2_000 if ns.quick else 20_000, "builtin:cost-model", blocks)
        from extproc.datastore.prefix_index import BYTES_PER_ENTRY
        print(f"p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us; index {blocks:,} blocks x ~{BYTES_PER_ENTRY} B "
              f"= ~{blocks * BYTES_PER_ENTRY / 2**20:.0f} MiB")
        report["cost_model_decision_s"] = (p50, p99)

    if ns.long_prompts:
        backend_process, backends = start_fixed_backends(run_dir, names)
        try:
            long_prompts_section(backends, run_dir, duration, report)
        finally:
            backend_process.stop()
    if ns.streams:
        streams_section(run_dir, 64, duration, report, rounds)

    if ns.redis:
        print(f"\n=== ROUTING DECISION TIME BY STORE (awaited on an event loop; Redis at {ns.redis}) ===")
        print(f"{'store':<8} {'workflow':<16} {'p50 us':>8} {'p99 us':>8}")
        by_store = {}
        for store in ("memory", ns.redis):
            times = asyncio.run(store_decision_times(store, 500 if ns.quick else 5000))
            label = "memory" if store == "memory" else "redis"
            by_store[label] = times
            for kind, (p50, p99) in times.items():
                print(f"{label:<8} {kind:<16} {p50 * 1e6:>8.1f} {p99 * 1e6:>8.1f}")
        report["decision_by_store_s"] = by_store

    if ns.replicas_compare:
        print("\n=== ONE vs TWO EXT_PROC REPLICAS (shared state in a private Redis), by response observation ===")
        backend_process, backends = start_fixed_backends(run_dir, names)
        modes = ("observer-stream", "access-log")
        try:
            rates: dict[tuple[str, int], list[float]] = {(m, r): [] for m in modes for r in (1, 2)}
            for _ in range(rounds):
                for mode, replicas in rates:
                    with envoy_gateway(True, backends, run_dir, replicas, "private",
                                       response_observation=mode) as gateway:
                        result = closed_loop(gateway, requests, ns.connections, duration)[0]
                    rates[mode, replicas].append(result.rate)
        finally:
            backend_process.stop()
        print(f"{'response observation':<22} {'1 replica':>10} {'2 replicas':>11} {'2 / 1':>7}")
        scaling: dict[str, dict[str, float]] = {}
        for mode in modes:
            one, two = statistics.median(rates[mode, 1]), statistics.median(rates[mode, 2])
            scaling[mode] = {"1": one, "2": two}
            print(f"{mode:<22} {one:>10.0f} {two:>11.0f} {two / one:>6.2f}x")
        print("(2 cores: Envoy, the replicas and the load generator share them)")
        report["replicas_rate"] = scaling["observer-stream"]
        report["replicas_rate_by_observation"] = scaling
    if ns.json_out:
        ns.json_out.parent.mkdir(parents=True, exist_ok=True)
        ns.json_out.write_text(json.dumps(report, indent=2))
    return 0


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="gwbench-")


if __name__ == "__main__":
    sys.exit(main())
