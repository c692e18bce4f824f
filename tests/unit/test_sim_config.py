import pytest

import benchmarks.simulator as sim
from benchmarks.simulator.__main__ import build_config
from benchmarks.simulator.profile import load_profile


def test_public_api_is_pinned():
    assert sorted(sim.__all__) == sorted(
        [
            "DEFAULT_MAX_TOKENS", "DEFAULT_PROFILE", "INSTANCE_HEADER", "LISTENING_MARKER", "Allocation",
            "AsyncEngine", "BadRequestError", "Engine", "EngineRequest", "EngineStats", "EngineStoppedError",
            "Faults", "KVCache", "KVCacheStats", "LatencyModel", "LinearLatencyModel", "Profile", "RequestHandle",
            "SeqState", "SeqStatus", "SimConfig", "SimInstance", "SimMetrics", "SimServer", "SimulatorError",
            "StepObserver", "StepResult", "StepWork", "apply_chat_template", "block_hashes", "create_app",
            "encode", "load_profile", "serve", "simulate",
        ]
    )  # fmt: skip
    for name in sim.__all__:
        assert hasattr(sim, name)


def test_packaged_profiles_load_and_kv_arithmetic_holds():
    p = load_profile()
    assert p.block_size == 16 and p.max_num_seqs == 256 and p.max_num_batched_tokens == 8192
    kv_bytes_per_token = 2 * 32 * 8 * 128 * 2  # K,V x layers x KV heads x head dim x BF16
    assert kv_bytes_per_token == 128 * 1024
    gib = 1024**3
    assert p.num_gpu_blocks * p.block_size * kv_bytes_per_token == pytest.approx(54.6 * gib, rel=0.01)
    compute = load_profile("llama-3.1-8b-h100-compute")
    assert compute.prefill_per_token_s < p.prefill_per_token_s


def test_profile_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        load_profile(None, bogus=1)
    with pytest.raises(ValueError, match="positive"):
        load_profile(None, num_gpu_blocks=0)
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nmodel = "x"\n')
    with pytest.raises(ValueError, match="missing"):
        load_profile(bad)
    with pytest.raises(ValueError):
        load_profile().replace(step_base_s=-1.0)


def test_cli_flags_env_and_precedence():
    env = {"VLLM_SIM_PORT": "0", "VLLM_SIM_NAME": "from-env", "VLLM_SIM_NUM_GPU_BLOCKS": "64"}
    cfg = build_config(["--name", "from-flag", "--time-scale", "0.01", "--max-num-seqs", "8"], env)
    assert cfg.port == 0 and cfg.name == "from-flag" and cfg.time_scale == 0.01
    assert cfg.profile.num_gpu_blocks == 64 and cfg.profile.max_num_seqs == 8
    assert cfg.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert build_config(["--model", "served"], {}).model_name == "served"
    assert build_config(["--prefill-per-token-s", "0.0001"], {}).profile.prefill_per_token_s == 0.0001
    assert build_config([], {"VLLM_SIM_PROFILE": "llama-3.1-8b-h100-compute"}).profile.prefill_per_token_s == 4e-05


def test_cli_rejects_bad_values():
    with pytest.raises(SystemExit):
        build_config(["--port", "abc"], {})
    with pytest.raises(ValueError):
        build_config(["--time-scale", "-1"], {})


def test_vllm_scheduling_hash_and_kv_event_flags():
    cfg = build_config([], {})
    assert cfg.scheduling_policy == "fcfs" and cfg.prefix_caching_hash_algo == "blake2b" and cfg.kv_events is None
    cfg = build_config(
        ["--scheduling-policy", "priority", "--kv-events-config", '{"enable_kv_cache_events": true, "topic": "t"}'],
        {
            "VLLM_SIM_PREFIX_CACHING_HASH_ALGO": "sha256_cbor",
            "PYTHONHASHSEED": "7",
            "VLLM_SIM_KV_EVENTS_ENCODING": "map",
        },
    )
    assert cfg.scheduling_policy == "priority" and cfg.prefix_caching_hash_algo == "sha256_cbor"
    assert cfg.hash_seed == "7" and cfg.kv_events_encoding == "map" and cfg.kv_events_int_hashes
    assert cfg.kv_events is not None and cfg.kv_events.active and cfg.kv_events.topic == "t"
    assert not build_config([], {"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "0"}).kv_events_int_hashes
    with pytest.raises(SystemExit):
        build_config(["--scheduling-policy", "lifo"], {})
    with pytest.raises(ValueError, match="unknown keys"):
        build_config(["--kv-events-config", '{"nope": 1}'], {})
