"""``workflow-router`` starts the real servers (each prints its listening line) and they stop cleanly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.stack import spawn, wait_for_line

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("argv", "listening"),
    [
        (["extproc", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--backends", "vllm-1",
          "--drain-delay", "0"], r"EXTPROC_LISTENING grpc=(\d+) metrics=(\d+)"),
        (["a2a", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"],
         r"A2A_LISTENING http=(\d+) grpc=(\d+)"),
        (["sim", "--host", "127.0.0.1", "--port", "0", "--time-scale", "0"], r"VLLM_SIM_LISTENING port=(\d+)"),
    ],
)
def test_the_servers_start_and_stop_through_the_cli(argv: list[str], listening: str, tmp_path: Path) -> None:
    process = spawn(argv[0], [sys.executable, "-m", "workflow_router.cli", *argv], tmp_path)
    try:
        ports = wait_for_line(process, listening, timeout=60).groups()
    finally:
        code = process.stop(timeout=20)  # SIGTERM: a graceful stop exits 0
    assert all(int(port) > 0 for port in ports)
    assert code == 0, process.log_tail()
