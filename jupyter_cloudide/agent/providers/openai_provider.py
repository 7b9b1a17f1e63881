"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp server, LiteLLM) through
the official ``openai`` SDK.

The SDK's own retries are off (``max_retries=0``): the router decides whether to wait, retry or
fall back to another model, and it must see every failure to keep its health figures honest.
Usage is always requested (``stream_options.include_usage``) so streamed turns are metered from
the upstream's own counts; when a server sends none, we estimate and say so.
Chat requests go out on the SDK's own HTTP client, with its base URL, key and headers, and
failed statuses become the SDK's own exceptions; but their JSON is written and read here: the
SDK's request building and its pydantic object per stream chunk were as dear as the rest of
our server's work on a request.
"""

from __future__ import annotations

import contextlib
import json
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
        self._http: Any = None
        self._chat_url = ""
        self._chat_headers: dict[str, str] = {}

    def _build(self) -> Any:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient, Timeout

        timeout = Timeout(self._timeout_s, connect=min(10.0, self._timeout_s))
        # The SDK's default HTTP client, given to it so that chat requests can be sent on it
        # too (its pool, proxies and limits) with their JSON built here (:meth:`_post_chat`).
        http = DefaultAsyncHttpxClient(timeout=timeout)
        # a keyless local server (Ollama) still needs a non-empty key for the SDK
        client = AsyncOpenAI(
            api_key=self._api_key or "unused", base_url=self.base_url, max_retries=0,
            timeout=timeout, default_headers=self._headers, http_client=http)
        self._http = http
        self._chat_url = f"{str(client.base_url).rstrip('/')}/chat/completions"
        headers = {**client.default_headers, **client.auth_headers}
        self._chat_headers = {k: v for k, v in headers.items() if isinstance(v, str)}
        return client

    async def _post_chat(self, kwargs: dict[str, Any], *, stream: bool) -> Any:
        """POST ``chat/completions`` on the SDK's HTTP client, its base URL, key and headers,
        with the JSON built here: the SDK's request building (its parameter transforms and
        option models) took 0.6 ms of CPU per call, a fifth of what our server adds to a first
        token (bench/v1.py), for a body that is plain JSON already. A failed status raises the
        SDK's own APIStatusError, mapped like every other SDK error."""
        self._sdk()
        body = {k: v for k, v in kwargs.items() if k != "timeout" and v is not None}
        request = self._http.build_request(
            "POST", self._chat_url, headers=self._chat_headers, timeout=kwargs["timeout"],
            content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        response = await self._http.send(request, stream=stream)
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _status_error(response)
        return response

    def _map(self, exc: BaseException) -> ProviderError:
        return map_error(exc)

    async def _raw_body(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A Chat Completions answer as its JSON (no pydantic objects we would only read back
        into ours)."""
        response = await self._post_chat(kwargs, stream=False)
        body = json.loads(response.content)
        if not isinstance(body, dict):
            raise ProviderError("malformed", "the model sent a malformed answer")
        return body

    async def _raw_stream(self, kwargs: dict[str, Any]) -> _SseChunks:
        """A Chat Completions stream, its body not yet read (see :class:`_SseChunks`)."""
        return _SseChunks(await self._post_chat(kwargs, stream=True))

    @staticmethod
    def _chat_kwargs(request: ChatRequest) -> dict[str, Any]:
        """The Chat Completions parameters of ``request`` (streamed or not)."""
        kwargs: dict[str, Any] = {
            "model": request.model, "messages": list(request.messages),
            "max_tokens": request.max_tokens,
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
        # the per-call timeout bounds each read: of a stream, a stall between chunks (or a
        # slow first token) fails the call without a timer of ours per chunk
        kwargs["timeout"] = request.timeout_s
        return kwargs

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        kwargs = self._chat_kwargs(request)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        stream = await self._open(self._raw_stream(kwargs), request.timeout_s)
        calls: dict[int, dict[str, Any]] = {}
        produced: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        async with contextlib.aclosing(self._read(stream)) as chunks:
            async for chunk in chunks:
                try:
                    if chunk.get("usage") is not None:
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            produced.append(content)
                            yield TextDelta(content)
                        for part in delta.get("tool_calls") or ():
                            call = calls.setdefault(int(part.get("index") or 0),
                                                    {"id": "", "name": "", "args": []})
                            function = part.get("function") or {}
                            if part.get("id"):
                                call["id"] = str(part["id"])
                            name = function.get("name")
                            if name and not call["name"]:
                                call["name"] = str(name)
                                yield ToolCallStarted(call["id"], call["name"])
                                if call["args"]:  # arguments that came before the name
                                    yield ToolCallDelta(call["id"], "".join(call["args"]))
                            arguments = function.get("arguments")
                            if arguments:
                                call["args"].append(arguments)
                                if call["name"]:
                                    yield ToolCallDelta(call["id"], arguments)
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                except (AttributeError, TypeError, ValueError) as exc:  # not the chunk shape
                    raise ProviderError("malformed", "the model sent a malformed stream") \
                        from exc
        done = [ToolCall(calls[i]["id"] or f"call_{i}", calls[i]["name"],
                         "".join(calls[i]["args"])) for i in sorted(calls)]
        for event in closing_events("tool_calls" if finish == "function_call" else finish,
                                    done, produced, usage, list(request.messages)):
            yield event

    async def complete_chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """One non-streamed completion, as the same events :meth:`stream_chat` ends with (the
        text in one delta, the tool calls whole, usage, finish). For a client that asked for
        no stream: one JSON body instead of a chunk per token costs the SDK, our server and
        the upstream about half the CPU (bench/v1.py). ``timeout_s`` bounds the whole answer
        here: nothing arrives before it is complete."""
        kwargs = self._chat_kwargs(request)
        body = await self._open(self._raw_body(kwargs), request.timeout_s)
        produced: list[str] = []
        calls: list[ToolCall] = []
        finish: str | None = None
        try:
            for choice in body.get("choices") or ():
                message = choice.get("message") or {}
                if message.get("content"):
                    produced.append(str(message["content"]))
                for part in message.get("tool_calls") or ():
                    function = part.get("function")  # custom tools have none
                    if function is not None:
                        calls.append(ToolCall(str(part.get("id") or f"call_{len(calls)}"),
                                              str(function.get("name") or ""),
                                              str(function.get("arguments") or "")))
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
            usage = _usage(body["usage"]) if body.get("usage") is not None else None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderError("malformed", "the model sent a malformed answer") from exc
        if produced:
            yield TextDelta("".join(produced))
        # a complete answer without a finish reason (some local servers) ended normally
        finish = "tool_calls" if finish == "function_call" else finish or "stop"
        for event in closing_events(finish, calls, produced, usage, list(request.messages)):
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
    """Usage from the SDK's object (completions) or the JSON of a chat answer."""
    if isinstance(raw, dict):
        details = raw.get("prompt_tokens_details") or {}
        return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0),
                     int(details.get("cached_tokens") or 0))
    details = getattr(raw, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return Usage(int(raw.prompt_tokens or 0), int(raw.completion_tokens or 0), cached)


def _status_error(response: Any) -> Exception:
    """The SDK's exception for a failed answer (its body read), as the SDK would raise it."""
    import openai

    try:
        body: Any = response.json()
    except ValueError:
        body = response.text or None
    message = f"Error code: {response.status_code}" + (f" - {body}" if body else "")
    return openai.APIStatusError(message, response=response, body=body)


class _SseChunks:
    """The JSON data events of a Chat Completions stream, decoded here instead of by the SDK,
    whose pydantic object per chunk cost ~0.1 ms each (~2 ms of CPU for a 20-chunk answer,
    bench/v1.py), the same as the rest of our server's work on it. Like the SDK's stream
    (legacy mode): events end at ``[DONE]``, and a data event with an ``error`` is the
    upstream failing mid-stream. Always read to its end (a keep-alive connection is reused
    only then) and closed by :meth:`close`."""

    def __init__(self, response: Any) -> None:
        self._response = response

    async def close(self) -> None:
        await self._response.aclose()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        data: list[str] = []
        done = False
        async for line in self._response.aiter_lines():
            if done:
                continue  # drained for the connection's reuse
            if line:
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                continue  # comments (": keep-alive"), event, id, retry
            if not data:
                continue
            text = "\n".join(data)
            data = []
            if text.startswith("[DONE]"):
                done = True
                continue
            chunk = json.loads(text)
            if isinstance(chunk, dict) and chunk.get("error"):
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else None
                raise ProviderError("server", str(message or "An error occurred during "
                                                  "streaming")[:500])
            yield chunk


def map_error(exc: BaseException) -> ProviderError:
    import openai

    return map_sdk_error(exc, openai)
