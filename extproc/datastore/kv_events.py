"""The KV-event consumer: subscribes to each vLLM instance's KV-cache events and keeps a :class:`KVBlockIndex`.

Wire format (``vllm/distributed/kv_events.py``, ``ZmqEventPublisher``): ZMQ PUB, multipart ``(topic, sequence
number as 8-byte big-endian, msgpack(KVEventBatch{ts, events, data_parallel_rank}))``, sequence numbers
contiguous from 0. The events are msgspec ``Struct(tag=True)``s; two shapes exist and both are accepted
(:func:`decode_batch` looks at the first msgpack byte):

* arrays (``array_like=True``, vLLM before PR #42892, llm-d's indexer reads these):
  ``[ts, [["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, ...]], rank]``;
* maps (current vLLM): ``{"ts": ..., "events": [{"type": "BlockStored", "block_hashes": [...], ...}], ...}``.

``BlockStored`` adds blocks, ``BlockRemoved`` drops them, ``AllBlocksCleared`` empties the instance. Events of
another medium than the GPU (``"CPU"`` offload tiers) are counted and ignored. Hashes are 64-bit ints
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``) or digest bytes (mapped to the same int).

**Gaps.** A sequence number past the next expected one means batches were lost (the SUB socket's high-water
mark, a reconnect). With a replay endpoint (vLLM's ``replay_endpoint``, a ROUTER socket) the consumer asks a
DEALER socket for every buffered batch from the missing number (request ``(b"", start as 8-byte big-endian)``,
answers ``(b"", seq, payload)`` until ``seq == -1``); if the replay cannot fill the hole (timeout, buffer
rolled over) or there is no replay endpoint, the instance's view is cleared and a resync counted - blocks it
stores from then on are learned again. A sequence number going back (not a replayed duplicate) means the
server restarted: cleared too. While its socket is disconnected an instance has no view (:meth:`live`).

Nothing here blocks the event loop (pyzmq's asyncio sockets) or raises out of a task: bad messages are counted
(``decode_errors``) and skipped, a failing socket is recreated after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from extproc.datastore.kv_block_index import KVBlockIndex
from extproc.tokenization.block_hash import external_hash

__all__ = [
    "DEFAULT_REPLAY_TIMEOUT_S",
    "END_SEQ",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "EventBatch",
    "InstanceStats",
    "KVEventConsumer",
    "KVEventDecodeError",
    "KVEventSource",
    "decode_batch",
    "parse_kv_events_spec",
]

log = logging.getLogger(__name__)

END_SEQ: Final = (-1).to_bytes(8, "big", signed=True)
DEFAULT_REPLAY_TIMEOUT_S: Final = 1.0
_RETRY_S: Final = 1.0
_RCVHWM: Final = 100_000
_GPU_MEDIA: Final = frozenset({None, "GPU", "gpu"})
_Hash = int | bytes


class KVEventDecodeError(ValueError):
    """A message that is not a KV-event batch of either shape."""


# --- the events (only the fields the index needs; extra trailing fields / keys are ignored) ---------------
class _ArrayEvent(msgspec.Struct, array_like=True, tag=True):
    pass


class _ArrayStored(_ArrayEvent, tag="BlockStored"):
    block_hashes: list[_Hash]
    parent_block_hash: _Hash | None = None
    token_ids: list[int] = []
    block_size: int = 0
    lora_id: int | None = None
    medium: str | None = None


class _ArrayRemoved(_ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[_Hash]
    medium: str | None = None


class _ArrayCleared(_ArrayEvent, tag="AllBlocksCleared"):
    pass


class _MapEvent(msgspec.Struct, tag=True):  # tag field "type", as msgspec's default and vLLM's
    pass


class _MapStored(_MapEvent, tag="BlockStored"):
    block_hashes: list[_Hash]
    medium: str | None = None


class _MapRemoved(_MapEvent, tag="BlockRemoved"):
    block_hashes: list[_Hash]
    medium: str | None = None


class _MapCleared(_MapEvent, tag="AllBlocksCleared"):
    pass


_ArrayEvents = _ArrayStored | _ArrayRemoved | _ArrayCleared
_MapEvents = _MapStored | _MapRemoved | _MapCleared


class _ArrayBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_ArrayEvents]
    data_parallel_rank: int | None = None


class _MapBatch(msgspec.Struct):
    ts: float
    events: list[_MapEvents]
    data_parallel_rank: int | None = None


class _ArrayBatchRaw(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]


class _MapBatchRaw(msgspec.Struct):
    ts: float
    events: list[msgspec.Raw]


@dataclass(frozen=True, slots=True)
class BlockStored:
    hashes: tuple[int, ...]
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    hashes: tuple[int, ...]
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[Event, ...]
    skipped: int = 0  # events of an unknown type or shape in an otherwise good batch


_Decoders = tuple[msgspec.msgpack.Decoder[Any], msgspec.msgpack.Decoder[Any], msgspec.msgpack.Decoder[Any]]
_DECODERS: Final[dict[str, _Decoders]] = {
    "array": (msgspec.msgpack.Decoder(_ArrayBatch), msgspec.msgpack.Decoder(_ArrayBatchRaw),
              msgspec.msgpack.Decoder(_ArrayEvents)),
    "map": (msgspec.msgpack.Decoder(_MapBatch), msgspec.msgpack.Decoder(_MapBatchRaw),
            msgspec.msgpack.Decoder(_MapEvents)),
}


def _ints(hashes: Sequence[_Hash]) -> tuple[int, ...]:
    return tuple(h if type(h) is int else external_hash(h) for h in hashes)


def _event(raw: Any) -> Event:
    if isinstance(raw, _ArrayStored | _MapStored):
        return BlockStored(_ints(raw.block_hashes), raw.medium)
    if isinstance(raw, _ArrayRemoved | _MapRemoved):
        return BlockRemoved(_ints(raw.block_hashes), raw.medium)
    return AllBlocksCleared()


def decode_batch(payload: bytes) -> EventBatch:
    """A KV-event batch of either shape (pure). Unknown event types in a batch are skipped and counted in
    :attr:`EventBatch.skipped`; a payload that is not a batch raises :class:`KVEventDecodeError`."""
    if not payload:
        raise KVEventDecodeError("empty payload")
    first = payload[0]
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        shape = "array"
    elif 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        shape = "map"
    else:
        raise KVEventDecodeError(f"not a msgpack array or map (first byte 0x{first:02x})")
    typed, raw, one = _DECODERS[shape]
    try:
        batch = typed.decode(payload)
        return EventBatch(batch.ts, tuple(_event(e) for e in batch.events))
    except (msgspec.DecodeError, ValueError, TypeError):
        pass
    try:  # one bad event (a type this version does not know) must not lose the others
        loose = raw.decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise KVEventDecodeError(f"not a KV-event batch ({shape}): {exc}") from None
    events: list[Event] = []
    skipped = 0
    for item in loose.events:
        try:
            events.append(_event(one.decode(item)))
        except (msgspec.DecodeError, ValueError, TypeError):
            skipped += 1
    return EventBatch(loose.ts, tuple(events), skipped)


# --- configuration ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KVEventSource:
    """Where one instance publishes: its ``endpoint`` (SUB connects there), an optional ``replay`` endpoint and
    the ``topic`` prefix subscribed to (vLLM's ``topic``; empty: everything)."""

    instance: str
    endpoint: str
    replay: str | None = None
    topic: str = ""


def parse_kv_events_spec(spec: str) -> dict[str, KVEventSource]:
    """``--kv-events``: ``name=tcp://host:port[;replay=tcp://host:port][;topic=T],...`` -> sources by instance.
    Raises ``ValueError`` naming the bad item."""
    sources: dict[str, KVEventSource] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        head, *options = item.split(";")
        name, eq, endpoint = head.partition("=")
        name, endpoint = name.strip(), endpoint.strip()
        if not eq or not name or "://" not in endpoint:
            raise ValueError(f"--kv-events item {item!r}: expected name=tcp://host:port[;replay=URL][;topic=T]")
        extra: dict[str, str] = {}
        for option in options:
            key, eq, value = option.partition("=")
            key = key.strip()
            if not eq or key not in ("replay", "topic") or key in extra:
                raise ValueError(f"--kv-events item {item!r}: bad option {option!r} (replay=URL, topic=T)")
            extra[key] = value.strip()
        if "replay" in extra and "://" not in extra["replay"]:
            raise ValueError(f"--kv-events item {item!r}: replay must be a URL such as tcp://host:port")
        if name in sources:
            raise ValueError(f"--kv-events: instance {name!r} given twice")
        sources[name] = KVEventSource(name, endpoint, extra.get("replay") or None, extra.get("topic", ""))
    return sources


# --- the consumer (I/O shell) -------------------------------------------------------------------------------
@dataclass(slots=True)
class InstanceStats:
    """Per-instance counters (monotonic) and state."""

    batches: int = 0
    stored: int = 0  # events applied, by type
    removed: int = 0
    cleared: int = 0
    other_medium: int = 0  # events about CPU/disk tiers, ignored
    decode_errors: int = 0  # messages or events skipped
    gaps: int = 0  # sequence jumps seen
    replays: int = 0  # gaps filled by a replay
    resyncs: int = 0  # views cleared because a gap could not be filled or the server restarted
    duplicates: int = 0  # batches seen twice (live after a replay)
    socket_errors: int = 0
    connected: bool = False
    expected: int | None = None  # next sequence number
    replayed_from: int = -1  # the last replay covered [replayed_from, expected)
    by_type: dict[str, int] = field(default_factory=dict)


class KVEventConsumer:
    """One SUB socket (and task) per :class:`KVEventSource`, feeding ``index``. :meth:`start` inside the
    running loop, :meth:`stop` on shutdown; :meth:`live` says whether an instance's view can be trusted."""

    def __init__(
        self,
        sources: Mapping[str, KVEventSource],
        index: KVBlockIndex,
        *,
        replay_timeout_s: float = DEFAULT_REPLAY_TIMEOUT_S,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.sources = dict(sources)
        self.index = index
        self.replay_timeout_s = replay_timeout_s
        self._context = context
        self._own_context = context is None
        self.stats: dict[str, InstanceStats] = {name: InstanceStats() for name in self.sources}
        self._tasks: list[asyncio.Task[None]] = []
        self._paused: set[str] = set()
        for name in self.sources:
            index.add_instance(name)

    # --- state read by the view ----------------------------------------------------------------------------
    def live(self, instance: str) -> bool:
        """The instance has an event stream that is connected (its view is as fresh as its events)."""
        stats = self.stats.get(instance)
        return stats is not None and stats.connected and instance not in self._paused

    def forget(self, instance: str) -> None:
        """The instance went down (``Endpoints.on_down``): its cache is gone, so is its view."""
        if instance in self.stats:
            self.index.clear(instance)
            self.stats[instance].expected = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        if self._context is None:
            self._context = zmq.asyncio.Context()
        for source in self.sources.values():
            self._tasks.append(asyncio.create_task(self._run(source), name=f"kv-events:{source.instance}"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None
        for stats in self.stats.values():
            stats.connected = False

    # --- per instance ----------------------------------------------------------------------------------------
    async def _run(self, source: KVEventSource) -> None:
        stats = self.stats[source.instance]
        while True:
            try:
                await self._subscribe(source, stats)
            except asyncio.CancelledError:
                raise
            except Exception:
                stats.socket_errors += 1
                stats.connected = False
                log.exception("kv events subscriber failed", extra={"instance": source.instance})
                await asyncio.sleep(_RETRY_S)

    async def _subscribe(self, source: KVEventSource, stats: InstanceStats) -> None:
        assert self._context is not None
        sub = self._context.socket(zmq.SUB)
        monitor_task: asyncio.Task[None] | None = None
        try:
            sub.setsockopt(zmq.RCVHWM, _RCVHWM)
            sub.setsockopt(zmq.SUBSCRIBE, source.topic.encode())
            monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            monitor_task = asyncio.create_task(self._watch(monitor, stats))
            sub.connect(source.endpoint)
            while True:
                frames = await sub.recv_multipart()
                await self._handle(source, stats, frames)
        finally:
            if monitor_task is not None:
                monitor_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await monitor_task
            with contextlib.suppress(Exception):
                sub.disable_monitor()
            sub.close(linger=0)
            stats.connected = False

    async def _watch(self, monitor: zmq.asyncio.Socket, stats: InstanceStats) -> None:
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_CONNECTED:
                    stats.connected = True
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    stats.connected = False
        finally:
            monitor.close(linger=0)

    async def _handle(self, source: KVEventSource, stats: InstanceStats, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            stats.decode_errors += 1
            return
        seq = int.from_bytes(frames[1], "big")
        instance = source.instance
        expected = stats.expected
        if expected is None:  # first message (or after the instance went down): take what the buffer still has
            stats.expected = seq
            if seq > 0 and source.replay is not None:
                self._paused.add(instance)
                try:
                    await self._replay(source, stats, 0, upto=seq, startup=True)
                finally:
                    self._paused.discard(instance)
        elif seq > expected:
            stats.gaps += 1
            filled = False
            if source.replay is not None:
                self._paused.add(instance)
                try:
                    filled = await self._replay(source, stats, expected, upto=seq)
                finally:
                    self._paused.discard(instance)
            if filled:
                stats.replays += 1
            else:
                self._resync(instance, stats, seq)
        elif seq < expected:
            if stats.replayed_from <= seq:
                stats.duplicates += 1
                return
            self._resync(instance, stats, seq)  # the publisher restarted (sequence numbers start again at 0)
        if stats.expected is not None and seq < stats.expected:
            stats.duplicates += 1  # the replay already applied it
            return
        self._apply(instance, stats, frames[2])
        stats.expected = seq + 1

    def _resync(self, instance: str, stats: InstanceStats, seq: int) -> None:
        stats.resyncs += 1
        self.index.clear(instance)
        stats.expected = seq
        stats.replayed_from = -1

    def _apply(self, instance: str, stats: InstanceStats, payload: bytes) -> None:
        try:
            batch = decode_batch(payload)
        except KVEventDecodeError:
            stats.decode_errors += 1
            return
        stats.batches += 1
        stats.decode_errors += batch.skipped
        index = self.index
        for event in batch.events:
            if isinstance(event, BlockStored):
                if event.medium in _GPU_MEDIA:
                    index.store(instance, event.hashes)
                    stats.stored += 1
                else:
                    stats.other_medium += 1
            elif isinstance(event, BlockRemoved):
                if event.medium in _GPU_MEDIA:
                    index.remove(instance, event.hashes)
                    stats.removed += 1
                else:
                    stats.other_medium += 1
            else:
                index.clear(instance)
                stats.cleared += 1
        index.sweep()

    async def _replay(
        self, source: KVEventSource, stats: InstanceStats, start: int, *, upto: int, startup: bool = False
    ) -> bool:
        """Apply the publisher's buffered batches from ``start`` on; True if they cover ``[start, upto)``
        contiguously. At startup a buffer that begins later is fine (nothing older can be had)."""
        assert self._context is not None and source.replay is not None
        dealer = self._context.socket(zmq.DEALER)
        dealer.connect(source.replay)
        covered = True
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                try:
                    frames = await asyncio.wait_for(dealer.recv_multipart(), self.replay_timeout_s)
                except TimeoutError:
                    return False
                if len(frames) != 3 or len(frames[1]) != 8:
                    stats.decode_errors += 1
                    return False
                if frames[1] == END_SEQ:
                    break
                seq = int.from_bytes(frames[1], "big")
                expected = stats.expected if stats.expected is not None else start
                if seq < start or (startup and seq >= upto) or (not startup and seq < expected):
                    continue
                if not startup and seq > expected:
                    covered = False  # the buffer no longer holds the missing batches
                if not covered:
                    continue
                self._apply(source.instance, stats, frames[2])
                if not startup:
                    stats.expected = seq + 1
        finally:
            dealer.close(linger=0)
        if covered and not startup:
            stats.replayed_from = start
            return stats.expected is not None and stats.expected >= upto
        return covered

    # --- metrics -----------------------------------------------------------------------------------------------
    def counters(self) -> Iterator[tuple[str, InstanceStats]]:
        yield from self.stats.items()
