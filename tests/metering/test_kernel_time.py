"""Example-based tests of the kernel-time meter (pure, no kernels)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jupyter_cloudide.metering.kernel_time import (
    KIND_BUSY,
    KIND_LIFETIME,
    KernelDied,
    KernelMeter,
    KernelRestarted,
    KernelStarted,
    KernelStatus,
    KernelStopped,
    checkpoint_id,
)
from jupyter_cloudide.storage import UsageEventIn

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
KID = "kernel-1"


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def busy(eid: str, s: float, parent: str, msg_type: str = "execute_request") -> KernelStatus:
    return KernelStatus(eid, t(s), KID, "busy", parent_msg_id=parent, parent_msg_type=msg_type)


def idle(eid: str, s: float, parent: str, msg_type: str = "execute_request") -> KernelStatus:
    return KernelStatus(eid, t(s), KID, "idle", parent_msg_id=parent, parent_msg_type=msg_type)


def started(meter: KernelMeter, s: float = 0.0, **kw: object) -> None:
    assert meter.apply(KernelStarted("start", t(s), KID, kernelspec="python3", **kw)) == []  # type: ignore[arg-type]


def by_kind(rows: list[UsageEventIn], kind: str) -> list[UsageEventIn]:
    return [r for r in rows if r.kind == kind]


def test_busy_span_row_shape() -> None:
    meter = KernelMeter("alice")
    started(meter)
    assert meter.apply(busy("b1", 1, "req1")) == []
    [row] = meter.apply(idle("i1", 3.5, "req1"))
    assert row.kind == KIND_BUSY
    assert row.quantity == pytest.approx(2.5)
    assert row.user == "alice"
    assert row.source == "user"
    assert row.kernelspec == "python3"
    assert row.occurred_at == t(3.5)
    assert row.extra == {"kernel_id": KID, "start": t(1).isoformat(), "end": t(3.5).isoformat()}
    assert row.event_id.startswith("kernel_busy:") and len(row.event_id) <= 128


def test_overlapping_requests_are_billed_once() -> None:
    """A control request overlapping an execution does not double the busy time."""
    meter = KernelMeter("alice")
    started(meter)
    rows = meter.apply(busy("b1", 1, "exec"))
    rows += meter.apply(busy("b2", 2, "dbg", "debug_request"))
    rows += meter.apply(idle("i2", 3, "dbg", "debug_request"))  # exec still running
    assert rows == []
    [row] = meter.apply(idle("i1", 5, "exec"))
    assert row.quantity == pytest.approx(4)


def test_idle_of_unknown_request_is_ignored() -> None:
    meter = KernelMeter("alice")
    started(meter)
    assert meter.apply(idle("i0", 1, "never-seen")) == []
    meter.apply(busy("b1", 2, "r"))
    assert meter.apply(idle("i-other", 3, "other")) == []
    assert len(meter.apply(idle("i1", 4, "r"))) == 1


def test_agent_marked_request_makes_the_span_agent() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.mark_agent("agent-req")
    meter.apply(busy("b1", 1, "user-req", "kernel_info_request"))
    meter.apply(busy("b2", 2, "agent-req", "debug_request"))
    meter.apply(idle("i1", 3, "user-req", "kernel_info_request"))
    [row] = meter.apply(idle("i2", 4, "agent-req", "debug_request"))
    assert row.source == "agent"
    meter.apply(busy("b3", 5, "user-2"))
    [row] = meter.apply(idle("i3", 6, "user-2"))
    assert row.source == "user"
    totals = meter.totals(KID)
    assert totals is not None
    assert totals.busy_agent_s == pytest.approx(3)
    assert totals.busy_user_s == pytest.approx(1)


def test_agent_mark_after_busy_still_counts() -> None:
    """The executor may mark right after sending; the span is judged when it closes."""
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 1, "r"))
    meter.mark_agent("r")
    [row] = meter.apply(idle("i1", 2, "r"))
    assert row.source == "agent"


def test_replay_is_a_no_op() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 1, "r"))
    snap = meter.snapshot()
    assert meter.apply(busy("b1", 1, "r")) == []
    assert meter.apply(KernelStarted("start", t(0), KID)) == []
    assert meter.snapshot() == snap
    first = meter.apply(idle("i1", 2, "r"))
    assert meter.apply(idle("i1", 2, "r")) == []
    assert len(first) == 1


def test_same_input_same_row_ids() -> None:
    def run() -> list[UsageEventIn]:
        meter = KernelMeter("alice")
        out = meter.apply(KernelStarted("s", t(0), KID, kernelspec="python3"))
        out += meter.apply(busy("b", 1, "r"))
        out += meter.checkpoint(t(2))
        out += meter.apply(idle("i", 3, "r"))
        out += meter.apply(KernelStopped("x", t(4), KID))
        return out

    first, second = run(), run()
    assert first == second
    assert [r.event_id for r in first] == [r.event_id for r in second]
    assert len({r.event_id for r in first}) == len(first) == 4


def test_restart_splits_lifetime_without_double_billing() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 5, "r"))
    rows = meter.apply(KernelRestarted("restart-1", t(10), KID))
    assert [r.kind for r in rows] == [KIND_BUSY, KIND_LIFETIME]
    assert rows[0].quantity == pytest.approx(5)  # busy span closed by the restart
    assert rows[1].quantity == pytest.approx(10)
    rows += meter.apply(idle("i1", 11, "r"))  # the old request's idle never bills again
    rows += meter.apply(KernelStopped("stop", t(25), KID))
    lifetime = by_kind(rows, KIND_LIFETIME)
    assert [r.quantity for r in lifetime] == [pytest.approx(10), pytest.approx(15)]
    assert sum(r.quantity for r in lifetime) == pytest.approx(25)
    assert lifetime[0].extra["end"] == lifetime[1].extra["start"]


def test_death_closes_busy_and_lifetime_then_revival_reopens() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 1, "r"))
    rows = meter.apply(KernelDied("dead", t(4), KID))
    assert {r.kind: r.quantity for r in rows} == {KIND_BUSY: 3, KIND_LIFETIME: 4}
    assert not meter.is_alive(KID)
    # messages of the dead process and a second death report bill nothing
    assert meter.apply(busy("b2", 5, "r2")) == []
    assert meter.apply(KernelDied("dead-again", t(6), KID)) == []
    assert meter.apply(KernelRestarted("revived", t(8), KID)) == []
    assert meter.is_alive(KID)
    [row] = meter.apply(KernelStopped("stop", t(10), KID))
    assert row.kind == KIND_LIFETIME and row.quantity == pytest.approx(2)


def test_out_of_order_timestamps_are_clamped() -> None:
    meter = KernelMeter("alice")
    started(meter, 10)
    assert meter.apply(busy("b1", 5, "r")) == []  # earlier than start: clamped to 10
    assert meter.apply(idle("i1", 2, "r")) == []  # earlier still: zero length, no row
    assert meter.totals(KID).busy_s == 0  # type: ignore[union-attr]
    meter.apply(busy("b2", 12, "r2"))
    [row] = meter.apply(idle("i2", 13, "r2"))
    assert row.extra["start"] == t(12).isoformat()


def test_out_of_order_never_negative() -> None:
    meter = KernelMeter("alice")
    started(meter, 10)
    meter.apply(busy("b1", 12, "r"))
    assert meter.apply(idle("i1", 11, "r")) == []  # clamped to 12: zero-length, no row
    rows = meter.apply(KernelStopped("s", t(3), KID))
    assert [r.quantity for r in rows] == [pytest.approx(2)]


def test_checkpoint_splits_open_intervals() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.mark_agent("r")
    meter.apply(busy("b1", 10, "r"))
    rows = meter.checkpoint(t(60))
    assert {r.kind: r.quantity for r in rows} == {KIND_BUSY: 50, KIND_LIFETIME: 60}
    assert all(r.occurred_at == t(60) for r in rows)
    assert meter.checkpoint(t(60)) == []
    assert meter.checkpoint(t(30)) == []  # a clock going backwards bills nothing
    rows = meter.apply(idle("i1", 70, "r"))
    assert [(r.kind, r.quantity, r.source) for r in rows] == [(KIND_BUSY, 10, "agent")]
    rows = meter.apply(KernelStopped("s", t(90), KID))
    assert [(r.kind, r.quantity) for r in rows] == [(KIND_LIFETIME, 30)]
    totals = meter.totals(KID)
    assert totals is not None and not totals.alive
    assert totals.busy_s == pytest.approx(60) and totals.lifetime_s == pytest.approx(90)
    assert checkpoint_id(t(60)) == f"checkpoint@{t(60).isoformat()}"


def test_lost_idle_is_recovered_by_the_next_shell_request() -> None:
    """iopub is lossy under floods; a dropped idle must not bill busy forever."""
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 1, "exec-1"))
    # exec-1's idle was dropped; exec-2 starts on the (serial) shell channel
    meter.apply(busy("b2", 5, "exec-2"))
    [row] = meter.apply(idle("i2", 6, "exec-2"))
    assert row.quantity == pytest.approx(5)
    meter.apply(busy("b3", 10, "dbg", "debug_request"))  # control: no such inference
    meter.apply(busy("b4", 11, "sub", "execute_request"))
    assert meter.totals(KID) is not None and meter.totals(KID).busy_now  # type: ignore[union-attr]


def test_subshell_requests_run_concurrently() -> None:
    meter = KernelMeter("alice")
    started(meter)
    meter.apply(busy("b1", 1, "main"))
    meter.apply(
        KernelStatus("b2", t(2), KID, "busy", "sub", "execute_request", parent_subshell_id="s1")
    )
    meter.apply(
        KernelStatus("i2", t(3), KID, "idle", "sub", "execute_request", parent_subshell_id="s1")
    )
    [row] = meter.apply(idle("i1", 4, "main"))
    assert row.quantity == pytest.approx(3)


def test_unknown_and_stopped_kernels_are_ignored() -> None:
    meter = KernelMeter("alice")
    assert meter.apply(busy("b0", 1, "r")) == []
    assert meter.totals(KID) is None
    started(meter, 2)
    assert meter.apply(busy("b0", 3, "r")) == []  # refused once, refused for good
    assert meter.totals(KID).busy_now is False  # type: ignore[union-attr]
    meter.apply(KernelStopped("stop", t(4), KID))
    assert meter.kernel_ids() == []
    assert meter.apply(KernelStarted("again", t(5), KID)) == []
    assert meter.kernel_ids() == []
    totals = meter.totals(KID)
    assert totals is not None and totals.lifetime_s == pytest.approx(2)


def test_attribution_and_naive_times() -> None:
    meter = KernelMeter("server-owner")
    meter.attribute("k-agent", user="bob", source="agent")
    meter.apply(KernelStarted("s", datetime(2024, 1, 1), "k-agent"))  # naive: taken as UTC
    meter.apply(KernelStarted("s2", t(0), "k-user", user="carol"))
    meter.apply(KernelStarted("s3", t(0), "k-owner"))
    rows = meter.checkpoint(datetime(2024, 1, 1, 0, 0, 10, tzinfo=timezone.utc))
    [agent_row] = [r for r in rows if r.extra["kernel_id"] == "k-agent"]
    assert (agent_row.user, agent_row.source, agent_row.quantity) == ("bob", "agent", 10)
    meter.attribute("k-owner", user="dave")
    rows = meter.apply(KernelStopped("x", t(10), "k-owner"))
    assert rows[0].user == "dave"
    assert meter.totals("k-user").user == "carol"  # type: ignore[union-attr]


def test_seen_ids_are_bounded() -> None:
    meter = KernelMeter("alice", seen_ids_per_kernel=4)
    started(meter)
    for i in range(10):
        meter.apply(busy(f"b{i}", i + 1, f"r{i}", "kernel_info_request"))
        meter.apply(idle(f"i{i}", i + 1.5, f"r{i}", "kernel_info_request"))
    snap = meter.snapshot()
    kernels = snap[0]
    assert isinstance(kernels, tuple)
    seen = kernels[0][1][-1]
    assert len(seen) == 4


def test_owner_is_required() -> None:
    with pytest.raises(ValueError):
        KernelMeter("")
