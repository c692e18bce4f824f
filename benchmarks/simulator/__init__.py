"""A simulated vLLM server for tests and benchmarks (no GPU needed).

Layers: :mod:`.tokenizer` (deterministic ~4 chars/token), :mod:`.kvcache` (paged prefix cache),
:mod:`.latency` + :mod:`.profile` (step-time model calibrated by ``profiles/*.toml``), :mod:`.engine` (pure
continuous-batching scheduler), :mod:`.driver` (asyncio step loop), :mod:`.metrics` (vLLM's Prometheus names),
:mod:`.protocol` (OpenAI wire format), :mod:`.app` (HTTP), :mod:`.server` (uvicorn), ``__main__`` (CLI).
"""

from .app import Faults, SimInstance, create_app
from .config import INSTANCE_HEADER, LISTENING_MARKER, SimConfig
from .driver import AsyncEngine, RequestHandle, StepObserver
from .engine import (
    DEFAULT_MAX_TOKENS,
    Engine,
    EngineRequest,
    EngineStats,
    SeqState,
    SeqStatus,
    StepResult,
    simulate,
)
from .errors import BadRequestError, EngineStoppedError, SimulatorError
from .kvcache import Allocation, KVCache, KVCacheStats, block_hashes
from .latency import LatencyModel, LinearLatencyModel, StepWork
from .metrics import SimMetrics
from .profile import DEFAULT_PROFILE, Profile, load_profile
from .server import SimServer, serve
from .tokenizer import apply_chat_template, encode

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PROFILE",
    "INSTANCE_HEADER",
    "LISTENING_MARKER",
    "Allocation",
    "AsyncEngine",
    "BadRequestError",
    "Engine",
    "EngineRequest",
    "EngineStats",
    "EngineStoppedError",
    "Faults",
    "KVCache",
    "KVCacheStats",
    "LatencyModel",
    "LinearLatencyModel",
    "Profile",
    "RequestHandle",
    "SeqState",
    "SeqStatus",
    "SimConfig",
    "SimInstance",
    "SimMetrics",
    "SimServer",
    "SimulatorError",
    "StepObserver",
    "StepResult",
    "StepWork",
    "apply_chat_template",
    "block_hashes",
    "create_app",
    "encode",
    "load_profile",
    "serve",
    "simulate",
]
