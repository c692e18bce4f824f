"""Each benchmark script runs its --quick mode once with tiny sizes: proof that it still works, not a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gateway_overhead, peers, workflow_benchmark
from benchmarks.stack import Stack


def test_workflow_benchmark_quick(stack: Stack, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "workflow.json"
    assert workflow_benchmark.main(["--quick", "--url", stack.url, "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "=== BENCHMARK SUMMARY ===" in printed and "A2A communication" in printed
    report = json.loads(out.read_text())
    assert report["sequential"]["success_rate"] == 1.0
    assert report["parallel"]["success_rate"] == 1.0
    for arm in ("with_workflow", "without_workflow"):
        assert report["cache"][arm]["success_rate"] == 1.0
    assert report["cache"]["with_workflow"]["cached_token_rate"] > 0
    assert report["a2a"]["messages"] == 20


def test_gateway_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    assert gateway_overhead.main(["--quick", "--duration", "0.5", "--connections", "8",
                                  "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rate_with"] > 0 and report["rate_without"] > 0
    assert set(report["routing_decision_s"]) == {"1000", "10000"}
    fixed = report["fixed_rate"]
    assert fixed["rate"] == pytest.approx(report["rate_with"] / 2)
    assert fixed["gateways"]["Envoy + ext_proc"]["rate"] > 0 and fixed["gateways"]["Envoy alone"]["rate"] > 0
    assert report["rate_access_log"] > 0 and fixed["gateways"]["Envoy + ext_proc, access log"]["rate"] > 0
    if peers.vllm_router_binary() is not None:  # the same backends serve its /tokenize calls: no error
        for policy in ("cache_aware", "round_robin"):
            assert report["vllm_router"][policy]["rate"] > 0
            assert fixed["gateways"][f"vllm-router {policy}"]["rate"] > 0
        assert report["vllm_router_problems"] == {}
    else:
        assert report["vllm_router"] == "skipped: vllm-router not installed"


def test_a2a_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "a2a.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.a2a_benchmark", "--quick", "--json", str(out)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.exists() and json.loads(out.read_text())
