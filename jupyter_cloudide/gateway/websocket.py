"""``WS cloudide/api/ws``: the socket side of the session channel (see channel.py).

This class only translates: authenticate and authorize the upgrade, attach the connection to
its session, hand inbound text to the :class:`~.channel.Channel`, and write outbound frames
through a bounded queue. A reader that cannot keep up is disconnected when that queue is
full — the frames stay in the session's replay buffer — so no client can grow server memory.

Outbound frames skip tornado's ``write_message``, which wraps every frame in a task of its
own: a frame emitted while the connection is idle is written at once (the first token of
an answer never waits for the loop), and frames emitted meanwhile, in the same loop
iteration or while the socket is still taking earlier bytes, go out together in one
``stream.write`` at the next iteration (one syscall, no task). Each is still its own
WebSocket frame, so the wire protocol is unchanged. The queue is what is neither written
nor being written, as before, so the slow-reader bound works the same way; what is being
written is at most one batch (itself within the queue's bounds) in tornado's buffer.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler

from ..metering import metrics
from .channel import Channel, Session, encode

if TYPE_CHECKING:
    from ..app import CloudIDEApp

AUTH_RESOURCE = "cloudide:session"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LAST_SEQ = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts "²"
_FRAMES_IN = metrics.WS_FRAMES.labels("in")
_FRAMES_OUT = metrics.WS_FRAMES.labels("out")
#: FIN + text opcode (RFC 6455 5.2); server frames are never masked
_TEXT_FIN = 0x81
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked, uncompressed WebSocket text frame.

    Compression is never negotiated (``get_compression_options`` returns None), and an
    uncompressed frame would be valid even if it were (RFC 7692 7.2.3.1: RSV1 clear)."""
    n = len(payload)
    if n < 126:
        return _SHORT.pack(_TEXT_FIN, n) + payload
    if n <= 0xFFFF:
        return _MEDIUM.pack(_TEXT_FIN, 126, n) + payload
    return _LONG.pack(_TEXT_FIN, 127, n) + payload


class SessionChannelHandler(
    ExtensionHandlerMixin, WebSocketMixin, WebSocketHandler, JupyterHandler
):
    """One WebSocket connection of a user's session."""

    auth_resource: ClassVar[str] = AUTH_RESOURCE
    route_name: ClassVar[str] = "ws"

    session: Session | None = None
    channel: Channel | None = None
    _outq: deque[str]
    _outq_bytes: int = 0
    #: a flush is scheduled for the next loop iteration (frames emitted meanwhile wait)
    _flush_scheduled: bool = False
    #: the socket has not taken all written bytes yet: the queue waits for this write
    _writing: asyncio.Future[None] | None = None
    _closed: bool = False
    _resume_from: int | None = None
    _session_id: str | None = None

    def initialize(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)
        self._outq = deque()

    @property
    def cloudide(self) -> CloudIDEApp:
        return cast("CloudIDEApp", self.extensionapp)

    @property
    def max_message_size(self) -> int:
        """Inbound frame limit; tornado closes the connection with 1009 above it."""
        return int(self.cloudide.ws_max_frame_bytes)

    def get_compression_options(self) -> dict[str, Any] | None:
        # Compression costs ~64 KB of zlib state per connection; off for 1,000 idle clients.
        return None

    async def _authorize(self, resource: str, action: str) -> bool:
        return bool(
            await ensure_async(
                self.authorizer.is_authorized(self, self.current_user, action, resource)
            )
        )

    async def pre_get(self) -> None:
        """Authorize the upgrade and check the query before any socket exists."""
        if not await self._authorize(AUTH_RESOURCE, "execute"):
            self.cloudide.emit_refused(reason="forbidden", route="ws",
                                       user=self.cloudide.user_key(self.current_user))
            raise web.HTTPError(403, f"not authorized to use {AUTH_RESOURCE}")
        session_id = self.get_query_argument("session_id", None)
        if session_id is not None and not _SESSION_ID.fullmatch(session_id):
            raise web.HTTPError(400, "session_id: malformed")
        last_seq = self.get_query_argument("last_seq", None)
        if last_seq is not None:
            if not _LAST_SEQ.fullmatch(last_seq):
                raise web.HTTPError(400, "last_seq: must be a non-negative integer")
            self._resume_from = int(last_seq)
        self._session_id = session_id

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # starts protocol-level pings (WebSocketMixin)
        # Frames are small and often come in pairs (an output event, then the response):
        # with Nagle on, the second waits ~40 ms for the client's delayed ACK.
        self.set_nodelay(True)
        app = self.cloudide
        user = app.user_key(self.current_user)
        session, resumed = app.sessions.open(user, self._session_id)
        session.groups = app.groups_of(self.current_user)
        self.session = session
        self.channel = Channel(
            session,
            self,
            app.ws_kinds,
            authorize=self._authorize,
            limiter=app.rate_limiter_for_channel(),
            max_inflight=app.ws_max_inflight_requests,
            on_request=lambda kind, status: app.record_ws_request(kind, status, user),
        )
        # A re-attached session stays quiet until the client says where it left off.
        session.attach(self, paused=resumed)
        metrics.WS_CONNECTIONS.inc()
        self.send_text(encode({"type": "welcome", "payload": {
            "session_id": session.id,
            "resumed": resumed,
            "last_seq": session.last_seq,
            "max_frame_bytes": app.ws_max_frame_bytes,
            "heartbeat_s": self.ping_interval / 1000,
        }}))
        if resumed and self._resume_from is not None:
            session.replay(self._resume_from)

    def on_message(self, message: str | bytes) -> None:
        _FRAMES_IN.inc()
        if isinstance(message, bytes):
            self.close(1003, "binary frames are not supported")
            return
        if self.channel is not None:
            self.channel.handle_text(message)

    # -- FrameSink --------------------------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a frame for the writer; False (→ disconnect) when the bounded queue is full.

        An idle connection writes the frame at once and collects whatever is emitted until
        the next loop iteration into one write; a busy one (bytes not yet taken by the
        socket) keeps frames queued until that write completes."""
        if self._closed:
            return True
        app = self.cloudide
        if (len(self._outq) >= app.ws_send_queue_frames
                or self._outq_bytes + len(text) > app.ws_send_queue_bytes):
            metrics.WS_DISCONNECTS.labels("slow_reader").inc()
            return False
        self._outq.append(text)
        self._outq_bytes += len(text)
        if self._writing is None and not self._flush_scheduled:
            self._write_queued()
            if self._writing is None and not self._closed:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return True

    def replace_queued(self, old: str, new: str) -> bool:
        """Swap the last queued frame (``old``, by identity) for ``new``: how the session
        merges a stream delta into a frame not yet written. False if ``old`` was written or
        something was queued after it, or if ``new`` would overflow the byte bound."""
        queue = self._outq
        if self._closed or not queue or queue[-1] is not old:
            return False
        grown = len(new) - len(old)
        if self._outq_bytes + grown > self.cloudide.ws_send_queue_bytes:
            return False
        queue[-1] = new
        self._outq_bytes += grown
        return True

    def _flush(self) -> None:
        """The loop iteration after an immediate write: what was emitted since goes now."""
        self._flush_scheduled = False
        if self._writing is None:
            self._write_queued()

    def _write_queued(self) -> None:
        """Every queued frame in one ``stream.write``. Frames of a closing connection are
        dropped (they stay in the session's replay buffer).

        ``backslashreplace``: a lone surrogate (a client may send ``"\\ud800"`` in an id or a
        field that is echoed back) cannot be UTF-8; the frame is JSON, where such a character
        only occurs inside a string, so its ``\\uXXXX`` escape is the same value. Strict
        encoding would raise out of ``Session.emit`` and lose the frame."""
        queue = self._outq
        if not queue:
            return
        conn = self.ws_connection
        stream = getattr(conn, "stream", None)
        if conn is None or stream is None or conn.is_closing():
            queue.clear()
            self._outq_bytes = 0
            return
        if len(queue) == 1:
            data = text_frame(queue[0].encode("utf-8", "backslashreplace"))
        else:
            data = b"".join([text_frame(text.encode("utf-8", "backslashreplace"))
                             for text in queue])
        count = len(queue)
        queue.clear()
        self._outq_bytes = 0
        try:
            written = stream.write(data)
        except StreamClosedError:
            return
        _FRAMES_OUT.inc(count)
        if not written.done():
            # The socket's buffer is full: what comes meanwhile waits in the bounded queue,
            # which is how a reader that stopped reading is detected (send_text).
            self._writing = written
            written.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writing = None
        if future.cancelled() or future.exception() is not None or self._closed:
            return  # the stream closed; on_close clears the queue
        self._write_queued()

    def close_sink(self, code: int, reason: str) -> None:
        if not self._closed:
            self.close(code, reason)

    def on_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.ping_callback is not None:
            self.ping_callback.stop()
        if self.session is not None:
            self.session.detach(self)
            metrics.WS_CONNECTIONS.dec()
            code = self.close_code
            metrics.WS_DISCONNECTS.labels("too_big" if code == 1009 else "closed").inc()
        self._outq.clear()
        self._outq_bytes = 0


default_handlers = [(r"/cloudide/api/ws", SessionChannelHandler)]
