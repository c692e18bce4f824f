"""Envoy ext_proc server for workflow-aware routing of OpenAI-compatible LLM requests."""

from extproc.config import Backend, Settings
from extproc.errors import BadRequest
from extproc.metadata import ContextSharing, RoutingInput, WorkflowMetadata, parse_llm_body, parse_metadata
from extproc.routing.policy import Decision, Router
from extproc.routing.workflows import WorkflowTable

# The installed distribution's version wins (workflow-router --version); this is for a source checkout.
__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BadRequest",
    "ContextSharing",
    "Decision",
    "Router",
    "RoutingInput",
    "Settings",
    "WorkflowMetadata",
    "WorkflowTable",
    "parse_llm_body",
    "parse_metadata",
]
