"""Replay of a Mooncake-format trace as a :class:`benchmarks.workload.Plan` (the ``mooncake`` shape).

The format (kvcache-ai/Mooncake, FAST'25 traces): one JSON object per line with ``timestamp`` (ms since the
trace's start), ``input_length`` and ``output_length`` (tokens) and ``hash_ids``, one id per 512-token block of
the input; equal ids mean equal content, so requests sharing a prefix share a prefix of ids.

* **Text**: each id becomes ``block_tokens`` (512) words of the form ``" xyz"`` (a space and three letters
  drawn from a ``random.Random`` seeded with the id), and the approximate tokenizer of the simulator and the
  router (``extproc/tokenization/approx.py``) counts each such word as exactly one token. Equal ids therefore
  give equal token blocks, blocks concatenate on token boundaries (512 is a multiple of vLLM's 16-token KV
  block), and a request's last block is cut to ``input_length``.
* **Sessions** (the trace has no workflow metadata): a request whose first id was first seen in an earlier
  request joins that request's session (transitively); any other request opens its own. A session is
  one :class:`Workflow` whose agents are its requests, each sent at its own trace time (``Agent.delay_s`` =
  its offset from the session's first request; no request waits for another: open loop, as recorded). The
  ``workflow_metadata`` of ours-with-metadata carries the session as the workflow and the session's
  previous request as ``parent_request_id``.
* **Selection** (``limit``): ``sessions`` (default) draws whole sessions at random (seeded) until ``limit``
  requests are reached, so a short replay keeps the trace's reuse and its spread over time (every prefix
  reuse is within a session by construction; the first N requests alone reuse almost nothing: the trace's
  sharing is long-range, a median of ~1,650 requests back); ``head`` keeps the first ``limit`` requests.
* **Ceiling**: :func:`block_ceiling` is the trace's block-reuse ceiling, matched leading ids / ids in
  arrival order with one infinite cache: 64 % over the whole synthetic trace, as REFERENCE.md states.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmarks.workload import MOONCAKE, Agent, Plan, Workflow, WorkloadConfig

__all__ = [
    "BLOCK_TOKENS",
    "DEFAULT_TRACE",
    "SELECTIONS",
    "TraceRequest",
    "block_ceiling",
    "block_text",
    "derive_sessions",
    "load_trace",
    "parse_trace",
    "plan_from_trace",
    "request_text",
    "select",
]

BLOCK_TOKENS = 512
DEFAULT_TRACE = Path("../shared/traces/mooncake-synthetic.jsonl")  # relative to the repository root
SELECTIONS = ("sessions", "head")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def parse_trace(lines: Iterable[str]) -> list[TraceRequest]:
    """Requests of a Mooncake JSON-lines trace, sorted by timestamp (stable); blank lines are skipped."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            request = TraceRequest(int(row["timestamp"]), int(row["input_length"]), int(row["output_length"]),
                                   tuple(int(h) for h in row["hash_ids"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"trace line {number}: {exc}") from None
        if request.input_length < 1 or request.output_length < 0 or not request.hash_ids:
            raise ValueError(f"trace line {number}: empty request")
        out.append(request)
    return sorted(out, key=lambda r: r.timestamp_ms)


def load_trace(path: Path) -> list[TraceRequest]:
    with path.open(encoding="utf-8") as f:
        return parse_trace(f)


@lru_cache(maxsize=1 << 15)
def block_text(hash_id: int, tokens: int = BLOCK_TOKENS) -> str:
    """``tokens`` one-token words (``" xyz"``) drawn from a generator seeded with the id: equal ids, equal text."""
    rng = random.Random(f"mooncake-block-{hash_id}")
    letters = string.ascii_lowercase
    return "".join(" " + "".join(rng.choices(letters, k=3)) for _ in range(tokens))


def request_text(request: TraceRequest, block_tokens: int = BLOCK_TOKENS) -> str:
    """The request's prompt: its blocks' texts, cut to ``input_length`` tokens (scaled by block_tokens/512)."""
    length = max(1, round(request.input_length * block_tokens / BLOCK_TOKENS))
    parts = []
    remaining = length
    for hash_id in request.hash_ids:
        if remaining <= 0:
            break
        text = block_text(hash_id, block_tokens)
        take = min(block_tokens, remaining)
        parts.append(text if take == block_tokens else text[: 4 * take])  # 4 characters per word
        remaining -= take
    return "".join(parts)


def derive_sessions(requests: Sequence[TraceRequest]) -> list[int]:
    """For each request, the index of its session's first request (see the module docstring)."""
    owner: dict[int, int] = {}  # hash id -> index of the request that first carried it
    session: list[int] = []
    for index, request in enumerate(requests):
        first = owner.get(request.hash_ids[0])
        session.append(session[first] if first is not None else index)
        for hash_id in request.hash_ids:
            owner.setdefault(hash_id, index)
    return session


def select(requests: Sequence[TraceRequest], limit: int | None, mode: str = "sessions", seed: int = 0,
           ) -> list[int]:
    """Indices of the requests to replay (ascending): see "Selection" in the module docstring."""
    if mode not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}")
    if limit is None or limit >= len(requests):
        return list(range(len(requests)))
    if mode == "head":
        return list(range(limit))
    sessions = derive_sessions(requests)
    sizes: dict[int, int] = {}
    for s in sessions:
        sizes[s] = sizes.get(s, 0) + 1
    order = list(sizes)
    random.Random(seed).shuffle(order)
    chosen: set[int] = set()
    count = 0
    for s in order:
        if count >= limit:
            break
        chosen.add(s)
        count += sizes[s]
    return [i for i, s in enumerate(sessions) if s in chosen]


def block_ceiling(requests: Iterable[TraceRequest]) -> float:
    """Matched leading block ids / all block ids, in arrival order, with one infinite cache."""
    seen: set[int] = set()
    hits = total = 0
    for request in requests:
        matched = 0
        for hash_id in request.hash_ids:
            if hash_id not in seen:
                break
            matched += 1
        hits += matched
        total += len(request.hash_ids)
        seen.update(request.hash_ids)
    return hits / total if total else 0.0


def plan_from_trace(requests: Sequence[TraceRequest], *, limit: int | None = None, selection: str = "sessions",
                    speedup: float = 1.0, block_tokens: int = BLOCK_TOKENS, max_output_tokens: int | None = None,
                    seed: int = 0) -> Plan:
    """A plan replaying the selected requests at their trace times divided by ``speedup`` (simulated s)."""
    if speedup <= 0:
        raise ValueError("speedup must be > 0")
    if not 1 <= block_tokens <= BLOCK_TOKENS or BLOCK_TOKENS % block_tokens:
        raise ValueError(f"block_tokens must divide {BLOCK_TOKENS}")
    indices = select(requests, limit, selection, seed)
    sessions = derive_sessions(requests)
    t0 = requests[indices[0]].timestamp_ms if indices else 0
    members: dict[int, list[int]] = {}
    for i in indices:
        members.setdefault(sessions[i], []).append(i)
    workflows = []
    for number, (session, items) in enumerate(members.items()):
        workflow_id = f"s{number:04d}-r{session}"
        arrival = (requests[items[0]].timestamp_ms - t0) / 1000 / speedup
        agents = []
        for k, i in enumerate(items):
            request = requests[i]
            output = max(1, request.output_length)
            if max_output_tokens is not None:
                output = min(output, max_output_tokens)
            agents.append(Agent(
                index=k, name=f"r{i}", role="request", depends_on=(), max_tokens=output, task="",
                parent=k - 1 if k else None,
                delay_s=(request.timestamp_ms - requests[items[0]].timestamp_ms) / 1000 / speedup,
                agent_id=f"r{i}", fixed_prompt=request_text(request, block_tokens)))
        workflows.append(Workflow(workflow_id, arrival, MOONCAKE, "", tuple(agents), MOONCAKE, "", {}))
    workflows.sort(key=lambda w: w.arrival)
    config = WorkloadConfig(workflows=max(1, len(workflows)), shape=MOONCAKE)
    return Plan(config, "", {}, tuple(workflows))
