"""Envoy ext_proc server for workflow-aware routing of OpenAI-compatible LLM requests."""

from extproc.config import Backend, Settings
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.workflows import WorkflowTable
from extproc.errors import BadRequest
from extproc.metadata import ContextSharing, RoutingInput, WorkflowMetadata, parse_llm_body, parse_metadata
from extproc.requestcontrol.types import Decision

# The installed distribution's version wins (workflow-router --version); this is for a source checkout.
__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BadRequest",
    "ContextSharing",
    "Decision",
    "Endpoints",
    "RoutingInput",
    "Settings",
    "WorkflowMetadata",
    "WorkflowTable",
    "parse_llm_body",
    "parse_metadata",
]
