"""Adapters found through entry points, and the provider that puts one in front of the router.

A provider ``{"name": "corp", "kind": "adapter", "adapter": "ws-oauth2", "options": {...}}`` is
checked when the configuration is read (the adapter's name must be an installed entry point of
the group ``jupyter_cloudide.adapters``: metadata only, nothing imported), and its code is
imported, its options validated and the adapter built on the provider's first use, so that
server start-up stays light and one broken adapter costs only its own models.

:class:`AdapterProvider` is the same to the router as the SDK-backed providers: every call is
paced (first event, then each next one, within the request's ``timeout_s``), a stream that ends
without a finish reason is a ``connection`` error, usage is estimated when the service reports
none, and an exception that is not a :class:`ProviderError` is mapped to one (and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from ..agent.providers.base import (
    FINISH_REASONS,
    ChatRequest,
    Event,
    Finish,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
    closing_events,
    within,
)
from .base import Adapter, AdapterConfigError, SecretSources, parse_options

if TYPE_CHECKING:
    from ..agent.models import ProviderConfig

log = logging.getLogger(__name__)

GROUP = "jupyter_cloudide.adapters"
#: events an adapter may run ahead of a slow reader before it waits
_AHEAD = 256


def installed_adapters() -> dict[str, EntryPoint]:
    """Entry points of the group, by name (reads installed metadata; imports nothing)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def find_adapter(adapter: Any, *, where: str) -> EntryPoint:
    """The entry point named ``adapter``; a clear error naming the installed ones if none."""
    if not isinstance(adapter, str) or not adapter:
        raise AdapterConfigError(f"{where}: needs \"adapter\": the name of an installed "
                                 f"adapter (entry point group {GROUP})")
    found = installed_adapters()
    if adapter not in found:
        raise AdapterConfigError(
            f"{where}: unknown adapter {adapter[:100]!r}; installed: "
            f"{', '.join(sorted(found)) or 'none'} (entry point group {GROUP})")
    return found[adapter]


def check_adapter_config(name: str, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """For ``provider_configs``: the adapter's name (installed) and its raw options."""
    where = f"provider {name!r}"
    find_adapter(raw.get("adapter"), where=where)
    options = raw.get("options")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise AdapterConfigError(f"{where}: \"options\" must be an object")
    return str(raw["adapter"]), dict(options)


def load_adapter_class(entry: EntryPoint, *, where: str) -> type[Adapter[Any]]:
    """Import the entry point's class (an :class:`Adapter` subclass)."""
    try:
        cls = entry.load()
    except Exception as exc:
        raise AdapterConfigError(f"{where}: cannot load {entry.value} "
                                 f"({type(exc).__name__}: {exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise AdapterConfigError(f"{where}: {entry.value} is not an Adapter subclass")
    return cls


def build_adapter(entry: EntryPoint, options: Mapping[str, Any], *, name: str,
                  sources: SecretSources | None = None, key: str | None = None,
                  timeout_s: float = 60.0, from_text: bool = False,
                  where: str | None = None) -> Adapter[Any]:
    """Load the adapter's class, validate its options, build it."""
    where = where or f"provider {name!r} (adapter {entry.name!r})"
    cls = load_adapter_class(entry, where=where)
    parsed = parse_options(cls.Options, options, where=where, sources=sources, key=key,
                           key_option=cls.key_option, from_text=from_text)
    try:
        return cls(parsed, name=name, timeout_s=timeout_s)
    except Exception as exc:  # its constructor's own checks (a CA file that is not there)
        raise AdapterConfigError(f"{where}: cannot start ({type(exc).__name__}: {exc})"
                                 ) from None


class AdapterProvider:
    """An adapter as a :class:`~jupyter_cloudide.agent.providers.base.Provider`."""

    def __init__(self, name: str, entry: EntryPoint | None, options: Mapping[str, Any], *,
                 api_key: str | None = None, sources: SecretSources | None = None,
                 timeout_s: float = 60.0) -> None:
        self.name = name
        self.entry = entry
        self._options = dict(options)
        self._key = api_key
        self._sources = sources
        self._timeout_s = timeout_s
        self._adapter: Adapter[Any] | None = None
        self._error: AdapterConfigError | None = None

    @classmethod
    def from_config(cls, config: ProviderConfig, timeout_s: float = 60.0) -> AdapterProvider:
        entry = find_adapter(config.adapter, where=f"provider {config.name!r}")
        return cls(config.name, entry, config.options, api_key=config.api_key,
                   sources=config.sources, timeout_s=timeout_s)

    @classmethod
    def of(cls, adapter: Adapter[Any]) -> AdapterProvider:
        """A provider over an adapter already built (the sidecar builds it at start)."""
        provider = cls(adapter.name, None, {}, timeout_s=adapter.timeout_s)
        provider._adapter = adapter
        return provider

    def adapter(self) -> Adapter[Any]:
        """The adapter, built on first use; a configuration error is kept and re-raised as a
        ProviderError (kind ``other``: no retry or cooldown can fix it)."""
        if self._adapter is None and self._error is None and self.entry is not None:
            try:
                self._adapter = build_adapter(self.entry, self._options, name=self.name,
                                              sources=self._sources, key=self._key,
                                              timeout_s=self._timeout_s)
            except AdapterConfigError as exc:
                log.error("%s", exc.message)
                self._error = exc
        if self._error is not None:
            raise ProviderError("other", self._error.message)
        if self._adapter is None:
            raise ProviderError("other", f"provider {self.name!r} is closed")
        return self._adapter

    def secret_values(self) -> tuple[str, ...]:
        """The key and the adapter's secret options (to redact from tool results). Builds the
        adapter if need be: its secrets must be known before the first tool result is sent."""
        with contextlib.suppress(ProviderError):
            self.adapter()  # a configuration error is logged once and kept
        built = self._adapter.secret_values() if self._adapter is not None else ()
        return tuple(dict.fromkeys(v for v in (self._key, *built) if v))

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        adapter = self.adapter()
        produced: list[str] = []
        calls: list[ToolCall] = []
        #: call id → argument text streamed so far (None: started, nothing streamed)
        streamed: dict[str, str] = {}
        usage: Usage | None = None
        finish: str | None = None
        async with contextlib.aclosing(paced(adapter.stream(request), request.timeout_s,
                                             self.name)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if event.text:
                        produced.append(event.text)
                        yield event
                elif isinstance(event, ToolCallStarted):
                    if event.id not in streamed:
                        streamed[event.id] = ""
                        yield event
                elif isinstance(event, ToolCallDelta):
                    if event.id in streamed and event.arguments:
                        streamed[event.id] += event.arguments
                        yield event
                elif isinstance(event, ToolCall):
                    call = event if event.id else ToolCall(f"call_{len(calls)}", event.name,
                                                           event.arguments)
                    if call.id not in streamed:
                        streamed[call.id] = ""
                        yield ToolCallStarted(call.id, call.name)
                    if not streamed[call.id] and call.arguments:
                        # an adapter that sends whole calls: its arguments stream as one piece
                        streamed[call.id] = call.arguments
                        yield ToolCallDelta(call.id, call.arguments)
                    calls.append(call)
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finish):
                    finish = event.reason if event.reason in FINISH_REASONS else "stop"
                    break
        for closing in closing_events(finish, calls, produced, usage, list(request.messages)):
            yield closing

    async def list_models(self) -> list[str]:
        adapter = self.adapter()
        try:
            return sorted(await within(adapter.models(), self._timeout_s))
        except asyncio.TimeoutError:
            raise ProviderError("timeout", f"{self.name}: listing models timed out") from None
        except ProviderError:
            raise
        except Exception as exc:
            raise unexpected(exc, self.name) from exc

    async def close(self) -> None:
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            await adapter.aclose()


class _Expired:
    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


async def paced(source: AsyncIterator[Event], timeout_s: float,
                name: str) -> AsyncGenerator[Event, None]:
    """``source``'s events, each within ``timeout_s`` of the previous one (the first, of the
    call). The source runs in a task of its own feeding a bounded queue, so a stall is noticed
    by one timer armed only while the queue is empty (not a task per event), and the source is
    closed however the reader stops (an adapter then cancels the call at its service)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_AHEAD)

    async def pump() -> None:
        try:
            async for event in source:
                await queue.put(event)
            await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(_Raised(exc))
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()

    def expire(generation: int) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # full: the reader has events anyway
            queue.put_nowait(_Expired(generation))

    task = asyncio.ensure_future(pump())
    generation = 0
    try:
        while True:
            if queue.empty():
                generation += 1
                timer = loop.call_later(timeout_s, expire, generation)
                try:
                    item = await queue.get()
                finally:
                    timer.cancel()
            else:
                item = queue.get_nowait()
            if isinstance(item, _Expired):
                if item.generation == generation:
                    raise ProviderError("timeout", "the model did not answer in time")
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                if isinstance(item.exc, ProviderError):
                    raise item.exc
                raise unexpected(item.exc, name) from item.exc
            yield item
    finally:
        if not task.done():
            task.cancel()
        # let the adapter's own clean-up (a cancel message to its service) run, bounded
        await asyncio.wait({task}, timeout=5)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("adapter %s: closing its stream failed", name, exc_info=task.exception())


def unexpected(exc: BaseException, name: str) -> ProviderError:
    """An exception an adapter let through → the ProviderError kind it most likely means."""
    if isinstance(exc, ProviderError):
        return exc
    # httpx's and websockets' transport errors, matched by name (neither is imported here)
    names = {cls.__name__ for cls in type(exc).__mro__
             if cls.__module__.split(".")[0] in ("httpx", "httpcore", "websockets")}
    if isinstance(exc, asyncio.TimeoutError) or "TimeoutException" in names:
        return ProviderError("timeout", "the model did not answer in time")
    if isinstance(exc, ConnectionError | OSError) or names & {"TransportError",
                                                                "ConnectionClosed"}:
        return ProviderError("connection",
                             f"connection to the model failed ({type(exc).__name__})")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return ProviderError("malformed", "the model service sent a malformed message")
    log.error("adapter %s failed", name, exc_info=exc)
    return ProviderError("other", f"model call failed ({type(exc).__name__})")
