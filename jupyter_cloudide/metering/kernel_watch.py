"""Kernel-time watcher: feeds every kernel of the server into the :class:`KernelMeter`.

Every kernel is metered, not only the executor's: users' notebook kernels cost the same
machine time. Kernels are found two ways, because neither is enough alone: jupyter_server's
``kernel_actions`` events (immediate, but only for kernels started after we subscribed and
only from managers that emit them) and a periodic scan of ``list_kernel_ids()``. Each kernel
gets its own iopub subscription whose ``status`` messages are fed to the meter: for kernels
with ZMQ sockets (local, or remote through a provisioner) a raw socket read by a ZMQStream
callback that decodes only the header of the messages it drops (the same light read as
jupyter_server's own activity tracker: a full decode of every output would cost a busy server
more than the rest of the execute path); for remote kernels through jupyter_server's
GatewayKernelManager, the generic ``km.client()`` API.
Death is detected three ways (restart callbacks of local kernels, ``is_alive()`` polls,
the kernel disappearing from the manager); a kernel that comes back (autorestart) opens a new
lifetime segment.

Rows the meter produces go to Prometheus counters, to one jupyter_events event each, and to
``on_rows`` (the app writes them to the usage ledger) through a single dispatcher task with a
bounded backlog; ``on_rows`` failures are retried, which is safe because row ids are
deterministic and the ledger is idempotent by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import queue
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

from ..storage.db import UsageEventIn
from . import events as cloudide_events
from . import metrics
from .kernel_time import (
    KIND_BUSY,
    KIND_LIFETIME,
    KernelDied,
    KernelEvent,
    KernelMeter,
    KernelRestarted,
    KernelStarted,
    KernelStatus,
    KernelStopped,
)

__all__ = ["KERNEL_ACTIONS_SCHEMA", "KernelWatcher", "RowsSink"]

log = logging.getLogger("jupyter_cloudide.metering.kernels")

KERNEL_ACTIONS_SCHEMA = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"

RowsSink = Callable[[list[UsageEventIn]], Awaitable[None]]

#: Rows kept for ``on_rows`` while it fails (ledger down); past it the oldest are dropped
#: (logged) so an unreachable database cannot grow server memory.
MAX_PENDING_ROWS = 50_000
#: How long a kernel announced by a ``start`` event may take to appear in the manager.
RESOLVE_TIMEOUT_S = 30.0
#: iopub states a websocket-backed (gateway) client relays when the kernel died.
_DEATH_STATES = frozenset({"dead", "restarting"})


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass
class _Tap:
    """The iopub listener of one kernel and what the watcher knows about it."""

    kernel_id: str
    kernelspec: str | None
    task: asyncio.Task[None] | None = None
    client: Any = None
    km: Any = None
    resolved: bool = False
    dead: bool = False
    recycle: bool = False
    callbacks: list[tuple[Callable[[], None], str]] = field(default_factory=list)


class _KernelGone(Exception):
    """The kernel left the manager: the tap ends."""


class KernelWatcher:
    """Meters every kernel of ``kernel_manager`` (the server's MappingKernelManager)."""

    def __init__(
        self,
        kernel_manager: Any,
        meter: KernelMeter,
        *,
        owner: str,
        on_rows: RowsSink | None = None,
        event_logger: Any = None,
        scan_interval_s: float = 5.0,
        checkpoint_interval_s: float = 60.0,
        liveness_interval_s: float = 1.0,
        clock: Callable[[], datetime] = _utcnow,
        max_pending_rows: int = MAX_PENDING_ROWS,
        write_delay_s: float = 1.0,
    ) -> None:
        """Nothing runs until :meth:`start`.

        ``owner`` is billed for every kernel discovered (the server's user; the executor can
        re-attribute its kernels with ``meter.attribute``). ``liveness_interval_s`` bounds
        how late a death is noticed, and how often ``is_alive()`` is polled per kernel (an
        HTTP round trip for gateway kernels). ``clock`` returns tz-aware UTC wall time.
        ``write_delay_s`` gathers the rows of that long into one ``on_rows`` call: a kernel
        running many short cells makes a row per cell, and one ledger transaction per row
        would cost the server more CPU than the cells (:meth:`flush` does not wait for it).
        """
        if not owner:
            raise ValueError("owner is required")
        self.kernel_manager = kernel_manager
        self.meter = meter
        self.owner = owner
        self.on_rows = on_rows
        self.event_logger = event_logger
        self.scan_interval_s = max(0.05, float(scan_interval_s))
        self.checkpoint_interval_s = max(0.05, float(checkpoint_interval_s))
        self.liveness_interval_s = max(0.05, float(liveness_interval_s))
        self._clock = clock
        self._max_pending = max(1, int(max_pending_rows))
        self.write_delay_s = max(0.0, float(write_delay_s))
        self._flush_now = asyncio.Event()
        self._taps: dict[str, _Tap] = {}
        self._pending: deque[UsageEventIn] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._seq = 0

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to kernel_actions, tap the kernels already running, start the loops."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        if self.event_logger is not None:
            self._ensure_schema()
            self.event_logger.add_listener(
                schema_id=KERNEL_ACTIONS_SCHEMA, listener=self._on_kernel_action
            )
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="cloudide-kernel-rows"),
            asyncio.create_task(self._scan_loop(), name="cloudide-kernel-scan"),
            asyncio.create_task(self._checkpoint_loop(), name="cloudide-kernel-checkpoint"),
        ]
        await self.scan()

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Checkpoint open intervals, deliver pending rows, close every client."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self.event_logger is not None:
            with contextlib.suppress(Exception):
                self.event_logger.remove_listener(
                    schema_id=KERNEL_ACTIONS_SCHEMA, listener=self._on_kernel_action
                )
        taps = list(self._taps.values())
        for tap in taps:
            if tap.task is not None:
                tap.task.cancel()
        for tap in taps:
            if tap.task is not None:
                with contextlib.suppress(BaseException):
                    await tap.task
            self._release(tap)
        self._taps.clear()
        metrics.KERNELS_WATCHED.set(0)
        self._publish(self.meter.checkpoint(self._clock()))
        try:
            await asyncio.wait_for(self.flush(), timeout=flush_timeout_s)
        except asyncio.TimeoutError:
            log.warning("kernel usage: %d rows not delivered at stop", len(self._pending))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        self._started = False

    async def flush(self) -> None:
        """Wait until every row produced so far was handed to ``on_rows`` (or dropped)."""
        while self._pending or not self._idle.is_set():
            self._flush_now.set()
            self._wakeup.set()
            await asyncio.sleep(0.01)

    # -- public helpers --------------------------------------------------------------

    def watched(self) -> list[str]:
        """Kernel ids with a live iopub tap."""
        return list(self._taps)

    async def scan(self) -> None:
        """Reconcile taps with ``list_kernel_ids()``: tap new kernels, stop removed ones."""
        if self._stopping:
            return
        try:
            listed = set(self.kernel_manager.list_kernel_ids())
        except Exception:
            log.exception("kernel usage: cannot list kernels")
            return
        now = self._clock()
        for kernel_id in listed:
            tap = self._taps.get(kernel_id)
            if tap is None:
                self._track(kernel_id, None, now, "scan")
            elif tap.task is not None and tap.task.done():
                # The tap crashed (logged); the kernel is still there, so listen again.
                tap.task = asyncio.create_task(self._run_tap(tap), name=f"kernel-tap-{kernel_id}")
        # A tap still resolving belongs to a kernel announced but not listed yet: its own
        # resolve timeout decides, the scan would race the manager's bookkeeping.
        gone = [kid for kid, tap in self._taps.items() if kid not in listed and tap.resolved]
        for kernel_id in gone:
            self._untrack(kernel_id, now, "scan")

    async def checkpoint(self) -> list[UsageEventIn]:
        """Close open intervals up to now (rows are also published); returns the rows."""
        rows = self.meter.checkpoint(self._clock())
        self._publish(rows)
        return rows

    # -- discovery ---------------------------------------------------------------------

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        """jupyter_events listener (keyword call: logger, schema_id, data)."""
        if self._stopping or not self._started:
            return
        if data.get("status") != "success":
            return
        kernel_id = data.get("kernel_id")
        if not isinstance(kernel_id, str) or not kernel_id:
            return
        action = data.get("action")
        kernel_name = data.get("kernel_name")
        now = self._clock()
        if action == "start":
            self._track(
                kernel_id,
                kernel_name if isinstance(kernel_name, str) else None,
                now,
                "kernel_actions",
            )
        elif action == "restart":
            tap = self._taps.get(kernel_id)
            if tap is None:
                self._track(kernel_id, None, now, "kernel_actions")
                return
            self._feed(KernelRestarted(self._event_id("restart", kernel_id, now), now, kernel_id))
            tap.dead = False
            tap.recycle = True  # ports may have changed: reconnect
        elif action == "shutdown":
            self._untrack(kernel_id, now, "kernel_actions")

    def _track(self, kernel_id: str, kernelspec: str | None, at: datetime, origin: str) -> None:
        if self._stopping or kernel_id in self._taps:
            return
        if kernelspec is None:
            with contextlib.suppress(Exception):
                kernelspec = getattr(self.kernel_manager.get_kernel(kernel_id), "kernel_name", None)
        tap = _Tap(kernel_id=kernel_id, kernelspec=kernelspec or None)
        self._taps[kernel_id] = tap
        metrics.KERNELS_WATCHED.set(len(self._taps))
        self._feed(
            KernelStarted(
                self._event_id(f"start-{origin}", kernel_id, at),
                at,
                kernel_id,
                kernelspec=tap.kernelspec,
                user=self.owner,
            )
        )
        tap.task = asyncio.create_task(self._run_tap(tap), name=f"kernel-tap-{kernel_id}")

    def _untrack(self, kernel_id: str, at: datetime, origin: str, *, cancel: bool = True) -> None:
        tap = self._taps.pop(kernel_id, None)
        metrics.KERNELS_WATCHED.set(len(self._taps))
        self._feed(KernelStopped(self._event_id(f"stop-{origin}", kernel_id, at), at, kernel_id))
        if tap is None:
            return
        if cancel and tap.task is not None and tap.task is not asyncio.current_task():
            tap.task.cancel()
        self._release(tap)

    # -- per-kernel tap ----------------------------------------------------------------

    async def _run_tap(self, tap: _Tap) -> None:
        try:
            while not self._stopping and self._taps.get(tap.kernel_id) is tap:
                km = await self._resolve(tap.kernel_id)
                tap.resolved = True
                if km is None:
                    self._untrack(tap.kernel_id, self._clock(), "gone", cancel=False)
                    return
                self._hook_restarts(tap, km)
                if not _is_gateway(km):
                    await self._pump_stream(tap, km)
                    continue
                client = await self._connect(km)
                tap.client = client
                try:
                    await self._pump(tap, km, client)
                finally:
                    tap.client = None
                    await self._close_client(client)
        except _KernelGone:
            self._untrack(tap.kernel_id, self._clock(), "gone", cancel=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kernel usage: listener of kernel %s failed", tap.kernel_id)

    async def _resolve(self, kernel_id: str) -> Any:
        """The kernel's manager; waits a little for a kernel announced before it is listed."""
        deadline = time.monotonic() + RESOLVE_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(KeyError):
                if kernel_id in self.kernel_manager:
                    return self.kernel_manager.get_kernel(kernel_id)
            await asyncio.sleep(0.1)
        return None

    async def _connect(self, km: Any) -> Any:
        client = km.client()
        try:
            started = client.start_channels(
                shell=False, iopub=True, stdin=False, hb=False, control=False
            )
        except TypeError:
            started = client.start_channels()
        await _maybe_await(started)
        return client

    async def _close_client(self, client: Any) -> None:
        with contextlib.suppress(Exception):
            await _maybe_await(client.stop_channels())

    def _hook_restarts(self, tap: _Tap, km: Any) -> None:
        """Local kernels: the restarter tells us the moment it finds the process dead."""
        if tap.km is km or not hasattr(km, "add_restart_callback"):
            return
        self._unhook_restarts(tap)
        tap.km = km

        def died() -> None:
            if not tap.dead and not self._stopping:
                now = self._clock()
                tap.dead = True
                self._feed(
                    KernelDied(self._event_id("died", tap.kernel_id, now), now, tap.kernel_id)
                )

        for event in ("restart", "dead"):
            with contextlib.suppress(Exception):
                km.add_restart_callback(died, event)
                tap.callbacks.append((died, event))

    def _unhook_restarts(self, tap: _Tap) -> None:
        for callback, event in tap.callbacks:
            with contextlib.suppress(Exception):
                tap.km.remove_restart_callback(callback, event)
        tap.callbacks.clear()
        tap.km = None

    def _release(self, tap: _Tap) -> None:
        """Forget the tap's callbacks; its task closes its client when it ends."""
        self._unhook_restarts(tap)

    async def _pump(self, tap: _Tap, km: Any, client: Any) -> None:
        """Read iopub until a reconnect is due; poll liveness between messages."""
        last_check = time.monotonic()
        while True:
            if tap.recycle:
                tap.recycle = False
                return
            closed = False
            msg: dict[str, Any] | None = None
            try:
                msg = await client.get_iopub_msg(timeout=self.liveness_interval_s)
            except queue.Empty:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:
                closed = True  # channel closed (kernel gone, websocket dropped)
            if msg is not None:
                self._on_iopub(tap, msg)
            if closed or time.monotonic() - last_check >= self.liveness_interval_s:
                last_check = time.monotonic()
                await self._check_liveness(tap, km)
            if closed:
                await asyncio.sleep(self.liveness_interval_s)
                return

    async def _pump_stream(self, tap: _Tap, km: Any) -> None:
        """ZMQ kernels: a callback reads iopub while this loop polls liveness."""
        stream = _as_stream(km.connect_iopub())
        session = Session(config=km.session.config, key=km.session.key)
        stream.on_recv(lambda frames: self._on_frames(tap, session, frames))
        try:
            while not tap.recycle:
                await asyncio.sleep(self.liveness_interval_s)
                await self._check_liveness(tap, km)
            tap.recycle = False
        finally:
            stream.on_recv(None)
            stream.close(linger=0)

    def _on_frames(self, tap: _Tap, session: Session, frames: list[bytes]) -> None:
        """One raw iopub message: only ``status`` ones are decoded and signature-checked."""
        try:
            _, fed = session.feed_identities(frames, copy=True)
            header = fed[1]  # copy=True: bytes
            if json.loads(header if isinstance(header, bytes) else header.bytes).get(
                    "msg_type") != "status":
                return
            msg = session.deserialize(fed, content=True, copy=True)
        except Exception:
            log.debug("kernel usage: undecodable iopub message of %s", tap.kernel_id,
                      exc_info=True)
            return
        self._on_iopub(tap, msg)

    async def _check_liveness(self, tap: _Tap, km: Any) -> None:
        if tap.kernel_id not in self.kernel_manager:
            raise _KernelGone
        try:
            alive = bool(await _maybe_await(km.is_alive()))
        except Exception:
            log.debug("kernel usage: is_alive failed for %s", tap.kernel_id, exc_info=True)
            return
        now = self._clock()
        if not alive and not tap.dead:
            tap.dead = True
            self._feed(KernelDied(self._event_id("died", tap.kernel_id, now), now, tap.kernel_id))
        elif alive and tap.dead:
            tap.dead = False
            tap.recycle = True
            self._feed(
                KernelRestarted(self._event_id("revived", tap.kernel_id, now), now, tap.kernel_id)
            )

    def _on_iopub(self, tap: _Tap, msg: dict[str, Any]) -> None:
        if msg.get("msg_type") != "status" and msg.get("header", {}).get("msg_type") != "status":
            return
        now = self._clock()
        header = msg.get("header") or {}
        parent = msg.get("parent_header") or {}
        state = (msg.get("content") or {}).get("execution_state")
        msg_id = header.get("msg_id") or msg.get("msg_id")
        if not msg_id:
            return
        if state in ("busy", "idle"):
            if tap.dead:
                return  # stale message of the dead process
            self._feed(
                KernelStatus(
                    event_id=str(msg_id),
                    at=now,
                    kernel_id=tap.kernel_id,
                    state=state,
                    parent_msg_id=parent.get("msg_id"),
                    parent_msg_type=parent.get("msg_type"),
                    parent_subshell_id=parent.get("subshell_id"),
                )
            )
        elif state in _DEATH_STATES and not tap.dead:
            tap.dead = True
            self._feed(KernelDied(f"iopub:{msg_id}", now, tap.kernel_id))

    # -- rows --------------------------------------------------------------------------

    def _event_id(self, what: str, kernel_id: str, at: datetime) -> str:
        self._seq += 1
        return f"watch:{what}:{kernel_id}:{at.isoformat()}:{self._seq}"

    def _feed(self, event: KernelEvent) -> None:
        try:
            rows = self.meter.apply(event)
        except Exception:
            log.exception("kernel usage: meter rejected %r", event)
            return
        self._publish(rows)

    def _publish(self, rows: list[UsageEventIn]) -> None:
        """Count, emit and queue rows for ``on_rows``; never blocks the caller."""
        for row in rows:
            source = row.source or "user"
            if row.kind == KIND_BUSY:
                metrics.KERNEL_BUSY_SECONDS.labels(source=source).inc(row.quantity)
            elif row.kind == KIND_LIFETIME:
                metrics.KERNEL_LIFETIME_SECONDS.inc(row.quantity)
            self._emit_event(row)
        if self.on_rows is None or not rows:
            return
        self._pending.extend(rows)
        self._trim()
        self._wakeup.set()

    def _trim(self) -> None:
        dropped = 0
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            dropped += 1
        if dropped:
            log.error("kernel usage: ledger backlog full, dropped %d rows", dropped)

    def _emit_event(self, row: UsageEventIn) -> None:
        if self.event_logger is None:
            return
        data: dict[str, Any] = {
            "kernel_id": str(row.extra.get("kernel_id", "")),
            "kind": row.kind,
            "seconds": float(row.quantity),
            "source": row.source or "user",
            "user": row.user,
            "event_id": row.event_id,
        }
        if row.kernelspec:
            data["kernelspec"] = row.kernelspec
        try:
            self.event_logger.emit(schema_id=cloudide_events.KERNEL_USAGE, data=data)
        except Exception:
            log.exception("kernel usage: cannot emit event")

    def _ensure_schema(self) -> None:
        schemas = getattr(self.event_logger, "schemas", None)
        if schemas is not None and cloudide_events.KERNEL_USAGE in schemas:
            return
        for path in cloudide_events.schema_paths():
            if path.name == "kernel_usage.yaml":
                with contextlib.suppress(Exception):
                    self.event_logger.register_event_schema(path)

    async def _dispatch_loop(self) -> None:
        """The only caller of ``on_rows``: batches rows, retries with backoff on failure."""
        backoff = 0.5
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._idle.clear()
            if self.write_delay_s and not self._flush_now.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._flush_now.wait(), self.write_delay_s)
            self._flush_now.clear()
            batch = list(self._pending)
            self._pending.clear()
            try:
                assert self.on_rows is not None
                await self.on_rows(batch)
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(batch))
                raise
            except Exception:
                log.exception("kernel usage: writing %d rows failed; will retry", len(batch))
                self._pending.extendleft(reversed(batch))
                self._trim()
                self._idle.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval_s)
            try:
                await self.scan()
            except Exception:
                log.exception("kernel usage: scan failed")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("kernel usage: checkpoint failed")


def _as_stream(socket: Any) -> ZMQStream:
    """jupyter_client's IOLoop managers (the server's) return ZMQStreams already; plain ones
    return sockets, asyncio ones when their context is asyncio (ZMQStream wants a plain one)."""
    if isinstance(socket, ZMQStream):
        return socket
    if isinstance(socket, zmq.asyncio.Socket):
        socket = zmq.Socket(shadow=socket.underlying)
    return ZMQStream(socket)


def _is_gateway(km: Any) -> bool:
    """A kernel behind jupyter_server's GatewayClient: its channels are a WebSocket, not ZMQ."""
    try:
        from jupyter_server.gateway.managers import GatewayKernelManager
    except ImportError:  # pragma: no cover - jupyter_server always ships it
        return False
    return isinstance(km, GatewayKernelManager)
