"""The precise cache view: which instance holds how much of a prompt, from the instances' own KV events.

:class:`PreciseCacheView` tokenizes a request like the servers (``--tokenizer``), hashes its full blocks like
them (``--kv-hash-algo``, ``--kv-hash-seed`` = their ``PYTHONHASHSEED``, ``--kv-block-size``;
:mod:`extproc.tokenization.prompt_blocks`) and matches the hashes against the blocks each instance reported
(:mod:`extproc.datastore.kv_events` feeding :mod:`extproc.datastore.kv_block_index`).

It answers only for instances whose event stream is live: an instance without ``--kv-events`` entry, or whose
socket is disconnected or replaying, is left out (fractions) or ``None`` (token counts), and the caller uses its
approximate index for it. Setup: docs/kv-events.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.datastore.kv_block_index import BYTES_PER_BLOCK, KVBlockIndex
from extproc.datastore.kv_events import DEFAULT_REPLAY_TIMEOUT_S, KVEventConsumer, KVEventSource, parse_kv_events_spec
from extproc.tokenization import Tokenizer, build_tokenizer
from extproc.tokenization.block_hash import BlockHasher, HashAlgo
from extproc.tokenization.prompt_blocks import PromptBlocks, PromptHasher

if TYPE_CHECKING:
    from extproc.config import Settings

__all__ = ["PreciseCacheView", "build_precise_view"]


class PreciseCacheView:
    """Per instance, the leading prompt tokens it holds in its KV cache (as its events say).

    ``sources`` name each instance's publisher; instances without one are never answered for. The view owns
    ``tokenizer``, its consumer's sockets and tasks: :meth:`start` in the running loop, :meth:`stop` on shutdown.
    """

    def __init__(
        self,
        sources: Mapping[str, KVEventSource],
        tokenizer: Tokenizer,
        hasher: BlockHasher,
        *,
        max_blocks: int,
        replay_timeout_s: float = DEFAULT_REPLAY_TIMEOUT_S,
    ) -> None:
        self.index = KVBlockIndex(sources, max_blocks=max_blocks)
        self.consumer = KVEventConsumer(sources, self.index, replay_timeout_s=replay_timeout_s)
        self.hasher = hasher
        self.prompts = PromptHasher(tokenizer, hasher)
        self.block_size = hasher.block_size
        self.lookups = 0
        self.unanswered = 0  # lookups without a prompt's tokens or without a live instance

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.prompts.tokenizer.aclose()

    aclose = stop

    def forget(self, instance: str) -> None:
        """Register with ``Endpoints.on_down``: a dead instance's cache (and view) is gone."""
        self.consumer.forget(instance)

    def collector(self) -> Collector:
        return _PreciseCollector(self)

    # --- reads -------------------------------------------------------------------------------------------
    def live_instances(self) -> list[str]:
        return [i for i in self.consumer.sources if self.consumer.live(i)]

    async def prompt_blocks(self, prompt_text: str, messages: Sequence[Any] | None) -> PromptBlocks | None:
        return await self.prompts.blocks(prompt_text, messages)

    async def cached_tokens(
        self, prompt_text: str, messages: Sequence[Any] | None
    ) -> tuple[int, dict[str, int | None]] | None:
        """``(prompt_tokens, {instance: leading prompt tokens cached there})`` for a cost model; ``None`` for an
        instance without a live event stream, and ``None`` overall when the prompt cannot be tokenized.
        Never raises."""
        self.lookups += 1
        blocks = await self.prompts.blocks(prompt_text, messages)
        if blocks is None:
            self.unanswered += 1
            return None
        out: dict[str, int | None] = dict.fromkeys(self.consumer.sources)
        live = self.live_instances()
        if live:
            size = self.block_size
            for instance, matched in self.index.match(blocks.hashes, live).items():
                out[instance] = matched * size
        else:
            self.unanswered += 1
        return blocks.tokens, out

    async def cached_fractions(self, prompt_text: str, messages: list[Any] | None) -> dict[str, float] | None:
        """Per live instance, the share (0..1) of the prompt's tokens it holds - 0.0 included, a precise "none";
        instances without a live stream are absent. ``None`` when no instance is live or the prompt cannot be
        tokenized. The director's ``KVIndex`` protocol (as ``LMCacheIndex.cached_fractions``). Never raises."""
        answer = await self.cached_tokens(prompt_text, messages)
        if answer is None:
            return None
        tokens, cached = answer
        fractions = {i: min(1.0, c / tokens) if tokens else 0.0 for i, c in cached.items() if c is not None}
        return fractions or None


def build_precise_view(settings: Settings, instances: Sequence[str]) -> PreciseCacheView | None:
    """The view ``--kv-events`` asks for (``None`` without it). Sources must name known instances (Envoy
    clusters); raises ``ValueError`` otherwise or if the tokenizer cannot be built. The caller registers
    :meth:`PreciseCacheView.collector`, appends :meth:`PreciseCacheView.forget` to ``Endpoints.on_down``,
    awaits :meth:`PreciseCacheView.start` in the loop and :meth:`PreciseCacheView.stop` on shutdown."""
    if not settings.kv_events:
        return None
    sources = parse_kv_events_spec(settings.kv_events)
    unknown = sorted(set(sources) - set(instances))
    if unknown:
        raise ValueError(f"--kv-events names instances that are not backends: {', '.join(unknown)}")
    if settings.kv_hash_seed is None:
        raise ValueError("--kv-events needs --kv-hash-seed (the PYTHONHASHSEED the vLLM servers run with)")
    algo: HashAlgo = "sha256_cbor"
    if settings.kv_hash_algo != algo:
        raise ValueError(f"--kv-hash-algo must be {algo!r}")
    hasher = BlockHasher(settings.kv_hash_seed, algo=algo, block_size=settings.kv_block_size)
    return PreciseCacheView(
        sources, build_tokenizer(settings.tokenizer), hasher, max_blocks=settings.kv_index_max_blocks
    )


class _PreciseCollector(Collector):
    def __init__(self, view: PreciseCacheView) -> None:
        self.view = view

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        view, index, consumer = self.view, self.view.index, self.view.consumer
        blocks = GaugeMetricFamily("extproc_kv_events_blocks", "KV blocks the index holds per instance",
                                   labels=["instance"])
        connected = GaugeMetricFamily("extproc_kv_events_connected", "1 if the instance's event stream is live",
                                      labels=["instance"])
        events = CounterMetricFamily("extproc_kv_events_events", "KV events applied, by instance and type",
                                     labels=["instance", "type"])
        per_instance = {
            "gaps": "Sequence-number gaps in an instance's KV events",
            "replays": "Gaps filled by the instance's replay endpoint",
            "resyncs": "Instance views cleared (unfilled gap or server restart)",
            "decode_errors": "KV-event messages or events that could not be decoded (skipped)",
            "duplicates": "KV-event batches seen twice (after a replay)",
            "socket_errors": "KV-event subscriber failures (socket recreated)",
        }
        families = {name: CounterMetricFamily(f"extproc_kv_events_{name}", text, labels=["instance"])
                    for name, text in per_instance.items()}
        evicted = CounterMetricFamily("extproc_kv_events_evicted_blocks",
                                      "Blocks dropped by --kv-index-max-blocks", labels=["instance"])
        for instance, stats in consumer.stats.items():
            blocks.add_metric([instance], index.blocks(instance))
            connected.add_metric([instance], 1.0 if consumer.live(instance) else 0.0)
            for kind, value in (("BlockStored", stats.stored), ("BlockRemoved", stats.removed),
                                ("AllBlocksCleared", stats.cleared), ("other_medium", stats.other_medium)):
                events.add_metric([instance, kind], value)
            for name, family in families.items():
                family.add_metric([instance], getattr(stats, name))
            evicted.add_metric([instance], index.evicted.get(instance, 0))
        yield blocks
        yield connected
        yield events
        yield from families.values()
        yield evicted
        yield GaugeMetricFamily("extproc_kv_events_index_bytes",
                                f"Approximate memory of the KV block index ({BYTES_PER_BLOCK} bytes a block)",
                                value=index.total * BYTES_PER_BLOCK)
        yield CounterMetricFamily("extproc_kv_events_lookups", "Precise cache lookups", value=view.lookups)
        yield CounterMetricFamily("extproc_kv_events_unanswered",
                                  "Lookups without tokens or without a live instance", value=view.unanswered)
        prompts = view.prompts
        yield CounterMetricFamily("extproc_kv_events_tokenize_errors", "Prompts that could not be tokenized",
                                  value=prompts.errors)
        cache = CounterMetricFamily("extproc_kv_events_prompt_cache", "Prompt chunk/block cache lookups",
                                    labels=["cache", "result"])
        cache.add_metric(["chunk", "hit"], prompts.chunk_hits)
        cache.add_metric(["chunk", "miss"], prompts.chunk_misses)
        cache.add_metric(["block", "hit"], view.hasher.cache_hits)
        cache.add_metric(["block", "miss"], view.hasher.cache_misses)
        yield cache
