"""Reference adapter: a WebSocket model service behind OAuth2 client credentials (the shape of
many corporate model gateways), as an OpenAI-compatible provider.

Configuration::

    c.CloudIDEApp.providers = [{
        "name": "corp", "kind": "adapter", "adapter": "ws-oauth2",
        "api_key_env": "CORP_CLIENT_SECRET",          # or api_key_secret / options.client_secret*
        "options": {"url": "wss://models.corp.example/v1/stream",
                    "token_url": "https://login.corp.example/oauth2/token",
                    "client_id": "cloudide", "scope": "models.invoke"}}]

The protocol (version 1; ``tests/adapters/ws_model_service.py`` is a service speaking it)
======================================================================================

Auth. The client fetches an access token: ``POST token_url`` with
``grant_type=client_credentials`` (``scope``, ``audience`` when set), the client id and secret
by HTTP Basic (``client_secret_basic``) or in the form (``client_secret_post``) →
``{"access_token": "...", "token_type": "Bearer", "expires_in": 3600}``. It opens the socket
with ``Authorization: Bearer <token>`` on the upgrade request; a missing, unknown or expired
token is refused there with HTTP 401 (429 and 503 mean: later). While connected, the client
replaces the token in-band, before it expires or when the service says it has::

    → {"type": "auth", "id": "a-3", "token": "<new token>"}
    ← {"type": "auth_ok", "id": "a-3", "expires_in": 3600}
    ← {"type": "error", "id": "a-3", "code": "unauthenticated", "message": "..."}

A request sent once the connection's token has expired (or been revoked) is answered with an
``unauthenticated`` error; streams already running finish. Close code 4401: the token was
revoked and the service hung up.

Requests. Every client message carries an ``id`` unique on its connection; the service's
messages about it carry the same ``id``, interleaved with those of other requests (one socket
carries all of them)::

    → {"type": "chat", "id": "c-1", "model": "corp-large",
       "messages": [{"role": "system" | "user" | "assistant" | "tool", "content": "text",
                     "tool_calls": [{"id": "call_1", "name": "f", "arguments": "{...}"}],
                     "tool_call_id": "call_1"}],
       "tools": [{"name": "f", "description": "...", "parameters": {JSON Schema}}],
       "tool_choice": "auto" | "none" | "required" | {"name": "f"},
       "parallel_tool_calls": true, "max_tokens": 4096, "temperature": 0.2, "top_p": 1,
       "stop": ["..."]}                                      (optional fields left out)
    ← {"type": "delta", "id": "c-1", "text": "Hel"}          (any number)
    ← {"type": "tool_call", "id": "c-1", "index": 0, "call_id": "call_1", "name": "f",
       "arguments": ""}                                       (a tool call starts)
    ← {"type": "tool_call", "id": "c-1", "index": 0, "arguments": "{\\"pa"}   (its arguments)
    ← {"type": "done", "id": "c-1", "finish_reason": "stop" | "length" | "tool_calls" |
       "content_filter", "usage": {"input_tokens": 12, "output_tokens": 5,
       "cached_tokens": 0}}                                   (the end)
    ← {"type": "error", "id": "c-1", "code": "rate_limited", "message": "...",
       "retry_after": 7}                                      (or this end)
    → {"type": "cancel", "id": "c-1"}                         (the client gave up; no answer)
    → {"type": "models", "id": "m-2"}
    ← {"type": "models", "id": "m-2", "models": [{"id": "corp-large"}]}

Error codes → :class:`ProviderError` kinds: ``rate_limited`` and ``overloaded`` (with
``retry_after`` seconds), ``server_error`` → server, ``timeout``, ``unauthenticated`` and
``forbidden`` → auth, ``invalid_request`` → bad_request, ``model_not_found`` → not_found. An
error with ``"id": null`` concerns the connection: every request on it fails with it.

What the adapter does with it: one token for all calls, refreshed a little before it expires
(and sent in-band) and at once after an ``unauthenticated`` answer (the request is then sent
again, once, if nothing of it had arrived); one socket multiplexing every concurrent call,
opened on first use and kept alive by WebSocket pings; a dropped socket fails the calls it
carried (kind ``connection``: the router retries or falls back) and the next call reconnects,
with exponential backoff and jitter between attempts; a call closed early (cancelled, timed
out, the client gone) sends ``cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from .._version import __version__
from ..agent.providers.base import retry_after, within
from .base import (
    Adapter,
    ChatRequest,
    Event,
    Finish,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
    secret,
)
from .oauth2 import ClientCredentials

log = logging.getLogger(__name__)

#: the service's error codes → ProviderError kinds
ERROR_KINDS = {"rate_limited": "rate_limited", "overloaded": "overloaded",
               "server_error": "server", "timeout": "timeout", "unauthenticated": "auth",
               "forbidden": "auth", "invalid_request": "bad_request",
               "model_not_found": "not_found"}
#: close code of a connection whose token was revoked
CLOSE_TOKEN_REVOKED = 4401
#: close code "try again later" (RFC 6455 registry)
CLOSE_TRY_LATER = 1013


@dataclass(frozen=True)
class WsOAuth2Options:
    #: the service's WebSocket URL (``wss://``; ``ws://`` for a local service)
    url: str
    #: the OAuth2 token endpoint
    token_url: str
    client_id: str
    client_secret: str = secret()
    scope: str = ""
    audience: str = ""
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    #: model ids to offer without asking the service
    models: tuple[str, ...] = ()
    #: extra headers on the upgrade request
    headers: Mapping[str, str] = field(default_factory=dict)
    #: a CA bundle for a private PKI (the system's store otherwise)
    ca_file: str = ""
    connect_timeout_s: float = 10.0
    #: attempts to open the socket per call (with backoff between them)
    connect_attempts: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    #: refresh a token this long before it expires (at most a fifth of its lifetime)
    refresh_skew_s: float = 30.0
    ping_interval_s: float = 20.0
    max_message_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("ws", "wss"):
            raise ValueError("option 'url': a ws:// or wss:// URL")
        if urlsplit(self.token_url).scheme not in ("http", "https"):
            raise ValueError("option 'token_url': an http:// or https:// URL")
        if not self.client_secret:
            raise ValueError("option 'client_secret' is empty")
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ValueError(f"option 'ca_file': no file {self.ca_file[:200]!r}")
        if self.connect_attempts < 1 or self.connect_timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("connect_attempts ≥ 1, connect_timeout_s > 0, backoff_s ≥ 0")


class _Dropped:
    """Put in every waiting queue when the socket goes."""

    def __init__(self, code: int | None, why: str) -> None:
        self.code = code
        self.why = why

    def error(self) -> ProviderError:
        if self.code == CLOSE_TRY_LATER:
            return ProviderError("overloaded", "the model service is busy (it closed the "
                                 "connection)")
        if self.why == "malformed":
            return ProviderError("malformed", "the model service sent a malformed message")
        code = f" (code {self.code})" if self.code is not None else ""
        return ProviderError("connection", f"the model service's connection dropped{code}")


class _Link:
    """One open socket, its reader, and the requests waiting for answers on it."""

    def __init__(self, ws: Any, token: str) -> None:
        self.ws = ws
        self.token = token
        self.waiting: dict[str, asyncio.Queue[Any]] = {}
        self.dropped: _Dropped | None = None
        self.auth_lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.dropped is None

    def register(self, rid: str) -> asyncio.Queue[Any]:
        # unbounded: one slow reader must not stall the socket every other call shares; a
        # call's answer is bounded by its max_tokens
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if self.dropped is not None:
            queue.put_nowait(self.dropped)
        self.waiting[rid] = queue
        return queue

    def forget(self, rid: str) -> None:
        self.waiting.pop(rid, None)

    async def send(self, message: Mapping[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        if self.dropped is not None:
            raise self.dropped.error()
        try:
            await self.ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise _Dropped(exc.rcvd.code if exc.rcvd else None, "closed").error() from None

    def drop(self, dropped: _Dropped) -> None:
        if self.dropped is None:
            self.dropped = dropped
            for queue in self.waiting.values():
                queue.put_nowait(dropped)


class WsOAuth2Adapter(Adapter[WsOAuth2Options]):
    """The protocol above; one token, one socket, any number of concurrent calls."""

    Options = WsOAuth2Options
    key_option = "client_secret"

    def __init__(self, options: WsOAuth2Options, *, name: str, timeout_s: float = 60.0) -> None:
        super().__init__(options, name=name, timeout_s=timeout_s)
        self._ssl: ssl.SSLContext | None = (ssl.create_default_context(cafile=options.ca_file)
                                            if options.ca_file else None)
        self.tokens = ClientCredentials(
            options.token_url, options.client_id, options.client_secret, scope=options.scope,
            audience=options.audience, auth_method=options.auth_method,
            timeout_s=min(timeout_s, options.connect_timeout_s),
            refresh_skew_s=options.refresh_skew_s, verify=self._ssl or True)
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        #: sockets opened so far
        self.connects = 0

    @property
    def connected(self) -> bool:
        """Whether a socket to the service is open now."""
        return self._link is not None and self._link.open

    # -- calls ------------------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        body = wire_request(request)
        for attempt in range(2):
            link = await self._ready()
            rid = f"c-{next(self._ids)}"
            queue = link.register(rid)
            ended = False
            try:
                await link.send({"type": "chat", "id": rid, **body})
                calls: dict[int, list[str]] = {}  # index → [call id, name, arguments...]
                produced = False
                while True:
                    message = await queue.get()
                    if isinstance(message, _Dropped):
                        ended = True
                        raise message.error()
                    kind = message.get("type")
                    if kind == "delta":
                        text = str(message.get("text") or "")
                        if text:
                            produced = True
                            yield TextDelta(text)
                    elif kind == "tool_call":
                        produced = True
                        for event in _tool_call_events(calls, message):
                            yield event
                    elif kind == "done":
                        ended = True
                        for index in sorted(calls):
                            call_id, name, *args = calls[index]
                            yield ToolCall(call_id, name, "".join(args))
                        usage = _usage(message.get("usage"))
                        if usage is not None:
                            yield usage
                        yield Finish(str(message.get("finish_reason") or "stop"))
                        return
                    elif kind == "error":
                        ended = True
                        if message.get("code") == "unauthenticated" and not attempt \
                                and not produced:
                            # the token expired or was revoked: a new one, then once more
                            self.tokens.invalidate(link.token)
                            break
                        raise service_error(message)
                    # other types: a newer protocol's; ignored
            finally:
                link.forget(rid)
                if not ended and link.open:
                    self._spawn(link.send({"type": "cancel", "id": rid}))

    async def models(self) -> list[str]:
        if self.options.models:
            return list(self.options.models)
        link = await self._ready()
        rid = f"m-{next(self._ids)}"
        queue = link.register(rid)
        try:
            await link.send({"type": "models", "id": rid})
            reply = await within(queue.get(), self.options.connect_timeout_s)
        finally:
            link.forget(rid)
        if isinstance(reply, _Dropped):
            raise reply.error()
        if reply.get("type") == "error":
            raise service_error(reply)
        out = []
        for item in reply.get("models") or ():
            model = item.get("id") if isinstance(item, dict) else item
            if isinstance(model, str) and model:
                out.append(model)
        return out

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.drop(_Dropped(1000, "closed"))
            with contextlib.suppress(Exception):
                await link.ws.close()
            if link.reader is not None:
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.tokens.aclose()

    # -- the socket -------------------------------------------------------------------------

    async def _ready(self) -> _Link:
        """The open socket (opened if need be) with a token that is not about to expire."""
        link = self._link
        if link is None or not link.open:
            async with self._connecting:
                link = self._link
                if link is None or not link.open:
                    link = self._link = await self._open()
        token = await self.tokens.token()
        if token != link.token:
            async with link.auth_lock:
                token = await self.tokens.token()
                if token != link.token:
                    await self._reauth(link, token)
        return link

    async def _open(self) -> _Link:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        options = self.options
        failures = 0
        refreshed = False
        while True:
            token = await self.tokens.token()
            try:
                ws = await connect(
                    options.url, additional_headers={**options.headers,
                                                     "Authorization": f"Bearer {token}"},
                    open_timeout=options.connect_timeout_s,
                    ping_interval=options.ping_interval_s or None,
                    ping_timeout=options.ping_interval_s or None,
                    max_size=options.max_message_bytes,
                    ssl=self._ssl if options.url.startswith("wss:") and self._ssl else None,
                    user_agent_header=f"jupyter_cloudide/{__version__}")
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401 and not refreshed:
                    self.tokens.invalidate(token)  # expired or revoked early: once more
                    refreshed = True
                    continue
                error = _upgrade_error(status, exc.response.headers)
                if not error.retryable or error.kind == "rate_limited":
                    raise error from None
                failure: Exception = error
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                failure = exc
            else:
                link = _Link(ws, token)
                link.reader = asyncio.ensure_future(self._read(link))
                self.connects += 1
                return link
            failures += 1
            if failures >= options.connect_attempts:
                if isinstance(failure, ProviderError):
                    raise failure from None
                raise ProviderError("connection", "cannot connect to the model service "
                                    f"({type(failure).__name__})") from None
            delay = min(options.max_backoff_s, options.backoff_s * 2 ** (failures - 1))
            log.info("%s: connecting failed (%s); again in %.2f s", self.name,
                     type(failure).__name__, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _reauth(self, link: _Link, token: str) -> None:
        """Replace the socket's token in-band."""
        aid = f"a-{next(self._ids)}"
        queue = link.register(aid)
        try:
            await link.send({"type": "auth", "id": aid, "token": token})
            reply = await within(queue.get(), self.options.connect_timeout_s)
        except asyncio.TimeoutError:
            raise ProviderError("timeout", "the model service did not confirm a new token"
                                ) from None
        finally:
            link.forget(aid)
        if isinstance(reply, _Dropped):
            raise reply.error()
        if reply.get("type") != "auth_ok":
            self.tokens.invalidate(token)
            raise ProviderError("auth", "the model service refused a fresh token")
        link.token = token

    async def _read(self, link: _Link) -> None:
        """Route every message to the request it names, until the socket goes."""
        from websockets.exceptions import ConnectionClosed

        why = "closed"
        try:
            async for raw in link.ws:
                try:
                    message = json.loads(raw)
                    rid = message.get("id")
                except (ValueError, AttributeError):
                    why = "malformed"  # whose answer it was is unknown: all fail, retryably
                    await link.ws.close(1002, "malformed message")
                    break
                if rid is None:
                    if message.get("type") == "error":
                        for queue in list(link.waiting.values()):
                            queue.put_nowait(message)
                    continue
                waiting = link.waiting.get(str(rid))
                if waiting is not None:
                    waiting.put_nowait(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: reading the model service's socket failed", self.name)
        finally:
            code = link.ws.close_code
            if code == CLOSE_TOKEN_REVOKED:
                self.tokens.invalidate(link.token)
            link.drop(_Dropped(code, why))
            if self._link is link:
                self._link = None

    def _spawn(self, coro: Any) -> None:
        async def quietly() -> None:
            with contextlib.suppress(Exception):
                await coro

        task = asyncio.ensure_future(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# -- the wire -----------------------------------------------------------------------------------


def wire_request(request: ChatRequest) -> dict[str, Any]:
    """A ChatRequest → the body of a ``chat`` message (optional fields only when set)."""
    body: dict[str, Any] = {"model": request.model,
                            "messages": wire_messages(request.messages),
                            "max_tokens": request.max_tokens}
    if request.tools:
        body["tools"] = [{"name": t.name, "description": t.description,
                          "parameters": t.parameters} for t in request.tools]
        choice = request.tool_choice
        if isinstance(choice, dict):
            body["tool_choice"] = {"name": str((choice.get("function") or {}).get("name", ""))}
        elif choice is not None:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.stop:
        body["stop"] = list(request.stop)
    return body


def wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages → the protocol's (text content; flat tool calls)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = str(message.get("role") or "user")
        item: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": _text(message.get("content"))}
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = [
                {"id": str(call.get("id") or ""),
                 "name": str((call.get("function") or {}).get("name") or ""),
                 "arguments": str((call.get("function") or {}).get("arguments") or "")}
                for call in message["tool_calls"] if isinstance(call, dict)]
        if role == "tool":
            item["tool_call_id"] = str(message.get("tool_call_id") or "")
        out.append(item)
    return out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: the text ones (this protocol carries no images)
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return str(content)


def _tool_call_events(calls: dict[int, list[str]], message: Mapping[str, Any]
                      ) -> list[Event]:
    try:
        index = int(message.get("index", 0))
    except (TypeError, ValueError):
        raise ProviderError("malformed", "the model service sent a malformed tool call"
                            ) from None
    pieces = str(message.get("arguments") or "")
    events: list[Event] = []
    if index not in calls:
        call_id = str(message.get("call_id") or f"call_{index}")
        name = str(message.get("name") or "")
        if not name:
            raise ProviderError("malformed", "the model service started a tool call "
                                "without a name")
        calls[index] = [call_id, name]
        events.append(ToolCallStarted(call_id, name))
    if pieces:
        calls[index].append(pieces)
        events.append(ToolCallDelta(calls[index][0], pieces))
    return events


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0),
                     int(raw.get("cached_tokens") or 0))
    except (TypeError, ValueError):
        return None


def service_error(message: Mapping[str, Any]) -> ProviderError:
    """An ``error`` message → ProviderError (unknown codes count as server errors)."""
    code = str(message.get("code") or "server_error")
    kind = ERROR_KINDS.get(code, "server")
    text = str(message.get("message") or code)[:500]
    after = message.get("retry_after")
    wait = float(after) if isinstance(after, int | float) and after >= 0 else None
    return ProviderError(kind, text, retry_after_s=wait)


def _upgrade_error(status: int, headers: Any) -> ProviderError:
    """The HTTP status refusing the WebSocket upgrade → ProviderError."""
    after = retry_after(headers)
    message = f"the model service refused the connection ({status})"
    if status == 429:
        return ProviderError("rate_limited", message, status=status, retry_after_s=after)
    if status in (401, 403):
        return ProviderError("auth", message, status=status)
    if status in (502, 503, 504):
        return ProviderError("overloaded", message, status=status, retry_after_s=after)
    if status >= 500:
        return ProviderError("server", message, status=status)
    if status == 404:
        return ProviderError("not_found", message, status=status)
    return ProviderError("bad_request", message, status=status)
