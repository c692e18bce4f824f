"""The peer router (``vllm-router`` from PyPI) and the simulated fleet every contender of the comparison uses.

vllm-router 0.1.17's ``cache_aware`` policy matches prefixes on token ids. For each request it asks a worker
for them, first with ``POST /v1/completions/render`` and then with vLLM's ``POST /tokenize``; when neither
answers it routes with no prefix information at all (outcome ``missing_tokens`` of its
``vllm_router_prefix_routing_decisions_total`` metric: the least-loaded worker, the first one on ties). The
simulator serves vLLM's ``/tokenize`` (``benchmarks/simulator/app.py``: ``{"model", "prompt" | "messages"}`` ->
``{"count", "max_model_len", "tokens", "token_strs"}``, the simulator's own token ids), so the ids vllm-router
matches on are the ids the engine caches; ``/v1/completions/render`` answers 404 (vllm-router then falls back
to ``/tokenize``).

``python -m benchmarks.peers <simulator flags>`` runs the simulator exactly as ``python -m
benchmarks.simulator`` does (same flags, same ``VLLM_SIM_LISTENING port=N`` line). The comparison starts every
contender's fleet with this command, so all fleets are identical.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.simulator.__main__ import main as simulator_main
from benchmarks.simulator.config import LISTENING_MARKER
from benchmarks.stack import DEFAULT_MODEL, DEFAULT_MODEL_ALIAS, Process, free_port, spawn, wait_for_line

VLLM_ROUTER_VERSION = "0.1.17"


# --- the simulator (it serves vLLM's /tokenize itself) ---------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.peers``: the simulator's own CLI (kept so existing fleet commands still work)."""
    return simulator_main(argv)


# --- the fleet ----------------------------------------------------------------------------------------------
def start_fleet(instances: int, sim_args: Sequence[str], run_dir: Path) -> dict[str, Process]:
    """``instances`` simulators on free ports, named vllm-1 ...; ``process.ports['http']``."""
    fleet: dict[str, Process] = {}
    try:
        for index in range(1, instances + 1):
            name = f"vllm-{index}"
            # The stack's default served names (the model and its alias "m"), unless sim_args name others.
            argv = [sys.executable, "-m", "benchmarks.peers", "--host", "127.0.0.1", "--port", "0", "--name", name,
                    "--served-model-name", DEFAULT_MODEL, DEFAULT_MODEL_ALIAS, *sim_args]
            process = spawn(name, argv, run_dir)
            fleet[name] = process
            process.ports["http"] = int(wait_for_line(process, rf"{LISTENING_MARKER} port=(\d+)").group(1))
    except BaseException:
        stop_all(fleet.values())
        raise
    return fleet


def stop_all(processes: Any) -> None:
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop()


# --- vllm-router --------------------------------------------------------------------------------------------
def vllm_router_binary() -> str | None:
    """The ``vllm-router`` executable of this interpreter's environment, else the one on PATH, else None."""
    beside = Path(sys.executable).parent / "vllm-router"
    if beside.exists():
        return str(beside)
    return shutil.which("vllm-router")


def start_vllm_router(binary: str, policy: str, workers: Sequence[str], run_dir: Path,
                      timeout: float = 60.0) -> tuple[Process, str, str]:
    """Start ``vllm-router --policy policy`` over ``workers``; wait for its /health. (process, url, metrics url)."""
    port, metrics_port = free_port(), free_port()
    argv = [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers, "--policy", policy,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--worker-startup-check-interval", "1", "--log-level", "warning"]
    process = spawn(f"vllm-router-{policy}", argv, run_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"vllm-router exited ({process.popen.returncode}):\n{process.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url, f"http://127.0.0.1:{metrics_port}/metrics"
        time.sleep(0.1)
    process.stop()
    raise TimeoutError(f"vllm-router not healthy within {timeout:g}s:\n{process.log_tail()}")


def prefix_decisions(metrics_text: str) -> dict[str, float]:
    """vllm-router's ``vllm_router_prefix_routing_decisions_total`` by outcome (prefix_hit, prefix_miss,
    missing_tokens, load_imbalance ...): shows whether cache_aware really saw token ids."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("vllm_router_prefix_routing_decisions_total{"):
            labels, _, value = line.rpartition(" ")
            outcome = labels.partition('outcome="')[2].partition('"')[0]
            out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


if __name__ == "__main__":
    sys.exit(main())
