"""The pure accounting of benchmarks/chaos/_accounting.py: recovery time, rates, exactly-once message counts, the
table."""

from __future__ import annotations

from benchmarks.chaos import Call, Messages, Window, format_table, rate, recovery_time, summarize


def call(t: float, ok: bool = True, *, kind: str = "llm_wf", errors: tuple[str, ...] = (),
         fallback: bool = False) -> Call:
    return Call(kind, t, t + 0.1, ok, errors, "vllm-1", fallback, "wf")


def test_recovery_is_the_start_of_the_first_run_of_normal_calls_after_the_fault() -> None:
    calls = [call(9.0), call(10.1, False, errors=("503",)), call(10.2, fallback=True),
             *(call(10.3 + i / 10) for i in range(4)), call(10.8, errors=("connect",)),
             *(call(11.0 + i / 10) for i in range(5)), call(12.0, kind="a2a_send", ok=False)]
    assert recovery_time(calls, after=10.0, run=5) == 1.0  # a retried success is not yet "normal"
    assert recovery_time(calls, after=10.0, run=6) is None
    assert recovery_time(calls, after=10.0, kinds=("a2a_send",), run=1) is None


def test_rate_counts_successes_of_the_kinds_that_ended_in_the_window() -> None:
    calls = [call(0.0), call(0.5), call(0.9, False, errors=("timeout",)), call(1.5, kind="a2a_send")]
    assert rate(calls, 0.0, 1.0) == 2.0
    assert rate(calls, 1.0, 1.0) == 0.0


def test_messages_lost_duplicated_and_contract_violations() -> None:
    m = Messages(confirmed={"a", "b", "c"})
    m.delivered.update({"a": 1, "b": 3})
    m.message_ids.update({"a": {"m1"}, "b": {"m2", "m3"}})
    m.redelivered.update({"m2": 1})
    assert m.lost() == {"c"}
    assert m.duplicated() == 2
    assert m.contract_violations() == {"m2"}  # its ack had not failed, yet it came again
    m.unacked.add("m2")
    assert m.contract_violations() == set()


def test_summary_and_table() -> None:
    calls = [call(0.5), call(1.2, False, errors=("connect", "connect")), call(1.4, fallback=True),
             call(2.5), call(1.3, kind="a2a_recv", ok=False, errors=("503:store_unavailable",))]
    m = Messages(confirmed={"x"})
    result = summarize("demo", calls, m, Window(0.0, 1.0, 2.0, 3.0))
    assert (result.sent, result.ok, result.fallback, result.msgs_lost) == (4, 3, 1, 1)
    assert result.failed == {"connect": 1}
    assert result.a2a_failed == {"a2a_recv:503:store_unavailable": 1}
    assert sum(result.failed_attempts.values()) == 3
    table = format_table([result]).splitlines()
    assert len(table) == 3 and table[2].startswith("| demo ")
