"""Kernel-time meter: turns kernel lifecycle and iopub status events into ledger rows.

Pure and deterministic on purpose: no clock, no I/O, no tornado. The watcher
(:mod:`.kernel_watch`) feeds it events with the wall-clock time they were observed, and writes
what it returns to the usage ledger. Keeping the arithmetic here makes the billing invariants
testable with a hypothesis state machine instead of real kernels:

* busy time is the *union* of busy spans (ipykernel sends ``busy``/``idle`` around every
  request, and control-channel requests overlap shell ones, so a span is open while the set of
  requests in flight is non-empty), clamped to the kernel's lifetime;
* lifetime segments never overlap: a restart closes one segment and opens the next at the
  same instant; death closes it; a checkpoint splits it so a crash loses at most one interval;
* replaying an event (same ``event_id``) is a no-op, and the rows produced carry ``event_id``
  values derived from the input events that opened and closed them, so re-running the same
  input yields the same rows and the ledger's ``event_id`` uniqueness absorbs duplicates;
* timestamps never run backwards per kernel (late events are clamped), so no duration is
  negative.

Event-id scheme of the output rows: ``kernel_busy:<h>`` / ``kernel_lifetime:<h>`` where ``<h>``
is the first 40 hex digits of SHA-256 over ``kind, kernel_id, opening id, closing id``. The
opening/closing ids are input ``event_id`` values, or ``checkpoint@<ISO time>`` when a
checkpoint split the interval. Rows have ``quantity`` in seconds, ``occurred_at`` = the end of
the interval, and ``extra`` = ``{kernel_id, start, end}``; zero-length intervals emit no row.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, TypeAlias

from ..storage.db import UsageEventIn

__all__ = [
    "AGENT_MARKS",
    "BUSY_SET_MAX",
    "FIFO_REQUEST_TYPES",
    "KIND_BUSY",
    "KIND_LIFETIME",
    "SEEN_IDS_PER_KERNEL",
    "TOMBSTONES",
    "KernelDied",
    "KernelEvent",
    "KernelMeter",
    "KernelRestarted",
    "KernelStarted",
    "KernelStatus",
    "KernelStopped",
    "KernelTotals",
    "Source",
    "checkpoint_id",
]

Source: TypeAlias = Literal["agent", "user"]

KIND_BUSY = "kernel_busy"
KIND_LIFETIME = "kernel_lifetime"

#: Event ids remembered per kernel for idempotency. Duplicates come from overlapping
#: discovery paths (kernel_actions event + scan) and reconnecting clients, i.e. they are
#: recent; 1024 ids cost well under 200 KB per kernel. An id older than that is forgotten
#: and a replay of it would be applied again.
SEEN_IDS_PER_KERNEL = 1024
#: Agent-marked request ids remembered (the executor marks right before sending, so only
#: requests still running matter).
AGENT_MARKS = 4096
#: Kernel ids remembered after a final stop, so late or replayed events for them are ignored
#: (and their totals stay readable).
TOMBSTONES = 4096
#: Requests tracked as in flight per kernel; a lost ``idle`` would otherwise keep a request
#: (and the span) open until the kernel dies. Past the bound the oldest is dropped.
BUSY_SET_MAX = 256
_PIECE_PARENTS_MAX = 256
#: Request types that only ever travel on the (main) shell channel, which the kernel serves
#: one at a time: when one of them turns busy, any other such request still in flight lost
#: its ``idle`` (iopub is lossy under floods: ZMQ drops past the high-water mark), so it is
#: dropped instead of keeping the span open forever. ``kernel_info_request`` is left out
#: because clients send it on the control channel too; subshell requests run concurrently.
FIFO_REQUEST_TYPES = frozenset(
    {
        "execute_request",
        "complete_request",
        "inspect_request",
        "history_request",
        "is_complete_request",
        "comm_info_request",
    }
)


# --------------------------------------------------------------------------- input events


@dataclass(frozen=True)
class KernelStarted:
    """A kernel started (or was discovered running); opens its first lifetime segment.

    ``user``/``source`` attribute the kernel's lifetime rows (None: the meter's owner);
    busy rows carry their own source, decided per request.
    """

    event_id: str
    at: datetime
    kernel_id: str
    kernelspec: str | None = None
    user: str | None = None
    source: Source = "user"


@dataclass(frozen=True)
class KernelStatus:
    """An iopub ``status`` message: ``busy``/``idle`` for the request ``parent_msg_id``.

    ``parent_msg_type``/``parent_subshell_id`` come from the parent header and let the meter
    recover from a lost ``idle`` (see :data:`FIFO_REQUEST_TYPES`).
    """

    event_id: str
    at: datetime
    kernel_id: str
    state: Literal["busy", "idle"]
    parent_msg_id: str | None = None
    parent_msg_type: str | None = None
    parent_subshell_id: str | None = None


@dataclass(frozen=True)
class KernelRestarted:
    """The kernel was restarted (or came back after death): a new segment starts now."""

    event_id: str
    at: datetime
    kernel_id: str


@dataclass(frozen=True)
class KernelDied:
    """The kernel process died; it may still be restarted (autorestart), so it is kept."""

    event_id: str
    at: datetime
    kernel_id: str


@dataclass(frozen=True)
class KernelStopped:
    """The kernel was shut down or removed: final, the meter forgets it."""

    event_id: str
    at: datetime
    kernel_id: str


KernelEvent: TypeAlias = KernelStarted | KernelStatus | KernelRestarted | KernelDied | KernelStopped


@dataclass(frozen=True)
class KernelTotals:
    """Seconds billed so far for one kernel (rows emitted, not the open intervals)."""

    kernel_id: str
    kernelspec: str | None
    user: str
    alive: bool
    busy_now: bool
    busy_agent_s: float
    busy_user_s: float
    lifetime_s: float

    @property
    def busy_s(self) -> float:
        """Busy seconds regardless of source."""
        return self.busy_agent_s + self.busy_user_s


# --------------------------------------------------------------------------- internals


class _BoundedSet:
    """Insertion-ordered set that forgets its oldest members past ``limit``."""

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._limit = max(1, int(limit))

    def add(self, item: str) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def discard(self, item: str) -> None:
        self._items.pop(item, None)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> tuple[str, ...]:
        return tuple(self._items)


@dataclass
class _Kernel:
    kernel_id: str
    kernelspec: str | None
    user: str
    source: Source
    last_at: datetime
    seen: _BoundedSet
    alive: bool = False
    seg_start: datetime | None = None
    seg_open: str = ""
    busy: _BoundedSet = field(default_factory=lambda: _BoundedSet(BUSY_SET_MAX))
    fifo: _BoundedSet = field(default_factory=lambda: _BoundedSet(BUSY_SET_MAX))
    busy_start: datetime | None = None
    busy_open: str = ""
    piece_parents: _BoundedSet = field(default_factory=lambda: _BoundedSet(_PIECE_PARENTS_MAX))
    piece_agent: bool = False
    busy_agent_s: float = 0.0
    busy_user_s: float = 0.0
    lifetime_s: float = 0.0

    def totals(self) -> KernelTotals:
        return KernelTotals(
            kernel_id=self.kernel_id,
            kernelspec=self.kernelspec,
            user=self.user,
            alive=self.alive,
            busy_now=self.busy_start is not None,
            busy_agent_s=self.busy_agent_s,
            busy_user_s=self.busy_user_s,
            lifetime_s=self.lifetime_s,
        )

    def state(self) -> tuple[object, ...]:
        return (
            self.kernelspec,
            self.user,
            self.source,
            self.last_at,
            self.alive,
            self.seg_start,
            self.seg_open,
            self.busy.items(),
            self.fifo.items(),
            self.busy_start,
            self.busy_open,
            self.piece_parents.items(),
            self.piece_agent,
            self.busy_agent_s,
            self.busy_user_s,
            self.lifetime_s,
            self.seen.items(),
        )


def _utc(at: datetime) -> datetime:
    """Normalise to tz-aware UTC; a naive time is taken to be UTC already."""
    if at.tzinfo is None:
        return at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc)


def _row_id(kind: str, kernel_id: str, opened_by: str, closed_by: str) -> str:
    digest = hashlib.sha256("\0".join((kind, kernel_id, opened_by, closed_by)).encode()).hexdigest()
    return f"{kind}:{digest[:40]}"


def checkpoint_id(at: datetime) -> str:
    """The opening/closing id a checkpoint at ``at`` contributes to row ids."""
    return f"checkpoint@{_utc(at).isoformat()}"


# --------------------------------------------------------------------------- the meter


class KernelMeter:
    """Per-kernel busy and lifetime accounting; see the module docstring for the rules.

    Not thread-safe: the watcher calls it from the event loop only.
    """

    def __init__(
        self,
        owner: str,
        *,
        seen_ids_per_kernel: int = SEEN_IDS_PER_KERNEL,
        agent_marks: int = AGENT_MARKS,
        tombstones: int = TOMBSTONES,
    ) -> None:
        """``owner`` is billed for kernels whose start event names no user."""
        if not owner:
            raise ValueError("owner is required")
        self.owner = owner
        self._seen_limit = max(1, int(seen_ids_per_kernel))
        self._kernels: dict[str, _Kernel] = {}
        self._agents = _BoundedSet(agent_marks)
        self._tombstones: OrderedDict[str, KernelTotals] = OrderedDict()
        self._tombstone_limit = max(1, int(tombstones))
        self._attribution: OrderedDict[str, tuple[str | None, Source | None]] = OrderedDict()
        # Ids of events refused because their kernel was unknown: refused again on replay,
        # even once the kernel is known, so a replay never has an effect the original lacked.
        self._refused = _BoundedSet(seen_ids_per_kernel)

    # -- attribution -------------------------------------------------------------

    def mark_agent(self, parent_msg_id: str) -> None:
        """Register ``parent_msg_id`` as a request the agent sent (call before sending it).

        A busy interval counts as ``source="agent"`` if any request in it was marked by the
        time the interval is closed.
        """
        if parent_msg_id:
            self._agents.add(parent_msg_id)

    def is_agent(self, parent_msg_id: str) -> bool:
        """True if ``parent_msg_id`` is (still) remembered as an agent request."""
        return parent_msg_id in self._agents

    def attribute(
        self, kernel_id: str, *, user: str | None = None, source: Source | None = None
    ) -> None:
        """Bill ``kernel_id``'s lifetime to ``user``/``source`` (known kernel or a future one).

        The executor calls this for the kernels it starts; it may run before the watcher
        has seen the kernel, so unknown ids are remembered (bounded) until it starts.
        """
        kernel = self._kernels.get(kernel_id)
        if kernel is not None:
            if user:
                kernel.user = user
            if source:
                kernel.source = source
            return
        self._attribution[kernel_id] = (user, source)
        while len(self._attribution) > self._tombstone_limit:
            self._attribution.popitem(last=False)

    # -- events ------------------------------------------------------------------

    def apply(self, event: KernelEvent) -> list[UsageEventIn]:
        """Apply one event; returns the ledger rows of the intervals it closed.

        Applying an event whose ``event_id`` was already applied to the kernel returns ``[]``
        and changes nothing. Events of a kernel never started, or already stopped, are
        ignored (nothing to bill them against).
        """
        kernel_id = event.kernel_id
        if kernel_id in self._tombstones or event.event_id in self._refused:
            return []
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            if not isinstance(event, KernelStarted):
                self._refused.add(event.event_id)
                return []
            user, source = self._attribution.pop(kernel_id, (None, None))
            kernel = _Kernel(
                kernel_id=kernel_id,
                kernelspec=event.kernelspec,
                user=user or event.user or self.owner,
                source=source or event.source,
                last_at=_utc(event.at),
                seen=_BoundedSet(self._seen_limit),
            )
            self._kernels[kernel_id] = kernel
        if event.event_id in kernel.seen:
            return []
        kernel.seen.add(event.event_id)
        at = max(_utc(event.at), kernel.last_at)
        kernel.last_at = at

        rows: list[UsageEventIn] = []
        if isinstance(event, KernelStarted):
            if kernel.kernelspec is None and event.kernelspec:
                kernel.kernelspec = event.kernelspec
            if not kernel.alive:
                self._open_segment(kernel, at, event.event_id)
        elif isinstance(event, KernelStatus):
            if kernel.alive:
                self._status(kernel, event, at, rows)
        elif isinstance(event, KernelRestarted):
            self._close_all(kernel, at, event.event_id, rows)
            self._open_segment(kernel, at, event.event_id)
        elif isinstance(event, KernelDied):
            self._close_all(kernel, at, event.event_id, rows)
        else:  # KernelStopped
            self._close_all(kernel, at, event.event_id, rows)
            del self._kernels[kernel_id]
            self._tombstones[kernel_id] = kernel.totals()
            while len(self._tombstones) > self._tombstone_limit:
                self._tombstones.popitem(last=False)
        return rows

    def checkpoint(self, at: datetime, kernel_id: str | None = None) -> list[UsageEventIn]:
        """Emit rows for open busy spans and lifetime segments up to ``at``, then continue.

        Called periodically so a server crash loses at most one interval, and on shutdown.
        Checkpointing twice at the same time emits nothing the second time.
        """
        at = _utc(at)
        rows: list[UsageEventIn] = []
        if kernel_id is None:
            kernels = list(self._kernels.values())
        else:
            kernels = [self._kernels[kernel_id]] if kernel_id in self._kernels else []
        for kernel in kernels:
            t = max(at, kernel.last_at)
            kernel.last_at = t
            if not kernel.alive:
                continue
            mark = checkpoint_id(t)
            if kernel.busy_start is not None and t > kernel.busy_start:
                self._close_busy(kernel, t, mark, rows)
                self._open_busy(kernel, t, mark, kernel.busy.items())
            if kernel.seg_start is not None and t > kernel.seg_start:
                self._close_segment(kernel, t, mark, rows)
                kernel.seg_start, kernel.seg_open = t, mark
        return rows

    # -- inspection ----------------------------------------------------------------

    def kernel_ids(self) -> list[str]:
        """Kernels currently tracked (alive or dead-but-not-stopped)."""
        return list(self._kernels)

    def totals(self, kernel_id: str) -> KernelTotals | None:
        """Billed seconds of a tracked or recently stopped kernel; None if unknown."""
        kernel = self._kernels.get(kernel_id)
        if kernel is not None:
            return kernel.totals()
        return self._tombstones.get(kernel_id)

    def is_alive(self, kernel_id: str) -> bool:
        """True if the kernel has an open lifetime segment."""
        kernel = self._kernels.get(kernel_id)
        return kernel is not None and kernel.alive

    def snapshot(self) -> tuple[object, ...]:
        """A comparable image of the whole state (tests check replay changes nothing)."""
        return (
            tuple(sorted((kid, k.state()) for kid, k in self._kernels.items())),
            tuple(self._tombstones.items()),
            self._agents.items(),
            tuple(self._attribution.items()),
            self._refused.items(),
        )

    # -- transitions -----------------------------------------------------------------

    def _status(
        self, kernel: _Kernel, event: KernelStatus, at: datetime, rows: list[UsageEventIn]
    ) -> None:
        parent = event.parent_msg_id or ""
        if event.state == "busy":
            if event.parent_msg_type in FIFO_REQUEST_TYPES and not event.parent_subshell_id:
                for stale in kernel.fifo.items():
                    if stale != parent:
                        kernel.busy.discard(stale)
                kernel.fifo.clear()
                kernel.fifo.add(parent)
            if kernel.busy_start is None:
                kernel.busy.clear()
                kernel.busy.add(parent)
                self._open_busy(kernel, at, event.event_id, (parent,))
            else:
                kernel.busy.add(parent)
                self._note_parent(kernel, parent)
        elif event.state == "idle" and parent in kernel.busy:
            kernel.busy.discard(parent)
            kernel.fifo.discard(parent)
            if not len(kernel.busy) and kernel.busy_start is not None:
                self._close_busy(kernel, at, event.event_id, rows)

    def _note_parent(self, kernel: _Kernel, parent: str) -> None:
        kernel.piece_parents.add(parent)
        if parent in self._agents:
            kernel.piece_agent = True

    def _open_busy(
        self, kernel: _Kernel, at: datetime, opened_by: str, parents: tuple[str, ...]
    ) -> None:
        kernel.busy_start, kernel.busy_open = at, opened_by
        kernel.piece_parents.clear()
        kernel.piece_agent = False
        for parent in parents:
            self._note_parent(kernel, parent)

    def _close_busy(
        self, kernel: _Kernel, at: datetime, closed_by: str, rows: list[UsageEventIn]
    ) -> None:
        start = kernel.busy_start
        if start is None:
            return
        agent = kernel.piece_agent or any(p in self._agents for p in kernel.piece_parents.items())
        source: Source = "agent" if agent else "user"
        seconds = (at - start).total_seconds()
        if seconds > 0:
            opened_by = kernel.busy_open
            rows.append(self._row(KIND_BUSY, kernel, start, at, opened_by, closed_by, source))
            if agent:
                kernel.busy_agent_s += seconds
            else:
                kernel.busy_user_s += seconds
        kernel.busy_start, kernel.busy_open = None, ""
        kernel.piece_parents.clear()
        kernel.piece_agent = False

    def _open_segment(self, kernel: _Kernel, at: datetime, opened_by: str) -> None:
        kernel.alive = True
        kernel.seg_start, kernel.seg_open = at, opened_by
        kernel.busy.clear()
        kernel.fifo.clear()

    def _close_segment(
        self, kernel: _Kernel, at: datetime, closed_by: str, rows: list[UsageEventIn]
    ) -> None:
        start = kernel.seg_start
        if start is None:
            return
        seconds = (at - start).total_seconds()
        if seconds > 0:
            rows.append(
                self._row(
                    KIND_LIFETIME, kernel, start, at, kernel.seg_open, closed_by, kernel.source
                )
            )
            kernel.lifetime_s += seconds

    def _close_all(
        self, kernel: _Kernel, at: datetime, closed_by: str, rows: list[UsageEventIn]
    ) -> None:
        """Death, stop and restart end whatever is open at ``at``."""
        self._close_busy(kernel, at, closed_by, rows)
        kernel.busy.clear()
        kernel.fifo.clear()
        if kernel.alive:
            self._close_segment(kernel, at, closed_by, rows)
        kernel.alive = False
        kernel.seg_start, kernel.seg_open = None, ""

    def _row(
        self,
        kind: str,
        kernel: _Kernel,
        start: datetime,
        end: datetime,
        opened_by: str,
        closed_by: str,
        source: Source,
    ) -> UsageEventIn:
        return UsageEventIn(
            event_id=_row_id(kind, kernel.kernel_id, opened_by, closed_by),
            user=kernel.user,
            kind=kind,
            quantity=(end - start).total_seconds(),
            source=source,
            kernelspec=kernel.kernelspec,
            occurred_at=end,
            extra={
                "kernel_id": kernel.kernel_id,
                "start": start.isoformat(),
                "end": end.isoformat(),
            },
        )
