"""The contenders of the router comparison and the settings of one run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "envoy" (Envoy-only baseline), "ours" (Envoy + ext_proc) or "vllm-router"
    description: str
    lb_policy: str | None = None  # Envoy's own balancer for the baselines
    metadata: bool = False  # send workflow_metadata
    router_policy: str | None = None  # vllm-router --policy
    extproc_args: tuple[str, ...] = ()  # our ext_proc server's flags (kind "ours")
    sim_args: tuple[str, ...] = ()  # the fleet's extra simulator flags (part of the contender's setup)


COST_MODEL = ("--scheduling-config", "builtin:cost-model")
ALWAYS_PIN = ("--scheduling-config", str(Path(__file__).with_name("always-pin.yaml")))
QUEUE_WEIGHED = ("--scheduling-config", str(Path(__file__).with_name("queue-weighed.yaml")))


CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    Contender("round-robin", "envoy", "Envoy ROUND_ROBIN over the fleet (no ext_proc)", lb_policy="ROUND_ROBIN"),
    Contender("least-loaded", "envoy", "Envoy LEAST_REQUEST over the fleet (no ext_proc)",
              lb_policy="LEAST_REQUEST"),
    Contender("prefix-aware", "ours", "our ext_proc, no workflow_metadata: prompt-prefix + load scorers"),
    Contender("workflow-aware", "ours", "our ext_proc, workflow_metadata: workflow affinity", metadata=True),
    Contender("workflow-aware/always-pin", "ours", "our ext_proc, workflow_metadata, the workflow stays on its "
              "instance within the load bound whatever that instance holds of the prompt (always-pin.yaml)",
              metadata=True, extproc_args=ALWAYS_PIN),
    Contender("workflow-aware/queue-weighed", "ours", "our ext_proc, workflow_metadata, a cache lead pins the "
              "workflow only while its instance's queue costs less than the lead saves (queue-weighed.yaml)",
              metadata=True, extproc_args=QUEUE_WEIGHED),
    Contender("workflow-aware/read-all-streams", "ours", "our ext_proc, workflow_metadata, the observer reads "
              "every stream's body (--observe-stream-bodies 1: exact usage, end at the last chunk)", metadata=True,
              extproc_args=("--observe-stream-bodies", "1")),
    Contender("prefix-aware/cost-model", "ours", "our ext_proc, no workflow_metadata, builtin:cost-model",
              extproc_args=COST_MODEL),
    Contender("workflow-aware/cost-model", "ours", "our ext_proc, workflow_metadata, builtin:cost-model",
              metadata=True, extproc_args=COST_MODEL),
    Contender("workflow-aware/cost-model+priority", "ours",
              "our ext_proc, workflow_metadata, builtin:cost-model, --priority-scheduling (the fleet runs vLLM's "
              "--scheduling-policy priority)", metadata=True, extproc_args=(*COST_MODEL, "--priority-scheduling"),
              sim_args=("--scheduling-policy", "priority")),
    Contender("vllm-router/round_robin", "vllm-router", "vllm-router --policy round_robin",
              router_policy="round_robin"),
    Contender("vllm-router/consistent_hash", "vllm-router",
              "vllm-router --policy consistent_hash, X-Session-ID = workflow id", router_policy="consistent_hash"),
    Contender("vllm-router/cache_aware", "vllm-router", "vllm-router --policy cache_aware (default thresholds)",
              router_policy="cache_aware"),
)}


@dataclass(frozen=True)
class RunSettings:
    instances: int
    num_gpu_blocks: int
    time_scale: float
    deadline_s: float  # wall seconds one request may take, end to end
    sim_args: tuple[str, ...] = ()
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="compare-routers-")))
