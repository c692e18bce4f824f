"""Defaults and the settings of one simulator instance (the CLI, the stack launcher and tests build these)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .block_hash import HASH_ALGOS, HashAlgo
from .engine import SCHEDULING_POLICIES, SchedulingPolicy
from .kv_events_config import ENCODINGS, Encoding, KVEventsConfig
from .lora import DEFAULT_LORA_LOAD_S, DEFAULT_MAX_LORAS, LoRAModule
from .profile import Profile, load_profile

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_RECORDED_REQUESTS",
    "DEFAULT_NAME",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX_CACHING_HASH_ALGO",
    "DEFAULT_SCHEDULING_POLICY",
    "DEFAULT_SEED",
    "DEFAULT_SHUTDOWN_GRACE_S",
    "DEFAULT_TIME_SCALE",
    "ENV_PREFIX",
    "INSTANCE_HEADER",
    "LISTENING_MARKER",
    "SimConfig",
]

ENV_PREFIX = "VLLM_SIM_"
INSTANCE_HEADER = "x-sim-instance"
# Printed on stdout once the socket listens, so a parent process can learn the port chosen for --port 0.
LISTENING_MARKER = "VLLM_SIM_LISTENING"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8101
DEFAULT_NAME = "vllm-sim"
DEFAULT_TIME_SCALE = 1.0
DEFAULT_SEED = 0
DEFAULT_MAX_RECORDED_REQUESTS = 1000
DEFAULT_SHUTDOWN_GRACE_S = 3.0
DEFAULT_SCHEDULING_POLICY: SchedulingPolicy = "fcfs"  # vLLM's default --scheduling-policy
DEFAULT_PREFIX_CACHING_HASH_ALGO: HashAlgo = "blake2b"  # the simulator's own; vLLM's is "sha256"


@dataclass(slots=True, frozen=True)
class SimConfig:
    """One simulated vLLM server. ``served_model_name`` defaults to the profile's model."""

    profile: Profile = field(default_factory=load_profile)
    name: str = DEFAULT_NAME
    served_model_name: str | None = None
    time_scale: float = DEFAULT_TIME_SCALE
    seed: int = DEFAULT_SEED
    max_recorded_requests: int = DEFAULT_MAX_RECORDED_REQUESTS
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    log_level: str = "info"
    scheduling_policy: SchedulingPolicy = DEFAULT_SCHEDULING_POLICY
    prefix_caching_hash_algo: HashAlgo = DEFAULT_PREFIX_CACHING_HASH_ALGO
    # PYTHONHASHSEED, as vLLM reads it for sha256_cbor's NONE_HASH; None: derived from ``seed``.
    hash_seed: str | None = None
    kv_events: KVEventsConfig | None = None
    kv_events_encoding: Encoding = "array"
    # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES (vLLM's default 1): hashes in events as 64-bit ints, else bytes.
    kv_events_int_hashes: bool = True
    # vLLM's --served-model-name (one or more; the first labels the metrics). Given (or with adapters), a request
    # for any other model is answered 404 as vLLM does; without, any name is served (benchmarks/simulator/lora.py).
    served_model_names: tuple[str, ...] = ()
    lora_modules: tuple[LoRAModule, ...] = ()  # --lora-modules
    max_loras: int = DEFAULT_MAX_LORAS  # --max-loras: adapter slots of one batch
    lora_load_s: float = DEFAULT_LORA_LOAD_S  # simulated seconds to load an adapter into a slot
    enable_lora: bool = False  # --enable-lora (implied by --lora-modules)
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING: POST /v1/load_lora_adapter and /v1/unload_lora_adapter exist
    runtime_lora_updating: bool = False

    @property
    def model_name(self) -> str:
        if self.served_model_names:
            return self.served_model_names[0]
        return self.served_model_name or self.profile.model

    @property
    def base_model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model_name,)

    @property
    def strict_models(self) -> bool:
        """Whether an unknown ``model`` is refused (404) as vLLM does."""
        return bool(self.served_model_names or self.lora_modules or self.enable_lora)

    def validate(self) -> SimConfig:
        self.profile.validate()
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.max_recorded_requests < 0:
            raise ValueError("max_recorded_requests must be >= 0")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be in [0, 65535]")
        if not self.name:
            raise ValueError("name must not be empty")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {SCHEDULING_POLICIES}")
        if self.prefix_caching_hash_algo not in HASH_ALGOS:
            raise ValueError(f"prefix_caching_hash_algo must be one of {HASH_ALGOS}")
        if self.kv_events_encoding not in ENCODINGS:
            raise ValueError(f"kv_events_encoding must be one of {ENCODINGS}")
        if self.kv_events is not None:
            self.kv_events.validate()
        if self.max_loras < 1 or self.lora_load_s < 0:
            raise ValueError("max_loras must be >= 1 and lora_load_s >= 0")
        names = [*self.base_model_names, *(m.name for m in self.lora_modules)]
        if len(set(names)) != len(names):
            raise ValueError("served model names and LoRA adapter names must be distinct")
        return self
