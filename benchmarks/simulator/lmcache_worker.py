"""Plays an LMCache worker for a simulated vLLM instance, so a real LMCache controller can answer ``/lookup``.

A real deployment runs LMCache inside each vLLM; with ``enable_controller`` its ``LMCacheWorker`` registers
with the controller and reports every KV chunk it stores or evicts. This module does the same for a simulator
instance, speaking the controller's own wire protocol (lmcache 0.5.6, read from
``lmcache/v1/cache_controller/{worker.py,controller_manager.py,message.py}``):

* **Sockets.** ``PUSH`` connected to the controller's ``pull`` port for one-way messages (``DeRegisterMsg``,
  ``BatchedKVOperationMsg``, ``FullSyncBatchMsg``, ``FullSyncEndMsg``); ``DEALER`` connected to its ``reply``
  port (a ``ROUTER``) for requests that need an answer (``RegisterMsg``, ``HeartbeatMsg``,
  ``FullSyncStartMsg``, ``FullSyncStatusMsg``), framed ``[b"", payload]``; ``REP`` bound on this worker's own
  port, where the controller sends control messages (health, clear, ...). A dedicated heartbeat ``DEALER`` is
  used when the controller returns ``extra_config["heartbeat_url"]`` on registration.
* **Encoding.** ``msgspec.msgpack`` of the tagged ``msgspec.Struct`` classes of
  ``lmcache.v1.cache_controller.message`` (imported from the installed lmcache, never copied).
* **KV operations.** The controller's handler only accepts ``BatchedKVOperationMsg`` (one location, a list of
  ``KVOpEvent(op_type, key, seq_num)`` with a per-worker sequence number from 0); single ``KVAdmitMsg`` /
  ``KVEvictMsg`` are declared but logged as unknown by ``handle_worker_message``. The location is the storage
  backend's name, ``"LocalCPUBackend"`` for LMCache's CPU cache.
* **Keys.** A key is the chunk hash of LMCache's ``ChunkedTokenDatabase``: tokens cut into 256-token chunks,
  ``h_i = hash((h_{i-1}, tuple(chunk_i), ()))`` with ``h_{-1} = NONE_HASH = 0`` and Python's builtin ``hash``
  (the controller builds ``ChunkedTokenDatabase()`` with no config: hash algorithm ``"builtin"``, and
  ``NONE_HASH`` stays 0 when vLLM is not importable). The hash of a tuple of ints does not depend on
  ``PYTHONHASHSEED``. A worker stores full chunks only (``save_unfull_chunk`` defaults to False), so matches
  are multiples of 256 tokens. :func:`chunk_hashes` reproduces this; the integration test checks it against
  ``lmcache.v1.token_database.ChunkedTokenDatabase``.
* **Full sync.** A fresh controller asks every worker for a full sync on its first heartbeat
  (``FullSyncCommand``); the worker sends ``FullSyncStartMsg``, its keys in ``FullSyncBatchMsg``s,
  ``FullSyncEndMsg``, then polls ``FullSyncStatusMsg``. This worker does it inline, so no admit interleaves.

What is cached: like LMCache in vLLM (``save_decode_cache`` off), the full chunks of each request's *prompt*
tokens, tokenized with the simulator's tokenizer (``extproc/tokenization/approx.py``, chat requests through its
chat template). In ``--sim-url`` mode the worker polls the instance's ``GET /sim/requests`` and admits each new
request's prompt; an LRU bounded by ``--capacity-chunks`` evicts (and reports) the least recently used chunks.

Run it with the Python that has lmcache installed, by path (so the simulator package, whose dependencies that
virtualenv may lack, is not imported; only the stdlib-only ``extproc/tokenization/approx.py`` is loaded)::

    /work/lmcache-venv/bin/python benchmarks/simulator/lmcache_worker.py --instance-id vllm-1 \\
        --controller-host 127.0.0.1 --pull-port 8300 --reply-port 8400 --sim-url http://127.0.0.1:8101

It prints ``LMCACHE_WORKER_READY port=N`` once registered and deregisters on SIGTERM/SIGINT. This module imports
lmcache, zmq, msgspec and httpx lazily: importing it costs nothing and needs none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LOCATION",
    "NONE_HASH",
    "READY_MARKER",
    "SimLMCacheWorker",
    "body_prompt_tokens",
    "chunk_hashes",
    "load_tokenizer",
    "main",
]

log = logging.getLogger("lmcache_worker")

DEFAULT_CHUNK_SIZE = 256  # LMCacheEngineConfig.chunk_size default
DEFAULT_LOCATION = "LocalCPUBackend"  # str(LocalCPUBackend), the location LMCache reports
NONE_HASH = 0  # lmcache.v1.token_database.NONE_HASH without vLLM
READY_MARKER = "LMCACHE_WORKER_READY"
FULL_SYNC_BATCH = 2000  # full_sync_batch_size default


def chunk_hashes(
    tokens: Sequence[int], chunk_size: int = DEFAULT_CHUNK_SIZE, save_unfull_chunk: bool = False
) -> list[tuple[int, int, int]]:
    """``(start, end, chunk_hash)`` per chunk, as ``ChunkedTokenDatabase.process_tokens(make_key=False)``."""
    n = len(tokens)
    end = n if save_unfull_chunk else n - n % chunk_size
    out: list[tuple[int, int, int]] = []
    prefix = NONE_HASH
    for start in range(0, end, chunk_size):
        prefix = hash((prefix, tuple(tokens[start : start + chunk_size]), ()))
        out.append((start, min(start + chunk_size, n), prefix))
    return out


def load_tokenizer() -> ModuleType:
    """The simulator's tokenizer, :mod:`extproc.tokenization.approx`; loaded from its file when the ``extproc``
    package cannot be imported (the lmcache virtualenv lacks its dependencies). The module only uses the
    standard library and imports nothing from its package."""
    try:
        from extproc.tokenization import approx

        return approx
    except ImportError:
        pass
    name = "_approx_tokenizer"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "extproc" / "tokenization" / "approx.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def body_prompt_tokens(path: str, body: Any, tokenizer: ModuleType | None = None) -> list[int] | None:
    """The prompt token ids the simulator computes for a recorded request, or ``None`` if it has none."""
    tok = tokenizer or load_tokenizer()
    if not isinstance(body, Mapping):
        return None
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        try:
            return list(tok.encode(tok.apply_chat_template(messages)))
        except (TypeError, KeyError):
            return None
    if path.endswith("/completions"):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]  # a batch: the simulator serves its first prompt
        if isinstance(prompt, str):
            return list(tok.encode(prompt))
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
    return None


class SimLMCacheWorker:
    """One LMCache worker (``worker_id``, tensor-parallel rank) of LMCache instance ``instance_id``."""

    def __init__(
        self,
        instance_id: str,
        *,
        controller_host: str,
        pull_port: int,
        reply_port: int,
        worker_id: int = 0,
        ip: str = "127.0.0.1",
        port: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        location: str = DEFAULT_LOCATION,
        capacity_chunks: int | None = None,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.instance_id = instance_id
        self.worker_id = worker_id
        self.pull_url = f"tcp://{controller_host}:{pull_port}"
        self.reply_url = f"tcp://{controller_host}:{reply_port}"
        self.ip = ip
        self.port = port
        self.chunk_size = chunk_size
        self.location = location
        self.capacity_chunks = capacity_chunks
        self.request_timeout_s = request_timeout_s
        # chunk hash -> None, least recently used first
        self.keys: OrderedDict[int, None] = OrderedDict()
        self.seq_num = 0
        self.admitted = 0
        self.evicted = 0
        self.full_syncs = 0
        self._m: Any = None  # lmcache.v1.cache_controller.message
        self._msgspec: Any = None
        self._ctx: Any = None
        self._push: Any = None
        self._dealer: Any = None
        self._heartbeat: Any = None
        self._rep: Any = None
        self._rep_task: asyncio.Task[None] | None = None
        self._req_lock: asyncio.Lock | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the sockets and register (``RegisterMsg`` -> ``RegisterRetMsg``)."""
        import msgspec
        import zmq
        import zmq.asyncio
        from lmcache.v1.cache_controller import message

        self._m, self._msgspec = message, msgspec
        self._req_lock = asyncio.Lock()
        self._ctx = zmq.asyncio.Context()
        self._rep = self._ctx.socket(zmq.REP)
        if self.port:
            self._rep.bind(f"tcp://{self.ip}:{self.port}")
        else:
            self.port = self._rep.bind_to_random_port(f"tcp://{self.ip}")
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.connect(self.pull_url)
        self._dealer = self._dealer_socket(self.reply_url)
        self._rep_task = asyncio.get_running_loop().create_task(self._serve_control())
        m = self._m
        ret = await self._request(
            m.RegisterMsg(
                instance_id=self.instance_id, worker_id=self.worker_id, ip=self.ip, port=self.port, peer_init_url=None
            )
        )
        if not isinstance(ret, m.RegisterRetMsg):
            raise RuntimeError(f"registration refused: {ret!r}")
        heartbeat_url = ret.extra_config.get("heartbeat_url")
        if heartbeat_url:
            self._heartbeat = self._dealer_socket(f"tcp://{heartbeat_url}")

    async def stop(self, deregister: bool = True) -> None:
        if self._ctx is None:
            return
        if deregister:
            m = self._m
            await self._send(m.DeRegisterMsg(instance_id=self.instance_id, worker_id=self.worker_id, ip=self.ip,
                                             port=self.port))
        if self._rep_task is not None:
            self._rep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rep_task
        self._ctx.destroy(linger=1000)  # let the DeRegisterMsg leave
        self._ctx = None

    def _dealer_socket(self, url: str) -> Any:
        import zmq

        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, int(self.request_timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.request_timeout_s * 1000))
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url)
        return sock

    # --- wire -----------------------------------------------------------------------------------------------
    async def _send(self, *msgs: Any) -> None:
        """PUSH one-way messages (one frame each, as ``LMCacheWorker.push`` batches them)."""
        await self._push.send_multipart([self._msgspec.msgpack.encode(msg) for msg in msgs])

    async def _request(self, msg: Any, sock: Any = None) -> Any:
        """DEALER -> ROUTER request: send ``[b"", payload]``, answer is the last frame."""
        assert self._req_lock is not None
        async with self._req_lock:
            s = sock if sock is not None else self._dealer
            await s.send_multipart([b"", self._msgspec.msgpack.encode(msg)])
            frames = await s.recv_multipart()
        return self._msgspec.msgpack.decode(frames[-1], type=self._m.Msg)

    async def _serve_control(self) -> None:
        """Answer the controller's control messages on the REP socket (health, clear, check-finish)."""
        m = self._m
        while True:
            raw = await self._rep.recv()
            try:
                req = self._msgspec.msgpack.decode(raw, type=m.Msg)
                if isinstance(req, m.HealthWorkerMsg):
                    ret: Any = m.HealthWorkerRetMsg(error_code=0)
                elif isinstance(req, m.ClearWorkerMsg):
                    ret = m.ClearWorkerRetMsg(num_tokens=await self.clear())
                elif isinstance(req, m.CheckFinishWorkerMsg):
                    ret = m.CheckFinishWorkerRetMsg(status="finished")
                else:
                    ret = m.ErrorMsg(error=f"not supported by the simulated worker: {type(req).__name__}")
            except Exception as e:  # the REP socket must answer every request
                ret = m.ErrorMsg(error=f"Worker error: {e}")
            await self._rep.send(self._msgspec.msgpack.encode(ret))

    # --- KV bookkeeping -------------------------------------------------------------------------------------
    async def _ops(self, op_type: str, keys: Sequence[int]) -> None:
        if not keys:
            return
        m = self._m
        op = m.OpType.ADMIT if op_type == "admit" else m.OpType.EVICT
        events = []
        for key in keys:
            events.append(m.KVOpEvent(op_type=op, key=key, seq_num=self.seq_num))
            self.seq_num += 1
        await self._send(m.BatchedKVOperationMsg(instance_id=self.instance_id, worker_id=self.worker_id,
                                                 location=self.location, operations=events))

    async def admit_tokens(self, tokens: Sequence[int]) -> int:
        """Store the full chunks of ``tokens``; report new ones (and LRU evictions). Returns chunks admitted."""
        new: list[int] = []
        for _, _, key in chunk_hashes(tokens, self.chunk_size):
            if key in self.keys:
                self.keys.move_to_end(key)
            else:
                self.keys[key] = None
                new.append(key)
        evict: list[int] = []
        if self.capacity_chunks is not None:
            while len(self.keys) > self.capacity_chunks:
                evict.append(self.keys.popitem(last=False)[0])
        admitted = [k for k in new if k in self.keys]
        await self._ops("admit", admitted)
        await self._ops("evict", [k for k in evict if k not in new])
        self.admitted += len(admitted)
        self.evicted += len(evict)
        return len(admitted)

    async def clear(self) -> int:
        """Drop everything (``ClearWorkerMsg``); returns the number of tokens dropped."""
        keys = list(self.keys)
        self.keys.clear()
        await self._ops("evict", keys)
        self.evicted += len(keys)
        return len(keys) * self.chunk_size

    # --- heartbeat and full sync ----------------------------------------------------------------------------
    async def heartbeat(self) -> list[str]:
        """Send ``HeartbeatMsg``; run the commands it returns (full sync). Returns the commands' reasons."""
        m = self._m
        ret = await self._request(
            m.HeartbeatMsg(instance_id=self.instance_id, worker_id=self.worker_id, ip=self.ip, port=self.port,
                           peer_init_url=None),
            self._heartbeat,
        )
        reasons: list[str] = []
        for command in getattr(ret, "commands", []):
            reasons.append(str(getattr(command, "reason", type(command).__name__)))
            if type(command).__name__ == "FullSyncCommand":
                await self.full_sync()
        return reasons

    async def full_sync(self, poll_interval_s: float = 0.05, max_polls: int = 200) -> bool:
        """Send every held key (the controller clears this worker's keys first). True once complete."""
        m = self._m
        keys = list(self.keys)
        batch_count = max(1, -(-len(keys) // FULL_SYNC_BATCH))
        sync_id = f"{self.instance_id}_{self.worker_id}_{uuid.uuid4().hex[:8]}"
        ret = await self._request(m.FullSyncStartMsg(instance_id=self.instance_id, worker_id=self.worker_id,
                                                     location=self.location, sync_id=sync_id,
                                                     total_keys=len(keys), batch_count=batch_count))
        if not isinstance(ret, m.FullSyncStartRetMsg) or not ret.accepted:
            log.warning("full sync not accepted: %r", ret)
            return False

        def batch(i: int) -> Any:
            return m.FullSyncBatchMsg(instance_id=self.instance_id, worker_id=self.worker_id, location=self.location,
                                      sync_id=sync_id, batch_id=i,
                                      keys=keys[i * FULL_SYNC_BATCH : (i + 1) * FULL_SYNC_BATCH])

        await self._send(*(batch(i) for i in range(batch_count)))
        await self._send(m.FullSyncEndMsg(instance_id=self.instance_id, worker_id=self.worker_id,
                                          location=self.location, sync_id=sync_id, actual_total_keys=len(keys)))
        for _ in range(max_polls):
            status = await self._request(m.FullSyncStatusMsg(instance_id=self.instance_id, worker_id=self.worker_id,
                                                             sync_id=sync_id))
            if isinstance(status, m.FullSyncStatusRetMsg):
                if status.missing_batches:
                    await self._send(*(batch(i) for i in status.missing_batches))
                if status.is_complete:
                    self.full_syncs += 1
                    return True
            await asyncio.sleep(poll_interval_s)
        log.warning("full sync %s did not complete", sync_id)
        return False


async def _poll_simulator(
    worker: SimLMCacheWorker, sim_url: str, interval_s: float, heartbeat_s: float, stop: asyncio.Event
) -> None:
    """Admit the prompt of every request the simulator records; heartbeat every ``heartbeat_s`` seconds."""
    import httpx

    tokenizer = load_tokenizer()
    last_seen = 0.0
    next_heartbeat = time.monotonic()
    async with httpx.AsyncClient(base_url=sim_url.rstrip("/"), timeout=5.0) as http:
        while not stop.is_set():
            if heartbeat_s > 0 and time.monotonic() >= next_heartbeat:
                try:
                    await worker.heartbeat()
                except Exception as e:
                    log.warning("heartbeat failed: %s", e)
                next_heartbeat = time.monotonic() + heartbeat_s
            try:
                response = await http.get("/sim/requests")
                response.raise_for_status()
                records = response.json()
            except Exception as e:
                log.warning("polling %s failed: %s", sim_url, e)
                records = []
            for record in records:
                recorded_at = float(record.get("time", 0.0))
                if recorded_at <= last_seen:
                    continue
                last_seen = recorded_at
                tokens = body_prompt_tokens(str(record.get("path", "")), record.get("body"), tokenizer)
                if tokens:
                    await worker.admit_tokens(tokens)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


async def _run(args: argparse.Namespace, on_ready: Callable[[SimLMCacheWorker], None]) -> None:
    worker = SimLMCacheWorker(
        args.instance_id, controller_host=args.controller_host, pull_port=args.pull_port,
        reply_port=args.reply_port, worker_id=args.worker_id, ip=args.ip, port=args.port,
        chunk_size=args.chunk_size, capacity_chunks=args.capacity_chunks,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    on_ready(worker)
    try:
        if args.sim_url:
            await _poll_simulator(worker, args.sim_url, args.poll_interval, args.heartbeat_interval, stop)
        else:
            await stop.wait()
    finally:
        await worker.stop(deregister=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--instance-id", required=True, help="lmcache_instance_id this worker reports")
    p.add_argument("--worker-id", type=int, default=0)
    p.add_argument("--controller-host", default="127.0.0.1")
    p.add_argument("--pull-port", type=int, required=True, help="the controller's monitor 'pull' port")
    p.add_argument("--reply-port", type=int, required=True, help="the controller's monitor 'reply' port")
    p.add_argument("--ip", default="127.0.0.1", help="address of this worker's control (REP) socket")
    p.add_argument("--port", type=int, default=0, help="port of this worker's control socket (0: any free port)")
    p.add_argument("--sim-url", default=None, help="simulator to follow (GET /sim/requests)")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--heartbeat-interval", type=float, default=10.0, help="seconds; 0 disables heartbeats")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--capacity-chunks", type=int, default=None, help="LRU bound (default: unbounded)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(worker: SimLMCacheWorker) -> None:
        print(f"{READY_MARKER} port={worker.port}", flush=True)

    asyncio.run(_run(args, ready))


if __name__ == "__main__":
    # Run by path, this file's directory heads sys.path, and the simulator's module names (profile, config,
    # metrics, ...) would shadow the standard library and lmcache's dependencies.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    main()
