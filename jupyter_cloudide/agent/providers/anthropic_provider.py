"""Anthropic through the official ``anthropic`` SDK, translated at this edge to and from the
OpenAI-shaped messages the rest of the agent uses (see ../shared/COMPAT.md):

- system and developer messages → the top-level ``system``;
- assistant ``tool_calls`` → ``tool_use`` blocks; ``role: tool`` messages → ``tool_result``
  blocks in a user turn (consecutive ones merged: Anthropic wants alternating roles);
- stop reasons ``end_turn``/``stop_sequence`` → stop, ``max_tokens`` → length,
  ``tool_use`` → tool_calls, ``refusal`` → content_filter; input/output tokens → usage.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .base import (
    ChatRequest,
    Event,
    Message,
    ProviderError,
    SdkProvider,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
    closing_events,
    map_sdk_error,
)

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


class AnthropicProvider(SdkProvider):
    def _build(self) -> Any:
        from anthropic import AsyncAnthropic, Timeout

        return AsyncAnthropic(
            api_key=self._api_key or "unused", base_url=self.base_url, max_retries=0,
            timeout=Timeout(self._timeout_s, connect=min(10.0, self._timeout_s)))

    def _map(self, exc: BaseException) -> ProviderError:
        return map_error(exc)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        system, messages = to_anthropic(request.messages)
        kwargs: dict[str, Any] = {"model": request.model, "messages": messages,
                                  "max_tokens": request.max_tokens, "stream": True}
        if system:
            kwargs["system"] = system
        if request.tools:
            kwargs["tools"] = [{"name": t.name, "description": t.description,
                                "input_schema": t.parameters} for t in request.tools]
        if request.tools:
            choice = tool_choice(request.tool_choice, request.parallel_tool_calls)
            if choice is not None:
                kwargs["tool_choice"] = choice
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        kwargs.update(request.extra)
        # The SDK (2.x) no longer takes sampling parameters as arguments (a TypeError, which
        # failed every call that set one); the Messages API still reads them from the body
        # for the models that support them.
        sampling = {k: v for k, v in (("temperature", request.temperature),
                                      ("top_p", request.top_p)) if v is not None}
        if sampling:
            kwargs["extra_body"] = {**sampling, **dict(kwargs.get("extra_body") or {})}
        # the per-call timeout bounds each read of the stream, so a stall between chunks (or
        # a slow first token) fails the call without a timer of ours per chunk
        kwargs["timeout"] = request.timeout_s
        stream = await self._open(self._sdk().messages.create(**kwargs), request.timeout_s)
        blocks: dict[int, dict[str, Any]] = {}
        produced: list[str] = []
        input_tokens = output_tokens = cached = 0
        saw_usage = False
        stop: str | None = None
        async with contextlib.aclosing(self._read(stream)) as events:
            async for event in events:
                kind = event.type
                if kind == "message_start":
                    usage = event.message.usage
                    input_tokens = int(usage.input_tokens or 0)
                    cached = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
                    saw_usage = True
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = {"id": block.id, "name": block.name, "args": []}
                        yield ToolCallStarted(block.id, block.name)
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta" and delta.text:
                        produced.append(delta.text)
                        yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta" and event.index in blocks:
                        blocks[event.index]["args"].append(delta.partial_json)
                        if delta.partial_json:
                            yield ToolCallDelta(blocks[event.index]["id"], delta.partial_json)
                elif kind == "message_delta":
                    stop = event.delta.stop_reason or stop
                    if event.usage is not None:
                        output_tokens = int(event.usage.output_tokens or 0)
                elif kind == "message_stop":
                    break
        done = [ToolCall(blocks[i]["id"], blocks[i]["name"], "".join(blocks[i]["args"]) or "{}")
                for i in sorted(blocks)]
        counted = Usage(input_tokens + cached, output_tokens, cached) if saw_usage else None
        for item in closing_events(None if stop is None else STOP_REASONS.get(stop, "stop"),
                                   done, produced, counted, messages):
            yield item


def tool_choice(choice: str | dict[str, Any] | None, parallel: bool | None
                ) -> dict[str, Any] | None:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` → Anthropic's ``tool_choice``."""
    if choice is None and parallel is None:
        return None
    if isinstance(choice, dict):
        out: dict[str, Any] = {"type": "tool",
                               "name": str((choice.get("function") or {}).get("name", ""))}
    else:
        out = {"type": {"required": "any", "none": "none"}.get(str(choice), "auto")}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI-shaped messages → (system, Anthropic messages)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content))
        elif role == "user":
            add("user", [{"type": "text", "text": _text(content) or " "}])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            if _text(content):
                blocks.append({"type": "text", "text": _text(content)})
            for call in message.get("tool_calls") or ():
                function = call.get("function", {})
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = {}
                blocks.append({"type": "tool_use", "id": call.get("id"),
                               "name": function.get("name"),
                               "input": arguments if isinstance(arguments, dict) else {}})
            add("assistant", blocks or [{"type": "text", "text": " "}])
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                          "content": _text(content)}])
    return "\n\n".join(s for s in system if s), out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type") in ("text", None))
    return str(content)


def map_error(exc: BaseException) -> ProviderError:
    import anthropic

    return map_sdk_error(exc, anthropic)
