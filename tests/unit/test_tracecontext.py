"""W3C traceparent parsing (a2a_service/tracecontext.py): valid values parse, everything else is ignored."""

import pytest

from a2a_service.tracecontext import TraceContext, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_valid_value_gives_trace_and_span_ids() -> None:
    assert parse_traceparent(VALID) == TraceContext(TRACE, SPAN, 1)
    assert parse_traceparent(VALID).log_fields() == {"trace_id": TRACE, "span_id": SPAN}


@pytest.mark.parametrize(("flags", "sampled"), [("01", True), ("00", False), ("03", True), ("fe", False)])
def test_flags(flags: str, sampled: bool) -> None:
    context = parse_traceparent(f"00-{TRACE}-{SPAN}-{flags}")
    assert context is not None and context.sampled is sampled and context.flags == int(flags, 16)


def test_a_later_version_parses_its_first_four_fields() -> None:
    # W3C: a higher version may append fields after a "-"; its first four are read as version 00's.
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == TraceContext(TRACE, SPAN, 1)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-adds") == TraceContext(TRACE, SPAN, 1)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"0g-{TRACE}-{SPAN}-01",  # version not hex
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"cc-{TRACE}-{SPAN}-01extra",  # a later version's extra fields must follow a "-"
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE[:-1]}-{SPAN}-01",  # trace id too short
        f"00-{TRACE}a-{SPAN}-01",  # trace id too long
        f"00-{TRACE}-{SPAN[:-1]}-01",  # span id too short
        f"00-{TRACE}-{SPAN}0-01",  # span id too long
        f"00-{TRACE}-{SPAN}-1",  # flags too short
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex is invalid
        f"00-{TRACE}-{SPAN.upper()}-01",
        f"00_{TRACE}_{SPAN}_01",  # wrong separators
        f" 00-{TRACE}-{SPAN}-01"[:55],  # leading space
        f"00-{TRACE[:16]}z{TRACE[17:]}-{SPAN}-01",  # non-hex character
        "x" * 55,
    ],
)
def test_invalid_values_are_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


async def test_a2a_log_records_get_the_trace_of_their_own_request_only() -> None:
    import asyncio
    import logging

    from a2a_service._logging import _TraceFields, reset_trace, set_trace

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(_TraceFields())
    logger = logging.getLogger("a2a_service.test_trace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    entered = asyncio.Event()

    async def traced() -> None:  # a request with a traceparent, logging while another request runs
        token = set_trace(VALID)
        try:
            entered.set()
            await asyncio.sleep(0)
            logger.info("traced")
        finally:
            reset_trace(token)

    async def plain() -> None:
        await entered.wait()
        logger.info("plain")

    try:
        await asyncio.gather(asyncio.create_task(traced()), asyncio.create_task(plain()))
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    by_message = {r.getMessage(): r for r in records}
    assert (by_message["traced"].trace_id, by_message["traced"].span_id) == (TRACE, SPAN)
    assert not hasattr(by_message["plain"], "trace_id") and not hasattr(by_message["after"], "trace_id")
