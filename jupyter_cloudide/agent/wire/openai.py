"""The OpenAI wire format of ``cloudide/v1`` (Chat Completions, Models, Embeddings), per
../shared/COMPAT.md: requests → :class:`ApiChatRequest`; the service's events → SSE chunks or
one ``chat.completion``; errors → ``{"error": {message, type, param, code}}`` with the status
and headers OpenAI's SDKs act on.

Request bodies arrive schema-checked (api.yaml, by the gateway): this module adds what a
schema cannot say (tool_choice naming a declared tool, text-only content parts) and turns the
request into the agent's OpenAI-shaped messages (``developer`` → system, content parts → text).
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import (
    BudgetExceededError,
    CloudIDEError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from ..api import OPENAI_ONLY_FIELDS, ApiChatRequest, ApiEvent, ApiModel, Routed
from ..providers.base import (
    FINISH_REASONS,
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

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"
#: content part types read as text (``input_text``: the Responses API's name, sent by some)
_TEXT_PARTS = frozenset({"text", "input_text"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- requests -------------------------------------------------------------------------------


def parse_chat_request(body: dict[str, Any]) -> tuple[ApiChatRequest, bool, bool]:
    """(request, stream, include_usage) from a schema-checked Chat Completions body."""
    tools = tuple(_tools(body.get("tools") or ()))
    names = {t.name for t in tools}
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = str((choice.get("function") or {}).get("name", ""))
        if name not in names:
            raise InvalidInputError(f"tool_choice: no tool named {name[:64]!r} in tools",
                                    field="tool_choice")
    elif choice == "required" and not tools:
        raise InvalidInputError("tool_choice: 'required' needs tools", field="tool_choice")
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream"))
    request = ApiChatRequest(
        model=str(body["model"]), messages=_messages(body["messages"]), tools=tools,
        tool_choice=choice if tools else None,
        parallel_tool_calls=body.get("parallel_tool_calls") if tools else None,
        max_tokens=None if max_tokens is None else int(max_tokens),
        temperature=body.get("temperature"), top_p=body.get("top_p"),
        stop=tuple(s for s in stops if s),
        openai_extra={k: body[k] for k in OPENAI_ONLY_FIELDS if body.get(k) is not None},
        stream=stream)
    return request, stream, stream and bool(options.get("include_usage"))


def _tools(raw: Sequence[dict[str, Any]]) -> list[ToolSpec]:
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        function = tool["function"]
        name = str(function["name"])
        if name in seen:
            raise InvalidInputError(f"tools[{i}].function.name: {name!r} is declared twice",
                                    field=f"tools[{i}].function.name")
        seen.add(name)
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        out.append(ToolSpec(name, str(function.get("description") or ""), dict(parameters)))
    return out


def _messages(raw: Sequence[dict[str, Any]]) -> list[Message]:
    out: list[Message] = []
    for i, message in enumerate(raw):
        role = message["role"]
        where = f"messages[{i}]"
        content = message.get("content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(content, where)})
        elif role == "user":
            out.append({"role": "user", "content": _text(content, where)})
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise InvalidInputError(f"{where}.tool_call_id: required for a tool message",
                                        field=f"{where}.tool_call_id")
            out.append({"role": "tool", "tool_call_id": str(message["tool_call_id"]),
                        "content": _text(content, where)})
        else:  # assistant (the schema allows no other role)
            assistant: Message = {"role": "assistant",
                                  "content": _text(content, where) if content is not None
                                  else None}
            calls = [{"id": str(call["id"]), "type": "function",
                      "function": {"name": str(call["function"]["name"]),
                                   "arguments": str(call["function"].get("arguments") or "{}")}}
                     for call in message.get("tool_calls") or ()]
            if calls:
                assistant["tool_calls"] = calls
            elif assistant["content"] is None:
                assistant["content"] = ""
            out.append(assistant)
    return out


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, part in enumerate(content):
        if part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidInputError(
                f"{where}.content[{j}]: only text content parts are supported",
                field=f"{where}.content[{j}]")
        parts.append(part["text"])
    return "".join(parts)


def parse_embeddings_request(body: dict[str, Any]) -> tuple[str, list[str], str, int | None]:
    """(model, texts, encoding_format, dimensions) from a schema-checked Embeddings body."""
    raw = body["input"]
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("input: a string or a non-empty array of strings (token "
                                "arrays are not supported)", field="input")
    return (str(body["model"]), texts, str(body.get("encoding_format") or "float"),
            body.get("dimensions"))


# -- responses ------------------------------------------------------------------------------


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_json(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _finish(reason: str, called: bool) -> str:
    if reason not in FINISH_REASONS:
        reason = "stop"
    return "tool_calls" if called and reason == "stop" else reason


@dataclass
class _ToolCallState:
    index: int
    id: str
    name: str
    sent: list[str] = field(default_factory=list)
    done: bool = False


class _ToolCalls:
    """Tool calls by the order they started: their ``index`` and what was sent of each."""

    def __init__(self) -> None:
        self.calls: list[_ToolCallState] = []

    def start(self, call_id: str, name: str) -> _ToolCallState:
        state = _ToolCallState(len(self.calls), call_id or f"call_{uuid.uuid4().hex[:24]}",
                               name)
        self.calls.append(state)
        return state

    def find(self, call_id: str) -> _ToolCallState | None:
        """The started call with this id; an empty id means the latest (a provider that
        learns the id late)."""
        for state in reversed(self.calls):
            if (call_id and state.id == call_id) or (not call_id and not state.done):
                return state
        return None

    def finish(self, call: ToolCall) -> tuple[_ToolCallState, str, bool]:
        """(state, arguments not yet sent, whether it was never started)."""
        state = self.find(call.id) if call.id else None
        if state is None:  # match by order: the first started call not finished
            state = next((s for s in self.calls if not s.done and not s.sent), None) \
                or next((s for s in self.calls if not s.done), None)
        fresh = state is None
        if state is None:
            state = self.start(call.id, call.name)
        state.done = True
        sent = "".join(state.sent)
        rest = call.arguments[len(sent):] if call.arguments.startswith(sent) else ""
        return state, rest, fresh


class ChunkEncoder:
    """The service's events → ``chat.completion.chunk`` SSE frames. Every chunk has the same
    id, created and model; the first delta carries the role; tool call fragments carry their
    index; the finish chunk, then (when asked) a usage chunk with ``choices: []``, then
    ``[DONE]``."""

    def __init__(self, completion_id: str, created: int, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.created = created
        self.include_usage = include_usage
        self.model = ""
        self._head = ""
        self._tail = ',"logprobs":null,"finish_reason":null}]' + (
            ',"usage":null}\n\n' if include_usage else "}\n\n")
        self.calls = _ToolCalls()
        self.usage: Usage | None = None
        self.finished = False

    def _chunk(self, delta: dict[str, Any]) -> str:
        return self._head + _dumps(delta) + self._tail

    def encode(self, event: ApiEvent) -> str:
        """The frames for one event ("" when it sends nothing)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else ""
        if isinstance(event, ToolCallDelta):
            state = self.calls.find(event.id)
            if state is None or not event.arguments:
                return ""
            state.sent.append(event.arguments)
            return self._fragment(state.index, {"arguments": event.arguments})
        if isinstance(event, ToolCallStarted):
            state = self.calls.start(event.id, event.name)
            return self._first_fragment(state)
        if isinstance(event, ToolCall):
            state, rest, fresh = self.calls.finish(event)
            out = self._first_fragment(state) if fresh else ""
            if rest:
                state.sent.append(rest)
                out += self._fragment(state.index, {"arguments": rest})
            return out
        if isinstance(event, Usage):
            self.usage = event
            return ""
        if isinstance(event, Finish):
            return self.finish(event.reason)
        if isinstance(event, Routed):
            self.model = event.model
            self._head = ('data: {"id":' + _dumps(self.completion_id)
                          + ',"object":"chat.completion.chunk","created":' + str(self.created)
                          + ',"model":' + _dumps(event.model)
                          + ',"system_fingerprint":null,"choices":[{"index":0,"delta":')
            return self._chunk({"role": "assistant", "content": ""})
        return ""

    def _first_fragment(self, state: _ToolCallState) -> str:
        return self._chunk({"tool_calls": [{"index": state.index, "id": state.id,
                                            "type": "function",
                                            "function": {"name": state.name,
                                                         "arguments": ""}}]})

    def _fragment(self, index: int, function: dict[str, str]) -> str:
        return self._chunk({"tool_calls": [{"index": index, "function": function}]})

    def finish(self, reason: str) -> str:
        self.finished = True
        reason = _finish(reason, bool(self.calls.calls))
        out = self._head + '{},"logprobs":null,"finish_reason":' + _dumps(reason) + "}]" + (
            ',"usage":null}\n\n' if self.include_usage else "}\n\n")
        if self.include_usage:
            usage = self.usage or Usage(0, 0, estimated=True)
            out += "data: " + _dumps({
                "id": self.completion_id, "object": "chat.completion.chunk",
                "created": self.created, "model": self.model, "system_fingerprint": None,
                "choices": [], "usage": usage_json(usage)}) + "\n\n"
        return out + DONE


class CompletionBuilder:
    """The service's events → one ``chat.completion`` (the non-streaming answer)."""

    def __init__(self, completion_id: str, created: int) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = ""
        self.text: list[str] = []
        self.calls = _ToolCalls()
        self.usage = Usage(0, 0, estimated=True)
        self.reason = "stop"

    def add(self, event: ApiEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, ToolCallStarted):
            self.calls.start(event.id, event.name)
        elif isinstance(event, ToolCallDelta):
            state = self.calls.find(event.id)
            if state is not None:
                state.sent.append(event.arguments)
        elif isinstance(event, ToolCall):
            state, rest, _ = self.calls.finish(event)
            if rest:
                state.sent.append(rest)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.reason = event.reason
        elif isinstance(event, Routed):
            self.model = event.model

    def body(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None,
                                   "refusal": None}
        if self.calls.calls:
            message["tool_calls"] = [
                {"id": s.id, "type": "function",
                 "function": {"name": s.name, "arguments": "".join(s.sent)}}
                for s in self.calls.calls]
        return {"id": self.completion_id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": _finish(self.reason, bool(self.calls.calls))}],
                "usage": usage_json(self.usage)}


def models_body(models: Sequence[ApiModel], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_json(m, created) for m in models]}


def model_json(model: ApiModel, created: int) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": created, "owned_by": model.owned_by}


def embeddings_body(model: str, vectors: Any, tokens: int, encoding: str) -> dict[str, Any]:
    import numpy as np

    rows = np.asarray(vectors, dtype="<f4")

    def encode(row: Any) -> Any:
        if encoding == "base64":
            data = row.tobytes() if sys.byteorder == "little" else row.byteswap().tobytes()
            return base64.b64encode(data).decode("ascii")
        return [float(x) for x in row]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(row)}
                     for i, row in enumerate(rows)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# -- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def sse(self) -> str:
        """The mid-stream form: one data event (the stream then closes, without [DONE])."""
        return "data: " + _dumps(self.body) + "\n\n"


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


#: status → (type, code) of errors without a more specific mapping
_BY_STATUS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    502: ("server_error", "upstream_error"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def for_status(status: int, message: str, param: str | None = None,
               headers: dict[str, str] | None = None) -> WireError:
    """An error of a status with no domain exception behind it (routing, methods, hosts)."""
    if status == 409:  # SDKs retry a 409: never for something that will not change
        status = 400
    type_, code = _BY_STATUS.get(status, ("server_error" if status >= 500
                                          else "invalid_request_error", None))
    return WireError(status, error_body(message, type_, code, param), dict(headers or {}))


def error_for(exc: BaseException) -> WireError:
    """Any exception → what the client gets. Messages of our own errors and of provider
    errors are safe to show; anything else is an internal error without details."""
    if isinstance(exc, BudgetExceededError):
        return WireError(429, error_body(exc.message, "insufficient_quota",
                                         "insufficient_quota"), dict(exc.headers))
    if isinstance(exc, NotFoundError) and exc.field == "model":
        return WireError(404, error_body(exc.message, "invalid_request_error",
                                         "model_not_found", "model"), dict(exc.headers))
    if isinstance(exc, ForbiddenError) and exc.field == "model":
        return WireError(403, error_body(exc.message, "permission_error",
                                         "model_not_allowed", "model"), dict(exc.headers))
    if isinstance(exc, CloudIDEError):
        return for_status(exc.status, exc.message, exc.field, exc.headers)
    if isinstance(exc, ProviderError):
        return _provider_error(exc)
    return for_status(500, "internal server error")


def _provider_error(exc: ProviderError) -> WireError:
    status, kind, message, headers = provider_failure(exc)
    code = {"overloaded": "overloaded", "auth": "upstream_auth"}.get(kind)
    if code is not None:  # more specific than their status's code
        return WireError(status, error_body(message, "server_error", code), headers)
    return for_status(status, message, headers=headers)
