"""``python -m benchmarks.simulator`` / ``vllm-sim``: one simulated vLLM server.

Every flag can also come from the environment: ``VLLM_SIM_`` + the flag name upper-cased with dashes as
underscores (``--time-scale`` -> ``VLLM_SIM_TIME_SCALE``). Precedence: flag > environment > profile file.
With ``--port 0`` the OS picks a free port; the process prints ``VLLM_SIM_LISTENING port=<port>`` on stdout
once it accepts requests. Logs are JSON lines on stderr; prompts are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .block_hash import HASH_ALGOS
from .config import (
    DEFAULT_HOST,
    DEFAULT_MAX_RECORDED_REQUESTS,
    DEFAULT_NAME,
    DEFAULT_PORT,
    DEFAULT_PREFIX_CACHING_HASH_ALGO,
    DEFAULT_SCHEDULING_POLICY,
    DEFAULT_SEED,
    DEFAULT_SHUTDOWN_GRACE_S,
    DEFAULT_TIME_SCALE,
    ENV_PREFIX,
    SimConfig,
)
from .engine import SCHEDULING_POLICIES
from .kv_events_config import ENCODINGS, parse_kv_events_config
from .lora import DEFAULT_LORA_LOAD_S, DEFAULT_MAX_LORAS, parse_lora_modules
from .profile import DEFAULT_PROFILE, load_profile, profile_field_types
from .server import serve

__all__ = ["build_config", "build_parser", "main", "parse_args"]

# Profile fields that get their own flag (``model`` is set with --model, which names the served model).
_PROFILE_FLAGS = [name for name in profile_field_types() if name != "model"]


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-sim",
        description="A simulated vLLM OpenAI-compatible server (continuous batching, prefix cache, metrics).",
        epilog=f"Every flag also reads {ENV_PREFIX}<FLAG> from the environment, e.g. {ENV_PREFIX}PORT=0, "
        f"{ENV_PREFIX}TIME_SCALE=0.01, {ENV_PREFIX}NUM_GPU_BLOCKS=4096.",
    )

    def add(flag: str, kind: type, default: Any, help_: str, choices: Sequence[str] | None = None) -> None:
        env_name = _env_name(flag)
        p.add_argument(
            flag,
            type=kind,
            default=env.get(env_name, default),
            choices=choices,
            help=f"{help_} [env {env_name}; default {default}]",
        )

    add("--host", str, DEFAULT_HOST, "address to bind")
    add("--port", int, DEFAULT_PORT, "port to bind; 0 = any free port (printed on stdout)")
    add("--name", str, DEFAULT_NAME, "instance name (x-sim-instance header, logs, /sim/stats)")
    add("--model", str, None, "served model name (default: the profile's model)")
    add("--profile", str, DEFAULT_PROFILE, "packaged profile name or path to a profile TOML")
    add("--time-scale", float, DEFAULT_TIME_SCALE, "wall seconds per simulated second; 0 = never sleep")
    add("--seed", int, DEFAULT_SEED, "seed of the one RNG (generated text, jitter, injected failures)")
    add("--max-recorded-requests", int, DEFAULT_MAX_RECORDED_REQUESTS, "request bodies kept for /sim/requests")
    add("--shutdown-grace", float, DEFAULT_SHUTDOWN_GRACE_S, "seconds in-flight requests get on SIGTERM")
    add("--log-level", str, "info", "debug, info, warning or error")
    add(
        "--scheduling-policy",
        str,
        DEFAULT_SCHEDULING_POLICY,
        "vLLM's --scheduling-policy: fcfs (a non-zero request 'priority' is a 400) or priority (lower first)",
        SCHEDULING_POLICIES,
    )
    add(
        "--prefix-caching-hash-algo",
        str,
        DEFAULT_PREFIX_CACHING_HASH_ALGO,
        "block hash: the simulator's blake2b, or vLLM's sha256_cbor (NONE_HASH from PYTHONHASHSEED)",
        HASH_ALGOS,
    )
    add(
        "--kv-events-config",
        str,
        None,
        "vLLM's --kv-events-config JSON, e.g. "
        '\'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "topic": "kv"}\'',
    )
    add(
        "--kv-events-encoding",
        str,
        "array",
        "msgpack shape of KV events: array (vLLM before PR #42892) or map (current vLLM)",
        ENCODINGS,
    )
    # vLLM's list-valued flags (environment: names separated by spaces).
    p.add_argument("--served-model-name", nargs="+", default=env.get(_env_name("--served-model-name"), "").split(),
                   help="vLLM's served model names (the first labels the metrics); given, other models get 404 "
                   f"[env {_env_name('--served-model-name')}]")
    p.add_argument("--lora-modules", nargs="+", default=env.get(_env_name("--lora-modules"), "").split(),
                   help="LoRA adapters, vLLM's forms: name=path or '{\"name\": ..., \"path\": ..., "
                   f"\"base_model_name\": ...}}' [env {_env_name('--lora-modules')}]")
    p.add_argument("--enable-lora", action="store_true",
                   help="serve LoRA adapters (implied by --lora-modules); with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                   "adapters can be loaded and unloaded at run time (POST /v1/load_lora_adapter, "
                   "/v1/unload_lora_adapter)")
    add("--max-loras", int, DEFAULT_MAX_LORAS, "adapters one batch can hold (GPU slots; vLLM's default 1)")
    add("--lora-load-time", float, DEFAULT_LORA_LOAD_S,
        "simulated seconds to load an adapter that is not in a slot")
    for name, kind in profile_field_types().items():
        if name in _PROFILE_FLAGS:
            add("--" + name.replace("_", "-"), kind, None, f"override the profile's {name}")
    return p


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    return _parser(os.environ if env is None else env)


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    return build_parser(env).parse_args(argv)


def build_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> SimConfig:
    """Flags + environment -> a validated :class:`SimConfig`. Raises ``ValueError`` or ``SystemExit``."""
    env = os.environ if env is None else env
    args = parse_args(argv, env)
    types = profile_field_types()
    overrides = {name: types[name](getattr(args, name)) for name in _PROFILE_FLAGS if getattr(args, name) is not None}
    profile = load_profile(args.profile, **overrides)
    return SimConfig(
        profile=profile,
        name=args.name,
        served_model_name=args.model or None,
        time_scale=float(args.time_scale),
        seed=int(args.seed),
        max_recorded_requests=int(args.max_recorded_requests),
        host=args.host,
        port=int(args.port),
        shutdown_grace_s=float(args.shutdown_grace),
        log_level=str(args.log_level).lower(),
        scheduling_policy=args.scheduling_policy,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
        hash_seed=env.get("PYTHONHASHSEED"),
        kv_events=parse_kv_events_config(args.kv_events_config) if args.kv_events_config else None,
        kv_events_encoding=args.kv_events_encoding,
        kv_events_int_hashes=env.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") not in ("0", ""),
        served_model_names=tuple(args.served_model_name),
        lora_modules=parse_lora_modules(args.lora_modules),
        max_loras=int(args.max_loras),
        lora_load_s=float(args.lora_load_time),
        enable_lora=bool(args.enable_lora or args.lora_modules),
        runtime_lora_updating=env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true"),
    ).validate()


def _configure_logging(level: str) -> None:
    from extproc.logs import configure  # one JSON log format for every server of the stack

    configure(level, "benchmarks.simulator")


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
    except ValueError as exc:
        print(f"vllm-sim: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    logging.getLogger(__name__).info(
        "starting",
        extra={
            "instance": config.name,
            "model": config.model_name,
            "time_scale": config.time_scale,
            "profile": {k: getattr(config.profile, k) for k in profile_field_types()},
        },
    )
    # uvicorn handles SIGTERM/SIGINT while serving and re-raises the signal once it has shut down; make that
    # re-raise a no-op so a graceful shutdown exits with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        with _runner() as runner:
            runner.run(serve(config))
    except OSError as exc:
        logging.getLogger(__name__).error("cannot serve", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
