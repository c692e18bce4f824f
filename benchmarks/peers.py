"""The peer router (``vllm-router`` from PyPI) and the simulated fleet every contender of the comparison uses.

vllm-router 0.1.17's ``cache_aware`` policy matches prefixes on token ids. For each request it asks a worker
for them, first with ``POST /v1/completions/render`` and then with vLLM's ``POST /tokenize``; when neither
answers it routes with no prefix information at all (outcome ``missing_tokens`` of its
``vllm_router_prefix_routing_decisions_total`` metric: the least-loaded worker, the first one on ties). The
simulator serves neither endpoint, which would silently turn ``cache_aware`` into plain least-loaded routing.

``python -m benchmarks.peers <simulator flags>`` therefore runs the simulator exactly as
``python -m benchmarks.simulator`` does (same flags, same ``VLLM_SIM_LISTENING port=N`` line), plus vLLM's
``/tokenize`` (``{"model", "prompt" | "messages"}`` -> ``{"count", "max_model_len", "tokens",
"token_strs"}``) answered with the simulator's own tokenizer, so the ids vllm-router matches on are the ids
the engine caches. ``/v1/completions/render`` still answers 404 (vllm-router then falls back to
``/tokenize``). The comparison starts every contender's fleet with this command, so all fleets are identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.simulator.__main__ import build_config
from benchmarks.simulator.config import LISTENING_MARKER, SimConfig
from benchmarks.simulator.server import SimServer
from benchmarks.simulator.tokenizer import apply_chat_template, encode
from benchmarks.stack import Process, free_port, spawn, wait_for_line

VLLM_ROUTER_VERSION = "0.1.17"


# --- the simulator with vLLM's /tokenize --------------------------------------------------------------------
def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def add_tokenize(app: Starlette, max_model_len: int) -> None:
    """Add vLLM's ``POST /tokenize`` to a simulator app (the ids of the simulator's tokenizer, no BOS)."""

    async def tokenize(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            if "messages" in body:
                ids = encode(apply_chat_template(body["messages"], bool(body.get("add_generation_prompt", True))))
            else:
                prompt = body["prompt"]
                ids = list(prompt) if isinstance(prompt, list) else encode(str(prompt))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _json({"error": {"message": f"invalid tokenize request: {exc}", "type": "BadRequestError"}}, 400)
        return _json({"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": None})

    app.router.routes.insert(0, Route("/tokenize", tokenize, methods=["POST"]))


async def serve_with_tokenize(config: SimConfig) -> None:
    server = SimServer(config)
    add_tokenize(server.app, server.sim.engine.max_model_len)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    sys.stdout.write(f"{LISTENING_MARKER} port={port}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
    except ValueError as exc:
        print(f"vllm-sim (peers): {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr)
    try:  # the event loop the simulator's own CLI uses (uvloop ships with uvicorn[standard])
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(serve_with_tokenize(config))
    return 0


# --- the fleet ----------------------------------------------------------------------------------------------
def start_fleet(instances: int, sim_args: Sequence[str], run_dir: Path) -> dict[str, Process]:
    """``instances`` simulators (with /tokenize) on free ports, named vllm-1 ...; ``process.ports['http']``."""
    fleet: dict[str, Process] = {}
    try:
        for index in range(1, instances + 1):
            name = f"vllm-{index}"
            argv = [sys.executable, "-m", "benchmarks.peers", "--host", "127.0.0.1", "--port", "0", "--name", name,
                    *sim_args]
            process = spawn(name, argv, run_dir)
            fleet[name] = process
            process.ports["http"] = int(wait_for_line(process, rf"{LISTENING_MARKER} port=(\d+)").group(1))
    except BaseException:
        stop_all(fleet.values())
        raise
    return fleet


def stop_all(processes: Any) -> None:
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop()


# --- vllm-router --------------------------------------------------------------------------------------------
def vllm_router_binary() -> str | None:
    """The ``vllm-router`` executable of this interpreter's environment, else the one on PATH, else None."""
    beside = Path(sys.executable).parent / "vllm-router"
    if beside.exists():
        return str(beside)
    return shutil.which("vllm-router")


def start_vllm_router(binary: str, policy: str, workers: Sequence[str], run_dir: Path,
                      timeout: float = 60.0) -> tuple[Process, str, str]:
    """Start ``vllm-router --policy policy`` over ``workers``; wait for its /health. (process, url, metrics url)."""
    port, metrics_port = free_port(), free_port()
    argv = [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers, "--policy", policy,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--worker-startup-check-interval", "1", "--log-level", "warning"]
    process = spawn(f"vllm-router-{policy}", argv, run_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"vllm-router exited ({process.popen.returncode}):\n{process.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url, f"http://127.0.0.1:{metrics_port}/metrics"
        time.sleep(0.1)
    process.stop()
    raise TimeoutError(f"vllm-router not healthy within {timeout:g}s:\n{process.log_tail()}")


def prefix_decisions(metrics_text: str) -> dict[str, float]:
    """vllm-router's ``vllm_router_prefix_routing_decisions_total`` by outcome (prefix_hit, prefix_miss,
    missing_tokens, load_imbalance ...): shows whether cache_aware really saw token ids."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("vllm_router_prefix_routing_decisions_total{"):
            labels, _, value = line.rpartition(" ")
            outcome = labels.partition('outcome="')[2].partition('"')[0]
            out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


if __name__ == "__main__":
    sys.exit(main())
