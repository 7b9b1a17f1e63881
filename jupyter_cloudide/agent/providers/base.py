"""What the agent needs from a model provider, independent of its wire format.

Messages are OpenAI-shaped dicts (``role``: system | user | assistant | tool; assistant
``tool_calls``; tool ``tool_call_id``) because that is the lingua franca of the clients we serve
and of most servers we call; providers with another format (Anthropic) translate at their edge.

A call is a stream of :data:`Event` values: text deltas, tool calls (complete, once their
arguments have fully arrived), usage, and the finish reason. Failures are one exception,
:class:`ProviderError`, whose ``kind`` tells the router whether another try (later, or on
another model) can help.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
#: clean-ups started by a cancelled ``within`` (a reference keeps them from being collected)
_BACKGROUND: set[asyncio.Future[Any]] = set()

Message = dict[str, Any]

#: error kinds that a retry or a fallback model may fix
RETRYABLE = frozenset({"rate_limited", "overloaded", "server", "timeout", "connection",
                       "malformed"})


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    #: the raw JSON text the model produced (validated by the tool registry, not here)
    arguments: str


@dataclass(frozen=True)
class ToolCallStarted:
    """A tool call's name is known (its arguments are still streaming): lets the UI show it."""

    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a started tool call's arguments, as it streams (the complete arguments still
    come in the :class:`ToolCall`): lets the ``/v1`` API stream them on."""

    id: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    #: True when the upstream reported nothing and these are our estimates
    estimated: bool = False


@dataclass(frozen=True)
class Finish:
    #: stop | length | tool_calls | content_filter | error
    reason: str


Event = TextDelta | ToolCallStarted | ToolCallDelta | ToolCall | Usage | Finish
#: the finish reasons passed on to clients as they are (OpenAI's); any other is a "stop"
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 4096
    temperature: float | None = None
    #: seconds until the first event, then between events
    timeout_s: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: OpenAI's vocabulary, translated by each provider: "auto" | "none" | "required" |
    #: {"type": "function", "function": {"name": ...}}; None: the upstream's default
    tool_choice: str | dict[str, Any] | None = None
    #: False: at most one tool call per answer; None: the upstream's default
    parallel_tool_calls: bool | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()


@dataclass(frozen=True)
class FimRequest:
    """A fill-in-the-middle completion: the text before and after the cursor."""

    model: str
    prompt: str
    suffix: str
    max_tokens: int = 128
    stop: Sequence[str] = ()
    temperature: float | None = 0.0
    timeout_s: float = 15.0


class ProviderError(Exception):
    """A model call failed. ``kind``: rate_limited | overloaded | server | timeout | connection
    | malformed | auth | bad_request | not_found | other. The message is safe to show a user
    (the SDKs' messages never include the key)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class Provider(Protocol):
    """One configured upstream (an SDK client with its key and base URL)."""

    name: str

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Events of one completion; raises ProviderError (also mid-stream)."""

    async def list_models(self) -> list[str]:
        """Model ids the upstream offers (``/v1/models``); [] when it cannot say."""

    async def close(self) -> None:
        """Release connections."""


class SdkProvider(ABC):
    """Shared by the SDK-backed providers: one async client, built on first use (the SDK is
    imported then, not at server start) and closed once; opening a stream, reading it with
    every failure mapped to a ProviderError, and its closing events."""

    def __init__(self, name: str, *, api_key: str | None, base_url: str | None,
                 timeout_s: float = 60.0) -> None:
        self.name = name
        self.base_url = base_url
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._client: Any = None

    @abstractmethod
    def _build(self) -> Any:
        """The SDK's async client."""

    @abstractmethod
    def _map(self, exc: BaseException) -> ProviderError:
        """This SDK's exceptions → ProviderError."""

    def _sdk(self) -> Any:
        if self._client is None:
            self._client = self._build()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def list_models(self) -> list[str]:
        try:
            page = await self._sdk().models.list()
        except Exception as exc:
            raise self._map(exc) from exc
        return sorted(str(m.id) for m in page.data)

    async def _open(self, create: Awaitable[Any], timeout_s: float) -> Any:
        """The SDK's stream object (the request sent, its headers read)."""
        try:
            return await within(create, timeout_s, discard=_close_quietly)
        except Exception as exc:
            raise self._map(exc) from exc

    async def _read(self, stream: Any) -> AsyncGenerator[Any, None]:
        """The stream's items; always closed, every failure mapped. Stalls between items are
        bounded by the SDK's per-call read timeout: a timer of ours per item cost ~4 ms of a
        20-chunk answer (bench/agent.py)."""
        try:
            async for item in stream:
                yield item
        except Exception as exc:
            raise self._map(exc) from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                await close()


async def within(awaitable: Awaitable[T], timeout_s: float,
                 discard: Callable[[T], Any] | None = None) -> T:
    """``asyncio.wait_for`` without its flaw before Python 3.12 (CPython gh-86296): there, a
    cancellation arriving just as the awaitable finishes is dropped, and a cancelled turn ran
    on (found by fuzzing ``chat.cancel``). Here the cancellation always propagates; a result
    that came too late goes to ``discard`` (a stream to close)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        if task.done() and not task.cancelled() and task.exception() is None \
                and discard is not None:
            result = discard(task.result())
            if inspect.isawaitable(result):
                closing = asyncio.ensure_future(result)
                _BACKGROUND.add(closing)
                closing.add_done_callback(_BACKGROUND.discard)
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError
    return task.result()


async def _close_quietly(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def closing_events(finish: str | None, calls: Sequence[ToolCall], produced: Sequence[str],
                   usage: Usage | None, prompt: Any) -> list[Event]:
    """What ends every completion: the tool calls, the usage (estimated from ``prompt`` and
    what was produced when the upstream reported none), the finish reason. A stream that
    ended without a finish reason was cut short: neither SDK notices, we do."""
    if finish is None:
        raise ProviderError("connection", "the model's stream ended before it finished")
    if usage is None:
        out = "".join(produced) + "".join(call.arguments for call in calls)
        usage = Usage(estimate_tokens(json.dumps(prompt, default=str)), estimate_tokens(out),
                      estimated=True)
    return [*calls, usage, Finish(finish)]


def estimate_tokens(text: str) -> int:
    """~4 characters per token: the estimate used only when an upstream reports no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``retry-after`` (or ``retry-after-ms``) response header, if any."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        return None if value is None else max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def map_sdk_error(exc: BaseException, sdk: Any) -> ProviderError:
    """SDK and transport exceptions → ProviderError with a kind the router understands.
    ``sdk`` is the ``openai`` or ``anthropic`` module: both name their exceptions alike."""
    if isinstance(exc, ProviderError):
        return exc
    # the SDKs' transport is httpx or its successor httpx2; match its classes by name
    transport = {cls.__name__ for cls in type(exc).__mro__
                 if cls.__module__.split(".")[0] in ("httpx", "httpx2")}
    if isinstance(exc, asyncio.TimeoutError | sdk.APITimeoutError) or \
            "TimeoutException" in transport:
        return ProviderError("timeout", "the model did not answer in time")
    if isinstance(exc, sdk.APIStatusError) and int(exc.status_code) < 400:
        # an error event inside a 200 stream (Anthropic): its type says what happened
        body = getattr(exc, "body", None)
        inner = body.get("error", {}) if isinstance(body, dict) else {}
        kind = {"overloaded_error": "overloaded", "rate_limit_error": "rate_limited"}.get(
            str(inner.get("type") if isinstance(inner, dict) else ""), "server")
        return ProviderError(kind, _message(exc))
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        after = retry_after(exc.response.headers)
        message = _message(exc)
        if status == 429:
            return ProviderError("rate_limited", message, status=status, retry_after_s=after)
        if status in (401, 403):
            return ProviderError("auth", message, status=status)
        if status == 404:
            return ProviderError("not_found", message, status=status)
        if status in (503, 529):
            return ProviderError("overloaded", message, status=status, retry_after_s=after)
        if status >= 500:
            return ProviderError("server", message, status=status, retry_after_s=after)
        return ProviderError("bad_request", message, status=status)
    if isinstance(exc, sdk.APIConnectionError) or "TransportError" in transport:
        return ProviderError("connection",
                             f"connection to the model failed ({type(exc).__name__})")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | AssertionError):
        # AssertionError: the anthropic SDK's stream state machine on a stream cut short
        return ProviderError("malformed", "the model sent a malformed stream")
    if isinstance(exc, sdk.APIError):  # an error event inside the stream
        return ProviderError("server", _message(exc))
    return ProviderError("other", f"model call failed ({type(exc).__name__})")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    return str(getattr(exc, "message", None) or exc)[:500]
