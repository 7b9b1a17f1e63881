"""The usage ledger's front door: every metered row of the server goes through :class:`Ledger`.

Producers (the agent loop, the /v1 API, inline completions, the kernel watcher, request
counting, index-size snapshots) hand rows to :meth:`Ledger.add`. The convention is that
producers pass *quantities* (tokens, seconds, counts) and the ledger *prices*: rows of the
priced kinds (``tokens``, ``kernel_busy``, ``kernel_lifetime``) always get their cost from
:class:`~.pricing.Pricing` (tiers included), whatever cost the producer set; other kinds keep
the cost they came with (``requests`` and ``index_bytes`` rows: 0). ``add`` is synchronous
and cheap: it prices, counts (Prometheus), emits one jupyter_events event per billable row,
tells the subscribers (budgets) and buffers; a single writer task commits the buffer in
batches about once a second (sooner when it is large), so one model call never costs one
database transaction in front of the next turn's messages.

A failed write keeps its rows and is retried with backoff; because every row has an
``event_id`` and the store skips ids it already has (and rolls up only the rows it actually
inserted), a retry after a commit whose answer was lost cannot count anything twice. Memory is
bounded: past ``max_unwritten_rows`` the oldest rows are dropped with an error log and a
counter (an unreachable database must not grow the server without limit).

No tornado, no SQLAlchemy at import: the store is passed in once it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import events as cloudide_events
from . import metrics
from .pricing import PRICED_KINDS, TOKEN_KINDS, Pricing, Volumes

if TYPE_CHECKING:
    from ..storage.db import MetadataStore, UsageEventIn

__all__ = [
    "KIND_INDEX_BYTES",
    "KIND_REQUESTS",
    "KIND_TOKENS",
    "Ledger",
    "Subscriber",
]

log = logging.getLogger("jupyter_cloudide.metering.ledger")

KIND_TOKENS = "tokens"
#: requests per user and route over a window (quantity: the count)
KIND_REQUESTS = "requests"
#: a snapshot of a user's semantic-index folder size (quantity: bytes; one per user per hour)
KIND_INDEX_BYTES = "index_bytes"
#: kinds that are usage billed (one jupyter_events event each); the others are telemetry
BILLABLE_KINDS = PRICED_KINDS
#: Prometheus label values of the cost counter (anything else is "other")
_COST_KINDS = frozenset({*PRICED_KINDS, KIND_REQUESTS, KIND_INDEX_BYTES})
#: distinct model label values before new models are counted as "(other)"
MAX_MODEL_LABELS = 200
MAX_UNWRITTEN_ROWS = 100_000
#: rows per store transaction (a long outage's backlog is written in several)
WRITE_BATCH_ROWS = 5_000
MAX_BACKOFF_S = 30.0

Subscriber = Callable[[list["UsageEventIn"]], None]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _digest(*parts: str) -> str:
    """A short stable id part for user-supplied strings (event ids are at most 128 chars)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:20]


class Ledger:
    """Prices, publishes, buffers and writes usage rows (see the module docstring)."""

    def __init__(
        self,
        pricing: Pricing,
        *,
        event_logger: Any = None,
        flush_interval_s: float = 1.0,
        flush_rows: int = 1_000,
        max_unwritten_rows: int = MAX_UNWRITTEN_ROWS,
        request_interval_s: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Nothing is written until :meth:`start` gives it the open store.

        ``flush_interval_s``: how long added rows wait to be batched; ``flush_rows``: a buffer
        this large is written at once. ``request_interval_s``: how often counted requests
        become ``requests`` rows. ``clock``: tz-aware UTC now.
        """
        self.pricing = pricing
        #: cumulative volume per billing period, user and price key (tiers)
        self.volumes = Volumes(pricing)
        self.event_logger = event_logger
        self.flush_interval_s = max(0.0, float(flush_interval_s))
        self.flush_rows = max(1, int(flush_rows))
        self.max_unwritten_rows = max(1, int(max_unwritten_rows))
        self.request_interval_s = max(0.05, float(request_interval_s))
        self._clock = clock
        self._store: MetadataStore | None = None
        self._subscribers: list[Subscriber] = []
        self._pending: deque[UsageEventIn] = deque()
        self._inflight: list[UsageEventIn] = []
        self._wake = asyncio.Event()
        self._now = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._requests: dict[tuple[str, str], int] = {}
        self._request_seq = 0
        #: distinguishes this ledger's request rows from other servers' and earlier runs'
        self._instance = uuid.uuid4().hex[:12]
        self._model_labels: set[str] = set()
        self._closed = False
        self.rows_dropped = 0

    # -- the interface producers and budgets use -----------------------------------------

    def add(self, rows: list[UsageEventIn]) -> list[UsageEventIn]:
        """Price ``rows`` (see the module docstring), count and publish them, tell every
        subscriber, buffer them for the next batched write; returns the priced rows."""
        if not rows:
            return []
        now = self._clock()
        priced: list[UsageEventIn] = []
        for row in rows:
            at = row.occurred_at or now
            changes: dict[str, Any] = {}
            if row.occurred_at is None:
                changes["occurred_at"] = at
            if row.kind in PRICED_KINDS:
                cost = self.volumes.price_row(row, at)
                changes["cost"] = 0.0 if cost is None else cost
                changes["currency"] = self.pricing.currency
            priced.append(replace(row, **changes) if changes else row)
        for row in priced:
            self._count(row)
            if row.kind in BILLABLE_KINDS:
                self._emit(row)
        for subscriber in list(self._subscribers):
            try:
                subscriber(priced)
            except Exception:
                log.exception("usage ledger: a subscriber failed on %d rows", len(priced))
        self._buffer(priced)
        return priced

    def subscribe(self, fn: Subscriber) -> None:
        """Call ``fn(rows)`` synchronously with every batch of priced rows :meth:`add` takes
        (on the event loop: keep it cheap, no I/O). Exceptions are logged, not raised."""
        self._subscribers.append(fn)

    def unwritten(self) -> list[UsageEventIn]:
        """Rows added but not committed yet (being written, or waiting): a reader that sums
        the database adds these without counting anything twice. A row whose commit just
        succeeded may still be listed until the store's answer is back; the window is one
        transaction, and event ids let a careful reader skip it."""
        return [*self._inflight, *self._pending]

    # -- other producers ------------------------------------------------------------------

    def count_request(self, user: str, route: str) -> None:
        """Count one request of ``user`` on ``route`` (a REST route name or ``ws:<kind>``,
        a bounded set). Written every ``request_interval_s`` as one ``requests`` row per
        user and route, with an event id unique to this ledger, window and pair."""
        if not user:
            return
        key = (user, route)
        self._requests[key] = self._requests.get(key, 0) + 1
        metrics.ROUTE_REQUESTS.labels(route).inc()

    def flush_requests(self) -> list[UsageEventIn]:
        """Turn the requests counted since the last call into ledger rows (added)."""
        if not self._requests:
            return []
        from ..storage.db import UsageEventIn

        counts, self._requests = self._requests, {}
        self._request_seq += 1
        now = self._clock()
        rows = [
            UsageEventIn(
                event_id=f"requests:{self._instance}:{self._request_seq}:{_digest(user, route)}",
                user=user, kind=KIND_REQUESTS, quantity=float(count), route=route,
                occurred_at=now,
            )
            for (user, route), count in counts.items()
        ]
        return self.add(rows)

    def record_index_size(self, user: str, size_bytes: int,
                          at: datetime | None = None) -> UsageEventIn:
        """Snapshot of ``user``'s index folder size; idempotent per user per UTC hour (a
        second snapshot in the same hour, from any server, is skipped by the store)."""
        from ..storage.db import UsageEventIn

        at = (at or self._clock()).astimezone(timezone.utc)
        hour = at.replace(minute=0, second=0, microsecond=0)
        row = UsageEventIn(
            event_id=f"index_bytes:{hour.strftime('%Y%m%dT%H')}:{_digest(user)}", user=user,
            kind=KIND_INDEX_BYTES, quantity=float(max(0, int(size_bytes))), occurred_at=at,
            source="index",
        )
        return self.add([row])[0]

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, store: MetadataStore) -> None:
        """Attach the open store: load the current period's volumes (tiers) from the daily
        roll-ups, then start writing. Volumes counted by rows added before this are kept."""
        self._store = store
        period = self.pricing.period_start(self._clock())
        try:
            totals = await store.call(store.usage_volumes, period)
        except Exception:
            log.exception("usage ledger: cannot load this period's volumes; tiers count "
                          "from zero until a reprice")
        else:
            self.volumes.load(period, totals)
        self._closed = False
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop(), name="cloudide-ledger-writer"),
                       loop.create_task(self._request_loop(), name="cloudide-ledger-requests")]
        if self._pending:
            self._wake.set()

    async def flush(self) -> None:
        """Write every row added so far now. Raises what the store raised if it fails (the
        rows stay buffered for the writer's retries)."""
        while self._pending:
            await self._write_batch()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loops, turn counted requests into rows and write what is buffered
        (retrying until ``timeout_s``); rows still unwritten then are logged as lost."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.flush_requests()
        if self._store is None:
            if self._pending:
                log.error("usage ledger: closed before a store was attached; %d rows not "
                          "written", len(self._pending))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        backoff = 0.2
        while self._pending:
            try:
                await self.flush()
            except Exception as exc:
                if loop.time() + backoff > deadline:
                    log.error("usage ledger: %d rows not written at shutdown (%s)",
                              len(self._pending), type(exc).__name__)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    # -- internals -----------------------------------------------------------------------

    def _buffer(self, rows: list[UsageEventIn]) -> None:
        self._pending.extend(rows)
        self._trim()
        metrics.LEDGER_UNWRITTEN.set(len(self._pending) + len(self._inflight))
        if len(self._pending) >= self.flush_rows:
            self._now.set()
        self._wake.set()

    def _trim(self) -> None:
        excess = len(self._pending) + len(self._inflight) - self.max_unwritten_rows
        if excess <= 0:
            return
        dropped = 0
        while excess > 0 and self._pending:
            self._pending.popleft()
            excess -= 1
            dropped += 1
        if dropped:
            self.rows_dropped += dropped
            metrics.LEDGER_ROWS_DROPPED.inc(dropped)
            log.error("usage ledger: %d unwritten rows is the limit (max_unwritten_rows); "
                      "dropped the %d oldest. Is the metadata database reachable?",
                      self.max_unwritten_rows, dropped)

    async def _write_batch(self) -> int:
        """Write up to WRITE_BATCH_ROWS of the oldest buffered rows (one transaction)."""
        async with self._write_lock:
            if not self._pending:
                return 0
            store = self._store
            if store is None:
                raise RuntimeError("usage ledger: no store attached yet")
            count = min(len(self._pending), WRITE_BATCH_ROWS)
            batch = [self._pending.popleft() for _ in range(count)]
            self._inflight = batch
            try:
                inserted = await store.call(store.record_usage, batch)
            except BaseException as exc:
                # kept in order, in front of what came meanwhile; retried by event id (the
                # store's thread may still commit a cancelled write: the retry skips it)
                self._pending.extendleft(reversed(batch))
                if not isinstance(exc, asyncio.CancelledError):
                    metrics.LEDGER_WRITE_ERRORS.inc()
                raise
            finally:
                self._inflight = []
                metrics.LEDGER_UNWRITTEN.set(len(self._pending))
            metrics.LEDGER_ROWS_WRITTEN.inc(inserted)
            return inserted

    async def _write_loop(self) -> None:
        """The writer: waits for rows, lets a batch gather, writes; backs off on errors."""
        backoff = 0.5
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.flush_interval_s and not self._now.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._now.wait(), self.flush_interval_s)
            self._now.clear()
            try:
                while self._pending:
                    await self._write_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("usage ledger: writing %d rows failed (%s); retrying in %.1f s",
                            len(self._pending), _describe(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 0.5

    async def _request_loop(self) -> None:
        while True:
            await asyncio.sleep(self.request_interval_s)
            try:
                self.flush_requests()
            except Exception:
                log.exception("usage ledger: cannot record request counts")

    def _count(self, row: UsageEventIn) -> None:
        if row.kind in TOKEN_KINDS and row.model:
            model = row.model
            if model not in self._model_labels:
                if len(self._model_labels) >= MAX_MODEL_LABELS:
                    model = "(other)"
                else:
                    self._model_labels.add(model)
            if row.input_tokens:
                metrics.TOKENS.labels(model, "input").inc(row.input_tokens)
            if row.output_tokens:
                metrics.TOKENS.labels(model, "output").inc(row.output_tokens)
        if row.cost:
            kind = row.kind if row.kind in _COST_KINDS else "other"
            metrics.USAGE_COST.labels(kind).inc(max(0.0, row.cost))

    def _emit(self, row: UsageEventIn) -> None:
        if self.event_logger is None:
            return
        at = row.occurred_at or self._clock()
        data: dict[str, Any] = {
            "event_id": row.event_id, "user": row.user, "kind": row.kind,
            "input_tokens": int(row.input_tokens), "output_tokens": int(row.output_tokens),
            "quantity": float(row.quantity), "cost": float(row.cost),
            "currency": row.currency, "occurred_at": at.isoformat(),
        }
        for name in ("group", "model", "kernelspec", "source", "route"):
            value = getattr(row, name)
            if value:
                data[name] = str(value)
        try:
            self.event_logger.emit(schema_id=cloudide_events.USAGE, data=data)
        except Exception:
            log.exception("usage ledger: cannot emit the usage event")


def _describe(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

