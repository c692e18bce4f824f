"""``--kv-events-config``: vLLM's KV-event publisher configuration, parsed without the publisher's dependencies
(pyzmq, msgspec), so the simulator's config and CLI import nothing heavy."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["ENCODINGS", "Encoding", "KVEventsConfig", "parse_kv_events_config"]

Encoding = Literal["array", "map"]
ENCODINGS: tuple[Encoding, ...] = ("array", "map")


@dataclass(slots=True, frozen=True)
class KVEventsConfig:
    """vLLM's ``KVEventsConfig`` (``vllm/config/kv_events.py``): same keys, same defaults."""

    enable_kv_cache_events: bool = False
    publisher: Literal["null", "zmq"] | None = None  # None: "zmq" if events are enabled, else "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def active(self) -> bool:
        return self.enable_kv_cache_events and self.resolved_publisher == "zmq"

    @property
    def resolved_publisher(self) -> str:
        if self.publisher is None:
            return "zmq" if self.enable_kv_cache_events else "null"
        return self.publisher

    def validate(self) -> KVEventsConfig:
        if self.publisher not in (None, "null", "zmq"):
            raise ValueError(f"kv-events-config: unknown publisher {self.publisher!r} (expected 'null' or 'zmq')")
        for name in ("buffer_steps", "hwm", "max_queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kv-events-config: {name} must be a positive integer")
        if not isinstance(self.endpoint, str) or not isinstance(self.topic, str):
            raise ValueError("kv-events-config: endpoint and topic must be strings")
        return self


def parse_kv_events_config(text: str) -> KVEventsConfig:
    """The ``--kv-events-config`` JSON -> config. Raises ``ValueError`` on bad JSON or unknown keys."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"kv-events-config: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("kv-events-config must be a JSON object")
    known = {f.name for f in fields(KVEventsConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"kv-events-config: unknown keys {unknown}")
    return KVEventsConfig(**data).validate()


