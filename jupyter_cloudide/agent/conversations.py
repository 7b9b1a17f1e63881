"""Conversations: the caller's chat threads, persisted in the metadata store.

Owner checks live in the store (a conversation of another user is "not found"); this module
turns records into the JSON shapes of api.yaml and keeps the async boundary: every store call
runs on the store's worker threads, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..storage.db import MetadataStore

MAX_LIMIT = 200


def parse_limit(raw: str) -> int:
    """The ``limit`` query parameter: an integer in 1..200."""
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInputError(f"limit: must be an integer from 1 to {MAX_LIMIT}", field="limit")
    return int(raw)


def to_json(record: Any) -> dict[str, Any]:
    """A store record (frozen dataclass) as JSON-ready data with ISO timestamps."""
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(record).items():
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


class ConversationService:
    """Create, list and read conversations for one server."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def create(self, owner: str, title: str | None, model: str | None) -> dict[str, Any]:
        record = await self.store.call(
            self.store.create_conversation, owner, (title or "New conversation").strip()
            or "New conversation", model
        )
        return to_json(record)

    async def list(self, owner: str, limit: int) -> list[dict[str, Any]]:
        records = await self.store.call(self.store.list_conversations, owner, limit)
        return [to_json(r) for r in records]

    async def get(self, owner: str, conversation_id: str) -> dict[str, Any]:
        record = await self.store.call(self.store.get_conversation, conversation_id, owner)
        messages = await self.store.call(self.store.list_messages, conversation_id, owner)
        out = to_json(record)
        out["messages"] = [to_json(m) for m in messages]
        return out

    async def rename(self, owner: str, conversation_id: str, title: str) -> dict[str, Any]:
        record = await self.store.call(self.store.update_conversation, conversation_id, owner,
                                       title=title.strip() or "New conversation")
        return to_json(record)

    async def delete(self, owner: str, conversation_id: str) -> None:
        await self.store.call(self.store.delete_conversation, conversation_id, owner)

    async def export_markdown(self, owner: str, conversation_id: str) -> str:
        """A readable transcript: user and assistant text, tool calls and their results."""
        data = await self.get(owner, conversation_id)
        lines = [f"# {data['title']}", ""]
        for message in data["messages"]:
            content = message.get("content") or {}
            role = message["role"]
            if role == "user":
                lines += ["## User", "", str(content.get("text", "")), ""]
                attached = [str(i.get("title") or i.get("path") or i.get("kind"))
                            for i in content.get("context") or () if isinstance(i, dict)]
                if attached:
                    lines += [f"*Attached: {', '.join(attached)}*", ""]
            elif role == "summary":
                lines += [f"> *Earlier turns ({content.get('turns')}) summarised for the "
                          "model:*", ">"]
                lines += [f"> {line}" for line in str(content.get("text", "")).splitlines()]
                lines.append("")
            elif role == "assistant":
                if content.get("text"):
                    lines += ["## Assistant", "", str(content["text"]), ""]
                for call in content.get("tool_calls") or ():
                    function = call.get("function", {})
                    lines += [f"**Tool call** `{function.get('name')}`", "", "```json",
                              str(function.get("arguments", "")), "```", ""]
            elif role == "tool":
                status = "ok" if content.get("ok") else "failed"
                lines += [f"**Tool result** `{content.get('name')}` ({status})", "", "```",
                          str(content.get("content", "")), "```", ""]
            elif role == "error":
                lines += [f"> **Error** ({content.get('status')}): {content.get('message')}",
                          ""]
        return "\n".join(lines)
