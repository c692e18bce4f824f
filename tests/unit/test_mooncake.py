"""The Mooncake trace replay: parsing, ids -> token blocks (equal ids, equal text), sessions, the ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.mooncake import (
    BLOCK_TOKENS,
    TraceRequest,
    block_ceiling,
    block_text,
    derive_sessions,
    load_trace,
    parse_trace,
    plan_from_trace,
    request_text,
    select,
)
from benchmarks.simulator.tokenizer import encode
from benchmarks.workload import MOONCAKE, offered_prompt_tokens

# Three sessions: r0 -> r2 -> r4 share a growing prefix; r1 alone; r3 shares r1's first block only.
ROWS = [
    {"timestamp": 0, "input_length": 1024, "output_length": 5, "hash_ids": [0, 1]},
    {"timestamp": 500, "input_length": 700, "output_length": 3, "hash_ids": [2, 3]},
    {"timestamp": 1000, "input_length": 1500, "output_length": 4, "hash_ids": [0, 1, 4]},
    {"timestamp": 1200, "input_length": 512, "output_length": 2, "hash_ids": [2]},
    {"timestamp": 3000, "input_length": 2048, "output_length": 6, "hash_ids": [0, 1, 4, 5]},
    {"timestamp": 3500, "input_length": 300, "output_length": 1, "hash_ids": [6]},
]
LINES = [json.dumps(r) for r in ROWS]


def test_parse_sorts_by_time_and_rejects_bad_lines() -> None:
    requests = parse_trace([LINES[2], "", LINES[0]])
    assert [r.timestamp_ms for r in requests] == [0, 1000]
    assert requests[0] == TraceRequest(0, 1024, 5, (0, 1))
    with pytest.raises(ValueError, match="line 1"):
        parse_trace(['{"timestamp": 0}'])
    with pytest.raises(ValueError, match="line 2"):
        parse_trace([LINES[0], '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": []}'])


def test_equal_ids_give_equal_token_blocks_of_512_tokens() -> None:
    assert block_text(7) == block_text(7) and block_text(7) != block_text(8)
    assert len(encode(block_text(7))) == BLOCK_TOKENS
    requests = parse_trace(LINES)
    first, third = request_text(requests[0]), request_text(requests[2])
    a, b = encode(first), encode(third)
    assert len(a) == 1024 and len(b) == 1500
    assert b[:1024] == a  # shared ids [0, 1] -> shared 1024 tokens
    assert encode(request_text(requests[3])) == encode(request_text(requests[1]))[:512]
    assert len(encode(request_text(requests[1]))) == 700  # the last block cut to input_length
    # Scaled-down blocks keep the structure: 64 tokens per id.
    small = encode(request_text(requests[2], block_tokens=64))
    assert len(small) == round(1500 * 64 / 512) and small[:128] == encode(request_text(requests[0], 64))


def test_sessions_follow_the_first_block() -> None:
    requests = parse_trace(LINES)
    assert derive_sessions(requests) == [0, 1, 0, 1, 0, 5]
    assert select(requests, None) == list(range(6))
    assert select(requests, 2, "head") == [0, 1]
    chosen = select(requests, 3, "sessions", seed=0)
    sessions = derive_sessions(requests)
    # Whole sessions only: every chosen session is complete.
    assert {i for i in range(6) if sessions[i] in {sessions[c] for c in chosen}} == set(chosen)
    assert select(requests, 3, "sessions", seed=0) == chosen


def test_block_ceiling_on_a_small_trace() -> None:
    requests = parse_trace(LINES)
    # Blocks: 2 + 2 + 3 + 1 + 4 + 1 = 13; leading matches: r2 2 (0, 1), r3 1 (2), r4 3 (0, 1, 4).
    assert block_ceiling(requests) == pytest.approx(6 / 13)


def test_the_whole_synthetic_trace_has_the_published_ceiling() -> None:
    path = Path(__file__).resolve().parents[2] / "../shared/traces/mooncake-synthetic.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    requests = load_trace(path)
    assert len(requests) == 3993
    assert block_ceiling(requests) == pytest.approx(0.64, abs=0.005)  # REFERENCE.md: 64 %


def test_plan_replays_sessions_at_trace_times() -> None:
    from benchmarks.compare_routers import RequestRecord, oracle_hit_rate

    requests = parse_trace(LINES)
    plan = plan_from_trace(requests, speedup=2.0)
    assert plan.config.shape == MOONCAKE and plan.requests == 6
    assert [w.arrival for w in plan.workflows] == [0.0, 0.25, 1.75]
    session = plan.workflows[0]
    assert [a.delay_s for a in session.agents] == [0.0, 0.5, 1.5]  # offsets / speedup
    assert [a.parent for a in session.agents] == [None, 0, 1] and all(not a.depends_on for a in session.agents)
    assert session.prompt(2, {}) == request_text(requests[4])
    assert [a.max_tokens for a in session.agents] == [5, 4, 6]
    assert offered_prompt_tokens(plan)["prompt_tokens"] == sum(r.input_length for r in requests)
    # The token-level ceiling in 16-token KV blocks: r2 hits r0's 1024 tokens, r3 511 of its 512 (a hit is
    # capped at the prompt length - 1), r4 1024 + the 29 full 16-token blocks of r2's 476-token third block.
    records = [RequestRecord(w.workflow_id, a.name, ok=True, start_s=w.arrival + a.delay_s,
                             prompt=w.prompt(a.index, {})) for w in plan.workflows for a in w.agents]
    assert oracle_hit_rate(records) == pytest.approx((1024 + 511 + 1024 + 29 * 16) / 6084)
