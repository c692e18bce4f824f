"""Served model names and LoRA adapters of one simulated server, as vLLM serves them.

- ``--served-model-name`` (one or more names, vLLM's flag): every name is a base model card in ``/v1/models``;
  the first one labels the metrics. A request naming another model gets vLLM's 404 (``check_model`` in
  vllm/entrypoints/openai/models/serving.py: "The model `X` does not exist.", type NotFoundError, param model).
  Without the flag the simulator keeps its old leniency (any name is served and echoed) so that existing
  clients of a bare simulator keep working; the stack launcher always passes the flag.
- ``--lora-modules name=path`` or ``'{"name": ..., "path": ..., "base_model_name": ...}'`` (vLLM's two forms,
  vllm/entrypoints/openai/cli_args.py ``LoRAParserAction``): each adapter is a card with ``root`` = its path and
  ``parent`` = its base model (``show_available_models``), and may be named as a request's ``model``.
- ``--max-loras`` (vLLM's default 1): adapters one batch can hold (GPU slots). A request whose adapter is not in
  a slot loads it first (``--lora-load-time`` simulated seconds), evicting the least recently used adapter that
  no request holds; when every slot is held by other adapters' requests it waits (vLLM's scheduler does not
  admit a request whose adapter would exceed ``max_loras``, vllm/v1/core/sched/scheduler.py).
- ``vllm:lora_requests_info{max_lora, waiting_lora_adapters, running_lora_adapters}``: a gauge whose value is
  the time it was last set; each label set ever seen stays, the current one carries the latest time
  (vllm/v1/metrics/loggers.py ``PrometheusStatLogger``).

Simplification: an adapter counts as running from the moment its request holds a slot until the request ends
(vLLM counts requests in the running batch), and its weights do not change the generated text or the cache.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .errors import SimulatorError

__all__ = ["DEFAULT_LORA_LOAD_S", "DEFAULT_MAX_LORAS", "AdapterNotFoundError", "LoRAModule", "LoRASlots",
           "ModelNotFoundError", "parse_lora_modules"]

DEFAULT_MAX_LORAS = 1  # vLLM's --max-loras default (vllm/config/lora.py)
# Reading an adapter's weights and copying them into a GPU slot: tens to hundreds of milliseconds for rank-16
# adapters of an 8B model; configurable (--lora-load-time), simulated seconds.
DEFAULT_LORA_LOAD_S = 0.2


class AdapterNotFoundError(SimulatorError):
    """vLLM's answer to unloading an adapter it does not serve: HTTP 404, type NotFoundError."""

    status = 404
    type = "NotFoundError"

    def __init__(self, name: str) -> None:
        super().__init__(f"The lora adapter '{name}' cannot be found.", None)


class ModelNotFoundError(SimulatorError):
    """vLLM's answer to a model it does not serve: HTTP 404, type NotFoundError, param ``model``."""

    status = 404
    type = "NotFoundError"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", "model")


@dataclass(frozen=True, slots=True)
class LoRAModule:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_modules(values: Sequence[str]) -> tuple[LoRAModule, ...]:
    """``name=path`` or a JSON object with ``name``, ``path`` and optionally ``base_model_name``; ValueError."""
    modules: list[LoRAModule] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        if value.startswith("{"):
            try:
                spec = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"--lora-modules: invalid JSON {value!r}: {error}") from None
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(
                    spec.get("path"), str):
                raise ValueError(f"--lora-modules: expected {{\"name\": ..., \"path\": ...}}, got {value!r}")
            base = spec.get("base_model_name")
            modules.append(LoRAModule(spec["name"], spec["path"], base if isinstance(base, str) else None))
            continue
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules: expected name=path, got {value!r}")
        modules.append(LoRAModule(name, path))
    names = [m.name for m in modules]
    if len(set(names)) != len(names):
        raise ValueError("--lora-modules: adapter names must be unique")
    return tuple(modules)


class LoRASlots:
    """``max_loras`` GPU slots shared by the requests of the adapters they hold (pure asyncio, one event loop)."""

    def __init__(self, max_loras: int, load_s: float, time_scale: float) -> None:
        if max_loras < 1:
            raise ValueError("max_loras must be >= 1")
        self.max_loras = max_loras
        self.load_s = load_s
        self.time_scale = time_scale
        self.resident: OrderedDict[str, None] = OrderedDict()  # LRU order, most recent last
        self.running: dict[str, int] = {}  # adapter -> requests holding its slot
        self.waiting: dict[str, int] = {}  # adapter -> requests waiting for a slot or its load
        self.loads = 0
        self._loading: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self._history: dict[tuple[str, str], float] = {}  # (waiting, running) label values -> last set time

    async def acquire(self, adapter: str) -> None:
        """Hold a slot for ``adapter`` (loading it first if needed); pair with :meth:`release`."""
        self.waiting[adapter] = self.waiting.get(adapter, 0) + 1
        try:
            while True:
                loading = self._loading.get(adapter)
                if loading is not None:
                    await loading.wait()
                    continue
                if adapter in self.resident:
                    self.resident.move_to_end(adapter)
                    break
                if len(self.resident) >= self.max_loras and not self._evict():
                    async with self._changed:
                        await self._changed.wait()
                    continue
                self.resident[adapter] = None  # the slot is taken while the weights load
                done = self._loading[adapter] = asyncio.Event()
                try:
                    self.loads += 1
                    await asyncio.sleep(self.load_s * self.time_scale)
                finally:
                    del self._loading[adapter]
                    done.set()
                break
        finally:
            self.waiting[adapter] -= 1
            if not self.waiting[adapter]:
                del self.waiting[adapter]
        self.running[adapter] = self.running.get(adapter, 0) + 1

    def _evict(self) -> bool:
        for candidate in self.resident:
            if not self.running.get(candidate) and candidate not in self._loading:
                del self.resident[candidate]
                return True
        return False

    async def release(self, adapter: str) -> None:
        count = self.running.get(adapter, 0) - 1
        if count > 0:
            self.running[adapter] = count
        else:
            self.running.pop(adapter, None)
        async with self._changed:
            self._changed.notify_all()

    async def holding(self, adapter: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``stream``, releasing the adapter's slot when it ends (a streamed response outlives its handler)."""
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await self.release(adapter)

    def info(self, now: float | None = None) -> list[tuple[str, str, str, float]]:
        """The ``vllm:lora_requests_info`` series: ``(max_lora, waiting, running, last set time)``, the current
        label set stamped ``now``."""
        current = (",".join(self.waiting), ",".join(self.running))
        self._history[current] = time.time() if now is None else now
        return [(str(self.max_loras), waiting, running, stamp) for (waiting, running), stamp in self._history.items()]
