"""``make run``'s launcher (``python -m benchmarks.stack``) survives the failover it demonstrates.

The launcher runs as ``make run`` runs it, in its own process group, on free ports (port 0 everywhere, so a
developer's running stack on 8001/9901 is never touched). A simulated instance is SIGKILLed: the launcher logs
the death and keeps serving, requests through Envoy keep succeeding, and with ``--restart-instances`` the
instance comes back on its port and takes requests again. SIGTERM to the whole group (``kill -- -PGID``) then
stops everything with exit status 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
SETTLE_S = 2.0  # after the kill, failover may cost requests only this long


class Launcher:
    """``python -m benchmarks.stack`` in its own process group, its stdout collected line by line."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        argv = [sys.executable, "-m", "benchmarks.stack", "--instances", "2", "--time-scale", "0.01", "--no-demo",
                "--listen-port", "0", "--admin-port", "0", "--extproc-port", "0", "--extproc-metrics-port", "0",
                "--a2a-http-port", "0", "--a2a-grpc-port", "0", "--run-dir", str(tmp_path / "run"),
                "--log-level", "warning", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            assert self.popen.poll() is None, f"launcher exited ({self.popen.returncode}):\n{self.output}"
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}")

    def group_pids(self) -> set[int]:
        """Every live (not zombie) process of the launcher's group."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == self.popen.pid and fields[0] != "Z":  # fields[2] is the pgrp
                pids.add(int(entry.name))
        return pids

    def kill_group(self) -> None:
        """After a failure: SIGKILL what is left of the group this test started."""
        if self.group_pids():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


def completion(client: httpx.Client, url: str, workflow_id: str) -> httpx.Response:
    body = {"model": "m", "prompt": f"{workflow_id}: summarise the records", "max_tokens": 4,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "agent"}}
    return client.post(f"{url}/v1/completions", json=body)


def burst(url: str, workflow_ids: list[str]) -> list[tuple[str, int, str]]:
    """One request per workflow, concurrently: (workflow, status or 0 for a transport error, served by)."""
    def one(workflow_id: str) -> tuple[str, int, str]:
        try:
            with httpx.Client(timeout=10) as client:
                response = completion(client, url, workflow_id)
        except httpx.HTTPError:
            return workflow_id, 0, ""
        return workflow_id, response.status_code, response.headers.get("x-served-by", "")

    with ThreadPoolExecutor(max_workers=len(workflow_ids)) as pool:
        return list(pool.map(one, workflow_ids))


@pytest.mark.parametrize("restart", [False, True], ids=["restarts-off", "restart-instances"])
def test_the_launcher_survives_a_killed_instance_and_stops_cleanly_on_sigterm(tmp_path: Path, restart: bool) -> None:
    launcher = Launcher(tmp_path, *(["--restart-instances"] if restart else []))
    try:
        url = "http://127.0.0.1:" + launcher.wait_for(r"^Envoy\s+http://127\.0\.0\.1:(\d+)", 60).group(1)
        launcher.wait_for(r"^serving \(instance restarts " + ("on" if restart else "off"), 30)
        instances = {m.group(1): (int(m.group(2)), int(m.group(3))) for line in launcher.lines
                     if (m := re.match(r"^(vllm-\d+)\s+http://127\.0\.0\.1:(\d+)\s+\(simulated vLLM, pid (\d+)\)",
                                       line))}
        assert sorted(instances) == ["vllm-1", "vllm-2"], launcher.output
        run = uuid.uuid4().hex[:6]
        workflows = [f"launcher-{run}-{i}" for i in range(8)]
        before = burst(url, workflows)
        assert all(status == 200 for _, status, _ in before), before
        homes = {served for _, _, served in before}
        victim = "vllm-2" if "vllm-2" in homes else "vllm-1"  # an instance that served some workflows
        port, pid = instances[victim]

        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.wait_for(rf"^STACK_CHILD_EXITED name={victim} pid={pid} signal=SIGKILL then="
                          + ("restart" if restart else "failover"), 5)
        settling = []
        while time.monotonic() - killed_at < SETTLE_S:
            settling += burst(url, workflows)
        after = [r for _ in range(3) for r in burst(url, workflows)]
        assert launcher.popen.poll() is None, launcher.output
        assert [r for r in after if r[1] != 200] == [], after  # 0 failed requests once failover settled
        if not restart:
            assert all(served != victim for _, _, served in after)
            assert "STACK_CHILD_RESTARTED" not in launcher.output
        else:
            launcher.wait_for(rf"^STACK_CHILD_RESTARTED name={victim} pid=\d+ port={port} attempt=1", 15)
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            # New workflows spread over both instances again once the router sees the instance healthy.
            deadline = time.monotonic() + 15
            while True:
                results = burst(url, [f"launcher-{run}-back-{uuid.uuid4().hex[:6]}" for _ in range(6)])
                assert all(status == 200 for _, status, _ in results), results
                if any(served == victim for _, _, served in results):
                    break
                assert time.monotonic() < deadline, f"{victim} took no request after its restart: {results}"
                time.sleep(0.3)

        group = launcher.group_pids()
        assert launcher.popen.pid in group and len(group) >= 5, group  # launcher, Envoy, ext_proc, A2A, instance(s)
        os.killpg(launcher.popen.pid, signal.SIGTERM)  # what `kill -- -PGID` and most supervisors do
        assert launcher.popen.wait(30) == 0, launcher.output
        deadline = time.monotonic() + 5
        while launcher.group_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launcher.group_pids() == set(), launcher.output
        launcher._reader.join(5)
        assert "stopped (SIGTERM)" in launcher.output
        assert "Traceback" not in launcher.output, launcher.output
    finally:
        launcher.kill_group()


@pytest.mark.parametrize(
    ("signum", "when"),
    [(signal.SIGINT, r"^serving \("), (signal.SIGTERM, r"^starting the stack")],
    ids=["ctrl-c-while-serving", "sigterm-during-start-up"],
)
def test_a_group_signal_stops_the_launcher_with_status_0(tmp_path: Path, signum: int, when: str) -> None:
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_for(when, 60)
        if "starting" in when:
            time.sleep(1.0)  # children are being started and waited for
        os.killpg(launcher.popen.pid, signum)
        assert launcher.popen.wait(30) == 0, launcher.output
        deadline = time.monotonic() + 5
        while launcher.group_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launcher.group_pids() == set(), launcher.output
        launcher._reader.join(5)
        assert f"stopped ({signal.Signals(signum).name})" in launcher.output
        assert "Traceback" not in launcher.output, launcher.output
    finally:
        launcher.kill_group()


def test_a_dead_envoy_still_stops_the_stack_with_status_1(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path, "--restart-instances")
    try:
        launcher.wait_for(r"^serving \(", 60)
        envoy = next(pid for pid in launcher.group_pids() if Path(f"/proc/{pid}/comm").read_text().strip() == "envoy")
        os.kill(envoy, signal.SIGKILL)
        assert launcher.popen.wait(30) == 1, launcher.output
        launcher._reader.join(5)
        assert re.search(rf"^STACK_CHILD_EXITED name=envoy pid={envoy} signal=SIGKILL then=stop", launcher.output,
                         re.MULTILINE), launcher.output
        assert "stopping: envoy exited" in launcher.output
        deadline = time.monotonic() + 5
        while launcher.group_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launcher.group_pids() == set(), launcher.output
    finally:
        launcher.kill_group()
