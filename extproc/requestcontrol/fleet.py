"""What the fleet serves, on plain data: the request's model checked against it, the gateway's own
``GET /v1/models`` answer, and the workflow table's key per (workflow, model).

Each instance's models come from its ``/v1/models`` (the poller; ``BackendLoad.models``/``cards``). An instance
whose list is not known (no URL, or a server without the route) may serve anything, so a model is refused only
when every candidate's list is known and none lists it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import orjson

from extproc.datastore.endpoints import Endpoints
from extproc.errors import LocalAnswer, ModelNotFound
from extproc.scheduling.plugins.model_filter import serving

MODELS_PATH = "/v1/models"
# Separates the workflow id from the model in the workflow table's key: outside the id charset (config.ID_CHARSET)
# so no workflow id can collide with another workflow's per-model key.
_KEY_SEPARATOR = "\x1f"


def affinity_key(workflow_id: str, model: str | None) -> str:
    """The workflow table's key: the workflow alone for requests that name no model (the server's default), else
    one entry per (workflow, model), so agents of one workflow on two models each keep their own instance."""
    return workflow_id if model is None else f"{workflow_id}{_KEY_SEPARATOR}{model}"


def workflow_of(key: str) -> tuple[str, str | None]:
    """``(workflow id, model)`` of a workflow-table key."""
    workflow_id, sep, model = key.partition(_KEY_SEPARATOR)
    return workflow_id, (model if sep else None)


def adapter_blocks(endpoints: Endpoints, model: str, blocks: Sequence[int]) -> list[int]:
    """The prompt's prefix-index blocks for ``model``: unchanged for a base model, keyed by the adapter for a LoRA
    adapter (vLLM puts the adapter's name in every block hash, vllm/v1/core/kv_cache_utils.py
    ``_gen_lora_extra_hash_keys``: an adapter never reuses the base model's or another adapter's cache)."""
    if not any(model in endpoints.live(i).adapters for i in endpoints.candidates()):
        return blocks if isinstance(blocks, list) else list(blocks)
    salt = zlib.crc32(model.encode())
    return [zlib.crc32(salt.to_bytes(4, "little"), block) for block in blocks]


def check_model(endpoints: Endpoints, model: str | None) -> None:
    """Raises ModelNotFound (404 ``model_not_found``) when no candidate serves ``model``."""
    if model is not None and not serving(endpoints, endpoints.candidates(), model):
        raise ModelNotFound(model)


def models_answer(endpoints: Endpoints) -> LocalAnswer:
    """The union of the healthy instances' ``/v1/models`` in vLLM's shape (the first instance listing an id gives
    its card)."""
    seen: dict[str, dict[str, object]] = {}
    created = int(time.time())
    for instance in endpoints.candidates():
        for card in endpoints.live(instance).cards:
            if card.id not in seen:
                seen[card.id] = {"id": card.id, "object": "model", "created": created, "owned_by": "vllm",
                                 "root": card.root, "parent": card.parent, "max_model_len": card.max_model_len,
                                 "permission": []}
    return LocalAnswer(orjson.dumps({"object": "list", "data": list(seen.values())}), "models")
