"""The router comparison's --quick mode still runs end to end and reports every column (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import compare_routers

pytestmark = pytest.mark.e2e


def test_quick_comparison_reports_every_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contenders = ["round-robin", "workflow-aware"]
    if compare_routers.vllm_router_binary() is not None:
        contenders.append("vllm-router/cache_aware")
    out = tmp_path / "compare.json"
    assert compare_routers.main(["--quick", "--contenders", ",".join(contenders), "--json-out", str(out),
                                 "--run-dir", str(tmp_path / "logs")]) == 0
    printed = capsys.readouterr().out
    assert "ROUTER COMPARISON" in printed
    report = json.loads(out.read_text())
    results = report["shapes"]["context-first"]["results"]
    assert list(results) == contenders
    for name, row in results.items():
        assert "error" not in row, f"{name}: {row.get('error')}"
        for key, *_ in compare_routers.COLUMNS:
            assert key in row, f"{name}: no {key}"
        assert row["failed"] == 0, f"{name}: {row['errors']}"
        assert row["requests"] == report["shapes"]["context-first"]["plan"]["requests"]
        assert 0.0 <= row["hit_rate"] <= 1.0
        assert sum(row["requests_per_instance"].values()) == row["requests"]
    # Workflow metadata keeps each workflow on one instance.
    assert results["workflow-aware"]["instances_per_workflow_mean"] == 1.0


def test_missing_vllm_router_is_reported_as_skipped_not_faked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compare_routers, "vllm_router_binary", lambda: None)
    out = tmp_path / "compare.json"
    assert compare_routers.main(["--quick", "--workflows", "2", "--contenders", "round-robin,vllm-router",
                                 "--json-out", str(out), "--run-dir", str(tmp_path / "logs")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert list(report["shapes"]["context-first"]["results"]) == ["round-robin"]
    assert set(report["skipped"]) == {"vllm-router/round_robin", "vllm-router/consistent_hash",
                                      "vllm-router/cache_aware"}
    assert "vllm-router/cache_aware: skipped" in printed


def test_helpers() -> None:
    assert compare_routers.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert compare_routers.percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    assert [c.name for c in compare_routers.select_contenders("workflow-aware,vllm-router,workflow-aware")] == [
        "workflow-aware", "vllm-router/round_robin", "vllm-router/consistent_hash", "vllm-router/cache_aware"]
    with pytest.raises(SystemExit):
        compare_routers.select_contenders("nginx")
    words = " ".join(["ab"] * 64)  # 64 one-token words: 4 full blocks of 16
    record = compare_routers.RequestRecord("wf", "a0", ok=True, prompt=words, output=" x" * 16)
    again = compare_routers.RequestRecord("wf", "a1", ok=True, start_s=1.0, prompt=words + " cd" * 32)
    # The second prompt's first 64 tokens were seen; the first prompt hits nothing.
    assert compare_routers.oracle_hit_rate([record, again]) == pytest.approx(64 / (64 + 96))
