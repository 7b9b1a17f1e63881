"""Server-sent events, and work that ends with the connection, on a tornado handler: shared by
the ``cloudide/v1`` handlers (``base.py``) and the adapter sidecar (``adapters/sidecar.py``).
Tornado only (the sidecar runs without Jupyter). A handler sets ``wire_format``: the module of
``agent.wire`` whose ``KEEPALIVE`` and ``error_for`` it sends.

Events are written one flushed frame at a time; the headers go out with the first, so an error
before it is a real HTTP status, and one after it is the format's error event. While nothing
was written for ``keepalive_s``, the format's keep-alive goes out. A client that goes away
cancels the work (and so the upstream call, which is then closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

from ...agent.providers.base import ProviderError
from ...errors import CloudIDEError

log = logging.getLogger(__name__)


class SseHandler(web.RequestHandler):
    """Base (a mixin before the handler's own base) of the handlers that stream answers."""

    wire_format: Any
    _work: asyncio.Future[None] | None = None
    _sse: bool = False
    _last_write: float = 0.0
    _write_lock: asyncio.Lock | None = None

    # -- work that ends with the connection -----------------------------------------------

    async def run_cancellable(self, work: Any) -> None:
        """Run ``work`` (a coroutine); the client going away cancels it."""
        self._work = asyncio.ensure_future(work)
        try:
            await self._work
        except asyncio.CancelledError:
            if not self.request.connection or not self._gone():
                raise  # the server is stopping, not the client leaving
            with contextlib.suppress(Exception):
                self.finish()

    def _gone(self) -> bool:
        stream = getattr(self.request.connection, "stream", None)
        return stream is None or stream.closed()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._work is not None and not self._work.done():
            self._work.cancel()

    # -- server-sent events -------------------------------------------------------------

    def _start_sse(self) -> None:
        self._sse = True
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # and no proxy buffering either
        # Nagle's algorithm would hold each small event until the client ACKs the previous
        # one (the role chunk, then the first token waited on it). tornado turns TCP_NODELAY
        # on only for the last write of a response and off again after it.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    async def _send(self, frame: str) -> None:
        assert self._write_lock is not None
        async with self._write_lock:  # tornado's flush() must not be awaited twice at once
            if not self._sse:
                self._start_sse()
            self.write(frame)
            self._last_write = time.monotonic()
            await self.flush()

    async def _keepalive(self, interval: float) -> None:
        while True:
            wait = self._last_write + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self._send(self.wire_format.KEEPALIVE)

    async def stream_events(self, events: AsyncGenerator[Any, None],
                            encode: Callable[[Any], str], keepalive_s: float) -> None:
        """Write the events as SSE frames (``encode(event) -> str``). An error before the first
        frame is raised (a real status); after it, it is the wire format's error event."""
        self._write_lock = asyncio.Lock()
        self._last_write = time.monotonic()
        pinger = asyncio.ensure_future(self._keepalive(keepalive_s)) if keepalive_s > 0 \
            else None
        try:
            async with contextlib.aclosing(events) as stream:
                try:
                    async for event in stream:
                        frame = encode(event)
                        if frame:
                            await self._send(frame)
                except (CloudIDEError, ProviderError) as exc:
                    if not self._sse:
                        raise
                    getattr(self, "log", log).info("stream ended by an error: %s",
                                                   getattr(exc, "kind", type(exc).__name__))
                    await self._send(self.wire_format.error_for(exc).sse())
        except StreamClosedError:
            return  # the client left between two events; the stream was closed above
        finally:
            if pinger is not None:
                pinger.cancel()
        self.finish()
