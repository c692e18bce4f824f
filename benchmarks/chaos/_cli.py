"""``python -m benchmarks.chaos``: run scenarios on the shared stacks and print the table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from benchmarks.chaos._accounting import ScenarioResult, format_table
from benchmarks.chaos._scenarios import DEFAULT_FAULT_S, SCENARIOS, run_named, stack_options
from benchmarks.stack import Stack


def build_parser() -> argparse.ArgumentParser:
    from benchmarks import chaos  # the package's docstring, first paragraph, is the description

    description = (chaos.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"], metavar="NAME|all",
                        help=f"one of {', '.join(SCENARIOS)} or 'all'")
    parser.add_argument("--seconds", type=_seconds, default=DEFAULT_FAULT_S,
                        help="length of each fault window (0.5-60; some scenarios need a minimum, see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.5 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 60, got {value:g}")
    return value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


async def _main(names: Sequence[str], seconds: float) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    for kind in ("memory", "redis"):
        wanted = [n for n in names if SCENARIOS[n].stack == kind]
        if not wanted:
            continue
        with Stack(stack_options(kind)) as stack:
            for name in wanted:
                result, _ = await run_named(name, stack, seconds)
                results.append(result)
                print(f"done: {name}", file=sys.stderr, flush=True)
    order = list(names)
    return sorted(results, key=lambda r: order.index(r.name))


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parse(argv)
    if ns.list:
        for scenario in SCENARIOS.values():
            minimum = f" (window >= {scenario.min_fault_s:g} s)" if scenario.min_fault_s else ""
            print(f"{scenario.name:<22} [{scenario.stack} stack] {scenario.summary}{minimum}")
        return 0
    names = list(SCENARIOS) if ns.scenario == "all" else [ns.scenario]
    print(format_table(asyncio.run(_main(names, ns.seconds))))
    return 0

