"""Protocol adapters: a model service with a non-standard protocol, seen by the router as an
OpenAI-compatible provider (and served as one by ``jupyter cloudide serve-adapter``).

An adapter is one :class:`Adapter` subclass and one entry point in the group
``jupyter_cloudide.adapters`` (README, "Protocol adapters"). What an author needs is importable
from here; nothing heavy is (the reference adapter's ``websockets`` and ``httpx`` load when it
first connects).
"""

from .base import (
    Adapter,
    AdapterConfigError,
    ChatRequest,
    Event,
    Finish,
    NoOptions,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
    secret,
)

__all__ = [
    "Adapter",
    "AdapterConfigError",
    "ChatRequest",
    "Event",
    "Finish",
    "NoOptions",
    "ProviderError",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStarted",
    "ToolSpec",
    "Usage",
    "secret",
]
