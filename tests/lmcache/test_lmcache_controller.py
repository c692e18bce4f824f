"""LMCacheIndex against a REAL LMCache controller (lmcache 0.5.6) fed by simulated instances.

Skipped unless a Python with lmcache installed exists: ``$LMCACHE_PYTHON`` or ``.lmcache-venv/bin/python``
(see docs/lmcache.md; lmcache pulls torch and CUDA packages, so it never goes into the project's virtualenv).

What runs: ``python -m lmcache.v1.api_server`` (its HTTP API and ZMQ monitor ports, all free ports), two
in-process vLLM simulators, and for each one ``benchmarks/simulator/lmcache_worker.py`` as a subprocess of the
lmcache Python: it registers with the controller over ZMQ, heartbeats (which makes the fresh controller ask
for a full sync), follows the simulator's ``/sim/requests`` and reports the full 256-token chunks of every
prompt it serves. The test then asks the controller through :class:`LMCacheIndex` which instance holds the
longest prefix of a new prompt, tokenizing as the simulator does: with the approximate tokenizer
(``--tokenizer approx``) or with the instance's own ``/tokenize`` (``--tokenizer vllm:URL``).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.simulator import SimConfig, SimServer
from benchmarks.simulator.lmcache_worker import DEFAULT_CHUNK_SIZE, READY_MARKER, chunk_hashes
from extproc.kv_index import LMCacheIndex, best_match
from extproc.tokenization import ApproxTokenizer, VLLMTokenizer
from extproc.tokenization.approx import encode

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "benchmarks" / "simulator" / "lmcache_worker.py"
# Absolute: the controller and the workers are started with another working directory.
LMCACHE_PYTHON = os.path.abspath(os.environ.get("LMCACHE_PYTHON", str(REPO / ".lmcache-venv" / "bin" / "python")))

pytestmark = pytest.mark.skipif(
    not os.access(LMCACHE_PYTHON, os.X_OK),
    reason=f"no Python with lmcache at {LMCACHE_PYTHON}: run `make test-lmcache` (see docs/lmcache.md)",
)

CHUNK = DEFAULT_CHUNK_SIZE
SHARED = " ".join(f"shared{i}" for i in range(700))  # ~2100 tokens: 8 full chunks
LONGER = SHARED + " " + " ".join(f"alpha{i}" for i in range(900))  # ~4700 tokens: 18 full chunks
OTHER = SHARED + " " + " ".join(f"beta{i}" for i in range(400))  # ~2900 tokens: 11 full chunks


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Controller:
    url: str
    pull_port: int
    reply_port: int
    log: Path


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    http_port, pull, reply, heartbeat = _free_ports(4)
    log = tmp_path_factory.mktemp("lmcache") / "controller.log"
    ports = json.dumps({"pull": pull, "reply": reply, "heartbeat": heartbeat})
    with log.open("w") as out:
        proc = subprocess.Popen(
            [LMCACHE_PYTHON, "-m", "lmcache.v1.api_server", "--host", "127.0.0.1", "--port", str(http_port),
             "--monitor-ports", ports],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd="/",
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"controller exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.post(f"{url}/lookup", json={"tokens": [1]}, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"controller not up after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Controller(url, pull, reply, log)
    finally:
        _stop(proc)


def _start_worker(ctrl: Controller, instance_id: str, sim_url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [LMCACHE_PYTHON, str(WORKER), "--instance-id", instance_id, "--controller-host", "127.0.0.1",
         "--pull-port", str(ctrl.pull_port), "--reply-port", str(ctrl.reply_port), "--sim-url", sim_url,
         "--poll-interval", "0.05", "--heartbeat-interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if line.startswith(READY_MARKER):
                return proc
        elif proc.poll() is not None:
            break
    _stop(proc)
    pytest.fail(f"worker {instance_id} did not register:\n{''.join(seen)[-3000:]}")


async def _complete(sim_url: str, prompt: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.post(f"{sim_url}/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 4})
        response.raise_for_status()
        return response.json()


async def _until(index: LMCacheIndex, prompt: str, expected: dict[str, int], timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while time.monotonic() < deadline:
        got = await index.lookup(prompt)
        if got == expected:
            return got
        await asyncio.sleep(0.1)
    return got


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [SimServer(SimConfig(name=f"vllm-{i}", port=0, time_scale=0.0, log_level="warning")) for i in (1, 2)]
    for server in servers:
        await server.start()
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop()


def test_worker_keys_equal_lmcache_token_database() -> None:
    """The simulated worker's chunk hashes are exactly what the controller's ChunkedTokenDatabase computes."""
    tokens = encode(LONGER)
    code = (
        "import json, sys\n"
        "from lmcache.v1.token_database import ChunkedTokenDatabase\n"
        "tokens = json.load(sys.stdin)\n"
        "print(json.dumps([list(t) for t in ChunkedTokenDatabase().process_tokens(tokens, make_key=False)]))\n"
    )
    out = subprocess.run([LMCACHE_PYTHON, "-c", code], input=json.dumps(tokens), capture_output=True, text=True,
                         check=True, cwd="/")
    theirs = [tuple(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]
    # The controller hashes the unfull tail chunk too (save_unfull_chunk=True without config); workers store
    # full chunks only, so the tail can never match.
    assert theirs == chunk_hashes(tokens, save_unfull_chunk=True)
    assert theirs[: len(tokens) // CHUNK] == chunk_hashes(tokens)


async def test_lookup_finds_the_instance_with_the_longest_prefix(controller: Controller, sims: list[SimServer]) -> None:
    sim1, sim2 = sims
    workers: list[subprocess.Popen[str]] = []
    try:
        # Registration order matters for the answer's shape: for a chunk held by both instances the controller
        # names the first registered one (see extproc/kv_index/lmcache.py).
        workers.append(_start_worker(controller, "lmc-a", sim1.url))
        workers.append(_start_worker(controller, "lmc-b", sim2.url))
        await _complete(sim1.url, OTHER)  # vllm-1 holds SHARED + beta words: 11 chunks, 8 shared with LONGER
        await _complete(sim2.url, LONGER)  # vllm-2 holds SHARED + alpha words: a longer prefix

        shared_chunks = len(encode(SHARED)) // CHUNK
        longer_chunks = len(encode(LONGER)) // CHUNK
        assert shared_chunks == 8 and longer_chunks == 18
        instance_map = {"lmc-a": "vllm-1", "lmc-b": "vllm-2"}
        async with LMCacheIndex(controller.url, instance_map, ApproxTokenizer(), timeout_s=2.0) as index:
            query = LONGER + " and a new question at the end"
            expected = {"vllm-1": shared_chunks * CHUNK, "vllm-2": longer_chunks * CHUNK}
            assert await _until(index, query, expected) == expected
            assert best_match(expected) == ("vllm-2", 18 * CHUNK)
            # The instance's own /tokenize gives the same ids, hence the same answer.
            tokenize = VLLMTokenizer(sim2.url, timeout_s=2.0)
            async with LMCacheIndex(controller.url, instance_map, tokenize, timeout_s=2.0) as via_vllm:
                assert await via_vllm.lookup(query) == expected
                fractions = await via_vllm.cached_fractions(query, None)
                assert fractions == {k: v / len(encode(query)) for k, v in expected.items()}

            # A prompt only vllm-1 has seen beyond the shared part: its own chunks are attributed to it.
            other_query = OTHER + " follow-up"
            other_chunks = len(encode(OTHER)) // CHUNK
            assert other_chunks == 11
            assert await _until(index, other_query, {"vllm-1": other_chunks * CHUNK}) == {
                "vllm-1": other_chunks * CHUNK
            }
            # Unrelated text matches nothing.
            assert await index.lookup("completely unrelated " * 200) == {}

            # The backend chosen this way does hold the prefix: the simulator reports it as cached.
            usage = (await _complete(sim2.url, query))["usage"]
            assert usage["prompt_tokens_details"]["cached_tokens"] >= 18 * CHUNK  # type: ignore[index]

            # The controller's clear goes to the worker's control socket; the worker evicts and reports it.
            async with httpx.AsyncClient(timeout=10.0) as http:
                cleared = await http.post(f"{controller.url}/clear",
                                          json={"instance_id": "lmc-a", "location": "LocalCPUBackend"})
            assert cleared.status_code == 200, cleared.text
            assert cleared.json()["num_tokens"] > 0
            # Every chunk vllm-1 held is gone: the shared prefix is now found on vllm-2 only.
            assert await _until(index, query, {"vllm-2": longer_chunks * CHUNK}) == {"vllm-2": longer_chunks * CHUNK}

            # A worker that stops deregisters; its instance disappears from the answers.
            _stop(workers.pop())
            assert await _until(index, query, {}) == {}
            assert index.errors == 0
    finally:
        for worker in workers:
            _stop(worker)
    if sys.platform.startswith("linux"):
        log = controller.log.read_text()
        assert "Registered instance-worker ('lmc-a', 0)" in log
        assert "Full sync completed for worker" in log


def test_gateway_routes_by_the_controllers_answer(controller: Controller) -> None:
    """The whole stack with ``--kv-index lmcache``: prompts warmed on an instance behind Envoy's back (so the
    router's own prefix index knows nothing) are routed to that instance because the controller says so."""
    from benchmarks.stack import Stack
    from tests.conftest import stack_options

    options = stack_options(with_a2a=False, extproc_args=("--kv-index", "lmcache", "--lmcache-url", controller.url,
                                                          "--lmcache-timeout", "1.0", "--tokenizer", "approx"))
    with Stack(options) as stack:
        workers = [_start_worker(controller, name, stack.simulator_url(name)) for name in stack.simulators]
        try:
            prompts = {name: f"{name} " + " ".join(f"{name}-word{i}" for i in range(1500))
                       for name in stack.simulators}
            for name, prompt in prompts.items():  # warm each instance directly, not through the gateway
                assert httpx.post(f"{stack.simulator_url(name)}/v1/completions",
                                  json={"prompt": prompt, "max_tokens": 2}, timeout=30).status_code == 200
            index = LMCacheIndex(controller.url, {n: n for n in stack.simulators}, ApproxTokenizer(), timeout_s=1.0)
            for name, prompt in prompts.items():
                asyncio.run(_until(index, prompt + " tail", {name: (len(encode(prompt)) // CHUNK) * CHUNK}))
            for name, prompt in prompts.items():
                response = httpx.post(f"{stack.url}/v1/completions",
                                      json={"prompt": prompt + " a new question", "max_tokens": 2}, timeout=30)
                assert response.status_code == 200
                assert response.headers["x-served-by"] == name
                assert response.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        finally:
            for worker in workers:
                _stop(worker)
