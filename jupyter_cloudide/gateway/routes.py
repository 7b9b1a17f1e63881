"""The routes table: every handler module's ``default_handlers``, in one list."""

from __future__ import annotations

from typing import Any

from . import websocket
from .handlers import conversations, execute, health, models, search, tokens, usage
from .openai_api import handlers as v1

ROUTE_MODULES = (health, conversations, execute, search, models, usage, tokens, websocket, v1)


def all_handlers() -> list[tuple[str, Any]]:
    """(pattern, handler) pairs, relative to base_url (ExtensionApp prefixes it)."""
    return [route for module in ROUTE_MODULES for route in module.default_handlers]
