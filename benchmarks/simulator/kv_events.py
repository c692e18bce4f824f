"""KV-cache events as vLLM publishes them: msgspec structs, pure encoding, and a ZMQ PUB/ROUTER publisher.

Follows ``vllm/distributed/kv_events.py`` and ``vllm/config/kv_events.py``:

* ``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
  "topic": "kv-events", "replay_endpoint": "tcp://*:5558"}'`` (:class:`KVEventsConfig`, same keys and defaults;
  ``publisher`` defaults to ``"zmq"`` when events are enabled, unknown keys are rejected).
* Each engine step's events go out as one ``KVEventBatch{ts, events, data_parallel_rank}`` in a ZMQ multipart
  message ``(topic, sequence number as 8-byte big-endian, msgpack(batch))`` on a PUB socket (bound when the
  endpoint has ``*``, ``::``, ``ipc://`` or ``inproc://``, else connected). Sequence numbers start at 0 and
  are contiguous. A background thread owns the sockets and drains a queue, so publishing never blocks the
  engine (vLLM: ``ZmqEventPublisher``).
* Replay: with ``replay_endpoint`` a ROUTER socket answers a request whose last frame is a start sequence
  number (8-byte big-endian) with every buffered batch from it on, each as ``(seq, payload)``, then
  ``(-1 as 8 signed bytes, b"")``. The buffer keeps the last ``buffer_steps`` (10,000) batches.
* Events: ``BlockStored{block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
  extra_keys, group_idx, kv_cache_spec_kind}`` when full blocks become cached (prompt and generated tokens),
  ``BlockRemoved{block_hashes, medium, group_idx}`` when a cached block is evicted (reused for other work; not
  when a request frees it), ``AllBlocksCleared`` on a prefix-cache reset. ``medium`` is ``"GPU"``,
  ``extra_keys`` one ``None`` per block (no LoRA, multimodal input or salt), ``group_idx`` 0,
  ``kv_cache_spec_kind`` ``"full_attention"``, as a vLLM v0.2x server fills them for a dense model.

Wire encoding (:data:`ENCODINGS`). The structs are msgspec ``Struct(tag=True, omit_defaults=True)``, so the
tag (the class name) comes first and trailing fields left at their default are omitted. vLLM changed the shape:

* ``"array"`` (default): ``array_like=True`` on the batch and the events, so both encode as msgpack arrays,
  e.g. ``[ts, [["BlockStored", [h...], parent, [tok...], 16, None, "GPU", None, [None], 0, "full_attention"]],
  0]``. This is vLLM's format until PR #42892 and what positional decoders (llm-d's kv-cache indexer,
  AIBrix, Dynamo) read.
* ``"map"``: vLLM after PR #42892 dropped ``array_like``; in the current ``vllm/distributed/kv_events.py``
  neither the batch nor the events have it, so both are msgpack maps (events tagged ``{"type": "BlockStored",
  ...}``).

Block hashes are vLLM's ``ExternalBlockHash``: see :func:`.block_hash.external_hash`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .block_hash import external_hash
from .kv_events_config import ENCODINGS, Encoding, KVEventsConfig, parse_kv_events_config
from .kvcache import AllBlocksClearedEvent, BlockRemovedEvent, BlockStoredEvent, CacheEvent, KVCache

__all__ = [
    "ENCODINGS",
    "END_SEQ",
    "Encoding",
    "KVEventsConfig",
    "KVEventsPublisher",
    "ZmqEventPublisher",
    "decode_batch",
    "encode_batch",
    "parse_kv_events_config",
    "wire_events",
]

log = logging.getLogger(__name__)

MEDIUM_GPU = "GPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)
ExternalBlockHash = int | bytes


# --- vLLM's structs, declared in both encodings (field order is the wire order for "array") ----------------
class _EventBatchArray(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _KVCacheEventArray(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class _EventBatchMap(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _KVCacheEventMap(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


def _event_classes(base: type) -> tuple[type, type, type]:
    stored = msgspec.defstruct(
        "BlockStored",
        [
            ("block_hashes", list[ExternalBlockHash]),
            ("parent_block_hash", ExternalBlockHash | None),
            ("token_ids", list[int]),
            ("block_size", int),
            ("lora_id", int | None),
            ("medium", str | None),
            ("lora_name", str | None),
            ("extra_keys", list[tuple[Any, ...] | None] | None, None),
            ("group_idx", int | None, None),
            ("kv_cache_spec_kind", str | None, None),
            ("kv_cache_spec_sliding_window", int | None, None),
        ],
        bases=(base,),
    )
    removed = msgspec.defstruct(
        "BlockRemoved",
        [("block_hashes", list[ExternalBlockHash]), ("medium", str | None), ("group_idx", int | None, None)],
        bases=(base,),
    )
    cleared = msgspec.defstruct("AllBlocksCleared", [], bases=(base,))
    return stored, removed, cleared


_STRUCTS: dict[Encoding, tuple[type, type, type, type]] = {
    "array": (_EventBatchArray, *_event_classes(_KVCacheEventArray)),
    "map": (_EventBatchMap, *_event_classes(_KVCacheEventMap)),
}


def wire_events(
    events: Iterable[CacheEvent], block_size: int, *, encoding: Encoding = "array", int_hashes: bool = True
) -> list[Any]:
    """Cache events -> vLLM's ``BlockStored``/``BlockRemoved``/``AllBlocksCleared`` structs (pure)."""
    _, stored, removed, cleared = _STRUCTS[encoding]
    out: list[Any] = []
    for e in events:
        if isinstance(e, BlockStoredEvent):
            out.append(
                stored(
                    block_hashes=[external_hash(h, int_hashes) for h in e.hashes],
                    parent_block_hash=None if e.parent is None else external_hash(e.parent, int_hashes),
                    token_ids=list(e.token_ids),
                    block_size=block_size,
                    lora_id=None,
                    medium=MEDIUM_GPU,
                    lora_name=None,
                    extra_keys=[None] * len(e.hashes),
                    group_idx=0,
                    kv_cache_spec_kind="full_attention",
                )
            )
        elif isinstance(e, BlockRemovedEvent):
            out.append(
                removed(block_hashes=[external_hash(h, int_hashes) for h in e.hashes], medium=MEDIUM_GPU, group_idx=0)
            )
        elif isinstance(e, AllBlocksClearedEvent):
            out.append(cleared())
    return out


def encode_batch(
    ts: float, events: Sequence[Any], *, encoding: Encoding = "array", data_parallel_rank: int | None = 0
) -> bytes:
    """msgpack of ``KVEventBatch{ts, events, data_parallel_rank}`` (the third frame of a message)."""
    batch = _STRUCTS[encoding][0](ts=ts, events=list(events), data_parallel_rank=data_parallel_rank)
    return msgspec.msgpack.encode(batch)


def decode_batch(payload: bytes, *, encoding: Encoding = "array") -> Any:
    """Decode a payload with the same structs (``.ts``, ``.events``, ``.data_parallel_rank``)."""
    batch, stored, removed, cleared = _STRUCTS[encoding]
    typed = msgspec.defstruct(
        "KVEventBatch",
        [("events", list[stored | removed | cleared])],  # type: ignore[valid-type]
        bases=(batch,),
        array_like=encoding == "array",
        omit_defaults=True,
    )
    return msgspec.msgpack.decode(payload, type=typed)


# --- the publisher (I/O shell) -------------------------------------------------------------------------------
class ZmqEventPublisher:
    """vLLM's ``ZmqEventPublisher``: PUB socket + optional ROUTER replay socket, driven by one daemon thread.

    :meth:`publish` only enqueues (never blocks the caller unless ``max_queue_size`` batches are pending).
    """

    SHUTDOWN_TIMEOUT = 1.0

    def __init__(self, config: KVEventsConfig) -> None:
        import zmq  # only needed when events are published

        self._zmq = zmq
        self.config = config
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        endpoint = config.endpoint
        if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self._replay = None
        if config.replay_endpoint is not None:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)
        self._topic = config.topic.encode()
        self._seq = 0
        self._running = True
        self._thread = threading.Thread(target=self._run, name="kv-events-publisher", daemon=True)
        self._thread.start()

    def publish(self, payload: bytes) -> None:
        if not self._running:
            raise RuntimeError("publisher is closed")
        self._queue.put(payload)

    def _run(self) -> None:
        while self._running or not self._queue.empty():
            if self._replay is not None and self._replay.poll(0):
                try:
                    self._service_replay()
                except Exception:
                    log.exception("kv events replay failed")
            try:
                payload = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if payload is None:
                break
            seq = self._seq
            self._seq += 1
            try:
                self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            except Exception:
                log.exception("kv events publish failed")
            self._buffer.append((seq, payload))

    def _service_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            log.warning("invalid kv events replay request", extra={"frames": len(frames)})
            return
        client, _, start = frames
        start_seq = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= start_seq:
                self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", END_SEQ, b""))

    def shutdown(self) -> None:
        if not self._running:
            return
        self._running = False
        self._queue.put(None)
        self._thread.join(self.SHUTDOWN_TIMEOUT)
        for sock in (self._pub, self._replay):
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()


class KVEventsPublisher:
    """Step observer: after each engine step (and on :meth:`flush`) publishes the cache's recorded events
    as one batch. Encoding happens on the engine's thread (cheap); sockets live on the publisher's thread."""

    def __init__(
        self,
        kv: KVCache,
        config: KVEventsConfig,
        *,
        encoding: Encoding = "array",
        int_hashes: bool = True,
        data_parallel_rank: int = 0,
    ) -> None:
        self._kv = kv
        self._encoding: Encoding = encoding
        self._int_hashes = int_hashes
        self._dp_rank = data_parallel_rank
        self.publisher = ZmqEventPublisher(config)

    def on_step(self, result: object) -> None:
        self.flush()

    def flush(self) -> None:
        events = self._kv.take_events()
        if not events:
            return
        wire = wire_events(events, self._kv.block_size, encoding=self._encoding, int_hashes=self._int_hashes)
        self.publisher.publish(
            encode_batch(time.time(), wire, encoding=self._encoding, data_parallel_rank=self._dp_rank)
        )

    def shutdown(self) -> None:
        self.flush()
        self.publisher.shutdown()
