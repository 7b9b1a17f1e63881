"""The Anthropic Messages wire format of ``cloudide/v1/messages``, per ../shared/COMPAT.md.

Requests become the same :class:`ApiChatRequest` the OpenAI format produces, so one service
(router, allowlists, limits, ledger) answers both; the service's events become Anthropic's
named SSE events or one ``message``; errors become ``{"type": "error", "error": {type,
message}}`` with the statuses Anthropic's SDKs act on.

The translation is the inverse of the one the Anthropic *provider* does when it calls an
Anthropic upstream (``providers/anthropic_provider.py``): its stop-reason table and its
``tool_choice`` mapping are the reference, and the tests check that going one way and back is
the identity. Where the agent's OpenAI-shaped vocabulary has no slot, we say so rather than
guess:

- ``tool_result.is_error`` → the tool message's text starts with ``Error: `` (OpenAI's tool
  messages have no error flag, and an unknown key would be refused by strict upstreams);
- several text blocks of one turn are joined by a blank line (the messages are strings inside);
- ``thinking`` blocks a client replays are dropped (no upstream we translate to can take them
  back); ``top_k`` and ``metadata`` are ignored; image and document blocks are refused (400):
  the agent's messages carry text only;
- ``stop_sequence`` never comes back as a stop reason: neither format inside says which
  sequence stopped the model, so a stop is ``end_turn``.

No tornado and no ``anthropic`` SDK here: the SDK is a client of this route, not a dependency
of serving it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import CloudIDEError, InvalidInputError
from ..api import ApiChatRequest, ApiEvent, Routed
from ..providers.base import (
    Finish,
    Message,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
)
from . import provider_failure

KEEPALIVE = 'event: ping\ndata: {"type":"ping"}\n\n'
#: the agent's finish reasons → Anthropic's stop reasons (the inverse of the provider's
#: ``STOP_REASONS``, checked by a test); anything else ends the turn
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "content_filter": "refusal"}
#: Anthropic's ``tool_choice.type`` → OpenAI's ``tool_choice`` string
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
#: assistant blocks a client replays that have no place in the agent's messages
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_UNSUPPORTED_MEDIA = frozenset({"image", "document", "search_result", "container_upload"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# -- requests -------------------------------------------------------------------------------


def parse_messages_request(body: dict[str, Any]) -> tuple[ApiChatRequest, bool]:
    """(request, stream) from a schema-checked Messages body. The schema allows what the
    API allows; this refuses what a schema cannot say, by field: a tool_choice naming no
    declared tool, media blocks, blocks in the wrong role, server tools."""
    tools = tuple(_tools(body.get("tools") or ()))
    choice, parallel = _tool_choice(body.get("tool_choice"), {t.name for t in tools})
    messages = _system(body.get("system")) + _messages(body["messages"])
    stops = body.get("stop_sequences") or ()
    request = ApiChatRequest(
        model=str(body["model"]), messages=messages, tools=tools,
        tool_choice=choice if tools else None, parallel_tool_calls=parallel if tools else None,
        max_tokens=int(body["max_tokens"]), temperature=body.get("temperature"),
        top_p=body.get("top_p"), stop=tuple(s for s in stops if isinstance(s, str) and s),
        stream=bool(body.get("stream")))
    return request, request.stream


def _tools(raw: Sequence[Any]) -> list[ToolSpec]:
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        kind = tool.get("type")
        schema = tool.get("input_schema")
        if kind not in (None, "custom") or not isinstance(schema, dict):
            raise InvalidInputError(
                f"{where}: only client tools (name, description, input_schema) are supported, "
                f"not server tools ({str(kind)[:64]!r})", field=where)
        name = str(tool.get("name") or "")
        if name in seen:
            raise InvalidInputError(f"{where}.name: {name!r} is declared twice",
                                    field=f"{where}.name")
        seen.add(name)
        out.append(ToolSpec(name, str(tool.get("description") or ""), dict(schema)))
    return out


def _tool_choice(raw: Any, names: set[str]) -> tuple[str | dict[str, Any] | None, bool | None]:
    """Anthropic's ``tool_choice`` → OpenAI's (``tool_choice``, ``parallel_tool_calls``): the
    inverse of :func:`..providers.anthropic_provider.tool_choice`."""
    if not raw:
        return None, None
    kind = raw.get("type")
    parallel = False if raw.get("disable_parallel_tool_use") else None
    if kind == "tool":
        name = str(raw.get("name") or "")
        if name not in names:
            raise InvalidInputError(f"tool_choice.name: no tool named {name[:64]!r} in tools",
                                    field="tool_choice.name")
        return {"type": "function", "function": {"name": name}}, parallel
    if kind == "any" and not names:
        raise InvalidInputError("tool_choice: 'any' needs tools", field="tool_choice")
    return _TOOL_CHOICE.get(str(kind), "auto"), None if kind == "none" else parallel


def _system(raw: Any) -> list[Message]:
    if raw is None:
        return []
    text = raw if isinstance(raw, str) else _texts(raw, "system", "system")
    return [{"role": "system", "content": text}] if text else []


def _texts(blocks: Sequence[Any], where: str, what: str) -> str:
    """The text of text-only blocks (a tool result, the system prompt)."""
    parts: list[str] = []
    for j, block in enumerate(blocks):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidInputError(f"{where}[{j}]: only text blocks are supported in {what}",
                                    field=f"{where}[{j}]")
        parts.append(block["text"])
    return "\n\n".join(parts)


def _messages(raw: Sequence[dict[str, Any]]) -> list[Message]:
    out: list[Message] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif message["role"] == "user":
            out.extend(_user_blocks(content, f"{where}.content"))
        else:
            out.append(_assistant_blocks(content, f"{where}.content"))
    return out


def _refuse_block(block: Any, where: str, role: str) -> InvalidInputError:
    kind = str(block.get("type"))[:64]
    if kind in _UNSUPPORTED_MEDIA:
        return InvalidInputError(f"{where}: {kind} content is not supported by this server "
                                 "(text, tool_use and tool_result blocks only)", field=where)
    return InvalidInputError(f"{where}: a {kind!r} block is not supported in a {role} message",
                             field=where)


def _user_blocks(blocks: Sequence[Any], where: str) -> list[Message]:
    """A user turn: its tool results become ``tool`` messages (first, as OpenAI wants them
    right after the assistant's calls), its text one user message."""
    results: list[Message] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str) \
                and block["tool_use_id"]:
            inner = block.get("content")
            text = _texts(inner, f"{here}.content", "a tool result") \
                if isinstance(inner, list) else str(inner or "")
            if block.get("is_error"):
                text = "Error: " + text if text else "Error"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": text})
        else:
            raise _refuse_block(block, here, "user")
    if texts or not results:
        results.append({"role": "user", "content": "\n\n".join(texts)})
    return results


def _assistant_blocks(blocks: Sequence[Any], where: str) -> Message:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and isinstance(block.get("id"), str) and block["id"] \
                and isinstance(block.get("name"), str) and block["name"]:
            arguments = block.get("input")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": _dumps(arguments if arguments is not None
                                                           else {})}})
        elif kind not in _DROPPED_BLOCKS:
            raise _refuse_block(block, here, "assistant")
    message: Message = {"role": "assistant",
                        "content": "\n\n".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


# -- responses ------------------------------------------------------------------------------


def stop_reason(reason: str, called: bool) -> str:
    """The agent's finish reason → Anthropic's stop reason (a stop after tool calls is a
    ``tool_use``: the client has calls to run)."""
    out = STOP_REASONS.get(reason, "end_turn")
    return "tool_use" if called and out == "end_turn" else out


def usage_json(usage: Usage) -> dict[str, int]:
    """Anthropic counts cache reads apart from ``input_tokens``; the agent counts them in."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    return {"input_tokens": usage.input_tokens - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": usage.output_tokens}


def _event(kind: str, body: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: " + _dumps({"type": kind, **body}) + "\n\n"


@dataclass
class _Block:
    index: int
    kind: str  # text | tool_use
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    open: bool = True

    def json(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": "".join(self.parts)}
        try:
            value = json.loads("".join(self.parts) or "{}")
        except ValueError:
            value = None
        return {"type": "tool_use", "id": self.id, "name": self.name,
                "input": value if isinstance(value, dict) else {}}


class MessageEncoder:
    """The service's events → Anthropic's stream (``encode`` returns each event's frames) and,
    from the same state, the final ``message`` (:meth:`message`, the non-streaming answer).

    ``message_start`` comes with :class:`Routed` (the model that answers); a text delta opens a
    text block unless one is open, a tool call opens a ``tool_use`` block and closes the
    previous one; the finish closes the open block and sends ``message_delta`` with the stop
    reason and the cumulative usage, then ``message_stop``. ``message_start`` reports zero
    tokens: the upstreams we call through the agent's format report usage at the end only."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.blocks: list[_Block] = []
        self.usage: Usage | None = None
        self.reason = "stop"
        self.finished = False

    def _open(self) -> _Block | None:
        last = self.blocks[-1] if self.blocks else None
        return last if last is not None and last.open else None

    def _close(self) -> str:
        block = self._open()
        if block is None:
            return ""
        block.open = False
        return _event("content_block_stop", {"index": block.index})

    def _start(self, kind: str, call_id: str = "", name: str = "") -> tuple[_Block, str]:
        out = self._close()
        if kind == "tool_use" and not call_id:
            call_id = f"toolu_{uuid.uuid4().hex[:24]}"
        block = _Block(len(self.blocks), kind, call_id, name)
        self.blocks.append(block)
        content = {"type": "text", "text": ""} if kind == "text" else {
            "type": "tool_use", "id": block.id, "name": name, "input": {}}
        return block, out + _event("content_block_start", {"index": block.index,
                                                          "content_block": content})

    def _tool_block(self, call_id: str) -> _Block | None:
        """The tool block of this call id; an empty id means the open one (a provider that
        learns the id late)."""
        for block in reversed(self.blocks):
            if block.kind == "tool_use" and (block.id == call_id or (not call_id
                                                                     and block.open)):
                return block
        return None

    def _input(self, block: _Block, piece: str) -> str:
        block.parts.append(piece)
        return _event("content_block_delta", {"index": block.index, "delta": {
            "type": "input_json_delta", "partial_json": piece}})

    def encode(self, event: ApiEvent) -> str:
        """The frames for one event ("" when it sends nothing)."""
        if isinstance(event, TextDelta):
            if not event.text:
                return ""
            block, out = self._open(), ""
            if block is None or block.kind != "text":
                block, out = self._start("text")
            block.parts.append(event.text)
            return out + _event("content_block_delta", {"index": block.index, "delta": {
                "type": "text_delta", "text": event.text}})
        if isinstance(event, ToolCallStarted):
            return self._start("tool_use", event.id, event.name)[1]
        if isinstance(event, ToolCallDelta):
            block = self._tool_block(event.id)
            if block is None or not block.open or not event.arguments:
                return ""  # a closed block cannot grow: its call's end carries the rest
            return self._input(block, event.arguments)
        if isinstance(event, ToolCall):
            return self._call_done(event)
        if isinstance(event, Usage):
            self.usage = event
            return ""
        if isinstance(event, Finish):
            return self.finish(event.reason)
        if isinstance(event, Routed):
            self.model = event.model
            return _event("message_start", {"message": {
                "id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": usage_json(Usage(0, 0))}})
        return ""

    def _call_done(self, call: ToolCall) -> str:
        block = self._tool_block(call.id) if call.id else None
        if block is None:  # matched by order: the first started call still open
            block = next((b for b in self.blocks if b.kind == "tool_use" and b.open), None)
        out = ""
        if block is None:  # never started (a provider that does not stream calls)
            block, out = self._start("tool_use", call.id, call.name)
        if not block.open:
            return ""
        sent = "".join(block.parts)
        rest = call.arguments[len(sent):] if call.arguments.startswith(sent) else ""
        if rest:
            out += self._input(block, rest)
        return out + self._close()

    def finish(self, reason: str) -> str:
        self.finished = True
        self.reason = reason
        usage = self.usage or Usage(0, 0, estimated=True)
        return self._close() + _event("message_delta", {
            "delta": {"stop_reason": self._stop_reason(), "stop_sequence": None},
            "usage": usage_json(usage)}) + _event("message_stop", {})

    def _stop_reason(self) -> str:
        return stop_reason(self.reason, any(b.kind == "tool_use" for b in self.blocks))

    def message(self) -> dict[str, Any]:
        """The whole answer as one ``message`` (after the events were encoded)."""
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": [b.json() for b in self.blocks],
                "stop_reason": self._stop_reason(), "stop_sequence": None,
                "usage": usage_json(self.usage or Usage(0, 0, estimated=True))}


# -- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireError:
    """What a client gets for an error: the status, the body and headers (the handler base
    reads ``status``, ``body``, ``headers`` and ``sse()`` of every wire format's errors)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def sse(self) -> str:
        """The mid-stream form: an ``error`` event (the stream then closes)."""
        return "event: error\ndata: " + _dumps(self.body) + "\n\n"


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


#: status → Anthropic's error type
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}


def for_status(status: int, message: str, headers: dict[str, str] | None = None) -> WireError:
    """An error of a status with no domain exception behind it (routing, methods, hosts)."""
    if status == 409:  # the SDKs retry a 409: never for something that will not change
        status = 400
    type_ = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return WireError(status, error_body(type_, message), dict(headers or {}))


def error_for(exc: BaseException) -> WireError:
    """Any exception → what the client gets. Our errors' and the providers' messages are safe
    to show; anything else is an internal error without details."""
    if isinstance(exc, CloudIDEError):
        return for_status(exc.status, exc.message, exc.headers)
    if isinstance(exc, ProviderError):
        return _provider_error(exc)
    return for_status(500, "internal server error")


def _provider_error(exc: ProviderError) -> WireError:
    status, kind, message, headers = provider_failure(exc)
    # Anthropic's status for an overloaded API (its SDKs retry it)
    return for_status(529 if kind == "overloaded" else status, message, headers)
