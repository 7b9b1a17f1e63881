"""Model-based test of the kernel-time meter (hypothesis RuleBasedStateMachine).

A small independent model (integer milliseconds, sets) says what the meter must bill; the
invariants of the issue are checked after every step: busy <= lifetime wall time, lifetime
rows never overlap and sum to the time the kernel was up, replaying an event changes
nothing, durations are non-negative, and a busy row is "agent" iff an agent-marked request
was in its span. The teardown re-runs the whole trace on a fresh meter and expects the same
rows (deterministic row ids).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jupyter_cloudide.metering.kernel_time import (
    FIFO_REQUEST_TYPES,
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
from jupyter_cloudide.storage import UsageEventIn

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
KERNELS = ("k1", "k2", "k3")
PARENTS = tuple(f"p{i}" for i in range(6))
MSG_TYPES = ("execute_request", "kernel_info_request", "debug_request", "complete_request")
EPS = 1e-6


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


@dataclass
class Model:
    """What the meter should have billed for one kernel."""

    last: int
    alive: bool = False
    seg_start: int | None = None
    lifetime_ms: int = 0
    busy: set[str] = field(default_factory=set)
    fifo: set[str] = field(default_factory=set)
    span_start: int | None = None
    piece: set[str] = field(default_factory=set)
    busy_rows: list[tuple[int, int, str]] = field(default_factory=list)


class MeterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.meter = KernelMeter("owner")
        self.clock = 0
        self.seq = 0
        self.applied: list[KernelEvent] = []
        self.trace: list[tuple[str, Any]] = []
        self.rows: list[UsageEventIn] = []
        self.models: dict[str, Model] = {}
        self.stopped: set[str] = set()
        self.refused: set[str] = set()
        self.agents: set[str] = set()

    # -- helpers ---------------------------------------------------------------------

    def _time(self, delta: int) -> int:
        """A timestamp ``delta`` ms from the clock; negative deltas arrive out of order."""
        t = max(0, self.clock + delta)
        self.clock = max(self.clock, t)
        return t

    def _id(self) -> str:
        self.seq += 1
        return f"e{self.seq}"

    def _apply(self, event: KernelEvent) -> list[UsageEventIn]:
        rows = self.meter.apply(event)
        self.applied.append(event)
        self.trace.append(("apply", event))
        self.rows.extend(rows)
        for row in rows:
            assert row.quantity > 0
            assert row.occurred_at is not None and row.occurred_at.tzinfo is not None
            assert row.user == "owner"
            assert row.kind in (KIND_BUSY, KIND_LIFETIME)
        return rows

    def _close_piece(self, m: Model, t: int) -> None:
        if m.span_start is not None and t > m.span_start:
            source = "agent" if m.piece & self.agents else "user"
            m.busy_rows.append((m.span_start, t, source))
        m.span_start = None
        m.piece = set()

    def _close_all(self, m: Model, t: int) -> None:
        self._close_piece(m, t)
        m.busy.clear()
        m.fifo.clear()
        if m.alive and m.seg_start is not None:
            m.lifetime_ms += t - m.seg_start
        m.alive = False
        m.seg_start = None

    def _known(self, kid: str, event_id: str) -> Model | None:
        """The model of a kernel that accepts events, or None (refused)."""
        if kid in self.stopped or event_id in self.refused:
            return None
        return self.models.get(kid)

    # -- rules -----------------------------------------------------------------------

    @rule(kid=st.sampled_from(KERNELS), delta=st.integers(-500, 3000))
    def start(self, kid: str, delta: int) -> None:
        t_at = self._time(delta)
        event = KernelStarted(self._id(), at(t_at), kid, kernelspec="python3")
        if kid not in self.stopped:
            m = self.models.setdefault(kid, Model(last=t_at))
            t = max(t_at, m.last)
            m.last = t
            if not m.alive:
                m.alive, m.seg_start = True, t
                m.busy.clear()
                m.fifo.clear()
        self._apply(event)

    @rule(
        kid=st.sampled_from(KERNELS),
        busy=st.booleans(),
        parent=st.sampled_from(PARENTS),
        msg_type=st.sampled_from(MSG_TYPES),
        delta=st.integers(-2000, 3000),
    )
    def status(self, kid: str, busy: bool, parent: str, msg_type: str, delta: int) -> None:
        t_at = self._time(delta)
        event = KernelStatus(
            self._id(),
            at(t_at),
            kid,
            "busy" if busy else "idle",
            parent_msg_id=parent,
            parent_msg_type=msg_type,
        )
        m = self._known(kid, event.event_id)
        if m is None:
            self.refused.add(event.event_id)
        else:
            t = max(t_at, m.last)
            m.last = t
            if m.alive and busy:
                if msg_type in FIFO_REQUEST_TYPES:
                    m.busy -= m.fifo - {parent}
                    m.fifo = {parent}
                if m.span_start is None:
                    m.busy = {parent}
                    m.span_start = t
                    m.piece = {parent}
                else:
                    m.busy.add(parent)
                    m.piece.add(parent)
            elif m.alive and parent in m.busy:
                m.busy.discard(parent)
                m.fifo.discard(parent)
                if not m.busy:
                    self._close_piece(m, t)
        self._apply(event)

    @rule(
        kid=st.sampled_from(KERNELS),
        kind=st.sampled_from(["restart", "died", "stopped"]),
        delta=st.integers(-500, 5000),
    )
    def lifecycle(self, kid: str, kind: str, delta: int) -> None:
        t_at = self._time(delta)
        event: KernelRestarted | KernelDied | KernelStopped
        if kind == "restart":
            event = KernelRestarted(self._id(), at(t_at), kid)
        elif kind == "died":
            event = KernelDied(self._id(), at(t_at), kid)
        else:
            event = KernelStopped(self._id(), at(t_at), kid)
        m = self._known(kid, event.event_id)
        if m is None:
            self.refused.add(event.event_id)
        else:
            t = max(t_at, m.last)
            m.last = t
            self._close_all(m, t)
            if kind == "restart":
                m.alive, m.seg_start = True, t
            elif kind == "stopped":
                self.stopped.add(kid)
        self._apply(event)

    @rule(parent=st.sampled_from(PARENTS))
    def mark_agent(self, parent: str) -> None:
        self.agents.add(parent)
        self.meter.mark_agent(parent)
        self.trace.append(("mark", parent))

    @rule(delta=st.integers(-1000, 5000))
    def checkpoint(self, delta: int) -> None:
        t_at = self._time(delta)
        for kid, m in self.models.items():
            if kid in self.stopped:
                continue
            t = max(t_at, m.last)
            m.last = t
            if not m.alive:
                continue
            if m.span_start is not None and t > m.span_start:
                self._close_piece(m, t)
                m.span_start, m.piece = t, set(m.busy)
            if m.seg_start is not None and t > m.seg_start:
                m.lifetime_ms += t - m.seg_start
                m.seg_start = t
        rows = self.meter.checkpoint(at(t_at))
        self.trace.append(("checkpoint", at(t_at)))
        self.rows.extend(rows)
        again = self.meter.checkpoint(at(t_at))
        assert again == [], "checkpointing twice at one instant bills nothing more"

    @precondition(lambda self: bool(self.applied))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.applied))
        before = self.meter.snapshot()
        assert self.meter.apply(event) == []
        assert self.meter.snapshot() == before

    # -- invariants ------------------------------------------------------------------

    def _rows_of(self, kid: str, kind: str) -> list[UsageEventIn]:
        return [r for r in self.rows if r.kind == kind and r.extra["kernel_id"] == kid]

    @invariant()
    def row_ids_are_unique(self) -> None:
        ids = [r.event_id for r in self.rows]
        assert len(ids) == len(set(ids))
        assert all(len(i) <= 128 for i in ids)

    @invariant()
    def lifetime_matches_model_and_never_overlaps(self) -> None:
        for kid, m in self.models.items():
            rows = self._rows_of(kid, KIND_LIFETIME)
            total = sum(r.quantity for r in rows)
            assert abs(total - m.lifetime_ms / 1000) < EPS, (kid, total, m.lifetime_ms)
            spans = sorted(
                (datetime.fromisoformat(r.extra["start"]), datetime.fromisoformat(r.extra["end"]))
                for r in rows
            )
            for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
                assert e1 <= s2, f"lifetime rows overlap for {kid}"
            totals = self.meter.totals(kid)
            assert totals is not None
            assert abs(totals.lifetime_s - total) < EPS

    @invariant()
    def busy_matches_model_within_lifetime(self) -> None:
        for kid, m in self.models.items():
            busy = self._rows_of(kid, KIND_BUSY)
            got = [
                (r.extra["start"], r.extra["end"], r.source, round(r.quantity * 1000)) for r in busy
            ]
            want = [(at(s).isoformat(), at(e).isoformat(), src, e - s) for s, e, src in m.busy_rows]
            assert got == want, (kid, got, want)
            life = [
                (datetime.fromisoformat(r.extra["start"]), datetime.fromisoformat(r.extra["end"]))
                for r in self._rows_of(kid, KIND_LIFETIME)
            ]
            open_since = at(m.seg_start) if m.alive and m.seg_start is not None else None
            for r in busy:
                s = datetime.fromisoformat(r.extra["start"])
                e = datetime.fromisoformat(r.extra["end"])
                inside = any(ls <= s and e <= le for ls, le in life)
                assert inside or (open_since is not None and open_since <= s), (kid, s, e)
            up_ms = m.lifetime_ms + (
                m.last - m.seg_start if m.alive and m.seg_start is not None else 0)
            assert sum(r.quantity for r in busy) <= up_ms / 1000 + EPS

    def teardown(self) -> None:
        fresh = KernelMeter("owner")
        rows: list[UsageEventIn] = []
        for op, arg in self.trace:
            if op == "apply":
                rows.extend(fresh.apply(arg))
            elif op == "mark":
                fresh.mark_agent(arg)
            else:
                rows.extend(fresh.checkpoint(arg))
        assert rows == self.rows, "re-running the same input must give the same rows"


MeterMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMeterMachine = MeterMachine.TestCase
