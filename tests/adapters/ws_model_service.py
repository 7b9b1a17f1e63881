"""A WebSocket model service with an OAuth2 token endpoint, on loopback, speaking the protocol
of :mod:`jupyter_cloudide.adapters.ws_oauth2` (its module docstring is the specification).

It stands for the corporate gateway the reference adapter is written for, so it sits on the far
side of real sockets (a tornado HTTP server and WebSocket handler in a thread with its own
event loop, as ``fake_upstream.FakeUpstream``), and the adapter's real ``httpx`` token fetch and
``websockets`` client run against it. Answers are scripted with ``fake_upstream.Turn``, the one
vocabulary of the suite's fakes: text, tool calls, usage, pacing (``first_token_delay``,
``delay_between_chunks``) and faults, rendered in this protocol:

* ``status`` → an ``error`` message instead of an answer: 429 ``rate_limited`` (with
  ``retry_after``), 503/529 ``overloaded``, 500 ``server_error``, 504 ``timeout``, 401
  ``unauthenticated``, 403 ``forbidden``, 400 ``invalid_request``, 404 ``model_not_found``;
* ``reset_after=N`` → after N messages of the answer the TCP connection is reset (every call
  on the socket loses it); ``error_after=N`` → a ``server_error`` after N messages;
  ``malformed_after=N`` → a message that is not JSON; ``truncate_after=N`` → silence.

Service-side faults: :meth:`expire_tokens` (every issued token expires now: the next request
on an open socket is ``unauthenticated``), :meth:`drop_connections`, ``token_faults`` (statuses
the token endpoint answers first), ``upgrade_faults`` (statuses refusing the next upgrades), a
``token_ttl_s`` as short as a test likes, and wrong client credentials (401 ``invalid_client``).
What happened is recorded: ``token_requests``, ``connections``, ``requests`` (chat messages,
with their connection and token), ``sent`` (every message out, in order: the interleaving of
concurrent answers), ``cancelled``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_plus

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from fake_upstream import Turn

__all__ = ["WsModelService", "corp_provider"]

CLIENT_ID = "cloudide"
CLIENT_SECRET = "client-s3cret-Zq9"
MODELS = ("corp-large", "corp-small")
_ERROR_CODES = {429: "rate_limited", 503: "overloaded", 529: "overloaded",
                500: "server_error", 504: "timeout", 401: "unauthenticated",
                403: "forbidden", 400: "invalid_request", 404: "model_not_found"}


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]


class WsModelService:
    """The service; a context manager (``with WsModelService() as service: ...``)."""

    def __init__(self, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 token_ttl_s: float = 3600.0, models: Sequence[str] = MODELS,
                 scopes: Sequence[str] = ("models.invoke",)) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.models = list(models)
        self.scopes = set(scopes)
        self.tokens: dict[str, float] = {}  # token → expiry (time.monotonic)
        self.token_requests: list[dict[str, Any]] = []
        self.token_faults: collections.deque[int] = collections.deque()
        self.upgrade_faults: collections.deque[int] = collections.deque()
        self.upgrades_refused: list[int] = []
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.auths: list[dict[str, Any]] = []
        self.sent: list[tuple[int, str | None, str]] = []
        self.cancelled: list[str] = []
        self._scripts: dict[str | None, collections.deque[Turn]] = {}
        self._lock = threading.Lock()
        self._handlers: set[_StreamHandler] = set()
        self._counter = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self.port = 0

    # -- scripting --------------------------------------------------------------------------

    def script(self, *turns: Turn, model: str | None = None) -> None:
        """Queue answers (FIFO); with ``model``, only for requests of that model."""
        with self._lock:
            self._scripts.setdefault(model, collections.deque()).extend(turns)

    def next_turn(self, model: str | None) -> Turn:
        with self._lock:
            for key in (model, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return Turn(text="ok")

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as if revoked)."""
        now = time.monotonic()
        for token in list(self.tokens):
            self.tokens[token] = now

    def drop_connections(self) -> None:
        """Reset every open socket (TCP RST), as a crashing gateway would."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: [h.abort() for h in list(self._handlers)])

    def token_valid(self, token: str | None) -> bool:
        return token is not None and self.tokens.get(token, 0.0) > time.monotonic()

    def issue_token(self) -> str:
        token = f"tok-{next(self._counter)}-{uuid.uuid4().hex[:12]}"
        self.tokens[token] = time.monotonic() + self.token_ttl_s
        return token

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        """Block until ``predicate()`` (for sync tests: it stops the calling loop)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the service did not get there in time")
            time.sleep(0.01)

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Wait until ``predicate()``, letting the calling loop run meanwhile."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the service did not get there in time")
            await asyncio.sleep(0.01)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/token"

    def options(self, **overrides: Any) -> dict[str, Any]:
        """Adapter options for this service (quick backoff for tests)."""
        return {"url": self.url, "token_url": self.token_url, "client_id": self.client_id,
                "client_secret": self.client_secret, "scope": "models.invoke",
                "backoff_s": 0.05, "connect_timeout_s": 5.0, **overrides}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> WsModelService:
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self._ready.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(sockets)),
                                        name=f"ws-model-service-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("WsModelService did not start")
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> WsModelService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, sockets: list[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = tornado.web.Application([
            (r"/oauth2/token", _TokenHandler, {"service": self}),
            (r"/v1/stream", _StreamHandler, {"service": self}),
        ], log_function=lambda handler: None)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        self._ready.set()
        await self._stopping.wait()
        server.stop()
        for handler in list(self._handlers):
            handler.abort()
        await server.close_all_connections()


class _TokenHandler(tornado.web.RequestHandler):
    """``POST /oauth2/token``: the client credentials grant (RFC 6749 §4.4)."""

    def initialize(self, service: WsModelService) -> None:
        self.service = service

    def check_xsrf_cookie(self) -> None:
        pass

    def post(self) -> None:
        service = self.service
        form = {k: self.get_body_argument(k) for k in self.request.body_arguments}
        client_id, secret, method = form.get("client_id"), form.get("client_secret"), "post"
        header = self.request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(header[6:]).decode()
                user, _, password = decoded.partition(":")
                client_id, secret, method = unquote_plus(user), unquote_plus(password), "basic"
        service.token_requests.append({"form": {k: v for k, v in form.items()
                                                if k != "client_secret"},
                                       "client_id": client_id, "method": method})
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        if service.token_faults:
            status = service.token_faults.popleft()
            self.set_status(status)
            if status == 429:
                self.set_header("Retry-After", "3")
            self.finish(json.dumps({"error": "temporarily_unavailable"}))
            return
        if form.get("grant_type") != "client_credentials":
            self.set_status(400)
            self.finish(json.dumps({"error": "unsupported_grant_type"}))
            return
        if client_id != service.client_id or secret != service.client_secret:
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="token"')
            self.finish(json.dumps({"error": "invalid_client",
                                    "error_description": "unknown client or bad secret"}))
            return
        scopes = set(form.get("scope", "").split())
        if scopes - service.scopes:
            self.set_status(400)
            self.finish(json.dumps({"error": "invalid_scope"}))
            return
        self.finish(json.dumps({"access_token": service.issue_token(), "token_type": "Bearer",
                                "expires_in": service.token_ttl_s,
                                "scope": " ".join(sorted(scopes))}))


class _StreamHandler(tornado.websocket.WebSocketHandler):
    """``WS /v1/stream``: bearer token on the upgrade; then the multiplexed protocol."""

    def initialize(self, service: WsModelService) -> None:
        self.service = service
        self.token: str | None = None
        self.number = 0
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def get(self, *args: Any, **kwargs: Any) -> None:
        service = self.service
        if service.upgrade_faults:
            status = service.upgrade_faults.popleft()
            service.upgrades_refused.append(status)
            self.set_status(status)
            if status in (429, 503):
                self.set_header("Retry-After", "2")
            self.finish()
            return
        header = self.request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        if not service.token_valid(token):
            service.upgrades_refused.append(401)
            self.set_status(401)
            self.finish()
            return
        self.token = token
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.service.connections += 1
        self.number = self.service.connections
        self.service._handlers.add(self)

    def on_close(self) -> None:
        self.service._handlers.discard(self)
        for task in self.tasks.values():
            task.cancel()

    def abort(self) -> None:
        """Reset the TCP connection (SO_LINGER 0: close() sends RST)."""
        connection = self.ws_connection
        stream = getattr(connection, "stream", None)
        if stream is not None and not stream.closed():
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
            stream.close()
        self.on_close()

    async def send(self, message: dict[str, Any]) -> bool:
        self.service.sent.append((self.number, message.get("id"), str(message.get("type"))))
        try:
            await self.write_message(json.dumps(message))
        except tornado.websocket.WebSocketClosedError:
            return False
        return True

    def on_message(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            rid, kind = str(message["id"]), message["type"]
        except (ValueError, KeyError, TypeError):
            self.spawn(None, self.send({"type": "error", "id": None,
                                        "code": "invalid_request",
                                        "message": "not a protocol message"}))
            return
        if kind == "cancel":
            self.service.cancelled.append(rid)
            task = self.tasks.pop(rid, None)
            if task is not None:
                task.cancel()
            return
        handler = {"chat": self.chat, "models": self.list_models, "auth": self.auth}.get(kind)
        if handler is None:
            self.spawn(None, self.send({"type": "error", "id": rid,
                                        "code": "invalid_request",
                                        "message": f"unknown type {kind!r}"}))
            return
        self.spawn(rid, handler(rid, message))

    def spawn(self, rid: str | None, work: Any) -> None:
        task = asyncio.ensure_future(work)
        key = rid if rid is not None else f"_{id(task)}"
        self.tasks[key] = task
        task.add_done_callback(lambda _: self.tasks.pop(key, None))

    async def auth(self, rid: str, message: dict[str, Any]) -> None:
        token = message.get("token")
        self.service.auths.append({"connection": self.number, "token": token})
        if not self.service.token_valid(token):
            await self.send({"type": "error", "id": rid, "code": "unauthenticated",
                             "message": "invalid token"})
            return
        self.token = token
        await self.send({"type": "auth_ok", "id": rid, "expires_in": self.service.token_ttl_s})

    async def list_models(self, rid: str, message: dict[str, Any]) -> None:
        if not self.service.token_valid(self.token):
            await self.send({"type": "error", "id": rid, "code": "unauthenticated",
                             "message": "token expired"})
            return
        await self.send({"type": "models", "id": rid,
                         "models": [{"id": m} for m in self.service.models]})

    async def chat(self, rid: str, message: dict[str, Any]) -> None:
        service = self.service
        record = {"id": rid, "connection": self.number, "token": self.token,
                  "body": message, "model": message.get("model")}
        service.requests.append(record)
        if not service.token_valid(self.token):
            await self.send({"type": "error", "id": rid, "code": "unauthenticated",
                             "message": "token expired"})
            return
        messages = message.get("messages")
        if not isinstance(message.get("model"), str) or not isinstance(messages, list) or \
                not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                        for m in messages):
            await self.send({"type": "error", "id": rid, "code": "invalid_request",
                             "message": "model and messages (text content) are required"})
            return
        turn = service.next_turn(message["model"])
        record["turn"] = turn
        await asyncio.sleep(turn.first_token_delay)
        if turn.status is not None:
            error: dict[str, Any] = {"type": "error", "id": rid,
                                     "code": turn.error_type or _ERROR_CODES.get(
                                         turn.status, "server_error"),
                                     "message": turn.error_message or f"error {turn.status}"}
            if turn.retry_after is not None:
                error["retry_after"] = turn.retry_after
            await self.send(error)
            return
        answer = list(self.answer(rid, turn, messages))
        for index, item in enumerate(answer):
            if index == turn.reset_after:
                self.abort()
                return
            if index == turn.error_after:
                await self.send({"type": "error", "id": rid, "code": "server_error",
                                 "message": turn.error_message or "the model crashed"})
                return
            if index == turn.malformed_after:
                service.sent.append((self.number, rid, "malformed"))
                await self.write_message("{not json")
                return
            if index == turn.truncate_after:
                return
            if index:
                await asyncio.sleep(turn.delay_between_chunks)
            if not await self.send(item):
                return

    @staticmethod
    def answer(rid: str, turn: Turn, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"type": "delta", "id": rid, "text": piece}
                                     for piece in _pieces(turn.text, turn.chunk_size)]
        for index, call in enumerate(turn.tool_calls):
            out.append({"type": "tool_call", "id": rid, "index": index,
                        "call_id": call.id or f"call_{uuid.uuid4().hex[:8]}",
                        "name": call.name, "arguments": ""})
            out.extend({"type": "tool_call", "id": rid, "index": index, "arguments": piece}
                       for piece in _pieces(call.arguments_json(), turn.chunk_size))
        done: dict[str, Any] = {"type": "done", "id": rid,
                                "finish_reason": turn.openai_finish_reason()}
        if turn.report_usage:
            prompt, completion = turn.token_usage(messages)
            done["usage"] = {"input_tokens": prompt, "output_tokens": completion,
                             "cached_tokens": turn.cached_tokens}
        out.append(done)
        return out


def corp_provider(service: WsModelService, *, env: dict[str, str] | None = None,
                  secrets: dict[str, str] | None = None, timeout_s: float = 10.0,
                  **options: Any) -> Any:
    """The provider the server builds for ``{"name": "corp", "kind": "adapter", "adapter":
    "ws-oauth2", "options": ...}`` pointed at ``service`` (through the entry point)."""
    from jupyter_cloudide.agent.models import build_providers, provider_configs

    configs = provider_configs([{"name": "corp", "kind": "adapter", "adapter": "ws-oauth2",
                                 "options": service.options(**options)}],
                               env or {}, secrets or {})
    return build_providers(configs, timeout_s=timeout_s)["corp"]
