"""The agent's tools: file, notebook, code and search tools behind one registry.

:meth:`ToolRegistry.run` is the only entry point the agent loop needs: it validates the
arguments against the tool's JSON Schema, runs the tool, and returns a redacted, truncated
:class:`ToolResult` - never an exception. Paths are confined by :func:`paths.confine`; code is
scored by :func:`risk.score_code` for the approval policy.
"""

from .base import (
    Checkpoint,
    Tool,
    ToolContext,
    ToolError,
    ToolKind,
    ToolRegistry,
    ToolResult,
    default_tools,
)
from .paths import confine
from .redact import redact
from .risk import RiskReport, score_code
from .truncate import truncate

__all__ = [
    "Checkpoint",
    "RiskReport",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolKind",
    "ToolRegistry",
    "ToolResult",
    "confine",
    "default_tools",
    "redact",
    "score_code",
    "truncate",
]
