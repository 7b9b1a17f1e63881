"""The session channel, without the socket: sessions, sequence numbers, replay, request kinds.

A *session* belongs to one user and outlives any one WebSocket connection: every frame the
server sends gets the next ``seq`` and is kept in a bounded replay buffer, so a page reload
re-attaches to the same session and replays what it missed. A *connection* is only a sink
for frames (the tornado handler implements :class:`FrameSink`). Later layers add request
kinds to a :class:`RequestRegistry` without touching this module.

No tornado here: the WebSocket handler translates, this module decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import (
    CloudIDEError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    RateLimitedError,
)
from . import spec

log = logging.getLogger(__name__)

#: Close codes sent to clients (4000-4999 are for applications).
CLOSE_SLOW_READER = 4008
CLOSE_TAKEN_OVER = 4009
CLOSE_SESSION_EXPIRED = 4010

JsonDict = dict[str, Any]
Authorize = Callable[[str, str], Awaitable[bool]]


class FrameSink(Protocol):
    """Where a session's frames go while a connection is attached (the WS handler)."""

    def send_text(self, text: str) -> bool:
        """Queue one frame; False when the sink's bounded queue is full (slow reader)."""

    def close_sink(self, code: int, reason: str) -> None:
        """Close the underlying connection."""

    def replace_queued(self, old: str, new: str) -> bool:
        """Put ``new`` in place of ``old`` if ``old`` (the same object) is the last frame
        queued and not yet written; False if it was written (or anything came after it)."""


class RateCheck(Protocol):
    """What the channel needs of the rate limiter (see ratelimit.RateLimiter.check)."""

    async def check(self, user: str, route_class: str, tokens: int = 0) -> Any:
        """A ratelimit.Decision, or None when no limit applies."""


#: one encoder for every frame (json.dumps with options builds a JSONEncoder per call)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: how an encoded ``stream`` frame whose payload ends with a string ``delta`` ends
_DELTA_END = '"}}'
#: a merged stream frame stops growing here (characters): frames stay modest for clients
MAX_MERGED_FRAME = 64 * 1024


def encode(frame: JsonDict) -> str:
    """Compact JSON for the wire; non-ASCII kept as is (the socket is UTF-8 anyway)."""
    return _encode(frame)


# ------------------------------------------------------------------------------------------
# request kinds


@dataclass
class RequestContext:
    """Handed to a request-kind handler: who asked, and how to push frames back."""

    user: str
    session: Session
    request_id: str | int
    kind: str

    def event(self, payload: JsonDict) -> int:
        """Push an ``event`` frame tied to this request; returns its seq."""
        return self.session.emit("event", payload, request_id=self.request_id)

    def stream(self, payload: JsonDict) -> int:
        """Push a ``stream`` frame (agent deltas) tied to this request; returns its seq."""
        return self.session.emit("stream", payload, request_id=self.request_id)


KindHandler = Callable[[RequestContext, JsonDict], Awaitable[JsonDict | None]]


@dataclass(frozen=True)
class RequestKind:
    """One registered request kind and the policy it runs under."""

    kind: str
    handler: KindHandler
    resource: str
    action: str = "execute"
    rate_class: str | None = None
    schema: str | None = None


class RequestRegistry:
    """Request kinds by name; layers register theirs at start-up."""

    def __init__(self) -> None:
        self._kinds: dict[str, RequestKind] = {}

    def register(
        self,
        kind: str,
        handler: KindHandler,
        *,
        resource: str,
        action: str = "execute",
        rate_class: str | None = None,
        schema: str | None = None,
    ) -> None:
        """Add a kind. ``resource`` must be a ``cloudide:<service>`` authorizer resource;
        ``schema`` names a components.schemas entry of api.yaml validating the payload."""
        if kind in self._kinds:
            raise ValueError(f"request kind {kind!r} is already registered")
        if not resource.startswith("cloudide:"):
            raise ValueError(f"resource {resource!r} must start with 'cloudide:'")
        if schema is not None:
            spec.schema_pointer(schema)  # fail at start-up, not at the first request
        self._kinds[kind] = RequestKind(kind, handler, resource, action, rate_class, schema)

    def get(self, kind: str) -> RequestKind | None:
        return self._kinds.get(kind)

    def __iter__(self) -> Iterator[RequestKind]:
        return iter(self._kinds.values())


# ------------------------------------------------------------------------------------------
# sessions


@dataclass
class _OpenStream:
    """The last frame of a session when it is a ``stream`` frame whose payload ends with a
    string ``delta``: what a following delta must match to be merged into it."""

    seq: int
    request_id: str | int | None
    #: the payload's other items (turn, conversation): a merged delta must have the same
    rest: tuple[tuple[str, Any], ...]
    #: the encoded frame, as buffered and queued (identity is checked, not equality)
    text: str

    @classmethod
    def of(cls, seq: int, request_id: str | int | None, payload: JsonDict,
           text: str) -> _OpenStream | None:
        if not payload or next(reversed(payload)) != "delta" \
                or not isinstance(payload["delta"], str) or not text.endswith(_DELTA_END):
            return None
        return cls(seq, request_id, tuple((k, v) for k, v in payload.items() if k != "delta"),
                   text)

    def matches(self, payload: JsonDict) -> bool:
        """The same keys, delta last and a string, the rest equal and of the same types (the
        merged frame keeps the first frame's encoding of them: 1 == 1.0 == True in Python)."""
        if len(payload) != len(self.rest) + 1 or next(reversed(payload)) != "delta" \
                or not isinstance(payload["delta"], str):
            return False
        return all(k in payload and type(payload[k]) is type(v) and payload[k] == v
                   for k, v in self.rest)


@dataclass
class Session:
    """One user's channel state, kept across reconnects until its TTL runs out."""

    id: str
    user: str
    replay_frames: int
    replay_bytes: int
    next_seq: int = 1
    sink: FrameSink | None = None
    #: a re-attached connection gets no live frames until it has replayed (keeps order)
    paused: bool = False
    detached_at: float | None = None
    #: the user's groups (JupyterHub's, or the identity provider's), refreshed at each connect
    groups: tuple[str, ...] = ()
    #: the manager's clock, so TTL expiry and detach times agree
    clock: Callable[[], float] = time.monotonic
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _buffer: deque[tuple[int, str]] = field(default_factory=deque)
    _buffer_bytes: int = 0
    #: the last frame, while it is a ``stream`` frame that later deltas may be merged into
    _open_stream: _OpenStream | None = None

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def emit(self, frame_type: str, payload: JsonDict, *, request_id: str | int | None = None,
             error: JsonDict | None = None) -> int:
        """Number, buffer and (if a live connection is attached) send one frame.

        A ``stream`` delta emitted while the previous frame, a delta of the same request, is
        still queued unwritten in the sink is appended to that frame's ``delta`` instead (its
        seq is returned): a burst of model tokens leaves as one frame, not one frame (encode,
        buffer entry, client parse) per token. Nothing that was written is ever changed."""
        if frame_type == "stream" and error is None and self._open_stream is not None:
            merged = self._merge_delta(payload, request_id)
            if merged:
                return merged
        seq = self.next_seq
        frame: JsonDict = {"type": frame_type, "seq": seq}
        if request_id is not None:
            frame["id"] = request_id
        if error is not None:
            frame["error"] = error
        else:
            frame["payload"] = payload
        text = encode(frame)  # may raise: only then is the seq taken, so seqs have no gaps
        self.next_seq += 1
        self._remember(seq, text)
        self._open_stream = _OpenStream.of(seq, request_id, payload, text) \
            if frame_type == "stream" and error is None else None
        if self.sink is not None and not self.paused:
            self._deliver(text)
        return seq

    def _merge_delta(self, payload: JsonDict, request_id: str | int | None) -> int:
        """Append ``payload``'s delta to the open stream frame if that frame is still queued
        in a live sink; its seq, or 0 when the delta must be a frame of its own."""
        open_ = self._open_stream
        sink = self.sink
        if (open_ is None or sink is None or self.paused or request_id != open_.request_id
                or not open_.matches(payload) or not self._buffer
                or self._buffer[-1][1] is not open_.text):
            return 0
        # The frame ends with the delta's closing quote and two braces (see _OpenStream.of):
        # the escaped new text goes in front of them.
        text = open_.text[:-len(_DELTA_END)] + _encode(payload["delta"])[1:-1] + _DELTA_END
        if len(text) > MAX_MERGED_FRAME or not sink.replace_queued(open_.text, text):
            self._open_stream = None  # written: the next delta starts a frame
            return 0
        self._buffer[-1] = (open_.seq, text)
        self._buffer_bytes += len(text) - len(open_.text)
        open_.text = text
        self._trim()
        return open_.seq

    def _remember(self, seq: int, text: str) -> None:
        self._buffer.append((seq, text))
        self._buffer_bytes += len(text)
        self._trim()

    def _trim(self) -> None:
        while self._buffer and (
            len(self._buffer) > self.replay_frames or self._buffer_bytes > self.replay_bytes
        ):
            _, old = self._buffer.popleft()
            self._buffer_bytes -= len(old)

    def _deliver(self, text: str) -> None:
        sink = self.sink
        if sink is None:
            return
        if not sink.send_text(text):
            # A reader that cannot keep up is cut off; the frames stay in the replay buffer
            # so it can resume when it reconnects.
            self.detach(sink)
            sink.close_sink(CLOSE_SLOW_READER, "slow reader: send buffer full")

    def replay(self, last_seq: int) -> tuple[int, bool]:
        """Send every buffered frame after ``last_seq``, then go live.

        Returns (frames replayed, gap) where gap means frames after last_seq were already
        dropped from the buffer: the client must refetch state over REST.
        """
        self._open_stream = None
        first_kept = self._buffer[0][0] if self._buffer else self.next_seq
        gap = last_seq + 1 < first_kept and last_seq < self.last_seq
        count = 0
        for seq, text in list(self._buffer):
            if seq > last_seq:
                if self.sink is None:
                    break
                self._deliver(text)
                count += 1
        self.paused = False
        return count, gap

    def attach(self, sink: FrameSink, *, paused: bool) -> None:
        """Make ``sink`` the live connection, closing any previous one (newest tab wins)."""
        old = self.sink
        if old is not None and old is not sink:
            old.close_sink(CLOSE_TAKEN_OVER, "session attached to a newer connection")
        self.sink = sink
        self.paused = paused
        self.detached_at = None
        self._open_stream = None

    def detach(self, sink: FrameSink) -> None:
        """Forget ``sink`` if it is the live one (a stale close must not detach a newer one)."""
        if self.sink is sink:
            self.sink = None
            self.paused = False
            self._open_stream = None
            self.detached_at = self.clock()

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class SessionManager:
    """All live sessions of this server process, bounded per user and expired by TTL."""

    def __init__(
        self,
        *,
        replay_frames: int = 1000,
        replay_bytes: int = 1024 * 1024,
        ttl_s: float = 300.0,
        max_sessions_per_user: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replay_frames = replay_frames
        self.replay_bytes = replay_bytes
        self.ttl_s = ttl_s
        self.max_sessions_per_user = max_sessions_per_user
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def open(self, user: str, session_id: str | None) -> tuple[Session, bool]:
        """The user's session ``session_id`` if it is alive, else a new one.

        Returns (session, resumed). A session id of another user is treated as unknown, so
        ids never leak whether they exist.
        """
        if session_id:
            existing = self._sessions.get(session_id)
            if existing is not None and existing.user == user:
                return existing, True
        self._evict_for(user)
        session = Session(
            id=secrets.token_urlsafe(16),
            user=user,
            replay_frames=self.replay_frames,
            replay_bytes=self.replay_bytes,
            clock=self._clock,
        )
        self._sessions[session.id] = session
        return session, False

    def _evict_for(self, user: str) -> None:
        mine = [s for s in self._sessions.values() if s.user == user]
        if len(mine) < self.max_sessions_per_user:
            return
        # Oldest detached first; if all are attached, the oldest attached one goes.
        mine.sort(key=lambda s: (s.sink is not None, s.detached_at or 0.0))
        for victim in mine[: len(mine) - self.max_sessions_per_user + 1]:
            self.drop(victim)

    def drop(self, session: Session) -> None:
        """End a session: cancel its running requests and close its connection."""
        self._sessions.pop(session.id, None)
        session.cancel_tasks()
        if session.sink is not None:
            sink = session.sink
            session.detach(sink)
            sink.close_sink(CLOSE_SESSION_EXPIRED, "session ended")

    def expire(self) -> int:
        """Drop detached sessions idle for longer than the TTL; returns how many."""
        now = self._clock()
        dead = [
            s for s in self._sessions.values()
            if s.sink is None and s.detached_at is not None and now - s.detached_at > self.ttl_s
        ]
        for session in dead:
            self.drop(session)
        return len(dead)

    def broadcast(self, user: str, payload: JsonDict) -> int:
        """Push an ``event`` to every session of ``user`` (job progress, usage notices)."""
        mine = [s for s in self._sessions.values() if s.user == user]
        for session in mine:
            session.emit("event", payload)
        return len(mine)

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.drop(session)

    def stats(self) -> dict[str, int]:
        attached = sum(1 for s in self._sessions.values() if s.sink is not None)
        return {"sessions": len(self._sessions), "connections": attached}


# ------------------------------------------------------------------------------------------
# dispatch


class Channel:
    """One connection's inbound side: parse a frame, check it, run the request kind."""

    def __init__(
        self,
        session: Session,
        sink: FrameSink,
        registry: RequestRegistry,
        *,
        authorize: Authorize,
        limiter: RateCheck | None = None,
        max_inflight: int = 32,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self.session = session
        self.sink = sink
        self.registry = registry
        self._authorize = authorize
        self._limiter = limiter
        self._max_inflight = max_inflight
        self._on_request = on_request

    def handle_text(self, text: str) -> None:
        """Entry point for every inbound frame (called from the socket's on_message)."""
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # ValueError: also ints over 4300 digits
            self._send_error(None, InvalidInputError("frame: not valid JSON", field="frame"))
            return
        if not isinstance(frame, dict):
            self._send_error(None, InvalidInputError("frame: must be a JSON object",
                                                      field="frame"))
            return
        if not _envelope_ok(frame):
            # Slow path only for bad frames: jsonschema names the offending field.
            try:
                spec.validate_schema(frame, spec.schema_pointer("WsClientFrame"))
            except InvalidInputError as e:
                self._send_error(_safe_id(frame.get("id")), e)
                return
        if frame["type"] == "ping":
            # Application-level heartbeat for browsers (JS cannot send protocol pings).
            pong: JsonDict = {"type": "pong"}
            if "id" in frame:
                pong["id"] = frame["id"]
            if not self.sink.send_text(encode(pong)):
                self.session.detach(self.sink)
                self.sink.close_sink(CLOSE_SLOW_READER, "slow reader: send buffer full")
            return
        request_id = frame.get("id")
        payload = frame.get("payload")
        if request_id is None or payload is None:
            self._send_error(_safe_id(request_id), InvalidInputError(
                "request: 'id' and 'payload' are required", field="id" if request_id is None
                else "payload"))
            return
        try:
            spec.check_unicode(payload, text)  # no handler ever sees an unpaired surrogate
        except InvalidInputError as e:
            self._send_error(request_id, e)
            return
        if len(self.session.tasks) >= self._max_inflight:
            self._send_error(request_id, RateLimitedError(
                f"too many requests in flight on this session (max {self._max_inflight})",
                retry_after_s=1.0))
            return
        task = asyncio.ensure_future(self._run(request_id, payload))
        self.session.tasks.add(task)
        task.add_done_callback(self.session.tasks.discard)

    async def _run(self, request_id: str | int, payload: JsonDict) -> None:
        kind_name = payload["kind"]
        status = "ok"
        try:
            kind = self.registry.get(kind_name)
            if kind is None:
                raise InvalidInputError(f"kind: unknown request kind {kind_name[:64]!r}",
                                        field="kind")
            if not await self._authorize(kind.resource, kind.action):
                raise ForbiddenError(
                    f"not authorized to {kind.action} on resource {kind.resource}")
            if kind.schema is not None:
                spec.validate_schema(payload, spec.schema_pointer(kind.schema))
            if kind.rate_class is not None and self._limiter is not None:
                decision = await self._limiter.check(self.session.user, kind.rate_class)
                if decision is not None and not decision.allowed:
                    raise RateLimitedError(
                        f"rate limit for {kind.rate_class} requests exceeded",
                        retry_after_s=decision.retry_after_s,
                    )
            ctx = RequestContext(self.session.user, self.session, request_id, kind_name)
            result = await kind.handler(ctx, payload)
            self.session.emit("response", result or {}, request_id=request_id)
        except CloudIDEError as e:
            status = e.code
            self._send_error(request_id, e)
        except asyncio.CancelledError:
            status = "cancelled"
            if _cancel_was_for_us():
                raise
            # The handler let the cancellation of work of its own escape (an agent turn
            # cancelled twice): this request was not cancelled, so it still gets an answer.
            self._send_error(request_id, ConflictError(
                "the request was cancelled before it could finish"))
        except Exception:
            status = "internal_error"
            log.exception("request kind %r failed", kind_name)
            self._send_error(request_id, CloudIDEError("internal error"))
        finally:
            if self._on_request is not None:
                self._on_request(str(kind_name)[:64], status)

    def _send_error(self, request_id: str | int | None, error: CloudIDEError) -> None:
        self.session.emit("response", {}, request_id=request_id, error=error.to_dict())


def _envelope_ok(frame: JsonDict) -> bool:
    """Fast check of the WsClientFrame envelope (api.yaml); jsonschema costs ~60 µs a frame.

    Must accept exactly what the schema accepts: a test compares the two on many frames.
    """
    kind = frame.get("type")
    if kind not in ("request", "ping"):
        return False
    if "id" in frame:
        fid = frame["id"]
        if isinstance(fid, bool) or not (
            isinstance(fid, int) or (isinstance(fid, str) and 1 <= len(fid) <= 64)
        ):
            return False
    if "payload" in frame:
        payload = frame["payload"]
        if not isinstance(payload, dict):
            return False
        name = payload.get("kind")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            return False
    return True


def _cancel_was_for_us() -> bool:
    """Whether a CancelledError seen in the current task was asked for by cancelling this
    task (session dropped, server stopping), rather than raised out of an awaited task that
    was cancelled. Python 3.10 cannot tell: it is taken as ours."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


def _safe_id(value: Any) -> str | int | None:
    """Echo a client id back only if it is a short string or an int (never big junk)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= 64):
        return value
    return None
