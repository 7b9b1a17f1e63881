"""``WS cloudide/api/ws``: the socket side of the session channel (see channel.py).

This class only translates: authenticate and authorize the upgrade, attach the connection to
its session, hand inbound text to the :class:`~.channel.Channel`, and write outbound frames
through a bounded queue. A reader that cannot keep up is disconnected when that queue is
full — the frames stay in the session's replay buffer — so no client can grow server memory.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..metering import metrics
from .channel import Channel, Session, encode

if TYPE_CHECKING:
    from ..app import CloudIDEApp

AUTH_RESOURCE = "cloudide:session"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LAST_SEQ = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts "²"


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
    _flusher: asyncio.Future[None] | None = None
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
            on_request=app.record_ws_request,
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
        metrics.WS_FRAMES.labels("in").inc()
        if isinstance(message, bytes):
            self.close(1003, "binary frames are not supported")
            return
        if self.channel is not None:
            self.channel.handle_text(message)

    # -- FrameSink --------------------------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a frame for the writer; False (→ disconnect) when the bounded queue is full."""
        if self._closed:
            return True
        app = self.cloudide
        if (len(self._outq) >= app.ws_send_queue_frames
                or self._outq_bytes + len(text) > app.ws_send_queue_bytes):
            metrics.WS_DISCONNECTS.labels("slow_reader").inc()
            return False
        self._outq.append(text)
        self._outq_bytes += len(text)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return True

    async def _flush(self) -> None:
        try:
            while self._outq and not self._closed:
                text = self._outq.popleft()
                self._outq_bytes -= len(text)
                # Awaiting the write means: handed to the socket. A reader that stops
                # reading stalls us here and the queue fills, which send_text detects.
                await self.write_message(text)
                metrics.WS_FRAMES.labels("out").inc()
        except WebSocketClosedError:
            pass
        finally:
            self._flusher = None

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
