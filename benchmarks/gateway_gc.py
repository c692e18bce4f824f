"""Garbage-collection pauses of the ext_proc at a fixed rate, by collector setting, side by side.

The gateway of ``benchmarks/gateway_overhead.py`` (Envoy + our ext_proc in front of fixed-response backends), open
loop at ``rate`` requests/s (default 478: half the saturation rate measured there on 2026-12-07) for 5 s, three
alternating rounds of: Python's defaults, ``--gc-freeze``, ``--gc-threshold 10000,10,10`` and both. Prints each
run's p50/p99 (from the scheduled send), late sends, and the ext_proc's own ``extproc_gc_pause_seconds`` per
generation (count, total, pauses over 5 ms). Prints figures; asserts nothing.

    python -m benchmarks.gateway_gc [rate] [--response-observation access-log]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import httpx

from benchmarks import gateway_overhead as g
from benchmarks.stack import free_port
from extproc.config import RESPONSE_OBSERVATIONS


def _sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def gc_figures(port: int) -> str:
    """Per generation: collections, their total pause, how many paused the loop over 5 ms."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out = []
    for gen in "012":
        label = f'{{generation="{gen}"}}'
        count = _sample(text, f"extproc_gc_pause_seconds_count{label}")
        total = _sample(text, f"extproc_gc_pause_seconds_sum{label}")
        within = _sample(text, f'extproc_gc_pause_seconds_bucket{{generation="{gen}",le="0.005"}}')
        out.append(f"gen{gen}: {count:.0f} x, {total * 1e3:.1f} ms total, {count - within:.0f} > 5 ms")
    return "; ".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rate", type=float, nargs="?", default=478.0, help="requests per second (open loop)")
    parser.add_argument("--response-observation", choices=list(RESPONSE_OBSERVATIONS),
                        default=RESPONSE_OBSERVATIONS[0], help="the gateway's (ext_proc and Envoy alike)")
    return parser


VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "gc-freeze": ("--gc-freeze",),
    "threshold": ("--gc-threshold", "10000,10,10"),
    "both": ("--gc-freeze", "--gc-threshold", "10000,10,10"),
}


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    rate = ns.rate
    run_dir = Path(g.tempfile_dir())
    backend, backends = g.start_fixed_backends(run_dir, ["vllm-1", "vllm-2", "vllm-3"])
    requests = g.make_requests(workflows=200)
    rows: dict[str, list[tuple[float, float]]] = {}
    try:
        for rnd in range(3):
            for label, args in VARIANTS.items():
                port = free_port()
                extproc_args = (*args, "--metrics-port", str(port))
                with g.envoy_gateway(True, backends, run_dir, 1, None, True, extproc_args,
                                     response_observation=ns.response_observation) as gateway:
                    r = g.open_loop(gateway, requests, 32, 5.0, rate)
                    figures = gc_figures(port)
                p50, p99 = r.percentile(0.5) * 1e3, r.percentile(0.99) * 1e3
                rows.setdefault(label, []).append((p50, p99))
                print(f"{label:10} round {rnd}: p50 {p50:.2f} ms p99 {p99:.2f} ms late {r.late}/{r.scheduled}; "
                      f"{figures}", flush=True)
    finally:
        backend.stop()
    for label, values in rows.items():
        print(f"{label:10} median p50 {statistics.median(v[0] for v in values):.2f} ms, "
              f"median p99 {statistics.median(v[1] for v in values):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
