"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp server, LiteLLM) through
the official ``openai`` SDK.

The SDK's own retries are off (``max_retries=0``): the router decides whether to wait, retry or
fall back to another model, and it must see every failure to keep its health figures honest.
Usage is always requested (``stream_options.include_usage``) so streamed turns are metered from
the upstream's own counts; when a server sends none, we estimate and say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .base import (
    ChatRequest,
    Event,
    FimRequest,
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

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


class OpenAIProvider(SdkProvider):
    def __init__(self, name: str, *, api_key: str | None, base_url: str | None,
                 timeout_s: float = 60.0, default_headers: dict[str, str] | None = None) -> None:
        super().__init__(name, api_key=api_key, base_url=base_url, timeout_s=timeout_s)
        self._headers = default_headers or {}

    def _build(self) -> Any:
        from openai import AsyncOpenAI, Timeout

        # a keyless local server (Ollama) still needs a non-empty key for the SDK
        return AsyncOpenAI(
            api_key=self._api_key or "unused", base_url=self.base_url, max_retries=0,
            timeout=Timeout(self._timeout_s, connect=min(10.0, self._timeout_s)),
            default_headers=self._headers)

    def _map(self, exc: BaseException) -> ProviderError:
        return map_error(exc)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        kwargs: dict[str, Any] = {
            "model": request.model, "messages": list(request.messages), "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": request.max_tokens,
        }
        if request.tools:
            kwargs["tools"] = [t.openai() for t in request.tools]
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools and request.tool_choice is not None:
            kwargs["tool_choice"] = request.tool_choice
        if request.tools and request.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = request.parallel_tool_calls
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.stop:
            kwargs["stop"] = list(request.stop)
        kwargs.update(request.extra)
        # the per-call timeout bounds each read of the stream, so a stall between chunks (or
        # a slow first token) fails the call without a timer of ours per chunk
        kwargs["timeout"] = request.timeout_s
        stream = await self._open(self._sdk().chat.completions.create(**kwargs),
                                  request.timeout_s)
        calls: dict[int, dict[str, Any]] = {}
        produced: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        async with contextlib.aclosing(self._read(stream)) as chunks:
            async for chunk in chunks:
                if getattr(chunk, "usage", None) is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if delta is not None and delta.content:
                        produced.append(delta.content)
                        yield TextDelta(delta.content)
                    for part in (delta.tool_calls or ()) if delta is not None else ():
                        call = calls.setdefault(int(part.index), {"id": "", "name": "",
                                                                  "args": []})
                        function = part.function
                        if part.id:
                            call["id"] = part.id
                        if function is not None and function.name and not call["name"]:
                            call["name"] = function.name
                            yield ToolCallStarted(call["id"], call["name"])
                            if call["args"]:  # arguments that came before the name
                                yield ToolCallDelta(call["id"], "".join(call["args"]))
                        if function is not None and function.arguments:
                            call["args"].append(function.arguments)
                            if call["name"]:
                                yield ToolCallDelta(call["id"], function.arguments)
                    if choice.finish_reason:
                        finish = str(choice.finish_reason)
        done = [ToolCall(calls[i]["id"] or f"call_{i}", calls[i]["name"],
                         "".join(calls[i]["args"])) for i in sorted(calls)]
        for event in closing_events("tool_calls" if finish == "function_call" else finish,
                                    done, produced, usage, list(request.messages)):
            yield event


    async def stream_fim(self, request: FimRequest) -> AsyncIterator[Event]:
        """Fill in the middle through the Completions API (``prompt`` + ``suffix``), which
        FIM code models on vLLM, llama.cpp, Ollama and Codestral serve."""
        kwargs: dict[str, Any] = {
            "model": request.model, "prompt": request.prompt, "suffix": request.suffix,
            "max_tokens": request.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "timeout": request.timeout_s,
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)[:4]  # the API's limit
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        stream = await self._open(self._sdk().completions.create(**kwargs), request.timeout_s)
        produced: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        async with contextlib.aclosing(self._read(stream)) as chunks:
            async for chunk in chunks:
                if getattr(chunk, "usage", None) is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices or ():
                    if choice.text:
                        produced.append(choice.text)
                        yield TextDelta(choice.text)
                    if choice.finish_reason:
                        finish = str(choice.finish_reason)
        for event in closing_events(finish, [], produced, usage,
                                    request.prompt + request.suffix):
            yield event


def _usage(raw: Any) -> Usage:
    details = getattr(raw, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return Usage(int(raw.prompt_tokens or 0), int(raw.completion_tokens or 0), cached)


def map_error(exc: BaseException) -> ProviderError:
    import openai

    return map_sdk_error(exc, openai)
