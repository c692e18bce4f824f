"""The calibration profile: engine limits and latency coefficients, loaded from a commented TOML file.

Calibration is data, not code: every number lives in ``profiles/*.toml`` next to the source it comes from.
The TOML may group keys in tables (``[scheduler]``, ``[latency]`` ...); tables are flattened, so every key
names one :class:`Profile` field, and any field can be overridden from the CLI (``--num-gpu-blocks 64``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROFILE", "Profile", "load_profile", "profile_field_types"]

DEFAULT_PROFILE = "llama-3.1-8b-h100"


@dataclass(slots=True, frozen=True)
class Profile:
    """One model on one GPU. Times are in (simulated) seconds."""

    # --- model / server ---
    model: str  # default served model name
    max_model_len: int  # prompt + max_tokens above this is rejected with 400, as vLLM does
    # --- scheduler (vLLM flags of the same names) ---
    max_num_seqs: int
    max_num_batched_tokens: int  # chunked-prefill token budget per engine step
    # --- KV cache ---
    block_size: int
    num_gpu_blocks: int
    # --- latency model (see latency.py) ---
    request_overhead_s: float  # per request, before it reaches the scheduler (does not occupy the GPU)
    step_base_s: float  # every forward pass: reading the weights once, launch overhead
    prefill_per_token_s: float  # per uncached prompt token computed in a step
    per_seq_s: float  # per sequence in the batch (sampling, per-sequence bookkeeping)
    kv_read_per_token_s: float  # per token of KV context that attention reads in a step
    step_jitter: float  # relative uniform jitter of step time, 0 = deterministic

    def validate(self) -> Profile:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "num_gpu_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"profile: {name} must be a positive integer, got {value!r}")
        for name in (
            "request_overhead_s",
            "step_base_s",
            "prefill_per_token_s",
            "per_seq_s",
            "kv_read_per_token_s",
            "step_jitter",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"profile: {name} must be a non-negative number, got {value!r}")
        if self.step_jitter >= 1:
            raise ValueError("profile: step_jitter must be < 1")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("profile: model must be a non-empty string")
        return self

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes).validate()


def profile_field_types() -> dict[str, type]:
    """Field name -> Python type (int, float or str), for building CLI flags."""
    kinds = {"int": int, "float": float, "str": str}
    return {f.name: kinds[f.type] if isinstance(f.type, str) else f.type for f in fields(Profile)}


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if k in flat:
                raise ValueError(f"profile: key {k!r} appears twice")
            flat[k] = v
    return flat


def load_profile(source: str | Path | None = None, **overrides: Any) -> Profile:
    """Load a profile by packaged name (``"llama-3.1-8b-h100"``) or path, then apply ``overrides``.

    Raises ``ValueError`` on unknown or missing keys and on invalid values.
    """
    name = DEFAULT_PROFILE if source is None else str(source)
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = resources.files(__package__).joinpath("profiles", f"{name}.toml").read_text(encoding="utf-8")
    data = _flatten(tomllib.loads(text))
    data.update({k: v for k, v in overrides.items() if v is not None})
    types = profile_field_types()
    unknown = sorted(set(data) - set(types))
    missing = sorted(set(types) - set(data))
    if unknown:
        raise ValueError(f"profile: unknown keys {unknown}")
    if missing:
        raise ValueError(f"profile: missing keys {missing}")
    for key, kind in types.items():  # TOML writes 0 for 0.0; accept ints where floats are expected
        if kind is float and isinstance(data[key], int) and not isinstance(data[key], bool):
            data[key] = float(data[key])
    return Profile(**data).validate()
