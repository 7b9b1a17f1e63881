"""A conversation's stored messages as model messages, and the transcript the model
summarises older turns from.

Stored records (``MetadataStore.list_messages``) keep more than the model needs - a step's
usage, diffs, checkpoints - and less in one respect: an attached item's file content is not
stored, only what was attached (the current version is re-read when it matters). The latest
``summary`` record stands for every turn up to its ``through_turn``: those turns are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .providers.base import Message

__all__ = ["History", "read_history", "repair", "transcript"]

#: an attached item's own text kept in later turns' history (the current state is re-read)
HISTORY_CONTEXT_CHARS = 2000
#: characters of each tool result / call shown to the model that summarises older turns
SUMMARY_ITEM_CHARS = 400


@dataclass
class History:
    """Earlier turns as model messages (no system prompt), the summary of the turns before
    them, and the turn id of each user message, in order."""

    messages: list[Message] = field(default_factory=list)
    summary: str | None = None
    turn_ids: list[str] = field(default_factory=list)


def read_history(records: Sequence[Any], current_turn: str,
                 clean: Callable[[str], str]) -> History:
    """``records`` (oldest first) as a :class:`History`; ``clean`` redacts attached text."""
    history = History()
    covered: set[str] = set()
    summaries = [r for r in records if r.role == "summary"
                 and isinstance(r.content, dict) and r.content.get("text")]
    if summaries:
        latest = summaries[-1].content
        history.summary = str(latest["text"])
        through = latest.get("through_turn")
        for record in records:
            if record.role != "summary":
                covered.add(record.turn_id)
            if record.turn_id == through:
                break
    for record in records:
        if record.turn_id == current_turn or record.turn_id in covered:
            continue  # this turn's own user message, or summarised
        content = record.content if isinstance(record.content, dict) else {}
        if record.role == "user":
            history.messages.append({"role": "user", "content": with_context(
                str(content.get("text", "")), content.get("context") or [], clean)})
            history.turn_ids.append(record.turn_id)
        elif record.role == "assistant":
            message: Message = {"role": "assistant", "content": content.get("text") or None}
            if content.get("tool_calls"):
                message["tool_calls"] = content["tool_calls"]
            history.messages.append(message)
        elif record.role == "tool":
            history.messages.append({"role": "tool",
                                     "tool_call_id": content.get("tool_call_id"),
                                     "content": str(content.get("content", ""))})
    history.messages = repair(history.messages)
    return history


def with_context(text: str, context: list[dict[str, Any]], clean: Callable[[str], str]) -> str:
    """An earlier user message with what was attached to it: the items' own text (a
    selection), shortened and redacted; items read from files by their name only - the model
    reads the current version if it needs it."""
    parts = [text]
    for item in context:
        if not isinstance(item, dict):
            continue
        title = str(item.get("title") or item.get("path") or item.get("kind") or "context")
        own = item.get("text")
        if isinstance(own, str) and own:
            cut = clean(own[:HISTORY_CONTEXT_CHARS])
            more = " [...]" if len(own) > HISTORY_CONTEXT_CHARS else ""
            parts.append(f"\n\n[attached: {title}]\n{cut}{more}")
        else:
            parts.append(f"\n\n[attached: {title}]")
    return "".join(parts)


def repair(messages: list[Message]) -> list[Message]:
    """Every assistant tool call needs a tool message: a turn interrupted (cancel, restart)
    between the two would make every later request invalid, so missing results are filled."""
    out: list[Message] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] != "tool" and pending:
            out.extend({"role": "tool", "tool_call_id": cid,
                        "content": "error: the tool call was interrupted"} for cid in pending)
            pending = []
        out.append(message)
        if message["role"] == "assistant":
            pending = [c["id"] for c in message.get("tool_calls") or ()]
        elif message["role"] == "tool" and message.get("tool_call_id") in pending:
            pending.remove(message["tool_call_id"])
    out.extend({"role": "tool", "tool_call_id": cid,
                "content": "error: the tool call was interrupted"} for cid in pending)
    return out


def transcript(older: Sequence[Message], previous_summary: str | None,
               fits: Callable[[str], bool]) -> str:
    """Older turns (and the summary before them) as text for the summarising model: tool
    results and calls shortened; cut from the start until ``fits``."""
    lines = [f"Previous summary:\n{previous_summary}\n"] if previous_summary else []
    for message in older:
        role = message.get("role")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if role == "tool":
            text = f"(tool result) {text[:SUMMARY_ITEM_CHARS]}"
        for call in message.get("tool_calls") or ():
            function = call.get("function", {})
            text += (f"\n(called {function.get('name')} "
                     f"{str(function.get('arguments', ''))[:SUMMARY_ITEM_CHARS]})")
        if text.strip():
            lines.append(f"{role}: {text.strip()}")
    out = "\n".join(lines)
    while out and not fits(out):
        out = out[len(out) // 4:]  # keep the most recent part
    return out
