"""A fake LLM provider on loopback speaking the exact OpenAI and Anthropic wire formats.

Why this exists: the LLM provider is the only thing our test suite is allowed to fake, and the
fake must sit on the far side of a real socket so that the real ``openai`` and ``anthropic``
SDKs (and our own server, which calls them) run their actual HTTP, SSE-decoding, retry and
error-mapping code. Mocking the SDKs would test our assumptions about them, not them.

Design:

* A tornado application served from its **own thread with its own event loop**, so sync
  clients (which block the calling thread), async clients and a Jupyter server running on
  pytest-jupyter's loop can all call it without deadlocking each other.
* Responses are scripted as format-neutral :class:`Turn` objects. The same ``Turn`` is rendered
  as OpenAI Chat Completions (``/v1/chat/completions``) or Anthropic Messages
  (``/v1/messages``), streaming or not, depending on the request. Unscripted requests get a short
  text reply (``"ok"``), so simple tests need no script.
* A ``Turn`` can also describe a *fault* (error status before the stream, slow first token,
  malformed event, TCP reset, mid-stream error event) so that error handling is exercised with
  the bytes a real provider would send.
* Every request is recorded (``FakeUpstream.requests``) for assertions on what was sent.

Counting convention for the ``*_after`` faults: an *event* is one JSON data event of the stream
(an OpenAI chunk, or an Anthropic named event other than ``ping``). Keep-alive comments/pings,
``[DONE]`` and the fault itself are not counted. ``N`` equal to the number of events means "after
the last event, instead of the normal ending" (OpenAI: instead of ``[DONE]``).

Usage convention: ``Turn.usage[0]`` is the *total* prompt size. OpenAI reports it as
``prompt_tokens`` (which includes ``cached_tokens``); Anthropic reports the uncached part as
``input_tokens`` (= total - cached) and the cached part as ``cache_read_input_tokens``, exactly
as the two real APIs count.
"""

from __future__ import annotations

import array
import asyncio
import base64
import collections
import contextlib
import json
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import tornado.http1connection
import tornado.httpserver
import tornado.netutil
import tornado.web
from fake_openai import fake_vector
from tornado.iostream import StreamClosedError

__all__ = ["FakeUpstream", "ToolCall", "Turn"]

DEFAULT_API_KEY = "sk-fake-upstream-key"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5")

# finish reasons: the OpenAI vocabulary is canonical in a Turn; either vocabulary is accepted.
_TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal", "function_call": "tool_use"}
_TO_OPENAI = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls",
              "stop_sequence": "stop", "refusal": "content_filter", "pause_turn": "stop"}

# (OpenAI error type, OpenAI error code, Anthropic error type) per HTTP status.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    403: ("permission_error", None, "permission_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    413: ("invalid_request_error", None, "request_too_large"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error"),
    500: ("server_error", None, "api_error"),
    503: ("server_error", None, "api_error"),
    529: ("server_error", None, "overloaded_error"),
}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class ToolCall:
    """One tool call of an assistant turn.

    ``arguments`` is a dict (serialised to JSON) or a raw string sent verbatim, which may be
    invalid JSON on purpose. ``id`` defaults to a fresh ``call_...`` / ``toolu_...`` id.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)

    def arguments_object(self) -> Any:
        """The parsed arguments; the raw string when it is not valid JSON (Anthropic ``input``)."""
        if not isinstance(self.arguments, str):
            return self.arguments
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass
class Turn:
    """One scripted response, independent of the wire format it will be served in."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    chunk_size: int = 8
    usage: tuple[int, int] | None = None  # (prompt, completion); None: ~len/4 of request/reply
    cached_tokens: int = 0
    finish_reason: str | None = None  # OpenAI or Anthropic vocabulary; None: derived
    # faults
    status: int | None = None  # error status returned before any streaming
    retry_after: float | None = None  # `retry-after` header (on any response)
    first_token_delay: float = 0.0  # headers go out at once; the first event waits
    delay_between_chunks: float = 0.0
    malformed_after: int | None = None  # after N events: `data: {not json`, then end
    reset_after: int | None = None  # after N events: abort the TCP connection (RST)
    error_after: int | None = None  # after N events: the format's mid-stream error, then end
    keepalive_comments: int = 0  # OpenAI `: keep-alive` / Anthropic `event: ping`, before 1st
    truncate_after: int | None = None  # after N events: end the body cleanly, no [DONE] etc.
    # extras
    error_message: str | None = None  # message of the error body (status / error_after)
    error_type: str | None = None  # overrides the error body's `type`
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers
    #: False: no usage chunk even when asked (as some OpenAI-compatible servers do)
    report_usage: bool = True

    def openai_finish_reason(self) -> str:
        if self.finish_reason is None:
            return "tool_calls" if self.tool_calls else "stop"
        return _TO_OPENAI.get(self.finish_reason, self.finish_reason)

    def anthropic_stop_reason(self) -> str:
        if self.finish_reason is None:
            return "tool_use" if self.tool_calls else "end_turn"
        return _TO_ANTHROPIC.get(self.finish_reason, self.finish_reason)

    def token_usage(self, request_body: Any) -> tuple[int, int]:
        if self.usage is not None:
            return self.usage
        prompt = len(_dumps(request_body)) // 4 if request_body is not None else 0
        reply = len(self.text) + sum(len(c.name) + len(c.arguments_json())
                                     for c in self.tool_calls)
        return max(1, prompt), max(1, reply // 4)


class FakeUpstream:
    """The fake provider; a context manager (``with FakeUpstream() as up: ...``).

    ``url`` is ``http://127.0.0.1:<port>`` (no ``/v1``); ``openai_base_url`` adds ``/v1``;
    ``anthropic_base_url`` is ``url``. Each entry of ``requests`` is a dict with ``path``,
    ``method``, ``headers`` (lower-case names), ``body`` (parsed JSON or None), ``model`` and
    ``disconnected`` (True once the client went away before the response ended).
    """

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, models: Sequence[str] = DEFAULT_MODELS,
                 embedding_dim: int = 64) -> None:
        self.api_key = api_key
        self.models: list[str] = list(models)
        self.embedding_dim = embedding_dim
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._scripts: dict[str | None, collections.deque[Turn]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.port = 0

    # -- scripting -------------------------------------------------------------------------

    def script(self, *turns: Turn, model: str | None = None) -> None:
        """Queue responses (FIFO). With ``model``, only requests for that model take them
        (and take them before the unrestricted queue)."""
        with self._lock:
            self._scripts.setdefault(model, collections.deque()).extend(turns)

    def clear(self) -> None:
        """Forget scripted turns and recorded requests."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def pending(self) -> int:
        """How many scripted turns are still queued (all models)."""
        with self._lock:
            return sum(len(queue) for queue in self._scripts.values())

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` requests were recorded (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests seen, wanted {count}")
            time.sleep(0.01)
        return self.requests

    def _next_turn(self, model: str | None) -> Turn:
        with self._lock:
            for key in (model, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return Turn(text="ok")

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeUpstream is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        self._ready.clear()
        self._startup_error = None
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sockets,),
                                        name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._startup_error is not None:
            for sock in sockets:
                sock.close()
            raise RuntimeError("FakeUpstream did not start") from self._startup_error
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("FakeUpstream thread did not stop")
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, sockets: list[socket.socket]) -> None:
        try:
            asyncio.run(self._serve(sockets))
        except BaseException as err:  # surfaced by start(); never an unhandled thread error
            self._startup_error = err
            self._ready.set()

    async def _serve(self, sockets: list[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = tornado.web.Application(
            [
                (r"/v1/chat/completions", _ChatCompletionsHandler, {"fake": self}),
                (r"/v1/completions", _CompletionsHandler, {"fake": self}),
                (r"/v1/messages", _MessagesHandler, {"fake": self}),
                (r"/v1/models", _ModelsHandler, {"fake": self}),
                (r"/v1/embeddings", _EmbeddingsHandler, {"fake": self}),
                (r".*", _NotFoundHandler, {"fake": self}),
            ],
            log_function=lambda handler: None,
        )
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        self._ready.set()
        await self._stopping.wait()
        server.stop()  # closes the listening socket
        await server.close_all_connections()
        # Handlers wake up on `_stopping`; let them return instead of being cancelled.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


# -- handlers ------------------------------------------------------------------------------


class _Handler(tornado.web.RequestHandler):
    """Shared request plumbing: recording, auth, pacing, SSE writing, faults."""

    fake: FakeUpstream
    anthropic = False

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.record: dict[str, Any] = {}
        self.body: Any = None
        self.gone = asyncio.Event()
        self.aborted = False

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        if self.anthropic:
            self.set_header("request-id", _new_id("req_"))
        else:
            self.set_header("x-request-id", _new_id("req_"))

    def prepare(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.fake._tasks.add(task)
            task.add_done_callback(self.fake._tasks.discard)
        try:
            self.body = json.loads(self.request.body) if self.request.body else None
        except ValueError:
            self.body = None
        self.record = {
            "path": self.request.path,
            "method": self.request.method,
            "headers": {k.lower(): v for k, v in self.request.headers.get_all()},
            "body": self.body,
            "model": self.body.get("model") if isinstance(self.body, dict) else None,
            "disconnected": False,
        }
        self.fake.requests.append(self.record)

    def on_connection_close(self) -> None:
        if not self._finished and not self.aborted:
            self.record["disconnected"] = True
        self.gone.set()

    def closed(self) -> bool:
        stopping = self.fake._stopping
        return self.gone.is_set() or (stopping is not None and stopping.is_set())

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once if the client goes away or the server stops."""
        if seconds <= 0:
            return
        stopping = self.fake._stopping
        waiters = [asyncio.ensure_future(self.gone.wait())]
        if stopping is not None:
            waiters.append(asyncio.ensure_future(stopping.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    # -- auth and errors -------------------------------------------------------------------

    def authorized(self) -> bool:
        expected = self.fake.api_key
        if self.request.headers.get("Authorization") == f"Bearer {expected}":
            return True
        return self.anthropic and self.request.headers.get("x-api-key") == expected

    def error_body(self, status: int, message: str | None = None,
                   error_type: str | None = None) -> dict[str, Any]:
        openai_type, code, anthropic_type = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None,
                     "api_error" if status >= 500 else "invalid_request_error"))
        message = message or {401: "Incorrect API key provided", 429: "Rate limit reached",
                              529: "Overloaded"}.get(status, f"Fake upstream error {status}")
        if self.anthropic:
            return {"type": "error", "error": {"type": error_type or anthropic_type,
                                               "message": message}}
        return {"error": {"message": message, "type": error_type or openai_type,
                          "param": None, "code": code}}

    def send_error_json(self, status: int, turn: Turn | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if turn is not None:
            self.add_turn_headers(turn)
        message = turn.error_message if turn else None
        error_type = turn.error_type if turn else None
        self.finish(_dumps(self.error_body(status, message, error_type)))

    def add_turn_headers(self, turn: Turn) -> None:
        if turn.retry_after is not None:
            delay = turn.retry_after
            self.set_header("retry-after", str(int(delay)) if delay == int(delay) else str(delay))
        for name, value in turn.headers.items():
            self.set_header(name, value)

    def send_json(self, obj: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(_dumps(obj))

    def abort_connection(self) -> None:
        """Reset the TCP connection: SO_LINGER 0 makes close() send RST, not FIN."""
        self.aborted = True
        connection = cast(tornado.http1connection.HTTP1Connection, self.request.connection)
        stream = connection.stream
        if not stream.closed():
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
            stream.close()
        self.gone.set()

    # -- streaming -------------------------------------------------------------------------

    async def emit(self, data: str) -> bool:
        """Write and flush one SSE frame; False when the client is gone."""
        if self.closed():
            return False
        self.write(data.encode())
        try:
            await self.flush()
        except StreamClosedError:
            self.gone.set()
            return False
        return True

    async def stream(self, turn: Turn, events: list[str], keepalive: str,
                     malformed: str, error: str, ending: str | None) -> None:
        """Serve ``events`` (complete SSE frames) paced and faulted as ``turn`` says."""
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Connection", "keep-alive")
        self.add_turn_headers(turn)
        try:
            await self.flush()  # headers now, whatever the first-token delay
        except StreamClosedError:
            return
        # keep-alives are spread over the first-token wait, as a real server would send them
        slices = turn.keepalive_comments + 1
        for _ in range(turn.keepalive_comments):
            await self.sleep(turn.first_token_delay / slices)
            if not await self.emit(keepalive):
                return
        await self.sleep(turn.first_token_delay / slices)
        for index in range(len(events) + 1):
            if self.closed():
                return
            if index == turn.reset_after:
                self.abort_connection()
                return
            if index == turn.malformed_after:
                await self.emit(malformed)
                break
            if index == turn.error_after:
                await self.emit(error)
                break
            if index == turn.truncate_after:
                break
            if index == len(events):
                if ending is not None:
                    await self.emit(ending)
                break
            if index > 0:
                await self.sleep(turn.delay_between_chunks)
            if not await self.emit(events[index]):
                return
        if not self.closed():
            self.finish()

    async def reply_plain(self, turn: Turn, render: Callable[[], Any]) -> None:
        """A non-streaming reply with the same faults, where they make sense."""
        await self.sleep(turn.first_token_delay)
        if self.closed():
            return
        if turn.reset_after is not None:
            self.abort_connection()
            return
        if turn.error_after is not None:
            self.send_error_json(529 if self.anthropic else 500, turn)
            return
        self.add_turn_headers(turn)
        if turn.malformed_after is not None:
            self.set_header("Content-Type", "application/json")
            self.finish("{not json")
            return
        self.send_json(render())

    async def handle_turn(self) -> None:
        if not self.authorized():
            self.send_error_json(401)
            return
        if not isinstance(self.body, dict):
            self.send_error_json(400)
            return
        turn = self.fake._next_turn(self.body.get("model"))
        self.record["turn"] = turn
        if turn.status is not None:
            await self.sleep(turn.first_token_delay)
            self.send_error_json(turn.status, turn)
            return
        await self.serve(turn, self.body)

    async def serve(self, turn: Turn, body: dict[str, Any]) -> None:
        raise NotImplementedError


class _ChatCompletionsHandler(_Handler):
    async def post(self) -> None:
        await self.handle_turn()

    async def serve(self, turn: Turn, body: dict[str, Any]) -> None:
        model = str(body.get("model", ""))
        prompt, completion = turn.token_usage(body.get("messages"))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": turn.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }
        call_ids = [call.id or _new_id("call_") for call in turn.tool_calls]
        if not body.get("stream"):
            await self.reply_plain(turn, lambda: self.completion(turn, model, usage, call_ids))
            return
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) and turn.report_usage
        events = [f"data: {_dumps(chunk)}\n\n"
                  for chunk in self.chunks(turn, model, usage, call_ids, include_usage)]
        error = {"error": self.error_body(500, turn.error_message, turn.error_type)["error"]}
        await self.stream(turn, events, keepalive=": keep-alive\n\n",
                          malformed="data: {not json\n\n", error=f"data: {_dumps(error)}\n\n",
                          ending="data: [DONE]\n\n")

    @staticmethod
    def completion(turn: Turn, model: str, usage: dict[str, Any],
                   call_ids: list[str]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text or None,
                                   "refusal": None, "annotations": []}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments_json()}}
                for call, call_id in zip(turn.tool_calls, call_ids, strict=True)]
        return {
            "id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": turn.openai_finish_reason()}],
            "usage": usage,
        }

    @staticmethod
    def chunks(turn: Turn, model: str, usage: dict[str, Any], call_ids: list[str],
               include_usage: bool) -> Iterator[dict[str, Any]]:
        base = {"id": _new_id("chatcmpl-"), "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish_reason}]}
            if include_usage:
                out["usage"] = None
            return out

        yield chunk({"role": "assistant", "content": "" if turn.text else None,
                     "refusal": None})
        for piece in _pieces(turn.text, turn.chunk_size):
            yield chunk({"content": piece})
        for index, (call, call_id) in enumerate(zip(turn.tool_calls, call_ids, strict=True)):
            yield chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                         "function": {"name": call.name, "arguments": ""}}]})
            for piece in _pieces(call.arguments_json(), turn.chunk_size):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, turn.openai_finish_reason())
        if include_usage:
            yield {**base, "choices": [], "usage": usage}


class _CompletionsHandler(_Handler):
    """The legacy Completions API (``prompt`` + ``suffix``): what FIM code models serve
    (vLLM, llama.cpp, Ollama, Codestral). Streams ``text_completion`` chunks."""

    async def post(self) -> None:
        await self.handle_turn()

    async def serve(self, turn: Turn, body: dict[str, Any]) -> None:
        model = str(body.get("model", ""))
        prompt, completion = turn.token_usage({"prompt": body.get("prompt"),
                                               "suffix": body.get("suffix")})
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        base = {"id": _new_id("cmpl-"), "object": "text_completion",
                "created": int(time.time()), "model": model}
        finish = turn.openai_finish_reason()

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None,
                    "finish_reason": finish_reason}

        if not body.get("stream"):
            await self.reply_plain(turn, lambda: {**base, "choices": [choice(turn.text, finish)],
                                                  "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) \
            and turn.report_usage
        chunks = [{**base, "choices": [choice(piece, None)]}
                  for piece in _pieces(turn.text, turn.chunk_size)]
        chunks.append({**base, "choices": [choice("", finish)]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        error = {"error": self.error_body(500, turn.error_message, turn.error_type)["error"]}
        await self.stream(turn, [f"data: {_dumps(c)}\n\n" for c in chunks],
                          keepalive=": keep-alive\n\n", malformed="data: {not json\n\n",
                          error=f"data: {_dumps(error)}\n\n", ending="data: [DONE]\n\n")


class _MessagesHandler(_Handler):
    anthropic = True

    async def post(self) -> None:
        await self.handle_turn()

    async def serve(self, turn: Turn, body: dict[str, Any]) -> None:
        model = str(body.get("model", ""))
        prompt_body = {key: body.get(key) for key in ("system", "messages", "tools")}
        prompt, completion = turn.token_usage(prompt_body)
        usage = {
            "input_tokens": max(0, prompt - turn.cached_tokens),
            "output_tokens": completion,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": turn.cached_tokens,
        }
        call_ids = [call.id or _new_id("toolu_") for call in turn.tool_calls]
        message_id = _new_id("msg_")
        if not body.get("stream"):
            await self.reply_plain(turn, lambda: self.message(turn, model, usage, call_ids,
                                                              message_id))
            return
        events = [f"event: {event['type']}\ndata: {_dumps(event)}\n\n"
                  for event in self.events(turn, model, usage, call_ids, message_id)]
        error = self.error_body(529, turn.error_message, turn.error_type)
        await self.stream(turn, events, keepalive='event: ping\ndata: {"type":"ping"}\n\n',
                          malformed="event: content_block_delta\ndata: {not json\n\n",
                          error=f"event: error\ndata: {_dumps(error)}\n\n", ending=None)

    @staticmethod
    def blocks(turn: Turn, call_ids: list[str]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        for call, call_id in zip(turn.tool_calls, call_ids, strict=True):
            blocks.append({"type": "tool_use", "id": call_id, "name": call.name,
                           "input": call.arguments_object()})
        return blocks

    def message(self, turn: Turn, model: str, usage: dict[str, Any], call_ids: list[str],
                message_id: str) -> dict[str, Any]:
        return {"id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": self.blocks(turn, call_ids), "stop_reason": turn.anthropic_stop_reason(),
                "stop_sequence": None, "usage": usage}

    def events(self, turn: Turn, model: str, usage: dict[str, Any], call_ids: list[str],
               message_id: str) -> Iterator[dict[str, Any]]:
        start: dict[str, Any] = {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1}}
        yield {"type": "message_start", "message": start}
        index = 0
        if turn.text:
            yield {"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}}
            for piece in _pieces(turn.text, turn.chunk_size):
                yield {"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": piece}}
            yield {"type": "content_block_stop", "index": index}
            index += 1
        for call, call_id in zip(turn.tool_calls, call_ids, strict=True):
            yield {"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": call_id, "name": call.name,
                                     "input": {}}}
            for piece in _pieces(call.arguments_json(), turn.chunk_size):
                yield {"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": piece}}
            yield {"type": "content_block_stop", "index": index}
            index += 1
        yield {"type": "message_delta",
               "delta": {"stop_reason": turn.anthropic_stop_reason(), "stop_sequence": None},
               "usage": usage}  # cumulative, as the API sends it
        yield {"type": "message_stop"}


class _ModelsHandler(_Handler):
    def get(self) -> None:
        if not self.authorized():
            self.send_error_json(401)
            return
        self.send_json({"object": "list", "data": [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}
            for name in self.fake.models]})


class _EmbeddingsHandler(_Handler):
    def post(self) -> None:
        if not self.authorized():
            self.send_error_json(401)
            return
        if not isinstance(self.body, dict) or "input" not in self.body:
            self.send_error_json(400)
            return
        raw = self.body["input"]
        inputs = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(text, str) for text in inputs):
            self.send_error_json(400)  # token-array inputs are not supported here
            return
        dim = int(self.body.get("dimensions") or self.fake.embedding_dim)
        tokens = sum(len(text.split()) for text in inputs)
        self.send_json({
            "object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": self.encode(fake_vector(text, dim), self.body)}
                     for i, text in enumerate(inputs)],
            "model": self.body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })


    @staticmethod
    def encode(vector: list[float], body: dict[str, Any]) -> list[float] | str:
        """The openai SDK asks for ``base64`` (little-endian float32) unless told otherwise."""
        if body.get("encoding_format") == "base64":
            floats = array.array("f", vector)
            if sys.byteorder == "big":
                floats.byteswap()
            return base64.b64encode(floats.tobytes()).decode()
        return vector


class _NotFoundHandler(_Handler):
    def prepare(self) -> None:
        super().prepare()
        self.anthropic = self.request.path.startswith("/v1/messages")
        self.send_error_json(404)


def agent_config(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """CloudIDEApp settings making ``upstream`` the only model provider, as
    OPENAI_BASE_URL/OPENAI_API_KEY would (the script queue is cleared), with no index."""
    upstream.clear()
    return {"providers": [{"name": "openai", "kind": "openai",
                           "base_url": upstream.openai_base_url, "api_key": upstream.api_key}],
            "default_model": "gpt-4o-mini", "index_enabled": False, **extra}
