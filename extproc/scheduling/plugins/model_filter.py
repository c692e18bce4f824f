"""``model`` filter: keeps the candidates that serve the request's ``model`` (a served model name or a LoRA
adapter, as each instance's ``/v1/models`` lists it; an instance whose list is not known may serve anything).

It runs first in every profile (``profiles.build_scheduler`` puts it there when a configuration leaves it out):
an instance that does not serve the model answers 404 (vLLM's ``check_model``,
vllm/entrypoints/openai/models/serving.py). A model no candidate serves never reaches the scheduler: the
director answers 404 ``model_not_found`` first (``serving``).
"""

from __future__ import annotations

from collections.abc import Iterable

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import SchedulingRequest


def serves(endpoints: Endpoints, instance: str, model: str) -> bool:
    models = endpoints.live(instance).models
    return models is None or model in models


def serving(endpoints: Endpoints, candidates: Iterable[str], model: str) -> list[str]:
    """The candidates that serve ``model`` (in their order)."""
    return [i for i in candidates if serves(endpoints, i, model)]


class ModelFilter:
    name = "model"

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        model = request.model
        if model is None:
            return candidates
        return serving(endpoints, candidates, model)
